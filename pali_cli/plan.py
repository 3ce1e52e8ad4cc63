"""Everything a run settles before the model loads (which takes seconds to minutes): the inputs,
what the ``-o`` file already holds, sidecars that exist, and images that cannot even be opened.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pali_cli.console import Reporter, plural
from pali_cli.errors import NoInput, UsageProblem
from pali_cli.inputs import Expansion, expand_inputs, expand_listed, image_extensions, is_pattern, merge, read_list_file
from pali_cli.jobs import Job
from pali_cli.options import RunOptions
from pali_cli.records import Record, make_key
from pali_cli.results import ResultsFile
from pali_cli.sidecar import OnExisting, SidecarSpec
from pali_cli.sources import STDIN, Remote, Source, is_remote_name

# Runs this small are checked file by file before the model loads (a header read each): an image
# that cannot be read is reported at once, and if none can, no model is loaded at all. Bigger runs
# find bad files as they go (checking a million files first would cost more than it saves).
PRECHECK_LIMIT = 64


# ---------------------------------------------------------------------------------- inputs


def collect_inputs(args: list[str], opts: RunOptions, reporter: Reporter) -> Expansion:
    if not args and not opts.files_from:
        raise UsageProblem("no images given; pass image files, directories or quoted globs, or --files-from FILE")
    if STDIN in args and opts.files_from == STDIN:
        raise UsageProblem("'-' and --files-from - both read stdin; give the image or the list as a file")
    expansion = expand_inputs(args, recursive=opts.recursive)
    if opts.files_from:
        try:
            stdin = sys.stdin.read() if opts.files_from == STDIN else None
            lines = read_list_file(opts.files_from, stdin)
        except OSError as e:
            raise UsageProblem(f"cannot read --files-from {opts.files_from}: {e.strerror or e}") from None
        expansion = merge(expansion, expand_listed(lines))
    if expansion.skipped:
        shown = ", ".join(expansion.skipped[:3]) + (
            f" and {len(expansion.skipped) - 3} more" if len(expansion.skipped) > 3 else ""
        )
        reporter.warn(
            f"cannot read {plural(len(expansion.skipped), 'directory')}, so their images are left out: {shown}"
        )
    hint = _recursive_hint(expansion.empty) if not opts.recursive else None
    if expansion.found == 0 and not expansion.skipped:
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
    if Remote(STDIN) in expansion.paths:
        from pali_cli.remote import read_stdin

        read_stdin()  # now, before anything slow: a terminal instead of a pipe is a usage error
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


def single_image(args: list[str], opts: RunOptions) -> bool:
    """One file (or URL, or stdin) named on the command line prints plain text; directories, globs,
    several files or a list print JSON lines, so scripts get the same format however many matched."""
    if len(args) != 1 or opts.files_from:
        return False
    if is_remote_name(args[0]):
        return True
    return not is_pattern(args[0]) and not Path(args[0]).expanduser().is_dir()


def sidecar_spec(opts: RunOptions, sources: list[Source]) -> SidecarSpec | None:
    if not opts.sidecar:
        return None
    remote = next((s for s in sources if isinstance(s, Remote)), None)
    if remote is not None:
        raise UsageProblem(f"--sidecar writes a file next to each image, and {remote} is not a file; drop --sidecar")
    return SidecarSpec(
        ext=opts.sidecar_ext or ".txt",
        on_existing=opts.on_existing or OnExisting.skip,
        prefix=opts.prefix or "",
        suffix=opts.suffix or "",
    )


# ---------------------------------------------------------------------------------- plan


def plan(
    sources: list[Source],
    job: Job,
    preset: str,
    results: ResultsFile | None,
    sidecar: SidecarSpec | None,
    opts: RunOptions,
    reporter: Reporter,
) -> tuple[list[Source], int]:
    """Images still to do, and how many earlier error records stand for this run's images. An
    image from stdin is always done (another run may have piped another image)."""
    keys = {s: make_key(s, job.task, job.record_prompt, preset) for s in sources}
    kept_failures = 0
    todo = list(sources)
    if results is not None and not results.is_stream:
        if opts.overwrite:
            results.clear()
        elif opts.retry_failed:
            retried = results.drop_failed(set(keys.values()))
            if retried:
                reporter.info(f"Retrying {plural(retried, 'image')} that failed before.")
        status = {} if opts.overwrite else results.status
        done = sum(1 for s in sources if status.get(keys[s]) is True and s != Remote(STDIN))
        kept_failures = sum(1 for s in sources if status.get(keys[s]) is False and s != Remote(STDIN))
        todo = [s for s in sources if keys[s] not in status or s == Remote(STDIN)]
        if (done or kept_failures) and todo:
            reporter.info(
                f"Resuming {opts.output}: {done + kept_failures} of {plural(len(sources), 'image')} already "
                f"recorded, {len(todo)} to go."
            )
        if kept_failures:
            reporter.warn(f"{plural(kept_failures, 'image')} failed in an earlier run; add --retry-failed to redo them")
    if sidecar is not None and sidecar.on_existing is OnExisting.skip:
        before = len(todo)
        todo = [s for s in todo if not (isinstance(s, Path) and sidecar.should_skip(s))]
        if len(todo) < before:
            skipped = before - len(todo)
            verb = "has" if skipped == 1 else "have"
            reporter.info(f"Skipping {plural(skipped, 'image')} that already {verb} a {sidecar.ext} sidecar.")
    return todo, kept_failures


def precheck(todo: list[Source], job: Job, preset: str) -> list[Record] | None:
    """For a small run: if no image can even be opened (missing, unreadable, not a regular file,
    not an image), their error records, found without loading the model; else None (the run
    finds the bad ones again as it goes, keeping the records in input order)."""
    files = [s for s in todo if isinstance(s, Path)]
    if len(todo) > PRECHECK_LIMIT or len(files) < len(todo):
        return None
    from engine import ImageLoadError
    from engine.processing.image import check_image_file

    failed: list[Record] = []
    for source in files:
        try:
            check_image_file(source)
        except ImageLoadError as e:
            failed.append(Record(str(source), job.task, job.record_prompt, preset, error=str(e)))
        else:
            return None
    return failed
