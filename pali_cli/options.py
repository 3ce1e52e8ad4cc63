"""Options shared by every generation command, declared once.

``RunOptions`` is both the declaration and the value: each field's ``Annotated`` type carries its
Typer option, and ``@run_options`` appends those options to a command's own parameters, then hands
the command one validated ``RunOptions``. So ``caption``, ``ask``, ``prompt``, ``detect`` and ``ocr``
list only what is theirs, and a new shared option is one line here.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from engine.checkpoints.presets import DEFAULT_PRESET
from engine.sampler_config import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P, SamplerConfig
from pali_cli.errors import UsageProblem
from pali_cli.sidecar import OnExisting

INPUT, OUTPUT, SIDECAR, MODEL, GENERATION = "Input", "Output", "Sidecar files", "Model", "Generation"
SCALE_OUT = "Scale-out (Ray)"


class Sampler(str, Enum):
    greedy = "greedy"
    top_k = "top-k"
    top_p = "top-p"
    random = "random"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class DType(str, Enum):
    auto = "auto"
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class Quantize(str, Enum):
    none = "none"
    int8 = "int8"
    int4 = "int4"


# ----------------------------------------------------------------------------- option aliases

Images = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="IMAGES",
        show_default=False,
        help='Image files, directories, quoted globs such as "photos/**/*.jpg", http(s) URLs, or - for stdin.',
    ),
]
Lang = Annotated[
    str, typer.Option("--lang", "-l", metavar="CODE", help="Language code of the output, e.g. en, fr, de, zh.")
]

# Options of some commands only (detect, segment).
Draw = Annotated[
    Path | None,
    typer.Option(
        "--draw",
        metavar="DIR",
        file_okay=False,
        help="Also write each image with its results drawn on it to DIR (photo.jpg -> DIR/photo.<command>.png).",
        rich_help_panel=OUTPUT,
    ),
]
MasksDir = Annotated[
    Path | None,
    typer.Option(
        "--masks-dir",
        metavar="DIR",
        file_okay=False,
        help="Also write one PNG mask per object to DIR (photo.jpg -> DIR/photo.mask0.png, photo.mask1.png ...).",
        rich_help_panel=OUTPUT,
    ),
]
SegDecoder = Annotated[
    Path | None,
    typer.Option(
        "--seg-decoder",
        metavar="FILE",
        envvar="PALI_SEG_DECODER",
        show_envvar=True,
        dir_okay=False,
        help="A local copy of big_vision's mask decoder vae-oid.npz.  \\[default: downloaded once into the cache]",
        rich_help_panel=MODEL,
    ),
]

Recursive = Annotated[
    bool,
    typer.Option("--recursive", "-r", metavar="", help="Also take images in subdirectories.", rich_help_panel=INPUT),
]
FilesFrom = Annotated[
    str | None,
    typer.Option(
        "--files-from",
        metavar="FILE",
        help="Read image paths from FILE, one per line ('-' for stdin).",
        rich_help_panel=INPUT,
    ),
]
Output = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        dir_okay=False,
        help="Append JSONL records to FILE ('-': stdout). Rerunning the same command resumes: images already in "
        "FILE are skipped.",
        rich_help_panel=OUTPUT,
    ),
]
Json = Annotated[
    bool,
    typer.Option(
        "--json", metavar="", help="Print JSON records on stdout, even for one image.", rich_help_panel=OUTPUT
    ),
]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite", metavar="", help="Empty the --output file first instead of resuming.", rich_help_panel=OUTPUT
    ),
]
RetryFailed = Annotated[
    bool,
    typer.Option(
        "--retry-failed", metavar="", help="Redo images whose record in --output is an error.", rich_help_panel=OUTPUT
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        metavar="",
        help="Nothing on stderr but errors: no progress, warnings or timing.",
        rich_help_panel=OUTPUT,
    ),
]
Sidecar = Annotated[
    bool,
    typer.Option(
        "--sidecar",
        metavar="",
        help="Write the text to a file next to each image (a.jpg -> a.txt).",
        rich_help_panel=SIDECAR,
    ),
]
SidecarExt = Annotated[
    str | None,
    typer.Option("--sidecar-ext", metavar="EXT", help="Sidecar extension.  \\[default: .txt]", rich_help_panel=SIDECAR),
]
OnExistingOpt = Annotated[
    OnExisting | None,
    typer.Option(
        "--on-existing",
        metavar="skip|overwrite|append",
        case_sensitive=False,
        help="When a sidecar exists: skip the image, overwrite or append.  \\[default: skip]",
        rich_help_panel=SIDECAR,
    ),
]
Prefix = Annotated[
    str | None,
    typer.Option("--prefix", metavar="TEXT", help="Text put before the sidecar text.", rich_help_panel=SIDECAR),
]
Suffix = Annotated[
    str | None,
    typer.Option("--suffix", metavar="TEXT", help="Text put after the sidecar text.", rich_help_panel=SIDECAR),
]
Preset = Annotated[
    str | None,
    typer.Option(
        "--preset",
        "-p",
        metavar="NAME|DIR",
        envvar="PALI_PRESET",
        show_envvar=True,
        help=f"Model preset (see 'pali presets list') or a local checkpoint directory.  \\[default: {DEFAULT_PRESET}]",
        rich_help_panel=MODEL,
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        metavar="DIR",
        envvar="PALI_CACHE_DIR",
        show_envvar=True,
        file_okay=False,
        help="Where presets are downloaded.  \\[default: see 'pali presets path']",
        rich_help_panel=MODEL,
    ),
]
DeviceOpt = Annotated[
    Device,
    typer.Option(
        "--device",
        metavar="auto|cpu|cuda|mps",
        envvar="PALI_DEVICE",
        show_envvar=True,
        case_sensitive=False,
        help="Where to run the model.",
        rich_help_panel=MODEL,
    ),
]
DTypeOpt = Annotated[
    DType,
    typer.Option(
        "--dtype",
        metavar="auto|bfloat16|float16|float32",
        case_sensitive=False,
        help="Weight precision (auto: bfloat16 where fast, else float32).",
        rich_help_panel=MODEL,
    ),
]
QuantizeOpt = Annotated[
    Quantize,
    typer.Option(
        "--quantize",
        metavar="none|int8",
        envvar="PALI_QUANTIZE",
        show_envvar=True,
        case_sensitive=False,
        help="Weight-only quantization: int8 halves memory and speeds up decoding on CPU (small accuracy cost); "
        "int4 quarters the decoder's memory (larger accuracy cost). The first run quantizes and caches the weights.",
        rich_help_panel=MODEL,
    ),
]
Threads = Annotated[
    int | None, typer.Option("--threads", metavar="N", help="CPU threads for the model.", rich_help_panel=MODEL)
]
BatchSize = Annotated[
    int, typer.Option("--batch-size", "-b", metavar="N", help="Images per forward pass.", rich_help_panel=MODEL)
]
MaxTokens = Annotated[
    int | None,
    typer.Option(
        "--max-tokens",
        metavar="N",
        help="Most tokens to generate per image.  \\[default: 128; 256 for ocr, detect and segment]",
        rich_help_panel=GENERATION,
    ),
]
SamplerOpt = Annotated[
    Sampler | None,
    typer.Option(
        "--sampler",
        metavar="greedy|top-k|top-p|random",
        case_sensitive=False,
        help="Decoding: greedy, or sampling. Default: greedy, or the sampler the other options imply.",
        rich_help_panel=GENERATION,
    ),
]
# The defaults are the engine's (engine.sampler_config), shown here and applied by it.
Temperature = Annotated[
    float | None,
    typer.Option(
        "--temperature",
        metavar="T",
        help=f"Sampling temperature (> 0).  \\[default: {DEFAULT_TEMPERATURE}]",
        rich_help_panel=GENERATION,
    ),
]
TopK = Annotated[
    int | None,
    typer.Option(
        "--top-k",
        metavar="K",
        help=f"Sample among the k likeliest tokens.  \\[default: {DEFAULT_TOP_K}]",
        rich_help_panel=GENERATION,
    ),
]
TopP = Annotated[
    float | None,
    typer.Option(
        "--top-p",
        metavar="P",
        help="Sample from the smallest set of tokens with this total probability (0 < p <= 1)."
        f"  \\[default: {DEFAULT_TOP_P}]",
        rich_help_panel=GENERATION,
    ),
]
Seed = Annotated[
    int | None, typer.Option("--seed", metavar="N", help="Random seed for sampling.", rich_help_panel=GENERATION)
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="local|ADDRESS",
        help="Run on Ray: 'local' starts a Ray runtime on this machine, an ADDRESS (auto, HOST:PORT, "
        'ray://HOST:PORT) joins a cluster. Needs pip install "pali\\[ray]".',
        rich_help_panel=SCALE_OUT,
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        metavar="N",
        help="Ray workers, each with its own copy of the model.  \\[default: 1]",
        rich_help_panel=SCALE_OUT,
    ),
]
WorkerCpus = Annotated[
    float | None,
    typer.Option(
        "--worker-cpus",
        metavar="N",
        help="CPUs reserved per Ray worker (fractions allowed); also its torch threads.  \\[default: 1]",
        rich_help_panel=SCALE_OUT,
    ),
]
WorkerGpus = Annotated[
    float | None,
    typer.Option(
        "--worker-gpus",
        metavar="N",
        help="GPUs reserved per Ray worker (fractions allowed).  \\[default: 0]",
        rich_help_panel=SCALE_OUT,
    ),
]


@dataclass(frozen=True)
class RunOptions:
    """Shared options of the generation commands (field order = order in --help)."""

    recursive: Recursive = False
    files_from: FilesFrom = None
    output: Output = None
    json: Json = False
    overwrite: Overwrite = False
    retry_failed: RetryFailed = False
    quiet: Quiet = False
    sidecar: Sidecar = False
    sidecar_ext: SidecarExt = None
    on_existing: OnExistingOpt = None
    prefix: Prefix = None
    suffix: Suffix = None
    preset: Preset = None
    cache_dir: CacheDir = None
    device: DeviceOpt = Device.auto
    dtype: DTypeOpt = DType.auto
    quantize: QuantizeOpt = Quantize.none
    threads: Threads = None
    batch_size: BatchSize = 1
    max_tokens: MaxTokens = None
    sampler: SamplerOpt = None
    temperature: Temperature = None
    top_k: TopK = None
    top_p: TopP = None
    seed: Seed = None
    ray: RayAddress = None
    workers: Workers = None
    worker_cpus: WorkerCpus = None
    worker_gpus: WorkerGpus = None
    # Not an option: the names of the options whose value came from an environment variable.
    from_env: frozenset[str] = field(default=frozenset(), metadata={"option": False})

    def __post_init__(self) -> None:
        self._check_ray()
        self._check_counts()
        if (self.overwrite or self.retry_failed) and self.output is None:
            flag = "--overwrite" if self.overwrite else "--retry-failed"
            raise UsageProblem(f"{flag} works on a results file; add -o FILE")
        if self.overwrite and self.retry_failed:
            raise UsageProblem("--overwrite and --retry-failed contradict each other; choose one")
        if not self.sidecar:
            given = [
                flag
                for flag, v in (
                    ("--sidecar-ext", self.sidecar_ext),
                    ("--on-existing", self.on_existing),
                    ("--prefix", self.prefix),
                    ("--suffix", self.suffix),
                )
                if v is not None
            ]
            if given:
                raise UsageProblem(f"{', '.join(given)} only shape sidecar files; add --sidecar")
        if self.temperature is not None and not self.temperature > 0:
            raise UsageProblem(
                f"--temperature must be greater than 0, got {self.temperature:g}; "
                "use --sampler greedy for deterministic output"
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageProblem(f"--top-p must be in (0, 1], got {self.top_p:g}")
        self._check_sampler()

    def _check_counts(self) -> None:
        for flag, value in (
            ("--batch-size", self.batch_size),
            ("--threads", self.threads),
            ("--max-tokens", self.max_tokens),
            ("--top-k", self.top_k),
        ):
            if value is not None and value < 1:
                raise UsageProblem(f"{flag} must be at least 1, got {value}")

    def _check_sampler(self) -> None:
        """One rule: a sampling option the sampler in use does not read is an error, not ignored."""
        given = [
            flag
            for flag, v in (("--temperature", self.temperature), ("--top-k", self.top_k), ("--top-p", self.top_p))
            if v is not None
        ]
        name = self._sampler()
        unused = [flag for flag in given if flag not in _READS[name]]
        if not unused:
            return
        if name is Sampler.greedy:
            raise UsageProblem(
                f"{', '.join(unused)} only apply to sampling; drop them or pick --sampler top-k, top-p or random"
            )
        if self.sampler is None:  # implied by --top-p, with --top-k given too
            raise UsageProblem("--top-k and --top-p pick different samplers; keep one, or pick one with --sampler")
        verb = "is" if len(unused) == 1 else "are"
        users = " or ".join(f"--sampler {s.value}" for s in Sampler if set(unused) <= _READS[s] and s is not name)
        raise UsageProblem(
            f"{', '.join(unused)} {verb} not used by --sampler {name.value}; drop it"
            + (f", or use {users}" if users else "")
        )

    def _sampler(self) -> Sampler:
        if self.sampler is not None:
            return self.sampler
        if self.top_p is not None:
            return Sampler.top_p
        if self.top_k is not None:
            return Sampler.top_k
        if self.temperature is not None:
            return Sampler.random
        return Sampler.greedy

    def _check_ray(self) -> None:
        if self.ray is None:
            given = [
                flag
                for flag, v in (
                    ("--workers", self.workers),
                    ("--worker-cpus", self.worker_cpus),
                    ("--worker-gpus", self.worker_gpus),
                )
                if v is not None
            ]
            if given:
                raise UsageProblem(f"{', '.join(given)} only apply to Ray workers; add --ray local or --ray ADDRESS")
            return
        if not self.ray.strip():
            raise UsageProblem("--ray needs 'local' or a cluster address such as auto, HOST:PORT or ray://HOST:PORT")
        if self.workers is not None and self.workers < 1:
            raise UsageProblem(f"--workers must be at least 1, got {self.workers}")
        if self.worker_cpus is not None and not self.worker_cpus > 0:
            raise UsageProblem(f"--worker-cpus must be greater than 0, got {self.worker_cpus:g}")
        if self.worker_gpus is not None and not self.worker_gpus >= 0:
            raise UsageProblem(f"--worker-gpus must be 0 or more, got {self.worker_gpus:g}")

    def sampler_config(self) -> SamplerConfig:
        """The engine's sampler configuration, filled from the options. Explicit ``--sampler``
        wins; otherwise ``--top-p`` implies top-p, ``--top-k`` top-k and a lone ``--temperature``
        plain random sampling; with none of them, greedy. Options not given keep the engine's
        defaults."""
        return SamplerConfig(
            name=self._sampler().value,
            temperature=DEFAULT_TEMPERATURE if self.temperature is None else self.temperature,
            top_k=DEFAULT_TOP_K if self.top_k is None else self.top_k,
            top_p=DEFAULT_TOP_P if self.top_p is None else self.top_p,
            seed=self.seed,
        )


# What each sampler reads (engine.sampler_config.SamplerConfig's docstring).
_READS: dict[Sampler, set[str]] = {
    Sampler.greedy: set(),
    Sampler.top_k: {"--temperature", "--top-k"},
    Sampler.top_p: {"--temperature", "--top-p"},
    Sampler.random: {"--temperature"},
}


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Adds the ``RunOptions`` options to a command; the command receives them as ``opts``."""
    signature = inspect.signature(func, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "opts"]
    hints = typing.get_type_hints(RunOptions, include_extras=True)
    options = [f for f in fields(RunOptions) if f.metadata.get("option", True)]
    shared = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name], default=f.default)
        for f in options
    ]
    context = inspect.Parameter("_pali_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    names = [f.name for f in options]

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        ctx = kwargs.pop("_pali_ctx")
        from_env = frozenset(name for name in names if _source(ctx, name) == "ENVIRONMENT")
        opts = RunOptions(**{name: kwargs.pop(name) for name in names}, from_env=from_env)
        return func(**kwargs, opts=opts)

    params = [*own, *shared, context]
    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _source(ctx: Any, name: str) -> str | None:
    """Where click took an option's value from (COMMANDLINE, ENVIRONMENT, DEFAULT ...)."""
    source = ctx.get_parameter_source(name) if hasattr(ctx, "get_parameter_source") else None
    return getattr(source, "name", None)
