"""``--ray``: the same run spread over a Ray cluster with Ray Data, records written on the driver.

The driver (this module) does what a local run does before the model: expand the inputs, drop
what the ``-o`` file already holds (the runner's plan). Only the images still to do become a
dataset; ``map_batches`` runs them through a fixed pool of actors, one engine each
(``pali_cli.ray_worker``), and the records stream back here as each batch finishes, to be
written one by one by the same writer as a local run. So a crash of the driver or of a worker
loses at most the batches in flight, and a rerun does only those.

* Ray retries the batches of a worker that dies (a killed actor is restarted); a batch that
  comes back twice is written once: records are deduplicated on their key before the writer.
* Ctrl-C, SIGTERM or SIGHUP on the driver stops the dataset at once (batches in flight are dropped, to
  be redone by the next run), keeps every record written and ends with the resume hint.
* ``--ray local`` starts a private runtime on this machine (address "local": never someone
  else's cluster) and stops it at the end; an ADDRESS joins a cluster and leaves it running.

Ray is imported only here, inside functions, and only when ``--ray`` is given.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from engine import PaliError
from pali_cli import signals
from pali_cli.console import Reporter, plural
from pali_cli.errors import CliError, UsageProblem, add_cli_note
from pali_cli.jobs import Job
from pali_cli.options import RunOptions
from pali_cli.records import Record, RecordKey
from pali_cli.sources import Source

INSTALL = 'pip install "pali[ray]"'
# A million images in batches of 8 would be 125,000 blocks: past this many, blocks hold several
# batches (fewer objects for Ray to track, a little more work redone after a crash).
MAX_BLOCKS = 20_000
WORKER_HINT = (
    "This happened on a Ray worker: every worker must reach the model (a directory on a shared "
    "filesystem, or a Hub id each worker can download)."
)
TASKS_PER_ACTOR = 2  # one batch running and one queued, so an actor never waits for input


@dataclass(frozen=True)
class Pool:
    """The actor pool as the options ask for it."""

    workers: int
    cpus: float
    gpus: float

    @classmethod
    def from_options(cls, opts: RunOptions) -> Pool:
        return cls(opts.workers or 1, opts.worker_cpus or 1.0, opts.worker_gpus or 0.0)


def require_ray() -> None:
    """Fails fast, before anything slow, where the extra is not installed (exit 2)."""
    from importlib.util import find_spec

    if find_spec("ray") is None or find_spec("pyarrow") is None:
        raise UsageProblem(f"--ray needs Ray Data, which is not installed; install it with: {INSTALL}")


def _import_ray() -> tuple[Any, Any]:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise UsageProblem(
            f"--ray needs Ray Data, which cannot be imported ({e}); install it with: {INSTALL}"
        ) from None
    return ray, ray.data


def run_on_ray(
    todo: Sequence[Source],
    job: Job,
    preset: str,
    max_tokens: int,
    opts: RunOptions,
    reporter: Reporter,
    handle: Callable[[Record], None],
    stdout_busy: bool = False,
) -> int | None:
    """Runs ``todo`` on Ray; each new record goes to ``handle`` (the runner's writer) as it
    arrives. Returns None when every image has a record, or the signal that stopped the run."""
    check_address(opts.ray or "local")
    ray, data = _import_ray()
    pool = Pool.from_options(opts)
    _connect(ray, opts.ray or "local", pool, reporter)
    try:
        _quiet_ray_data(data)
        dataset = _dataset(data, todo, job, preset, max_tokens, opts, pool)
        reporter.info(f"Loading {preset} on {plural(pool.workers, 'Ray worker')} ...")
        with StopSignals(lambda: _say_stopping(reporter)) as stop:
            with reporter.progress(job.task, len(todo), stdout_busy) as bar:
                with closing(_stream(dataset, stop)) as records:
                    for record in unique(records):
                        handle(record)
                        bar.advance(1, failed=0 if record.ok else 1)
                        if stop.signum is not None:
                            break
        return stop.signum
    finally:
        ray.shutdown()  # for "local" this stops the runtime; a cluster only loses this driver's actors


def _say_stopping(reporter: Reporter) -> None:
    reporter.warn("stopping: batches still running on the workers are dropped and redone by the next run")


# ---------------------------------------------------------------------------------- Ray session


def check_address(address: str) -> None:
    """A HOST:PORT where nothing answers fails now: Ray itself would retry for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "local", "auto" (found by Ray) or a ray:// client address (Ray reports those quickly)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise CliError(
            f"cannot connect to Ray at {address}: {e.strerror or e}",
            hint="Start the head node with 'ray start --head' (its address is printed), or use --ray local.",
        ) from None


def _connect(ray: Any, address: str, pool: Pool, reporter: Reporter) -> None:
    debug = bool(os.environ.get("PALI_DEBUG"))
    common: dict[str, Any] = {
        "log_to_driver": debug,  # workers' own output; their errors still reach us as exceptions
        "logging_level": logging.INFO if debug else logging.ERROR,
    }
    try:
        if address == "local":
            cpus = max(os.cpu_count() or 1, math.ceil(pool.workers * pool.cpus))
            reporter.info(f"Starting a local Ray runtime ({plural(cpus, 'CPU')}) ...")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no telemetry from a run on one machine
            # "local" always starts a new runtime, never attaching to a cluster found on this machine;
            # a logical CPU count of at least what the pool reserves, so --workers 4 on 2 cores runs
            # (oversubscribed) instead of waiting forever for CPUs that will never come.
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **common)
        else:
            ray.init(address=address, **common)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise CliError(
            f"cannot connect to Ray at {address}: {e}",
            hint="Start the head node with 'ray start --head', or use --ray local to run on this machine.",
        ) from None
    if address != "local":
        _check_capacity(ray, address, pool, reporter)


