"""An HTTP server on 127.0.0.1 that serves images, and misbehaves on purpose, for URL inputs.

    /cat.png       a small PNG (also /a.png, /b.png ... any name in ``images``)
    /moved.png     302 to /cat.png
    /missing.png   404
    /huge.png      a Content-Length over any cap, and no body
    /endless.png   a chunked body that never ends (until the client hangs up)
    /stall.png     headers, then silence until the server stops

It stops by itself when its ``with`` block ends (every handler thread is a daemon and the stalled
one is woken up), and it records the paths asked for.
"""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from PIL import Image


def png(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


class ImageServer:
    def __init__(self) -> None:
        self.images: dict[str, bytes] = {"/cat.png": png()}
        self.requests: list[str] = []
        self.stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # an AF_INET server's address
        return f"http://{host}:{port}"

    def __enter__(self) -> ImageServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


def _handler(owner: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            owner.requests.append(self.path)
            path = urlsplit(self.path).path  # the query does not choose the file
            if path in owner.images:
                return self._send(200, owner.images[path], "image/png")
            if self.path == "/moved.png":
                self.send_response(302)
                self.send_header("Location", "/cat.png")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if self.path == "/huge.png":
                self.send_response(200)
                self.send_header("Content-Length", str(10**12))
                self.end_headers()
                self.close_connection = True
                return None
            if self.path == "/endless.png":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"\0" * 65536
                try:
                    while not owner.stop.is_set():
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except OSError:
                    pass  # the client hung up, as it should
                self.close_connection = True
                return None
            if self.path == "/stall.png":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.flush()
                owner.stop.wait(120)
                self.close_connection = True
                return None
            return self._send(404, b"not found", "text/plain")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
