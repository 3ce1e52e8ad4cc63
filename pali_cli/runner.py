"""One generation command from start to finish: inputs -> plan (resume, sidecars) -> model ->
batches -> records -> summary and exit code.

Everything that can fail fast (no input, unknown preset, bad options, nothing left to do) is
settled before the model is loaded, which takes seconds to minutes.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from pali_cli.batches import BatchContext, GracefulStop, ModelCalls, Prefetcher, process_batch
from pali_cli.console import Reporter, Stopwatch, format_duration, plural
from pali_cli.errors import ExitCode, Interrupted, NoInput, Terminated, UsageProblem
from pali_cli.inputs import Expansion, expand_inputs, expand_listed, image_extensions, is_pattern, merge, read_list_file
from pali_cli.jobs import Job
from pali_cli.model import canonical_preset, load_model
from pali_cli.options import RunOptions
from pali_cli.records import JsonlStream, NullSink, Record, ResultsFile, Sink, TextStream, make_key
from pali_cli.sidecar import OnExisting, SidecarSpec, check_collisions


@dataclass
class Counts:
    total: int = 0
    done: int = 0
    failed: int = 0
    hit_limit: int = 0  # finish_reason "length": the text was cut at --max-tokens


def run_command(job: Job, image_args: list[str] | None, opts: RunOptions) -> ExitCode:
    reporter = Reporter(opts.quiet)
    if opts.ray:
        from pali_cli.scale_out import require_ray

        require_ray()
    args = list(image_args or [])
    expansion = collect_inputs(args, opts, reporter)
    preset = canonical_preset(opts.preset)
    sidecar = _sidecar_spec(opts)
    if sidecar:
        check_collisions(expansion.paths, sidecar)
    if job.outputs:
        job.outputs.check_names(expansion.paths)
    single = _single_image(args, opts)
    results = ResultsFile(opts.output, reporter.warn) if opts.output else None
    sink: Sink
    if results:
        sink = results
    elif sidecar and not opts.json:
        sink = NullSink()
    elif single and not opts.json:
        sink = TextStream(job.render)
    else:
        sink = JsonlStream()

    todo, kept_failures = _plan(expansion.paths, job, preset, results, sidecar, opts, reporter)
    if not todo:
        where = f"in {opts.output}" if results else "done (their sidecars exist)"
        reporter.info(f"Nothing to do: all {plural(len(expansion.paths), 'image')} are already {where}.")
        return ExitCode.ITEMS_FAILED if kept_failures else ExitCode.OK

    if job.outputs:
        job.outputs.check_existing(todo)
    if job.prepare:
        job = job.prepare(job, opts, reporter)
    max_tokens = opts.max_tokens or job.max_tokens
    text_mode = isinstance(sink, TextStream)
    if opts.ray:
        counts = _run_on_ray(todo, job, preset, max_tokens, sink, sidecar, opts, reporter, text_mode)
    else:
        model = load_model(preset, opts, reporter)
        counts = _run(todo, BatchContext(job, preset, max_tokens, model), sink, sidecar, opts, reporter, text_mode)
    if counts.hit_limit:
        reporter.warn(
            f"{plural(counts.hit_limit, 'output')} stopped at the token limit ({max_tokens}); "
            "raise --max-tokens for longer text"
        )
    return ExitCode.ITEMS_FAILED if counts.failed or kept_failures else ExitCode.OK


# ---------------------------------------------------------------------------------- inputs


def collect_inputs(args: list[str], opts: RunOptions, reporter: Reporter) -> Expansion:
    if not args and not opts.files_from:
        raise UsageProblem("no images given; pass image files, directories or quoted globs, or --files-from FILE")
    expansion = expand_inputs(args, recursive=opts.recursive)
    if opts.files_from:
        try:
            stdin = sys.stdin.read() if opts.files_from == "-" else None
            lines = read_list_file(opts.files_from, stdin)
        except OSError as e:
            raise UsageProblem(f"cannot read --files-from {opts.files_from}: {e.strerror or e}") from None
        expansion = merge(expansion, expand_listed(lines))
    hint = _recursive_hint(expansion.empty) if not opts.recursive else None
    if expansion.found == 0:
        named = expansion.missing + expansion.empty
        what = ", ".join(repr(n) for n in named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
        raise NoInput(
            f"no images found: nothing matches {what}" if named else "no images found: the list is empty",
            hint=hint or _extensions_hint(),
        )
    for pattern in expansion.empty:
        reporter.warn(f"no images match {pattern!r}")
    if hint:
        reporter.warn(hint)
    return expansion


def _recursive_hint(empty: list[str]) -> str | None:
    exts = image_extensions()
    for arg in empty:
        path = Path(arg).expanduser()
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                if root != str(path) and any(Path(f).suffix.lower() in exts for f in files):
                    return f"{arg} has images in subdirectories; add --recursive to include them"
    return None


def _extensions_hint() -> str:
    return "Directories and globs take files ending in " + " ".join(sorted(image_extensions())) + " (any case)."


def _single_image(args: list[str], opts: RunOptions) -> bool:
    """One file named on the command line prints plain text; directories, globs, several files or
    a list print JSON lines, so scripts get the same format however many images matched."""
    if len(args) != 1 or opts.files_from:
        return False
    return not is_pattern(args[0]) and not Path(args[0]).expanduser().is_dir()


def _sidecar_spec(opts: RunOptions) -> SidecarSpec | None:
    if not opts.sidecar:
        return None
    return SidecarSpec(
        ext=opts.sidecar_ext or ".txt",
        on_existing=opts.on_existing or OnExisting.skip,
        prefix=opts.prefix or "",
        suffix=opts.suffix or "",
    )


# ---------------------------------------------------------------------------------- plan


def _plan(
    paths: list[Path],
    job: Job,
    preset: str,
    results: ResultsFile | None,
    sidecar: SidecarSpec | None,
    opts: RunOptions,
    reporter: Reporter,
) -> tuple[list[Path], int]:
    """Images still to do, and how many earlier error records stand for this run's images."""
    keys = {p: make_key(p, job.task, job.record_prompt, preset) for p in paths}
    kept_failures = 0
    todo = list(paths)
    if results is not None:
        if opts.overwrite:
            results.clear()
        elif opts.retry_failed:
            retried = results.drop_failed(set(keys.values()))
            if retried:
                reporter.info(f"Retrying {plural(retried, 'image')} that failed before.")
        status = results.status
        done = sum(1 for p in paths if status.get(keys[p]) is True)
        kept_failures = sum(1 for p in paths if status.get(keys[p]) is False)
        todo = [p for p in paths if keys[p] not in status]
        if (done or kept_failures) and todo:
            reporter.info(
                f"Resuming {opts.output}: {done + kept_failures} of {plural(len(paths), 'image')} already "
                f"recorded, {len(todo)} to go."
            )
        if kept_failures:
            reporter.warn(f"{plural(kept_failures, 'image')} failed in an earlier run; add --retry-failed to redo them")
    if sidecar is not None and sidecar.on_existing is OnExisting.skip:
        before = len(todo)
        todo = [p for p in todo if not sidecar.should_skip(p)]
        if len(todo) < before:
            reporter.info(f"Skipping {plural(before - len(todo), 'image')} that already have a {sidecar.ext} sidecar.")
    return todo, kept_failures


