"""The batch loop: decode images ahead of the model, run batches, turn results into records.

* Images are decoded by a small thread pool one or two batches ahead, so on a fast accelerator
  the model does not wait for JPEG decoding (PIL releases the GIL while it decodes). Each image is
  resized to the model's resolution as soon as it is decoded and the full-size picture dropped,
  so what waits in memory is ``batch size x batches ahead`` small images, whatever the photos'
  sizes; only the images being decoded (one per thread) are ever held at full size.
* An image that cannot be read becomes an error record at once; the rest of its batch goes on.
* If the model raises on a batch of several images, each is retried alone so one bad image
  cannot sink its neighbours (and an out-of-memory batch still completes). If the model fails on
  the first few batches without ever succeeding, the run stops: the model itself is broken (and
  at once when the model's numbers say so: NaN/Inf logits).
* Signals (Ctrl-C, SIGTERM, SIGHUP) are pali_cli.signals' business; the runner checks between batches.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from engine import NonFiniteLogitsError
from pali_cli.errors import CliError
from pali_cli.jobs import Job
from pali_cli.records import Record
from pali_cli.sources import Remote, Source
from pali_cli.streams import TextStream

MAX_FAILED_CALLS_BEFORE_FIRST_SUCCESS = 3

Fit = Callable[[Any], Any]  # full-size RGB PIL image -> the model's input size


@dataclass(frozen=True)
class Fitted:
    """A decoded image, resized for the model, and the size of the original (for pixel boxes)."""

    image: Any  # a PIL image
    size: tuple[int, int]


Loaded = Any  # a Fitted, or the exception that loading the image raised


def decode(source: Source) -> Any:
    """The full-size RGB image of ``source`` (ImageLoadError when it cannot be read)."""
    from engine.processing.image import load_image

    if isinstance(source, Remote):
        from pali_cli.remote import load

        return load(source)
    return load_image(source)


def _load(source: Source, fit: Fit | None = None) -> Loaded:
    from engine import ImageLoadError

    try:
        image = decode(source)
        size = image.size
        return Fitted(fit(image) if fit else image, size)
    except ImageLoadError as e:
        return e
    except Exception as e:  # noqa: BLE001 - any decoder crash is this file's problem, not the run's
        return ImageLoadError(f"cannot load image {source}: {type(e).__name__}: {e}")


def fitter(model: Any) -> Fit | None:
    """Resizes as the model's preprocessor would (the same filter to the same size, so the pixels
    are identical), or None for a model without one."""
    pre = getattr(model, "preprocessor", None)
    size, resample = getattr(pre, "image_size", None), getattr(pre, "resample", None)
    if not isinstance(size, int) or not isinstance(resample, str):
        return None
    from engine.processing.image import resize_square

    return lambda image: resize_square(image, size, resample)


class Prefetcher:
    """Yields ``[(source, fitted_or_error), ...]`` batches, decoding ``ahead`` batches in advance."""

    def __init__(
        self, sources: Sequence[Source], batch_size: int, fit: Fit | None = None, workers: int = 2, ahead: int = 2
    ) -> None:
        self._batches = [list(sources[i : i + batch_size]) for i in range(0, len(sources), batch_size)]
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pali-load")
        self._ahead = ahead
        self._fit = fit

    def __iter__(self) -> Iterator[list[tuple[Source, Loaded]]]:
        pending: deque[tuple[list[Source], list[Future[Loaded]]]] = deque()
        upcoming = iter(self._batches)

        def submit() -> None:
            batch = next(upcoming, None)
            if batch is not None:
                pending.append((batch, [self._pool.submit(_load, p, self._fit) for p in batch]))

        for _ in range(self._ahead):
            submit()
        while pending:
            batch, futures = pending.popleft()
            submit()
            yield [(p, f.result()) for p, f in zip(batch, futures, strict=True)]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class BatchContext:
    """What each batch needs to make records."""

    job: Job
    preset: str
    max_tokens: int
    model: Any


def _error(ctx: BatchContext, source: Source, message: str) -> Record:
    return Record(str(source), ctx.job.task, ctx.job.record_prompt, ctx.preset, error=message)


class ModelCalls:
    """Runs the model on loaded images; isolates failures; gives up on a model that never works.
    ``on_step`` (TextPrinter) sees the tokens as they are generated."""

    def __init__(self, ctx: BatchContext, on_step: Callable[[list[int], list[int]], None] | None = None) -> None:
        self.ctx = ctx
        self.on_step = on_step
        self._succeeded = False
        self._failures = 0

    def run(self, items: list[tuple[Source, Fitted]]) -> list[Record]:
        try:
            return self._call(items)
        except (KeyboardInterrupt, CliError):
            raise
        except NonFiniteLogitsError:
            if not self._succeeded:
                raise  # the weights, not an image: say so once, naming the checkpoint
            return self._isolate(items)
        except Exception as e:  # noqa: BLE001 - the model's failure becomes records, not a crash
            self._failures += 1
            if not self._succeeded and self._failures >= MAX_FAILED_CALLS_BEFORE_FIRST_SUCCESS:
                raise CliError(f"the model fails on every image: {type(e).__name__}: {e}") from e
            if len(items) > 1:
                return self._isolate(items)
            source = items[0][0]
            return [_error(self.ctx, source, f"model failed on {source}: {type(e).__name__}: {e}")]

    def _isolate(self, items: list[tuple[Source, Fitted]]) -> list[Record]:
        if len(items) == 1:
            source = items[0][0]
            return [_error(self.ctx, source, f"model failed on {source}: the model computed NaN or Inf")]
        return [r for item in items for r in self.run([item])]

    def _call(self, items: list[tuple[Source, Fitted]]) -> list[Record]:
        ctx = self.ctx
        images = [fitted.image for _, fitted in items]
        start = time.perf_counter()
        hook = {"on_step": self.on_step} if self.on_step is not None else {}
        completions = ctx.model.complete(images, [ctx.job.prompt] * len(images), max_new_tokens=ctx.max_tokens, **hook)
        share = (time.perf_counter() - start) / len(images)  # batch time split evenly
        self._succeeded = True
        return [
            Record(
                image=str(source),
                task=ctx.job.task,
                prompt=ctx.job.record_prompt,
                preset=ctx.preset,
                text=c.text,
                tokens=len(c.token_ids),
                finish_reason=c.finish_reason,
                seconds=share,
                extra=ctx.job.extras(c.text, fitted.size),
            )
            for (source, fitted), c in zip(items, completions, strict=True)
        ]


def process_batch(batch: list[tuple[Source, Loaded]], calls: ModelCalls) -> list[Record]:
    """Records for one batch, in input order."""
    loaded = [i for i, (_, im) in enumerate(batch) if isinstance(im, Fitted)]
    results = dict(zip(loaded, calls.run([batch[i] for i in loaded]), strict=True)) if loaded else {}
    return [results[i] if i in results else _error(calls.ctx, p, str(im)) for i, (p, im) in enumerate(batch)]


class TextPrinter:
    """Prints the text of a one-image run to the terminal as it is generated; ``sink`` then only
    adds what is left (pali_cli.streams.TextStream). Held back: characters still incomplete (a
    multi-byte character split over tokens decodes as U+FFFD until its last byte comes)."""

    def __init__(self, detokenize: Callable[[list[int]], str], sink: TextStream) -> None:
        self._detokenize = detokenize
        self._sink = sink
        self._ids: list[int] = []
        self._printed = ""

    def __call__(self, rows: list[int], tokens: list[int]) -> None:
        if 0 not in rows:
            return
        self._ids.append(tokens[rows.index(0)])
        text = self._detokenize(self._ids).rstrip("\ufffd")
        if len(text) > len(self._printed) and text.startswith(self._printed):
            sys.stdout.write(text[len(self._printed) :])
            sys.stdout.flush()
            self._printed = text
        self._sink.streamed = self._printed
