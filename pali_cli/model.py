"""The CLI's only door into the model engine. Everything that imports torch is imported inside
these functions, so ``pali --help`` and the rest of the CLI never pay for it. Engine errors pass
through unchanged: ``app.PaliGroup`` maps their kinds to exit codes (pali_cli.errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import PaliError
from pali_cli.console import Reporter, Stopwatch, format_duration
from pali_cli.errors import CliError, UsageProblem
from pali_cli.options import RunOptions


def canonical_preset(spec: str | None, env_var: str | None = None) -> str:
    """The model as recorded and keyed: a preset name or alias becomes the canonical name, a
    checkpoint directory its absolute path, ``hf://owner/repo[@rev]`` stays as written. An unknown
    name or a local path that is no checkpoint directory is a usage error, found before any model
    is loaded; ``env_var`` names the variable the spec came from, for the message."""
    from engine import InputError
    from engine.checkpoints.hub import check_local_dir, parse_spec
    from engine.checkpoints.presets import DEFAULT_PRESET

    try:
        parsed = parse_spec((spec or "").strip() or DEFAULT_PRESET)
        if parsed.local is not None and parsed.preset is None:
            check_local_dir(parsed)
    except InputError as e:
        if env_var is None:
            raise
        raise UsageProblem(
            f"{env_var}={spec}: {e}", hint=f"Unset {env_var}, or set it to a name from `pali presets list`."
        ) from None
    return parsed.label


def load_model(preset: str, opts: RunOptions, reporter: Reporter) -> Any:
    """Loads the model and sets its sampler from the options."""
    import engine

    if opts.threads:
        engine.set_num_threads(opts.threads)
    if opts.quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    reporter.info(f"Loading {preset} ...")
    clock = Stopwatch()
    try:
        lm = engine.PaliGemmaCausalLM.from_preset(
            preset,
            dtype=opts.dtype.value,
            device=opts.device.value,
            cache_dir=opts.cache_dir,
            quantize=None if opts.quantize.value == "none" else opts.quantize.value,
        )
    except PaliError:
        raise
    except (OSError, RuntimeError) as e:
        # The engine raises PaliErrors; torch may still raise its own while building the model
        # (out of memory, a device that fails): the message names what failed.
        raise CliError(f"cannot load model {preset}: {e}") from None
    lm.compile(sampler=opts.sampler_config())
    device = str(getattr(lm, "device", "?"))
    dtype = str(getattr(lm, "dtype", "?")).removeprefix("torch.")
    quantized = "" if opts.quantize.value == "none" else f", {opts.quantize.value} weights"
    reporter.info(f"Loaded in {format_duration(clock.seconds)} ({device}, {dtype}{quantized})")
    return lm


def load_mask_decoder(path: Path | None, opts: RunOptions) -> Any:
    """The segmentation mask decoder: ``path`` (``--seg-decoder`` / ``PALI_SEG_DECODER``), else the
    verified cached copy, else one download. Its errors are the engine's (a file that is not the
    decoder: exit 1; a download that cannot be made: exit 4; see pali_cli.errors)."""
    import engine

    return engine.load_mask_decoder(path, opts.cache_dir, quiet=opts.quiet)
