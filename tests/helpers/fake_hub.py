"""A fake Hugging Face Hub on 127.0.0.1, for download tests without any real network.

It answers the requests huggingface_hub 2.4's ``snapshot_download`` makes, the way the real Hub does:

    GET  /api/models/{repo}/revision/{rev}   model info: id, sha (the commit), siblings
    GET  /api/models/{repo}/tree/{rev}       recursive file listing: path, size, oid, lfs
    HEAD /{repo}/resolve/{rev}/{file}        ETag, X-Repo-Commit, Content-Length
    GET  /{repo}/resolve/{rev}/{file}        the bytes (Range requests answered with 206)

Spaces and datasets (``add_repo(..., repo_type="space")``) are served under ``/spaces/{repo}/...``
and ``/api/spaces/{repo}/...`` (``datasets`` likewise), as ``hf_hub_download(repo_type=...)`` asks.

LFS files (``*.safetensors``, ``*.npz``) are redirected (302, with X-Linked-Etag / X-Linked-Size) to a second
listener standing in for the CDN, as on the real Hub, so the client drops its Authorization header
and downloads from another origin. No ``X-Xet-*`` header and no ``xetHash`` is ever sent, so
huggingface_hub uses plain HTTP, never Xet.

Access rules, per repository: "public"; "private" (every request needs ``Authorization: Bearer
<hub.token>``, else 401); "gated" (listing is public, files need the token (else 401) and a granted
license (else 403 "Access to model ... is restricted")). Unknown repos, revisions and files get 404
with the X-Error-Code the real Hub sends. ``add_fault`` makes the next GETs of a file misbehave:
("drop", n) closes the connection after n bytes, ("status", code) answers an HTTP error.
Every request is recorded in ``hub.requests``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None  # the header as received, so tests can check what was sent


@dataclass
class _Snapshot:
    commit: str
    files: dict[str, bytes]


@dataclass
class _Repo:
    access: str  # "public" | "private" | "gated"
    granted: bool
    branches: dict[str, _Snapshot] = field(default_factory=dict)

    def snapshot(self, revision: str) -> _Snapshot | None:
        if revision in self.branches:
            return self.branches[revision]
        return next((s for s in self.branches.values() if s.commit == revision), None)


def repo_key(repo_id: str, repo_type: str = "model") -> str:
    """How a repository is addressed in URLs and in ``FakeHub.repos``: ``owner/name`` for a model,
    ``spaces/owner/name`` for a space, ``datasets/owner/name`` for a dataset."""
    assert repo_type in {"model", "space", "dataset"}
    return repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Start with ``with FakeHub() as hub:``; point ``HF_ENDPOINT`` at ``hub.url``."""

    def __init__(self, token: str = "hf_fake_valid_token") -> None:
        self.token = token
        self.repos: dict[str, _Repo] = {}
        self.requests: list[Request] = []
        self._faults: dict[tuple[str, str], deque] = defaultdict(deque)
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self.url = ""
        self.cdn_url = ""

    # -- setup -----------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        revision: str = "main",
        access: str = "public",
        granted: bool = False,
        repo_type: str = "model",
    ) -> str:
        """Publish ``files`` as ``revision`` of ``repo_id``; returns the commit hash."""
        assert access in {"public", "private", "gated"}
        repo_id = repo_key(repo_id, repo_type)
        repo = self.repos.setdefault(repo_id, _Repo(access=access, granted=granted))
        listing = json.dumps({name: git_blob_sha1(data) for name, data in sorted(files.items())})
        commit = hashlib.sha1(f"{repo_id}@{revision}:{listing}".encode()).hexdigest()
        repo.branches[revision] = _Snapshot(commit, dict(files))
        return commit

    def add_repo_dir(self, repo_id: str, directory: str | Path, **options: Any) -> str:
        """Publish every file under ``directory`` (e.g. a saved checkpoint); options as add_repo."""
        root = Path(directory)
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        return self.add_repo(repo_id, files, **options)

    def add_fault(self, repo_id: str, filename: str, *faults: tuple[str, int], repo_type: str = "model") -> None:
        """Queue misbehaviours for the next GETs of a file's bytes, one fault per GET."""
        for kind, value in faults:
            assert kind in {"drop", "status"}
            self._faults[(repo_key(repo_id, repo_type), filename)].append((kind, value))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        for attribute in ("url", "cdn_url"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
            server.daemon_threads = True  # keep-alive connections must not block stop()
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
            setattr(self, attribute, f"http://127.0.0.1:{server.server_address[1]}")
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- lookup used by the handler --------------------------------------------------------------

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_fault(self, repo_id: str, filename: str) -> tuple[str, int] | None:
        with self._lock:
            queue = self._faults.get((repo_id, filename))
            return queue.popleft() if queue else None

    def _blob(self, sha256: str) -> tuple[str, str, bytes] | None:
        for repo_id, repo in self.repos.items():
            for snapshot in repo.branches.values():
                for name, data in snapshot.files.items():
                    if hashlib.sha256(data).hexdigest() == sha256:
                        return repo_id, name, data
        return None


_API = re.compile(
    r"^/api/(?P<kind>models|spaces|datasets)/(?P<repo>[^/]+/[^/]+)/(?P<what>revision|tree)/(?P<rev>[^/]+)(?:/.*)?$"
)
_RESOLVE = re.compile(r"^/(?:(?P<kind>spaces|datasets)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")


class _Handler(BaseHTTPRequestHandler):
    """Answers as the Hub does; ``hub`` (the FakeHub serving) is set by ``_make_handler``."""

    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every answer sets Content-Length

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # -- routing -------------------------------------------------------------------------

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub._record(Request(self.command, path, self.headers.get("Range"), self.headers.get("Authorization")))
        if match := _CDN.match(path):
            found = self.hub._blob(match["sha"])
            if found is None:
                return self._error(404, "EntryNotFound", "Blob not found")
            repo_id, name, data = found
            return self._send_bytes(repo_id, name, data, head, headers={})
        match = _API.match(path) or _RESOLVE.match(path)
        if match is None:
            return self._error(404, None, "Not found")
        kind = match["kind"] if match["kind"] not in (None, "models") else None
        key = f"{kind}/{match['repo']}" if kind else match["repo"]
        repo = self.hub.repos.get(key)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        is_file = "file" in match.groupdict()
        if denied := self._denied(match["repo"], repo, is_file):
            return self._error(*denied)
        snapshot = repo.snapshot(match["rev"])
        if snapshot is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {match['rev']}")
        if not is_file:
            return self._api(match["repo"], match["what"], snapshot, repo)
        return self._resolve(key, match["file"], snapshot, head)

    def _denied(self, repo_id: str, repo: _Repo, is_file: bool) -> tuple[int, str, str] | None:
        auth = self.headers.get("Authorization")
        valid = auth == f"Bearer {self.hub.token}"
        if auth is not None and not valid:
            return 401, "", "Invalid credentials in Authorization header"
        if repo.access == "private" and not valid:
            return 401, "RepoNotFound", "Invalid username or password."
        if repo.access == "gated" and is_file:
            if not valid:
                return (
                    401,
                    "GatedRepo",
                    (
                        f"Access to model {repo_id} is restricted. You must have "
                        "access to it and be authenticated to access it. Please log in."
                    ),
                )
            if not repo.granted:
                return (
                    403,
                    "GatedRepo",
                    (
                        f"Access to model {repo_id} is restricted and you are not in "
                        f"the authorized list. Visit https://huggingface.co/{repo_id} "
                        "to ask for access."
                    ),
                )
        return None

    # -- answers -------------------------------------------------------------------------

    def _api(self, repo_id: str, what: str, snapshot: _Snapshot, repo: _Repo) -> None:
        body: object
        if what == "revision":
            body = {
                "id": repo_id,
                "sha": snapshot.commit,
                "private": repo.access == "private",
                "gated": "manual" if repo.access == "gated" else False,
                "siblings": [{"rfilename": name} for name in sorted(snapshot.files)],
            }
        else:
            body = [_tree_entry(name, data) for name, data in sorted(snapshot.files.items())]
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, name: str, snapshot: _Snapshot, head: bool) -> None:
        data = snapshot.files.get(name)
        if data is None:
            return self._error(404, "EntryNotFound", f"{name} does not exist", {"X-Repo-Commit": snapshot.commit})
        headers = {"X-Repo-Commit": snapshot.commit}
        if name.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            headers.update(
                {
                    "Location": f"{self.hub.cdn_url}/cdn/{sha256}",
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": f'"{git_blob_sha1(data)}"',
                }
            )
            return self._send(302, b"", headers, head)
        return self._send_bytes(repo_id, name, data, head, headers)

    def _send_bytes(self, repo_id: str, name: str, data: bytes, head: bool, headers: dict[str, str]) -> None:
        etag = hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else git_blob_sha1(data)
        headers = {**headers, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        fault = None if head else self.hub._next_fault(repo_id, name)
        if fault is not None and fault[0] == "status":
            return self._error(fault[1], None, "Injected failure")
        status = 200
        if (wanted := self.headers.get("Range")) and not head:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted)
            assert match is not None, wanted
            total, start = len(data), int(match[1])
            end = min(int(match[2]), total - 1) if match[2] else total - 1
            if start >= total:
                return self._send(416, b"", {"Content-Range": f"bytes */{total}"})
            data, status = data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        if fault is not None:  # ("drop", n): promise everything, deliver n bytes, hang up
            self._send_head(status, len(data), headers)
            self.wfile.write(data[: fault[1]])
            self.wfile.flush()
            self.close_connection = True
            return None
        return self._send(status, data, headers, head)

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": message, "Content-Type": "application/json", **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _send_head(self, status: int, length: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
        self._send_head(status, len(body), headers)
        if not head:
            self.wfile.write(body)


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"hub": hub})


def _tree_entry(name: str, data: bytes) -> dict:
    entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)}
    if name.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry
