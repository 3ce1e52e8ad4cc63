"""What a checkpoint *spec* names, decided without touching caches or the network.

A spec names a checkpoint in one of these ways:

* a preset name or alias (``pali_gemma2_mix_3b_224``), see ``engine.checkpoints.presets``;
* ``hf://owner/repo`` or ``hf://owner/repo@revision`` (a Hugging Face model repository);
* a local directory in Hugging Face layout (``config.json``, ``*.safetensors``, ``tokenizer.model``).

``parse_spec`` is the one place that tells these apart; ``engine.checkpoints.hub.resolve`` turns
the result into a directory. Torch-free and huggingface_hub-free at import time (the CLI parses
specs before it loads anything).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from engine.checkpoints.presets import Preset, get_preset, list_presets
from engine.errors import CheckpointError, LocalModelError, ModelNotFoundError, UnknownPresetError

__all__ = ["CheckpointSpec", "HubSource", "check_local_dir", "parse_spec"]

_BARE_REPO = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class HubSource:
    """A model repository on the Hub; ``revision`` None means its default branch."""

    repo_id: str
    revision: str | None
    label: str  # how the user named it, for messages


@dataclass(frozen=True)
class CheckpointSpec:
    """A classified spec: exactly one of ``local`` and ``hub`` is set.

    ``label`` is the checkpoint's canonical name, the one records are keyed by: a preset's canonical
    name (for aliases too), an existing directory's absolute path, ``hf://...`` as written.
    ``preset`` is the catalogue entry when the spec named one.
    """

    label: str
    local: Path | None = None  # a directory (a bundled preset's included), not checked yet
    hub: HubSource | None = None
    preset: Preset | None = None


def parse_spec(spec: str | os.PathLike[str] | CheckpointSpec) -> CheckpointSpec:
    """Classify ``spec`` (see the module docstring); a ``CheckpointSpec`` comes back as is.

    Raises ``UnknownPresetError`` for a name that is no preset and ``ModelNotFoundError`` for a
    malformed Hub address.
    """
    if isinstance(spec, CheckpointSpec):
        return spec
    if isinstance(spec, os.PathLike):
        return _local(Path(spec).expanduser())
    text = spec.strip()
    if text.startswith(("hf://", "https://huggingface.co/")):
        source = _parse_hub_uri(text)
        return CheckpointSpec(label=text, hub=source)
    path = Path(text).expanduser()
    looks_like_path = os.sep in text or "/" in text or text.startswith((".", "~"))
    if looks_like_path or path.exists():
        return _local(path)
    try:
        preset = get_preset(text)
    except UnknownPresetError as error:
        hint = " A checkpoint can also be a local directory or hf://owner/repo[@revision]."
        raise UnknownPresetError(error.name, error.suggestions, hint) from None
    if preset.bundled_dir is not None:
        return CheckpointSpec(label=preset.name, local=preset.bundled_dir, preset=preset)
    assert preset.hf_repo is not None, f"preset {preset.name} has neither a repo nor bundled files"
    return CheckpointSpec(label=preset.name, hub=HubSource(preset.hf_repo, preset.revision, preset.name), preset=preset)


def _local(path: Path) -> CheckpointSpec:
    return CheckpointSpec(label=str(path.resolve()) if path.is_dir() else str(path), local=path)


def _parse_hub_uri(text: str) -> HubSource:
    from huggingface_hub.errors import HfUriError
    from huggingface_hub.utils import parse_hf_uri

    try:
        uri = parse_hf_uri(text)
    except HfUriError as error:
        raise ModelNotFoundError(
            f"{text!r} is not a valid Hub model address ({error}); write hf://owner/repo or hf://owner/repo@revision.",
            label=text,
        ) from None
    if uri.type != "model" or uri.path_in_repo:
        raise ModelNotFoundError(
            f"{text!r} does not name a model repository; write hf://owner/repo or hf://owner/repo@revision.",
            label=text,
        )
    return HubSource(uri.id, uri.revision, text)


def check_local_dir(spec: CheckpointSpec) -> Path:
    """The spec's local directory, once it is known to hold a checkpoint (config.json at least)."""
    assert spec.local is not None
    path = spec.local
    for preset in list_presets():
        if preset.bundled_dir == path:
            if not (path / "config.json").is_file():
                raise LocalModelError(
                    f"preset {preset.name!r} ships inside the pali package, but {path} has no "
                    "config.json: this installation lacks the demo model; reinstall pali.",
                    label=preset.name,
                )
            return path
    name = spec.label
    if not path.exists():
        hint = f"; for a Hugging Face repository write hf://{name}" if _BARE_REPO.match(name) else ""
        raise LocalModelError(f"{name}: no such directory{hint}.", label=name)
    if not path.is_dir():
        raise LocalModelError(f"{name} is a file; pass the directory that holds config.json.", label=name)
    config = path / "config.json"
    if os.path.lexists(config) and os.path.exists(config) and not config.is_file():
        raise CheckpointError(
            f"{config} is not a regular file (a FIFO, a device or a directory); config.json must be the file itself."
        )
    if not config.is_file():
        raise LocalModelError(
            f"{name} has no config.json; pass a checkpoint directory in Hugging "
            "Face layout (config.json, *.safetensors, tokenizer.model).",
            label=name,
        )
    return path.resolve()
