"""Images that are not files: downloads from http(s) URLs (against a server on 127.0.0.1) and
stdin. Every failure is one line naming the URL; nothing waits longer than the timeout."""

from __future__ import annotations

import io

import pytest

from engine import ImageLoadError
from pali_cli import remote
from pali_cli.errors import UsageProblem
from pali_cli.sources import Remote
from tests.helpers.image_server import ImageServer, png


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(remote, "_client", None)  # a client built with this environment
    with ImageServer() as srv:
        yield srv


def test_a_url_gives_its_image(server):
    image = remote.load(Remote(f"{server.url}/cat.png"))
    assert image.size == (24, 16) and image.mode == "RGB"
    assert remote.load(Remote(f"{server.url}/moved.png")).size == (24, 16)  # redirects are followed


@pytest.mark.parametrize(
    "path, message",
    [
        ("/missing.png", "the server answered HTTP 404 Not Found"),
        ("/huge.png", "it is 1.0 TB, more than the 64.0 MB pali downloads"),
    ],
)
def test_http_failures_are_one_line_naming_the_url(server, path, message):
    url = f"{server.url}{path}"
    with pytest.raises(ImageLoadError) as caught:
        remote.load(Remote(url))
    assert str(caught.value) == f"cannot load image {url}: {message}"


def test_a_body_without_end_stops_at_the_size_cap(server, monkeypatch):
    monkeypatch.setattr(remote, "MAX_BYTES", 1_000_000)
    with pytest.raises(ImageLoadError, match=r"endless\.png: it is more than the 1.0 MB pali downloads"):
        remote.load(Remote(f"{server.url}/endless.png"))


def test_a_server_that_stalls_times_out(server, monkeypatch):
    monkeypatch.setattr(remote, "TIMEOUT_S", 0.5)
    monkeypatch.setattr(remote, "_client", None)
    with pytest.raises(ImageLoadError, match=r"stall\.png: no answer within 0\.5 s"):
        remote.load(Remote(f"{server.url}/stall.png"))


def test_nothing_listening_is_an_error_record_not_a_crash(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setattr(remote, "_client", None)
    with pytest.raises(ImageLoadError, match=rf"127\.0\.0\.1:{port}/x\.png: ConnectError"):
        remote.load(Remote(f"http://127.0.0.1:{port}/x.png"))


def test_stdin_is_read_once_with_the_same_cap(monkeypatch):
    remote.forget_stdin()
    data = png()
    assert remote.read_stdin(io.BytesIO(data)) == data
    assert remote.load(Remote("-")).size == (24, 16)  # the bytes read before, not stdin again
    remote.forget_stdin()
    monkeypatch.setattr(remote, "MAX_BYTES", 10)
    with pytest.raises(ImageLoadError, match="more than"):
        remote.read_stdin(io.BytesIO(data))
    remote.forget_stdin()


def test_stdin_that_is_a_terminal_is_a_usage_error(monkeypatch):
    class Terminal(io.BytesIO):
        def isatty(self) -> bool:
            return True

    remote.forget_stdin()
    monkeypatch.setattr("sys.stdin", Terminal())
    with pytest.raises(UsageProblem, match="nothing is piped in"):
        remote.read_stdin()
