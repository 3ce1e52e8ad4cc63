"""The bytes of images that are not files: ``-`` (stdin) and ``http(s)://`` URLs.

Downloads use httpx2 (the HTTP client huggingface_hub itself uses), one client per process,
with a timeout on every network step (connect, each read), an overall deadline and a size cap
checked against ``Content-Length`` and again while the body streams in, so a server that stalls
or sends without end costs one error record, not a hung run. Redirects are followed; proxies
come from the usual environment variables. stdin is read once, before the model loads, with the
same cap. Decoding is the engine's (``engine.processing.image.load_image``), with its limits.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

from engine import ImageLoadError
from pali_cli.errors import UsageProblem
from pali_cli.sources import Remote

MAX_BYTES = 64_000_000  # far above any photo; PIL's pixel limit still applies after decoding
TIMEOUT_S = 30.0  # each network step: connecting, and every wait for more data
DEADLINE_S = 300.0  # the whole download

_client: Any = None
_client_lock = threading.Lock()
_stdin: bytes | None = None


def _http() -> Any:
    global _client
    import httpx2

    from pali_cli import __version__

    with _client_lock:
        if _client is None:
            _client = httpx2.Client(
                timeout=httpx2.Timeout(TIMEOUT_S),
                follow_redirects=True,
                headers={"User-Agent": f"pali/{__version__}"},
            )
        return _client


def _mb(n: int) -> str:
    from pali_cli.presets_cmd import format_bytes

    return format_bytes(n)


def fetch(url: str) -> bytes:
    """The body of ``url``; ImageLoadError (naming the URL) for anything but a complete download."""
    import httpx2

    def fail(why: str) -> ImageLoadError:
        return ImageLoadError(f"cannot load image {url}: {why}")

    deadline = time.monotonic() + DEADLINE_S
    try:
        with _http().stream("GET", url, timeout=httpx2.Timeout(TIMEOUT_S)) as response:
            if response.status_code >= 400:
                raise fail(f"the server answered HTTP {response.status_code} {response.reason_phrase}".rstrip())
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > MAX_BYTES:
                raise fail(f"it is {_mb(int(length))}, more than the {_mb(MAX_BYTES)} pali downloads")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise fail(f"it is more than the {_mb(MAX_BYTES)} pali downloads")
                if time.monotonic() > deadline:
                    raise fail(f"the download took more than {DEADLINE_S:.0f} s")
            return bytes(body)
    except httpx2.TimeoutException:
        raise fail(f"no answer within {TIMEOUT_S:g} s; check the URL or try again later") from None
    except httpx2.HTTPError as e:
        raise fail(f"{type(e).__name__}: {e or 'the connection failed'}") from None


def read_stdin(stream: IO[bytes] | None = None) -> bytes:
    """The image piped to stdin, read once (later calls return the same bytes)."""
    global _stdin
    if _stdin is not None:
        return _stdin
    if stream is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageProblem(
                "'-' reads an image from stdin, but nothing is piped in; e.g. pali caption - < photo.jpg"
            )
        stream = sys.stdin.buffer
    data = stream.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ImageLoadError(f"cannot load image from stdin: it is more than the {_mb(MAX_BYTES)} pali reads")
    _stdin = data
    return data


def forget_stdin() -> None:
    """Drops the bytes read from stdin (each run in one process reads its own)."""
    global _stdin
    _stdin = None


def load(source: Remote) -> Any:
    """The decoded RGB image of ``source`` (a PIL image); ImageLoadError when it cannot be had."""
    from engine.processing.image import load_image

    if source.is_stdin:
        data = read_stdin()
        if not data:
            raise ImageLoadError("cannot load image from stdin: nothing was piped in")
        return load_image(data, name="stdin")
    return load_image(fetch(source.name), name=source.name)
