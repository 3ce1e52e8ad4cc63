"""Find a checkpoint on disk, or download it from the Hugging Face Hub.

A *spec* names a checkpoint in one of these ways:

* a preset name or alias (``pali_gemma2_mix_3b_224``), see ``engine.checkpoints.presets``;
* ``hf://owner/repo`` or ``hf://owner/repo@revision`` (a Hugging Face model repository);
* a local directory in Hugging Face layout (``config.json``, ``*.safetensors``, ``tokenizer.model``).

``resolve`` turns a spec into a local directory. Hub repositories are looked up first in pali's own
cache (``default_cache_dir()``), then in the shared Hugging Face cache, which is reused in place;
neither lookup touches the network. Only when no complete copy exists is anything downloaded, into
pali's cache, and only safetensors weights and small JSON/tokenizer files: pickled weights are never
fetched. ``remove`` deletes from pali's cache only, never from the shared Hugging Face cache.

``HF_TOKEN``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read when a function is called (not when
huggingface_hub was imported), so changing them in a running process takes effect. huggingface_hub is
imported inside the functions that need it: the CLI imports this module for tab completion.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.checkpoints.hub_errors import (  # noqa: F401  (re-exported: callers catch them from engine.checkpoints.hub)
    DOWNLOAD_COMMAND,
    AccessDeniedError,
    AuthenticationRequiredError,
    DownloadInterruptedError,
    LocalModelError,
    ModelNotFoundError,
    ModelUnavailableError,
    OfflineError,
    UnsupportedCheckpointError,
    translate,
)
from engine.checkpoints.presets import Preset, UnknownPresetError, get_preset, list_presets

__all__ = [
    "ALLOW_PATTERNS",
    "DOWNLOAD_COMMAND",
    "HubSource",
    "ModelUnavailableError",
    "AccessDeniedError",
    "AuthenticationRequiredError",
    "DownloadInterruptedError",
    "LocalModelError",
    "ModelNotFoundError",
    "OfflineError",
    "UnsupportedCheckpointError",
    "cached_presets",
    "default_cache_dir",
    "download",
    "hf_cache_dir",
    "is_cached",
    "parse_spec",
    "remove",
    "resolve",
    "size_on_disk",
]

# Everything a pali checkpoint needs, and nothing that could be a pickle.
ALLOW_PATTERNS: tuple[str, ...] = (
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.model",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
_PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")


@dataclass(frozen=True)
class HubSource:
    """A model repository on the Hub; ``revision`` None means its default branch."""

    repo_id: str
    revision: str | None
    label: str  # how the user named it, for messages


# ----------------------------------------------------------------------------- locations


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """pali's download cache: ``cache_dir`` when given, else ``$PALI_CACHE_DIR``, else the
    platform's user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("PALI_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("pali", appauthor=False))


def hf_cache_dir() -> Path:
    """The shared Hugging Face hub cache, from the environment as it is now.

    Same precedence as huggingface_hub: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub,
    XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub.
    """
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _cache_roots(cache_dir: str | Path | None) -> list[Path]:
    own = default_cache_dir(cache_dir)
    shared = hf_cache_dir()
    return [own] if _same_dir(own, shared) else [own, shared]


