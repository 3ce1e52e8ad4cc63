"""What runs inside each Ray worker (``--ray``): one engine per actor, loaded once when the actor
starts, turning batches of image paths into the very records a local run makes.

Ray imports this module on every node by reference, so pali must be installed there. Nothing
here imports ray; torch comes in only through ``load_model`` when an actor starts. The batch
work itself is ``pali_cli.batches`` (decoding, error records for broken images, isolating a
failing image from its neighbours), the same code as a local run.

Rows travel as bytes (``os.fsencode``) so file names that are not UTF-8 reach the worker
unchanged (http(s) URLs travel too; stdin does not); records come back as JSON text of their
fields (ASCII-escaped, so any name survives Arrow's UTF-8 strings), rebuilt on the driver with
``record_from_json`` and written there (where ``path`` is resolved, against the driver's directory).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import PaliError
from pali_cli.batches import BatchContext, Fit, ModelCalls, _load, fitter, process_batch
from pali_cli.errors import CliError
from pali_cli.jobs import Job
from pali_cli.options import RunOptions
from pali_cli.records import Record
from pali_cli.sources import Remote, Source, as_source

IMAGE, PATH, RECORD = "image", "path", "record"  # dataset columns


@dataclass(frozen=True)
class WorkerSpec:
    """Everything an actor needs to build its engine; pickled once per actor by Ray."""

    job: Job
    preset: str  # canonical name, checkpoint directory or hf:// spec, as the driver resolved it
    opts: RunOptions  # model and generation options, with the worker's thread count
    max_tokens: int


def rows_for(sources: Sequence[Source], cwd: Path) -> list[dict[str, bytes]]:
    """Dataset rows: the input as typed (what the record names) and the path the worker opens.
    ``cwd / path`` rather than ``abspath``: no ``..`` is folded, so the error message of a file
    that cannot be read can be given back its typed name exactly (see ``_load_as``). A URL has no
    path (each worker downloads it)."""
    return [{IMAGE: os.fsencode(str(s)), PATH: b"" if isinstance(s, Remote) else os.fsencode(cwd / s)} for s in sources]


def record_to_json(record: Record) -> str:
    """The record's fields as they are (not as written to a file: that is the driver's business,
    ``path`` included), ASCII-escaped so that lone surrogates of odd names survive Arrow's strings."""
    return json.dumps({f.name: getattr(record, f.name) for f in dataclasses.fields(Record)})


def record_from_json(text: str) -> Record:
    """Inverse of ``record_to_json``."""
    return Record(**json.loads(text))


def _load_as(typed: Source, actual: Source, fit: Fit | None) -> Any:
    """Decodes ``actual``; a failure names the file as the user typed it, as a local run does."""
    loaded = _load(actual, fit)
    if isinstance(loaded, Exception) and typed != actual:
        loaded = type(loaded)(str(loaded).replace(str(actual), str(typed)))
    return loaded


class WorkerFailure(RuntimeError):
    """A ``PaliError`` raised in a worker, in a form that survives Ray: an actor that dies in its
    constructor reaches the driver only as the text of its traceback, so the error travels as
    one tagged JSON line inside that text (see ``find_worker_failure``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)

    @classmethod
    def of(cls, error: PaliError) -> WorkerFailure:
        fields = {
            "module": type(error).__module__,
            "kind": type(error).__name__,
            "message": str(error) if not isinstance(error, CliError) else error.message,
            "hint": error.hint if isinstance(error, CliError) else None,
            "label": getattr(error, "label", None),
        }
        return cls(_TAG + json.dumps(fields))


_TAG = "pali-worker-failure:"
_TAGGED = re.compile(re.escape(_TAG) + r"(\{.*\})")


def find_worker_failure(text: str) -> PaliError | None:
    """The worker's ``PaliError`` back from the text of a Ray error, or None: the same kind (so
    the same exit code and hint), rebuilt from the tag; only kinds of engine.errors and
    pali_cli.errors are rebuilt, anything else becomes a plain CliError."""
    import engine.errors
    import pali_cli.errors

    match = _TAGGED.search(text)
    if match is None:
        return None
    try:
        fields = json.loads(match.group(1))
        message, hint, label = str(fields["message"]), fields.get("hint"), fields.get("label")
        module = {"engine.errors": engine.errors, "pali_cli.errors": pali_cli.errors}.get(fields.get("module"))
        kind = getattr(module, str(fields.get("kind")), None) if module else None
    except (ValueError, KeyError, TypeError):
        return None
    if not (isinstance(kind, type) and issubclass(kind, PaliError)):
        return CliError(message, hint=hint)
    if issubclass(kind, CliError):
        return kind(message, hint=hint)
    if issubclass(kind, engine.errors.ModelUnavailableError):
        return kind(message, label=label)
    return kind(message)


class PaliWorker:
    """The callable class that ``map_batches`` runs in each actor of the pool."""

    def __init__(self, spec: WorkerSpec) -> None:
        from pali_cli.console import Reporter
        from pali_cli.model import load_model

        try:
            model = load_model(spec.preset, spec.opts, Reporter(quiet=True))
        except PaliError as e:
            raise WorkerFailure.of(e) from None
        self._calls = ModelCalls(BatchContext(spec.job, spec.preset, spec.max_tokens, model))
        self._fit = fitter(model)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        typed = [as_source(os.fsdecode(b)) for b in batch[IMAGE]]
        actual = [Path(os.fsdecode(p)) if p else t for t, p in zip(typed, batch[PATH], strict=True)]
        items = [(t, _load_as(t, a, self._fit)) for t, a in zip(typed, actual, strict=True)]
        try:
            records = process_batch(items, self._calls)
        except PaliError as e:  # the model fails on every image
            raise WorkerFailure.of(e) from None
        return {RECORD: [record_to_json(r) for r in records]}


def worker_options(opts: RunOptions, cpus: float) -> RunOptions:
    """The options a worker loads its model with: quiet (nobody reads a worker's stderr), and
    as many torch threads as CPUs reserved for it unless --threads says otherwise."""
    return dataclasses.replace(opts, quiet=True, threads=opts.threads or max(1, int(cpus)))
