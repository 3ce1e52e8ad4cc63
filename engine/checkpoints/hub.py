"""Find a checkpoint on disk, or download it from the Hugging Face Hub: the one resolver.

``resolve(spec)`` turns a spec (a preset name, ``hf://owner/repo[@revision]`` or a local directory;
see ``engine.checkpoints.specs``) into a local directory. Hub repositories are looked up first in
pali's own cache, then in the shared Hugging Face cache, which is reused in place; neither lookup
touches the network (``engine.checkpoints.cache``). Only when no complete copy exists is anything
downloaded, into pali's cache, and only safetensors weights and small JSON/tokenizer files: pickled
weights are never fetched.

``HF_TOKEN``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read when a function is called (not when
huggingface_hub was imported), so changing them in a running process takes effect. huggingface_hub is
imported inside the functions that need it: the CLI imports this module for tab completion.

This module is also the front door of the checkpoint-location layer: the cache functions are
re-exported here, so callers need one import.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.checkpoints.cache import (
    ALLOW_PATTERNS,
    PathArg,
    cache_roots,
    cached_presets,
    default_cache_dir,
    find_cached,
    hf_cache_dir,
    is_cached,
    missing_files,
    remove,
    size_on_disk,
)
from engine.checkpoints.hub_failures import translate
from engine.checkpoints.specs import CheckpointSpec, HubSource, check_local_dir, parse_spec
from engine.errors import ModelUnavailableError, OfflineError, UnsupportedCheckpointError

__all__ = [
    "ALLOW_PATTERNS",
    "CheckpointSpec",
    "HubSource",
    "cached_presets",
    "check_local_dir",
    "default_cache_dir",
    "download",
    "hf_cache_dir",
    "is_cached",
    "parse_spec",
    "remove",
    "resolve",
    "size_on_disk",
]

_PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _endpoint() -> str | None:
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return endpoint or None  # None: huggingface_hub's default


def _offline() -> bool:
    return _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")


def resolve(
    spec: PathArg | CheckpointSpec,
    cache_dir: PathArg | None = None,
    *,
    allow_download: bool = True,
    quiet: bool = False,
    token: str | None = None,
) -> Path:
    """A local directory holding the checkpoint named by ``spec`` (see the module docstring).

    ``token`` overrides HF_TOKEN / the stored login for this call; ``quiet`` hides the progress bars
    huggingface_hub prints on stderr. Raises ``UnknownPresetError`` (an InputError) for an unknown
    name and a ``ModelUnavailableError`` subclass when the checkpoint cannot be had.
    """
    parsed = parse_spec(spec)
    if parsed.local is not None:
        return check_local_dir(parsed)
    source = parsed.hub
    assert source is not None
    found = find_cached(source, cache_dir)
    if found is not None:
        return found
    label = source.label
    if _offline():
        raise OfflineError(
            f"{label} is not downloaded and HF_HUB_OFFLINE is set, so the network may not be used: "
            "download it while online (with HF_HUB_OFFLINE unset).",
            label=label,
        )
    if not allow_download:
        raise OfflineError(f"{label} is not downloaded (and downloading was not allowed).", label=label)
    return _download(source, cache_roots(cache_dir)[0], quiet=quiet, token=token)


def download(
    spec: PathArg | CheckpointSpec,
    cache_dir: PathArg | None = None,
    *,
    quiet: bool = False,
    token: str | None = None,
) -> Path:
    """Make ``spec`` available locally and return its directory (a no-op when already cached)."""
    return resolve(spec, cache_dir, allow_download=True, quiet=quiet, token=token)


def _download(source: HubSource, root: Path, *, quiet: bool, token: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                source.repo_id,
                revision=source.revision,
                cache_dir=root,
                allow_patterns=list(ALLOW_PATTERNS),
                endpoint=_endpoint(),
                token=token,
                tqdm_class=_quiet_tqdm() if quiet else None,
            )
        )
    except Exception as error:
        translated = translate(error, source, token, _endpoint())
        if translated is None:
            raise
        raise translated from error
    missing = missing_files(folder)
    if missing:
        raise _incomplete_repo_error(source, root, missing)
    return folder


def _incomplete_repo_error(source: HubSource, root: Path, missing: list[str]) -> ModelUnavailableError:
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:  # the listing snapshot_download saved: no new request
        files = [f.path for f in get_cached_repo_tree(source.repo_id, revision=source.revision, cache_dir=root)]
    except CachedRepoTreeNotFoundError:
        files = []
    pickled = sorted(f for f in files if f.endswith(_PICKLE_SUFFIXES))
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    if pickled and not has_safetensors:
        return UnsupportedCheckpointError(
            f"{source.label} only has pickled weights ({', '.join(pickled[:3])}); pali never loads "
            "pickled files because they can run code. Use a repository with *.safetensors weights.",
            label=source.label,
        )
    return UnsupportedCheckpointError(
        f"{source.label} is not a complete pali checkpoint: it lacks {', '.join(missing)}.", label=source.label
    )


def _quiet_tqdm() -> type:
    from huggingface_hub.utils import tqdm as hf_tqdm

    class QuietTqdm(hf_tqdm):
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # tqdm is untyped

    return QuietTqdm
