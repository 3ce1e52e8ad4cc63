"""An endpoint that does not answer like the Hub (issue 13 item 15): a web page, garbage, JSON of
the wrong shape. It is "model unavailable" (exit 4) naming the endpoint, never a JSONDecodeError."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.checkpoints import hub
from engine.errors import ModelUnavailableError


def serve(body: bytes, kind: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(
    "body, kind",
    [
        (b"<html><body>Welcome to our proxy</body></html>", "text/html"),
        (b"{not json", "application/json"),
        (b'["a", "list"]', "application/json"),
    ],
)
def test_an_endpoint_that_is_not_a_hub_is_model_unavailable_naming_it(hub_env, monkeypatch, body, kind):
    server = serve(body, kind)
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        with pytest.raises(ModelUnavailableError) as caught:
            hub.resolve("hf://someone/some-model", quiet=True)
    finally:
        server.shutdown()
        server.server_close()
    message = str(caught.value)
    assert endpoint in message and "does not answer like a Hugging Face Hub" in message, message
    assert caught.value.label == "hf://someone/some-model"