# ---------------------------------------------------------------------------------- run


def _run(
    todo: list[Path],
    ctx: BatchContext,
    sink: Sink,
    sidecar: SidecarSpec | None,
    opts: RunOptions,
    reporter: Reporter,
    text_mode: bool,
) -> Counts:
    counts = Counts(total=len(todo))
    calls = ModelCalls(ctx)
    prefetcher = Prefetcher(todo, opts.batch_size)
    clock = Stopwatch()
    interrupted = False

    def first_ctrl_c() -> None:
        reporter.warn("stopping after the current batch (press Ctrl-C again to stop at once)")

    try:
        stdout_busy = isinstance(sink, (JsonlStream, TextStream)) and sys.stdout.isatty()
        with GracefulStop(first_ctrl_c) as stop, reporter.progress(ctx.job.task, len(todo), stdout_busy) as bar:
            for batch in prefetcher:
                failed_before = counts.failed
                for record in process_batch(batch, calls):
                    record = _write_outputs(ctx.job, record)
                    sink.write(record)
                    _account(record, counts, sidecar, reporter, text_mode)
                bar.advance(len(batch), failed=counts.failed - failed_before)
                if stop.requested:
                    interrupted = counts.done < counts.total
                    break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        prefetcher.close()
        sink.close()

    _finish(counts, clock.seconds, signal.SIGINT if interrupted else None, opts, reporter, text_mode)
    return counts


