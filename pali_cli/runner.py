"""One generation command from start to finish: inputs -> plan (resume, sidecars) -> model ->
batches -> records -> summary and exit code.

Everything that can fail fast (no input, unknown preset, bad options, an output that cannot be
written or is another program's file, inputs that cannot be opened, nothing left to do) is settled
before the model is loaded (pali_cli.plan), which takes seconds to minutes.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pali_cli import streams
from pali_cli.batches import BatchContext, ModelCalls, Prefetcher, TextPrinter, fitter, process_batch
from pali_cli.console import Reporter, Stopwatch, format_duration, plural
from pali_cli.errors import ExitCode, UsageProblem
from pali_cli.jobs import Job
from pali_cli.model import canonical_preset, load_model
from pali_cli.options import RunOptions
from pali_cli.plan import collect_inputs, plan, precheck, sidecar_spec, single_image
from pali_cli.records import Record
from pali_cli.results import ResultsFile
from pali_cli.sidecar import SidecarSpec, check_collisions
from pali_cli.signals import GracefulStop, signal_name, stopped
from pali_cli.sources import Remote, Source
from pali_cli.streams import JsonlStream, NullSink, Sink, TextStream

STDOUT = Path("-")


@dataclass
class Counts:
    total: int = 0
    done: int = 0
    failed: int = 0
    hit_limit: int = 0  # finish_reason "length": the text was cut at --max-tokens


@dataclass
class Run:
    """One planned run: what it writes to and how it reports."""

    job: Job
    preset: str
    opts: RunOptions
    reporter: Reporter
    sink: Sink
    results: ResultsFile | None
    sidecar: SidecarSpec | None
    text_mode: bool
    counts: Counts


def run_command(job: Job, image_args: list[str] | None, opts: RunOptions) -> ExitCode:
    reporter = Reporter(opts.quiet)
    with reporter.python_warnings():
        if opts.ray:
            from pali_cli.scale_out import require_ray

            require_ray()
        args = list(image_args or [])
        expansion = collect_inputs(args, opts, reporter)
        preset = canonical_preset(opts.preset, "PALI_PRESET" if "preset" in opts.from_env else None)
        sources = expansion.paths
        sidecar = sidecar_spec(opts, sources)
        if sidecar:
            check_collisions([s for s in sources if isinstance(s, Path)], sidecar)
        if job.outputs:
            job.outputs.check_names(sources)
        if opts.ray and Remote("-") in sources:
            raise UsageProblem("an image from stdin ('-') cannot go to Ray workers; save it to a file first")
        results = _open_results(opts, reporter)
        try:
            code = _run_planned(job, preset, sources, args, results, sidecar, opts, reporter)
        finally:
            if results is not None:
                results.close()
        return ExitCode.ITEMS_FAILED if code is ExitCode.OK and expansion.skipped else code


def _open_results(opts: RunOptions, reporter: Reporter) -> ResultsFile | None:
    """The ``-o`` file, opened (and locked) now; None for no ``-o`` and for ``-o -`` (stdout)."""
    if opts.output is None or opts.output == STDOUT:
        if opts.output is not None and (opts.overwrite or opts.retry_failed):
            raise UsageProblem("--overwrite and --retry-failed work on a results file, not on -o - (stdout)")
        return None
    results = ResultsFile(opts.output, reporter.warn)
    if results.is_stream and (opts.overwrite or opts.retry_failed):
        results.close()
        flag = "--overwrite" if opts.overwrite else "--retry-failed"
        raise UsageProblem(f"{flag} needs a regular file; {opts.output} is a device, pipe or FIFO")
    return results


def _sink(job: Job, results: ResultsFile | None, sidecar: SidecarSpec | None, single: bool, opts: RunOptions) -> Sink:
    if results is not None:
        return results
    if opts.output == STDOUT:
        return JsonlStream()
    if sidecar and not opts.json:
        return NullSink()
    if single and not opts.json:
        return TextStream(job.render)
    return JsonlStream()


def _run_planned(
    job: Job,
    preset: str,
    sources: list[Source],
    args: list[str],
    results: ResultsFile | None,
    sidecar: SidecarSpec | None,
    opts: RunOptions,
    reporter: Reporter,
) -> ExitCode:
    sink = _sink(job, results, sidecar, single_image(args, opts), opts)
    todo, kept_failures = plan(sources, job, preset, results, sidecar, opts, reporter)
    if not todo:
        where = f"in {opts.output}" if results else "done (their sidecars exist)"
        reporter.info(f"Nothing to do: all {plural(len(sources), 'image')} are already {where}.")
        return ExitCode.ITEMS_FAILED if kept_failures else ExitCode.OK
    if job.outputs:
        job.outputs.check_existing(todo)
    run = Run(job, preset, opts, reporter, sink, results, sidecar, isinstance(sink, TextStream), Counts(len(todo)))
    clock = Stopwatch()
    unreadable = precheck(todo, job, preset)
    for record in unreadable or []:
        _handle(run, record)
    stopped_by = _start(run, todo) if unreadable is None else None
    sink.close()
    _finish(run, clock.seconds, stopped_by)
    counts = run.counts
    if counts.hit_limit:
        reporter.warn(
            f"{plural(counts.hit_limit, 'output')} stopped at the token limit ({opts.max_tokens or job.max_tokens}); "
            "raise --max-tokens for longer text"
        )
    return ExitCode.ITEMS_FAILED if counts.failed or kept_failures else ExitCode.OK


def _start(run: Run, todo: list[Source]) -> int | None:
    """Loads what the run needs and runs it; the signal that stopped it, if one did."""

    def first_signal(signum: int) -> None:
        again = "press Ctrl-C again" if signal_name(signum) == "Ctrl-C" else f"send {signal_name(signum)} again"
        run.reporter.warn(f"stopping after the current batch ({again} to stop at once)")

    with GracefulStop(first_signal) as stop:
        try:
            if run.job.prepare:
                run.job = run.job.prepare(run.job, run.opts, run.reporter)
            if run.opts.ray:
                return _run_on_ray(run, todo)
            model = load_model(run.preset, run.opts, run.reporter)
            stop.armed = True
            _run_local(run, todo, model, stop)
        except KeyboardInterrupt:
            return stop.signum or signal.SIGINT
    return stop.signum


def _run_local(run: Run, todo: list[Source], model: Any, stop: GracefulStop) -> None:
    ctx = BatchContext(run.job, run.preset, run.opts.max_tokens or run.job.max_tokens, model)
    printer = None
    if run.text_mode and len(todo) == 1 and run.job.plain_text and streams.stdout_is_terminal():
        assert isinstance(run.sink, TextStream)
        printer = TextPrinter(model.preprocessor.tokenizer.detokenize, run.sink)
    calls = ModelCalls(ctx, on_step=printer)
    prefetcher = Prefetcher(todo, run.opts.batch_size, fitter(model))
    stdout_busy = isinstance(run.sink, (JsonlStream, TextStream)) and streams.stdout_is_terminal()
    try:
        with run.reporter.progress(run.job.task, len(todo), stdout_busy) as bar:
            for batch in prefetcher:
                failed_before = run.counts.failed
                for record in process_batch(batch, calls):
                    _handle(run, record)
                bar.advance(len(batch), failed=run.counts.failed - failed_before)
                if stop.requested:
                    break
    finally:
        prefetcher.close()


def _run_on_ray(run: Run, todo: list[Source]) -> int | None:
    """The same run on Ray workers (pali_cli.scale_out); records come back here, to ``_handle``."""
    from pali_cli.scale_out import run_on_ray

    max_tokens = run.opts.max_tokens or run.job.max_tokens
    stdout_busy = isinstance(run.sink, (JsonlStream, TextStream)) and streams.stdout_is_terminal()
    return run_on_ray(
        todo, run.job, run.preset, max_tokens, run.opts, run.reporter, lambda r: _handle(run, r), stdout_busy
    )


def _handle(run: Run, record: Record) -> None:
    """One record: its image files, then the record itself, then the counts and sidecar."""
    record = _write_outputs(run.job, record)
    run.sink.write(record)
    _account(run, record)


def _finish(run: Run, seconds: float, stopped_by: int | None) -> None:
    """The summary line, or (stopped by a signal) the exception that carries the resume hint."""
    counts, opts = run.counts, run.opts
    if stopped_by is not None and counts.done < counts.total:
        message = f"stopped after {counts.done} of {plural(counts.total, 'image')}"
        raise stopped(stopped_by, message, _resume_hint(run))
    if counts.total > 1 or not run.text_mode:
        good = counts.done - counts.failed
        parts = [f"Done: {plural(counts.done, 'image')} in {format_duration(seconds)}"]
        if good:
            rate = good / seconds if seconds > 0 else 0.0
            parts[0] += f" ({rate:.2f} img/s)" if rate >= 1 else f" ({seconds / good:.1f} s/img)"
        if counts.failed:
            parts.append(f"{counts.failed} failed")
        if opts.output and opts.output != STDOUT:
            parts.append(f"results in {opts.output}")
        run.reporter.info("; ".join(parts))


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


def _account(run: Run, record: Record) -> None:
    counts, reporter = run.counts, run.reporter
    counts.done += 1
    if not record.ok:
        counts.failed += 1
        if run.text_mode:
            reporter.error(record.error or "failed")
        else:
            reporter.warn(record.error or "failed")
        return
    if record.finish_reason == "length":
        counts.hit_limit += 1
    if run.text_mode and run.job.nothing_found(record):
        reporter.info(f"Nothing found: the model's answer was {record.text!r}.")
    if run.sidecar is not None and record.text is not None:
        try:
            run.sidecar.write(Path(record.image), record.text)
        except OSError as e:
            counts.failed += 1
            reporter.warn(f"cannot write sidecar {run.sidecar.path_for(Path(record.image))}: {e.strerror or e}")


def _resume_hint(run: Run) -> str:
    opts = run.opts
    if run.results is not None and run.results.has_records:
        return f"Finished records are in {opts.output}; run the same command again to do the rest."
    if run.results is not None:
        return "No image was finished yet; run the same command again to start."
    if opts.sidecar:
        return "Run the same command again to do the rest: images that have a sidecar are skipped."
    return "Nothing was saved to resume from; add -o FILE to make a run resumable."