def _same_dir(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _endpoint() -> str | None:
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return endpoint or None  # None: huggingface_hub's default


def _offline() -> bool:
    return _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")


# ----------------------------------------------------------------------------- specs

_BARE_REPO = re.compile(r"^[\w.-]+/[\w.-]+$")


def parse_spec(spec: str | os.PathLike) -> Path | HubSource:
    """Classify ``spec`` without touching disk caches or the network.

    Returns a ``Path`` for a local directory or a bundled preset (not checked here), else a
    ``HubSource``. Raises ``UnknownPresetError`` or ``ModelNotFoundError`` for malformed specs.
    """
    if isinstance(spec, os.PathLike):
        return Path(spec).expanduser()
    text = spec.strip()
    if text.startswith(("hf://", "https://huggingface.co/")):
        return _parse_hub_uri(text)
    path = Path(text).expanduser()
    looks_like_path = os.sep in text or "/" in text or text.startswith((".", "~"))
    if looks_like_path or path.exists():
        return path
    try:
        preset = get_preset(text)
    except UnknownPresetError as error:
        hint = " A checkpoint can also be a local directory or hf://owner/repo[@revision]."
        raise UnknownPresetError(error.name, error.suggestions, hint) from None
    if preset.bundled_dir is not None:
        return preset.bundled_dir
    assert preset.hf_repo is not None, f"preset {preset.name} has neither a repo nor bundled files"
    return HubSource(preset.hf_repo, preset.revision, preset.name)


def _parse_hub_uri(text: str) -> HubSource:
    from huggingface_hub.errors import HfUriError
    from huggingface_hub.utils import parse_hf_uri

    try:
        uri = parse_hf_uri(text)
    except HfUriError as error:
        raise ModelNotFoundError(
            f"{text!r} is not a valid Hub model address ({error}); write hf://owner/repo or hf://owner/repo@revision."
        ) from None
    if uri.type != "model" or uri.path_in_repo:
        raise ModelNotFoundError(
            f"{text!r} does not name a model repository; write hf://owner/repo or hf://owner/repo@revision."
        )
    return HubSource(uri.id, uri.revision, text)


def _check_local_dir(path: Path, spec: str | os.PathLike) -> Path:
    for preset in list_presets():
        if preset.bundled_dir == path:
            if not (path / "config.json").is_file():
                raise LocalModelError(
                    f"preset {preset.name!r} ships inside the pali package, but {path} has no "
                    "config.json: this installation lacks the demo model; reinstall pali."
                )
            return path
    name = os.fspath(spec)
    if not path.exists():
        hint = f"; for a Hugging Face repository write hf://{name}" if _BARE_REPO.match(name) else ""
        raise LocalModelError(f"{name}: no such directory{hint}.")
    if not path.is_dir():
        raise LocalModelError(f"{name} is a file; pass the directory that holds config.json.")
    if not (path / "config.json").is_file():
        raise LocalModelError(
            f"{name} has no config.json; pass a checkpoint directory in Hugging "
            "Face layout (config.json, *.safetensors, tokenizer.model)."
        )
    return path.resolve()


# ----------------------------------------------------------------------------- public API


def resolve(
    spec: str | os.PathLike,
    cache_dir: str | Path | None = None,
    *,
    allow_download: bool = True,
    quiet: bool = False,
    token: str | None = None,
) -> Path:
    """A local directory holding the checkpoint named by ``spec`` (see the module docstring).

    ``token`` overrides HF_TOKEN / the stored login for this call; ``quiet`` hides the progress bars
    huggingface_hub prints on stderr. Raises ``UnknownPresetError`` (a ValueError) for an unknown
    name and a ``ModelUnavailableError`` subclass when the checkpoint cannot be had.
    """
    source = parse_spec(spec)
    if isinstance(source, Path):
        return _check_local_dir(source, spec)
    found = _find_cached(source, cache_dir)
    if found is not None:
        return found
    label = source.label
    how = DOWNLOAD_COMMAND.format(label=label)
    if _offline():
        raise OfflineError(
            f"{label} is not downloaded and HF_HUB_OFFLINE is set, so pali may not "
            f"use the network: run `{how}` while online (with HF_HUB_OFFLINE unset)."
        )
    if not allow_download:
        raise OfflineError(f"{label} is not downloaded: run `{how}` first.")
    return _download(source, _cache_roots(cache_dir)[0], quiet=quiet, token=token)


def download(
    spec: str | os.PathLike,
    cache_dir: str | Path | None = None,
    *,
    quiet: bool = False,
    token: str | None = None,
) -> Path:
    """Make ``spec`` available locally and return its directory (a no-op when already cached)."""
    return resolve(spec, cache_dir, allow_download=True, quiet=quiet, token=token)


def is_cached(spec: str | os.PathLike, cache_dir: str | Path | None = None) -> bool:
    """Whether ``spec`` can be used without downloading anything."""
    source = parse_spec(spec)
    if isinstance(source, Path):
        return (source / "config.json").is_file()
    return _find_cached(source, cache_dir) is not None


def size_on_disk(spec: str | os.PathLike, cache_dir: str | Path | None = None) -> int:
    """Bytes used by the local copy of ``spec`` (0 when there is none); shared blobs count once."""
    source = parse_spec(spec)
    if isinstance(source, Path):
        folder: Path | None = source if source.is_dir() else None
    else:
        folder = _find_cached(source, cache_dir)
    return _bytes_under(folder) if folder is not None else 0


def cached_presets(cache_dir: str | Path | None = None) -> list[Preset]:
    """Presets usable without a download (in pali's cache, the Hugging Face cache, or bundled)."""
    return [preset for preset in list_presets() if is_cached(preset.name, cache_dir)]


def _is_bundled(spec: str | os.PathLike) -> bool:
    try:
        return get_preset(os.fspath(spec)).bundled_dir is not None
    except UnknownPresetError:  # a ValueError too
        return False


def remove(spec: str | os.PathLike, cache_dir: str | Path | None = None) -> int:
    """Delete ``spec``'s copy from pali's cache and return the bytes freed (0 if there was none).

    Never touches the shared Hugging Face cache: a copy there stays usable after this call.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.file_download import repo_folder_name

    source = parse_spec(spec)
    if isinstance(source, Path):
        what = "ships inside the pali package" if _is_bundled(spec) else "is a local directory"
        raise LocalModelError(f"{os.fspath(spec)} {what}, not a download; pali only deletes what it downloaded.")
    root = default_cache_dir(cache_dir)
    if _same_dir(root, hf_cache_dir()):
        raise LocalModelError(
            f"pali's cache {root} is the shared Hugging Face cache; pali does not "
            "delete from it (use `hf cache delete`)."
        )
    repo_dir = root / repo_folder_name(repo_id=source.repo_id, repo_type="model")
    if not repo_dir.is_dir():
        return 0
    commit = _commit_for(repo_dir, source.revision)
    info = scan_cache_dir(root)
    repo = next((r for r in info.repos if r.repo_path == repo_dir.resolve()), None)
    if repo is None or not repo.revisions:
        # huggingface_hub could not read this repo folder (e.g. a download aborted before any file
        # landed): it is unusable, and it is ours, so drop it whole.
        freed = _bytes_under(repo_dir)
        shutil.rmtree(repo_dir)
        return freed
    if commit not in {revision.commit_hash for revision in repo.revisions}:
        return 0
    strategy = info.delete_revisions(commit)
    strategy.execute()
    return strategy.expected_freed_size


# ----------------------------------------------------------------------------- internals


def _commit_for(repo_dir: Path, revision: str | None) -> str:
    revision = revision or "main"
    ref = repo_dir / "refs" / revision
    return ref.read_text().strip() if ref.is_file() else revision


def _find_cached(source: HubSource, cache_dir: str | Path | None) -> Path | None:
    """A complete copy in pali's cache or the Hugging Face cache, found without network access."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for root in _cache_roots(cache_dir):
        try:
            folder = snapshot_download(
                source.repo_id,
                revision=source.revision,
                cache_dir=root,
                allow_patterns=list(ALLOW_PATTERNS),
                local_files_only=True,  # never a request: this only reads refs/ and snapshots/
            )
        except LocalEntryNotFoundError:  # includes IncompleteSnapshotError
            continue
        if not _missing_files(Path(folder)):
            return Path(folder)
    return None


def _missing_files(folder: Path) -> list[str]:
    """Files pali needs that ``folder`` lacks (empty when the checkpoint is complete)."""
    missing = [name for name in ("config.json", "tokenizer.model") if not (folder / name).is_file()]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, AttributeError):
            return [*missing, "a readable model.safetensors.index.json"]
        missing += sorted(shard for shard in shards if not (folder / shard).is_file())
    elif not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    return missing


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
    missing = _missing_files(folder)
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
            "pickled files because they can run code. Use a repository with *.safetensors weights."
        )
    return UnsupportedCheckpointError(
        f"{source.label} is not a complete pali checkpoint: it lacks {', '.join(missing)}."
    )


def _quiet_tqdm() -> type:
    from huggingface_hub.utils import tqdm as hf_tqdm

    class QuietTqdm(hf_tqdm):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return QuietTqdm


def _bytes_under(folder: Path) -> int:
    """Total size of the files under ``folder``, following symlinks, each target counted once."""
    seen: set[str] = set()
    total = 0
    for dirpath, _, filenames in os.walk(folder, followlinks=True):
        for filename in filenames:
            real = os.path.realpath(os.path.join(dirpath, filename))
            if real not in seen and os.path.isfile(real):
                seen.add(real)
                total += os.path.getsize(real)
    return total
