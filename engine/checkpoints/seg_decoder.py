"""Where the segmentation mask decoder's weights come from: a local file, or one Hub download.

big_vision reads ``gs://big_vision/paligemma/vae-oid.npz``; the public copy pali uses is the file
``vae-oid.npz`` of the Hugging Face Space ``google/paligemma-hf`` (8,479,556 bytes). Whatever the
source, the file must have the known SHA-256, so a damaged download, a changed Space or a wrong
local file is refused before it is parsed.

``resolve_mask_decoder`` order: an explicit path, else ``$PALI_SEG_DECODER``, else a verified copy
in pali's cache or the shared Hugging Face cache (no network), else a download into pali's cache
through huggingface_hub (``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` apply as for models).

Errors (engine.errors): ``MaskDecoderError`` for a file that is not the decoder; the
``ModelUnavailableError`` family when it cannot be downloaded.
Torch-free, like the rest of the checkpoint lookup.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from engine.checkpoints.cache import default_cache_dir, hf_cache_dir
from engine.checkpoints.hub import _endpoint, _offline, _quiet_tqdm
from engine.checkpoints.hub_failures import translate
from engine.checkpoints.specs import HubSource
from engine.errors import MaskDecoderError, ModelUnavailableError, OfflineError

VAE_OID_REPO = "google/paligemma-hf"
VAE_OID_REPO_TYPE = "space"
VAE_OID_FILENAME = "vae-oid.npz"
VAE_OID_SIZE = 8_479_556
VAE_OID_SHA256 = "5586010257b8536dddefab65e7755077f21d5672d5674dacf911f73ae95a4447"
ENV_VAR = "PALI_SEG_DECODER"

_LABEL = f"the mask decoder {VAE_OID_FILENAME} (Space {VAE_OID_REPO})"
_LOCAL_COPY = f"or point {ENV_VAR} at a copy of {VAE_OID_FILENAME}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, sha256: str = VAE_OID_SHA256) -> Path:
    """``path`` if it is a readable file with this SHA-256, else ``MaskDecoderError``."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise MaskDecoderError(f"mask decoder {path} {what}; give the path of a {VAE_OID_FILENAME} file")
    try:
        actual = file_sha256(path)
    except OSError as e:
        raise MaskDecoderError(f"cannot read mask decoder {path}: {e.strerror or e}") from None
    if actual != sha256:
        raise MaskDecoderError(
            f"mask decoder {path} has SHA-256 {actual[:16]}..., not {sha256[:16]}... of {VAE_OID_FILENAME}: "
            f"it is another or a damaged file; download {VAE_OID_FILENAME} again"
        )
    return path


def resolve_mask_decoder(
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    sha256: str | None = None,
    allow_download: bool = True,
    quiet: bool = False,
    token: str | None = None,
) -> Path:
    """A verified local copy of the decoder weights (see the module docstring for the order).
    ``sha256`` is the hash the file must have; None means ``VAE_OID_SHA256``, the real file's."""
    sha256 = sha256 or VAE_OID_SHA256
    explicit = path if path is not None else (os.environ.get(ENV_VAR) or None)
    if explicit is not None:
        return verify_file(Path(explicit).expanduser(), sha256)
    own = default_cache_dir(cache_dir)
    found = _find_cached(own, sha256)
    if found is not None:
        return found
    if _offline():
        raise OfflineError(
            f"{_LABEL} is not downloaded and HF_HUB_OFFLINE is set: segment once while online (it is "
            f"downloaded on first use), {_LOCAL_COPY}."
        )
    if not allow_download:
        raise OfflineError(f"{_LABEL} is not downloaded; {_LOCAL_COPY}.")
    return _download(own, sha256, quiet=quiet, token=token)


def _hf_download(root: Path, **options) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(VAE_OID_REPO, VAE_OID_FILENAME, repo_type=VAE_OID_REPO_TYPE, cache_dir=root, **options))


def _find_cached(own: Path, sha256: str) -> Path | None:
    """A verified copy in pali's cache, then in the shared Hugging Face cache; no request made. A
    copy in pali's cache that fails the check is deleted (it is ours, and useless)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    roots = [own] if os.path.realpath(own) == os.path.realpath(hf_cache_dir()) else [own, hf_cache_dir()]
    for root in roots:
        try:
            candidate = _hf_download(root, local_files_only=True)
        except LocalEntryNotFoundError:
            continue
        try:
            return verify_file(candidate, sha256)
        except MaskDecoderError:
            if root == own:
                _remove_cached(candidate)
    return None


def _download(root: Path, sha256: str, *, quiet: bool, token: str | None) -> Path:
    source = HubSource(VAE_OID_REPO, None, _LABEL)
    try:
        path = _hf_download(root, endpoint=_endpoint(), token=token, tqdm_class=_quiet_tqdm() if quiet else None)
    except Exception as error:
        translated = translate(error, source, token, _endpoint())
        if translated is None:
            raise
        raise type(translated)(f"{str(translated).rstrip('.')}; {_LOCAL_COPY}.") from error
    actual = file_sha256(path)
    if actual != sha256:
        _remove_cached(path)
        raise ModelUnavailableError(
            f"the {VAE_OID_FILENAME} downloaded from the Space {VAE_OID_REPO} is not the expected file (SHA-256 "
            f"{actual[:16]}..., expected {sha256[:16]}...); it was deleted: try again later, {_LOCAL_COPY}"
        )
    return path


def _remove_cached(path: Path) -> None:
    """Drops a cache entry (the snapshot link and the blob it points to)."""
    blob = Path(os.path.realpath(path))
    for item in (path, blob):
        try:
            item.unlink()
        except FileNotFoundError:
            pass
