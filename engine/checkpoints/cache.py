"""Where downloaded checkpoints live, and what is already there (never a network request).

Two caches are searched, in order: pali's own (``default_cache_dir()``), then the shared Hugging
Face cache, which is reused in place. Both use huggingface_hub's layout, so its
``snapshot_download(local_files_only=True)`` finds complete copies without a request. Only pali's
own cache is ever deleted from (``remove``). huggingface_hub is imported inside the functions.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from engine.checkpoints.presets import Preset, get_preset, list_presets
from engine.checkpoints.specs import HubSource, parse_spec
from engine.errors import CheckpointError, LocalModelError, UnknownPresetError
from engine.model.config_values import read_json_file

__all__ = [
    "ALLOW_PATTERNS",
    "cached_presets",
    "default_cache_dir",
    "find_cached",
    "hf_cache_dir",
    "is_cached",
    "missing_files",
    "remove",
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

PathArg = str | os.PathLike[str]


def default_cache_dir(cache_dir: PathArg | None = None) -> Path:
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


def cache_roots(cache_dir: PathArg | None) -> list[Path]:
    """The caches searched, pali's first (the one downloads go to)."""
    own = default_cache_dir(cache_dir)
    shared = hf_cache_dir()
    return [own] if _same_dir(own, shared) else [own, shared]


def _same_dir(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def find_cached(source: HubSource, cache_dir: PathArg | None) -> Path | None:
    """A complete copy in pali's cache or the Hugging Face cache, found without network access."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for root in cache_roots(cache_dir):
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
        if not missing_files(Path(folder)):
            return Path(folder)
    return None


def missing_files(folder: Path) -> list[str]:
    """Files pali needs that ``folder`` lacks (empty when the checkpoint is complete)."""
    missing = [name for name in ("config.json", "tokenizer.model") if not (folder / name).is_file()]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(read_json_file(index, "a safetensors index")["weight_map"].values())
        except (CheckpointError, OSError, KeyError, AttributeError, TypeError):
            return [*missing, "a readable model.safetensors.index.json"]
        missing += sorted(shard for shard in shards if not (folder / shard).is_file())
    elif not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    return missing


def is_cached(spec: PathArg, cache_dir: PathArg | None = None) -> bool:
    """Whether ``spec`` can be used without downloading anything."""
    parsed = parse_spec(spec)
    if parsed.local is not None:
        return (parsed.local / "config.json").is_file()
    assert parsed.hub is not None
    return find_cached(parsed.hub, cache_dir) is not None


def size_on_disk(spec: PathArg, cache_dir: PathArg | None = None) -> int:
    """Bytes used by the local copy of ``spec`` (0 when there is none); shared blobs count once."""
    parsed = parse_spec(spec)
    if parsed.local is not None:
        folder: Path | None = parsed.local if parsed.local.is_dir() else None
    else:
        assert parsed.hub is not None
        folder = find_cached(parsed.hub, cache_dir)
    return _bytes_under(folder) if folder is not None else 0


def cached_presets(cache_dir: PathArg | None = None) -> list[Preset]:
    """Presets usable without a download (in pali's cache, the Hugging Face cache, or bundled)."""
    return [preset for preset in list_presets() if is_cached(preset.name, cache_dir)]


def _is_bundled(spec: PathArg) -> bool:
    try:
        return get_preset(os.fspath(spec)).bundled_dir is not None
    except UnknownPresetError:
        return False


def remove(spec: PathArg, cache_dir: PathArg | None = None) -> int:
    """Delete ``spec``'s copy from pali's cache and return the bytes freed (0 if there was none).

    Never touches the shared Hugging Face cache: a copy there stays usable after this call.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.file_download import repo_folder_name

    parsed = parse_spec(spec)
    if parsed.hub is None:
        what = "ships inside the pali package" if _is_bundled(spec) else "is a local directory"
        raise LocalModelError(
            f"{os.fspath(spec)} {what}, not a download; pali only deletes what it downloaded.", label=parsed.label
        )
    root = default_cache_dir(cache_dir)
    if _same_dir(root, hf_cache_dir()):
        raise LocalModelError(
            f"pali's cache {root} is the shared Hugging Face cache; pali does not "
            "delete from it (use `hf cache delete`).",
            label=parsed.label,
        )
    repo_dir = root / repo_folder_name(repo_id=parsed.hub.repo_id, repo_type="model")
    if not repo_dir.is_dir():
        return 0
    commit = _commit_for(repo_dir, parsed.hub.revision)
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


def _commit_for(repo_dir: Path, revision: str | None) -> str:
    revision = revision or "main"
    ref = repo_dir / "refs" / revision
    return ref.read_text().strip() if ref.is_file() else revision


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
