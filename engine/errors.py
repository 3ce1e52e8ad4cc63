"""Every error the engine raises on purpose, in one torch-free module.

One base, ``PaliError``, and one subclass per *kind* of failure, so a caller can decide what to do
from the kind alone (the CLI turns kinds into exit codes in one table, ``pali_cli.errors``):

    PaliError                      something the engine refused or could not do; the message is one
    |                              line saying what is wrong and how to fix it, in engine terms
    +-- InputError                 bad input from the caller: an argument, a prompt, an image, a name
    |   +-- UnknownPresetError     a preset name that is neither a canonical name nor an alias
    |   +-- ImageLoadError         an image that cannot be read or converted
    |   +-- LocalModelError        a local path that is not a checkpoint directory
    +-- CheckpointError            files on disk that do not make a usable model: weights,
    |   +-- QuantizeError          config.json, tokenizer.model, a quantized-weights cache,
    |   +-- MaskDecoderError       the segmentation mask decoder's vae-oid.npz,
    |   +-- NonFiniteLogitsError   weights that compute NaN/Inf
    +-- ModelUnavailableError      a checkpoint that cannot be had locally (subclasses say why:
    |                              login, licence, not found, offline, interrupted, ...)
    +-- TrainingError              training stopped (the loss diverged)

``InputError`` and ``CheckpointError`` are also ``ValueError`` and ``ModelUnavailableError`` is also
a ``RuntimeError``, so code written against keras-hub (or against earlier pali) that catches those
built-in types keeps working. Wrong argument *types* stay Python's ``TypeError``, and internal
invariants stay ``AssertionError``: those are programming errors, not conditions to handle.

This module imports nothing: the CLI imports it (through ``engine``) without paying for torch.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "AuthenticationRequiredError",
    "CheckpointError",
    "DownloadInterruptedError",
    "ImageLoadError",
    "InputError",
    "LocalModelError",
    "MaskDecoderError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "NonFiniteLogitsError",
    "OfflineError",
    "PaliError",
    "QuantizeError",
    "TrainingError",
    "UnknownPresetError",
    "UnsupportedCheckpointError",
]


class PaliError(Exception):
    """Base of every error the engine raises on purpose."""


# ----------------------------------------------------------------------------- bad input


class InputError(PaliError, ValueError):
    """Bad input from the caller: the message names the argument (or file) and what is accepted."""


class UnknownPresetError(InputError):
    """A preset name that is neither a canonical name nor an alias; ``suggestions`` holds close names."""

    def __init__(self, name: str, suggestions: list[str], hint: str = "") -> None:
        self.name = name
        self.suggestions = suggestions
        self.hint = hint
        quoted = [repr(s) for s in suggestions]
        options = " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)
        guess = f"; did you mean {options}?" if suggestions else ": no preset has this name or alias."
        super().__init__(f"unknown preset {name!r}{guess}{hint}")

    def __reduce__(self) -> tuple[type, tuple[str, list[str], str]]:  # picklable across processes
        return (type(self), (self.name, self.suggestions, self.hint))


class ImageLoadError(InputError):
    """An image could not be read or converted; the message is one line naming the input."""


class LocalModelError(InputError):
    """A checkpoint named by a local path that is not one: no such directory, a file, no
    config.json (also the bundled demo model missing from a broken installation), or a local
    checkpoint asked to be removed as if it were a download. ``label`` is the path as named."""

    def __init__(self, message: str, *, label: str | None = None) -> None:
        super().__init__(message)
        self.label = label

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_local, (str(self), self.label))


def _rebuild_local(message: str, label: str | None) -> LocalModelError:
    return LocalModelError(message, label=label)


# ----------------------------------------------------------------------------- bad files


class CheckpointError(PaliError, ValueError):
    """Checkpoint files that do not make a usable model: the message names the file (and tensor)."""


class QuantizeError(CheckpointError):
    """An unknown quantization mode, or a quantized-weights cache that cannot be used."""


# ----------------------------------------------------------------------------- unavailable models


class NonFiniteLogitsError(CheckpointError):
    """The model computed NaN or Inf logits: weights holding such values (or a dtype that overflows)."""


class MaskDecoderError(CheckpointError):
    """A segmentation mask decoder file (vae-oid.npz) that cannot be used: missing, another file
    (wrong SHA-256), not an npz of plain arrays, or tensors that do not fit the decoder."""


class ModelUnavailableError(PaliError, RuntimeError):
    """A checkpoint cannot be made available locally. Subclasses say why.

    ``label`` is the checkpoint as the caller named it (a preset name, ``hf://owner/repo``), when
    the failure concerns one: front ends use it to say how to fetch it their way.
    """

    def __init__(self, message: str, *, label: str | None = None) -> None:
        super().__init__(message)
        self.label = label

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_unavailable, (type(self), str(self), self.label))


def _rebuild_unavailable(cls: type[ModelUnavailableError], message: str, label: str | None) -> ModelUnavailableError:
    return cls(message, label=label)


class AuthenticationRequiredError(ModelUnavailableError):
    """HTTP 401: no token, or the token was rejected."""


class AccessDeniedError(ModelUnavailableError):
    """HTTP 403: the token's account has not accepted the model's licence (gated repository)."""


class ModelNotFoundError(ModelUnavailableError):
    """HTTP 404, or a malformed Hub address: no such repository, revision or file."""


class OfflineError(ModelUnavailableError):
    """Not downloaded, and the Hub may not (HF_HUB_OFFLINE, downloads not allowed) or cannot be reached."""


class DownloadInterruptedError(ModelUnavailableError):
    """The connection broke during a download; trying again continues it."""


class UnsupportedCheckpointError(ModelUnavailableError):
    """The repository has no safetensors weights, config.json or tokenizer.model."""


# ----------------------------------------------------------------------------- training


class TrainingError(PaliError, FloatingPointError):
    """Training cannot go on (the loss became inf or NaN)."""