def _run_on_ray(
    todo: list[Path],
    job: Job,
    preset: str,
    max_tokens: int,
    sink: Sink,
    sidecar: SidecarSpec | None,
    opts: RunOptions,
    reporter: Reporter,
    text_mode: bool,
) -> Counts:
    """The same run on Ray workers (pali_cli.scale_out); records come back here to ``sink``."""
    from pali_cli.scale_out import run_on_ray

    counts = Counts(total=len(todo))
    clock = Stopwatch()

    def handle(record: Record) -> None:
        record = _write_outputs(job, record)  # on the driver, like the records and sidecars
        sink.write(record)
        _account(record, counts, sidecar, reporter, text_mode)

    stdout_busy = isinstance(sink, (JsonlStream, TextStream)) and sys.stdout.isatty()
    try:
        stopped_by = run_on_ray(todo, job, preset, max_tokens, opts, reporter, handle, stdout_busy)
    finally:
        sink.close()
    _finish(counts, clock.seconds, stopped_by, opts, reporter, text_mode)
    return counts


def _finish(
    counts: Counts, seconds: float, stopped_by: int | None, opts: RunOptions, reporter: Reporter, text_mode: bool
) -> None:
    """The summary line, or (stopped by a signal) the exception that carries the resume hint."""
    if stopped_by is not None:
        kind = Terminated if stopped_by == signal.SIGTERM else Interrupted
        raise kind(f"stopped after {counts.done} of {plural(counts.total, 'image')}", hint=_resume_hint(opts))
    if counts.total > 1 or not text_mode:
        rate = counts.done / seconds if seconds > 0 else 0.0
        speed = f"{rate:.2f} img/s" if rate >= 1 else f"{seconds / max(counts.done, 1):.1f} s/img"
        parts = [f"Done: {plural(counts.done, 'image')} in {format_duration(seconds)} ({speed})"]
        if counts.failed:
            parts.append(f"{counts.failed} failed")
        if opts.output:
            parts.append(f"results in {opts.output}")
        reporter.info("; ".join(parts))


def _write_outputs(job: Job, record: Record) -> Record:
    """``--draw`` / ``--masks-dir`` files, before the record: a record that says done means its files
    exist. When they cannot be written the image becomes an error record (``--retry-failed`` redoes it)."""
    if job.outputs is None or not record.ok:
        return record
    try:
        job.outputs.write(record)
    except (OSError, ValueError) as e:
        what = str(e)
        if isinstance(e, OSError) and e.strerror:
            what = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        message = f"cannot write the output files of {record.image} ({what})"
        return Record(record.image, record.task, record.prompt, record.preset, seconds=record.seconds, error=message)
    return record


def _account(record: Record, counts: Counts, sidecar: SidecarSpec | None, reporter: Reporter, text_mode: bool) -> None:
    counts.done += 1
    if not record.ok:
        counts.failed += 1
        if text_mode:
            reporter.error(record.error or "failed")
        else:
            reporter.warn(record.error or "failed")
        return
    if record.finish_reason == "length":
        counts.hit_limit += 1
    if sidecar is not None and record.text is not None:
        try:
            sidecar.write(Path(record.image), record.text)
        except OSError as e:
            counts.failed += 1
            reporter.warn(f"cannot write sidecar {sidecar.path_for(Path(record.image))}: {e.strerror or e}")


def _resume_hint(opts: RunOptions) -> str:
    if opts.output:
        return f"Finished records are in {opts.output}; run the same command again to do the rest."
    if opts.sidecar:
        return "Run the same command again to do the rest: images that have a sidecar are skipped."
    return "Nothing was saved to resume from; add -o FILE to make a run resumable."