def _check_capacity(ray: Any, address: str, pool: Pool, reporter: Reporter) -> None:
    """A pool bigger than the cluster waits until nodes join (autoscaling); say so, do not fail."""
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    reporter.info(f"Connected to Ray at {address}: {cpus:g} CPUs, {gpus:g} GPUs")
    need_cpus, need_gpus = pool.workers * pool.cpus, pool.workers * pool.gpus
    if need_cpus > cpus or need_gpus > gpus:
        reporter.warn(
            f"{plural(pool.workers, 'worker')} need {need_cpus:g} CPUs and {need_gpus:g} GPUs, more than the "
            "cluster has now; the run waits until enough nodes join"
        )


def _quiet_ray_data(data: Any) -> None:
    """Our progress bar and summary replace Ray Data's; its full logs stay in the session directory."""
    context = data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    if not os.environ.get("PALI_DEBUG"):
        for handler in logging.getLogger("ray.data").handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.CRITICAL)  # its errors reach us as exceptions


def _dataset(
    data: Any, todo: Sequence[Source], job: Job, preset: str, max_tokens: int, opts: RunOptions, pool: Pool
) -> Any:
    from pali_cli.ray_worker import PaliWorker, WorkerSpec, rows_for, worker_options

    spec = WorkerSpec(job, preset, worker_options(opts, pool.cpus), max_tokens)
    rows = rows_for(todo, Path.cwd())
    per_block = max(opts.batch_size, math.ceil(len(rows) / MAX_BLOCKS))
    items = data.from_items(rows, override_num_blocks=math.ceil(len(rows) / per_block))
    return items.map_batches(
        PaliWorker,
        fn_constructor_kwargs={"spec": spec},
        batch_size=opts.batch_size,
        batch_format="numpy",
        compute=data.ActorPoolStrategy(size=pool.workers, max_tasks_in_flight_per_actor=TASKS_PER_ACTOR),
        num_cpus=pool.cpus,
        num_gpus=pool.gpus or None,
    )


# ---------------------------------------------------------------------------------- streaming


def _stream(dataset: Any, stop: StopSignals) -> Generator[Record, None, None]:
    """Records as the workers finish them; ends early (closing the dataset) when ``stop`` fires."""
    from pali_cli.ray_worker import RECORD, record_from_json

    rows = iter(dataset.iter_rows())
    try:
        while stop.signum is None:
            try:
                with stop.interruptible():
                    row = next(rows)
            except (StopIteration, _Stopped):
                return
            except Exception as e:  # noqa: BLE001 - sorted out below
                if stop.signum is not None:
                    return  # Ctrl-C in a terminal also reaches a local runtime's processes
                raise _as_pali_error(e) from None
            yield record_from_json(row[RECORD])
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()  # shuts the streaming executor down: no more batches are started


def _as_pali_error(error: Exception) -> PaliError:
    """A worker's own error (the model cannot be loaded, or fails on every image) reads as it
    would in a local run; anything else from Ray is named as such."""
    from pali_cli.ray_worker import find_worker_failure

    texts: list[str] = []
    seen = 0
    cause: BaseException | None = error
    while cause is not None and seen < 10:  # Ray nests its errors a few levels deep
        texts.append(str(cause))
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    failure = find_worker_failure("\n".join(texts))
    if failure is not None:
        if isinstance(failure, CliError):
            failure.hint = failure.hint or WORKER_HINT
        else:  # the kind's own CLI hint still comes (pali_cli.errors.hint_for); say where it happened
            add_cli_note(failure, WORKER_HINT)
        return failure
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return CliError(
        f"the Ray run failed: {type(error).__name__}: {first}",
        hint="Records written so far are kept; run the same command again to do the rest "
        "(PALI_DEBUG=1 shows Ray's logs).",
    )


def unique(records: Iterable[Record]) -> Iterator[Record]:
    """Drops a record whose key was already handed on: a batch Ray ran twice (a worker died after
    its results were sent) must not be written twice."""
    seen: set[RecordKey] = set()
    for record in records:
        if record.key not in seen:
            seen.add(record.key)
            yield record


class _Stopped(Exception):
    """Raised by the signal handler to break out of a wait on the workers."""


class StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP while a Ray run is going (pali_cli.signals): the first one
    stops it (see the module docstring); the record being written when it came is finished first.
    Only the main thread can install handlers; elsewhere the signals keep their default behaviour."""

    def __init__(self, on_first: Callable[[], None]) -> None:
        self.signum: int | None = None
        self._on_first = on_first
        self._waiting = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            try:
                self._on_first()
            except OSError:
                pass  # SIGHUP: the terminal that would show the message is gone
        if self._waiting:
            self._waiting = False
            raise _Stopped

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A wait that a signal may break (nothing is being written meanwhile)."""
        self._waiting = True
        try:
            if self.signum is not None:
                raise _Stopped
            yield
        finally:
            self._waiting = False

    def __enter__(self) -> StopSignals:
        self._previous = signals.install(self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signals.restore(self._previous)
