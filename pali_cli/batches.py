"""The batch loop: decode images ahead of the model, run batches, turn results into records.

* Images are decoded by a small thread pool one or two batches ahead, so on a fast accelerator
  the model does not wait for JPEG decoding (PIL releases the GIL while it decodes).
* An image that cannot be read becomes an error record at once; the rest of its batch goes on.
* If the model raises on a batch of several images, each is retried alone so one bad image
  cannot sink its neighbours (and an out-of-memory batch still completes). If the model fails on
  the first few batches without ever succeeding, the run stops: the model itself is broken.
* Ctrl-C (SIGINT): the first one finishes the current batch, writes its records and stops; a
  second one stops at once. Either way every finished record is kept.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pali_cli.errors import CliError
from pali_cli.jobs import Job
from pali_cli.records import Record

MAX_FAILED_CALLS_BEFORE_FIRST_SUCCESS = 3

Loaded = Any  # a PIL image, or the exception that loading it raised


def _load(path: Path) -> Loaded:
    from engine import ImageLoadError
    from engine.processing.image import load_image

    try:
        return load_image(path)
    except ImageLoadError as e:
        return e
    except Exception as e:  # noqa: BLE001 - any decoder crash is this file's problem, not the run's
        return ImageLoadError(f"cannot load image {path}: {type(e).__name__}: {e}")


class Prefetcher:
    """Yields ``[(path, image_or_error), ...]`` batches, decoding ``ahead`` batches in advance."""

    def __init__(self, paths: Sequence[Path], batch_size: int, workers: int = 2, ahead: int = 2) -> None:
        self._batches = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pali-load")
        self._ahead = ahead

    def __iter__(self) -> Iterator[list[tuple[Path, Loaded]]]:
        pending: deque[tuple[list[Path], list[Future[Loaded]]]] = deque()
        upcoming = iter(self._batches)

        def submit() -> None:
            batch = next(upcoming, None)
            if batch is not None:
                pending.append((batch, [self._pool.submit(_load, p) for p in batch]))

        for _ in range(self._ahead):
            submit()
        while pending:
            batch, futures = pending.popleft()
            submit()
            yield [(p, f.result()) for p, f in zip(batch, futures, strict=True)]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class GracefulStop:
    """SIGINT handling for the loop (see the module docstring). Only the main thread can install
    signal handlers; elsewhere Ctrl-C keeps its default behaviour."""

    def __init__(self, on_first: Callable[[], None]) -> None:
        self.requested = False
        self._on_first = on_first
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._on_first()

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class BatchContext:
    """What each batch needs to make records."""

    job: Job
    preset: str
    max_tokens: int
    model: Any


def _error(ctx: BatchContext, path: Path, message: str) -> Record:
    return Record(str(path), ctx.job.task, ctx.job.record_prompt, ctx.preset, error=message)


class ModelCalls:
    """Runs the model on loaded images; isolates failures; gives up on a model that never works."""

    def __init__(self, ctx: BatchContext) -> None:
        self.ctx = ctx
        self._succeeded = False
        self._failures = 0

    def run(self, items: list[tuple[Path, Any]]) -> list[Record]:
        try:
            return self._call(items)
        except (KeyboardInterrupt, CliError):
            raise
        except Exception as e:  # noqa: BLE001 - the model's failure becomes records, not a crash
            self._failures += 1
            if not self._succeeded and self._failures >= MAX_FAILED_CALLS_BEFORE_FIRST_SUCCESS:
                raise CliError(f"the model fails on every image: {type(e).__name__}: {e}") from e
            if len(items) > 1:
                return [r for item in items for r in self.run([item])]
            path = items[0][0]
            return [_error(self.ctx, path, f"model failed on {path}: {type(e).__name__}: {e}")]

    def _call(self, items: list[tuple[Path, Any]]) -> list[Record]:
        ctx = self.ctx
        images = [image for _, image in items]
        start = time.perf_counter()
        completions = ctx.model.complete(images, [ctx.job.prompt] * len(images), max_new_tokens=ctx.max_tokens)
        share = (time.perf_counter() - start) / len(images)  # batch time split evenly
        self._succeeded = True
        records = []
        for (path, image), c in zip(items, completions, strict=True):
            records.append(
                Record(
                    image=str(path),
                    task=ctx.job.task,
                    prompt=ctx.job.record_prompt,
                    preset=ctx.preset,
                    text=c.text,
                    tokens=len(c.token_ids),
                    finish_reason=c.finish_reason,
                    seconds=share,
                    extra=ctx.job.extras(c.text, image.size),
                )
            )
        return records


def process_batch(batch: list[tuple[Path, Loaded]], calls: ModelCalls) -> list[Record]:
    """Records for one batch, in input order."""
    from PIL import Image

    loaded = [i for i, (_, im) in enumerate(batch) if isinstance(im, Image.Image)]
    results = dict(zip(loaded, calls.run([batch[i] for i in loaded]), strict=True)) if loaded else {}
    return [results[i] if i in results else _error(calls.ctx, p, str(im)) for i, (p, im) in enumerate(batch)]
