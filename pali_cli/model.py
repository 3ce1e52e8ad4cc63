"""The CLI's only door into the model engine. Everything that imports torch is imported inside
these functions, so ``pali --help`` and the rest of the CLI never pay for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pali_cli.console import Reporter, Stopwatch, format_duration
from pali_cli.errors import ModelUnavailable, PaliError, UsageProblem
from pali_cli.options import RunOptions, Sampler, SamplerChoice


def canonical_preset(spec: str | None) -> str:
    """The model as recorded and keyed: a preset name or alias becomes the canonical name, a
    checkpoint directory its absolute path, ``hf://owner/repo[@rev]`` stays as written. An unknown
    name is a usage error, found before any model is loaded."""
    from engine.checkpoints.hub import HubSource, ModelUnavailableError, parse_spec
    from engine.checkpoints.presets import DEFAULT_PRESET, UnknownPresetError, get_preset

    text = (spec or "").strip() or DEFAULT_PRESET
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path.resolve())
    try:
        return get_preset(text).name
    except UnknownPresetError:
        pass
    try:
        source = parse_spec(text)
    except UnknownPresetError as e:
        raise UsageProblem(str(e)) from None
    except ModelUnavailableError as e:
        raise ModelUnavailable(str(e)) from None
    return source.label if isinstance(source, HubSource) else str(source)


def make_sampler(choice: SamplerChoice) -> Any:
    import engine

    if choice.name is Sampler.greedy:
        return engine.GreedySampler()
    if choice.name is Sampler.top_k:
        return engine.TopKSampler(k=choice.top_k, temperature=choice.temperature, seed=choice.seed)
    if choice.name is Sampler.top_p:
        return engine.TopPSampler(p=choice.top_p, k=None, temperature=choice.temperature, seed=choice.seed)
    return engine.RandomSampler(temperature=choice.temperature, seed=choice.seed)


def load_model(preset: str, opts: RunOptions, reporter: Reporter) -> Any:
    """Loads and compiles the model; engine and hub errors become CLI errors with exit codes."""
    import engine
    from engine.checkpoints.hub import ModelUnavailableError
    from engine.checkpoints.presets import UnknownPresetError

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
        lm.compile(sampler=make_sampler(opts.sampler_choice()))
    except ModelUnavailableError as e:
        raise ModelUnavailable(str(e)) from None
    except UnknownPresetError as e:
        raise UsageProblem(str(e)) from None
    except (ValueError, OSError, RuntimeError) as e:
        # A broken or foreign checkpoint, a device that is not there: the engine's message names it.
        raise PaliError(f"cannot load model {preset}: {e}") from None
    device = str(getattr(lm, "device", "?"))
    dtype = str(getattr(lm, "dtype", "?")).removeprefix("torch.")
    quantized = "" if opts.quantize.value == "none" else f", {opts.quantize.value} weights"
    reporter.info(f"Loaded in {format_duration(clock.seconds)} ({device}, {dtype}{quantized})")
    return lm


def load_mask_decoder(path: Path | None, opts: RunOptions) -> Any:
    """The segmentation mask decoder: ``path`` (``--seg-decoder`` / ``PALI_SEG_DECODER``), else the
    verified cached copy, else one download. A file that is not the decoder is a runtime failure
    (exit 1), a download that cannot be made makes the model unavailable (exit 4)."""
    from engine.checkpoints.hub import ModelUnavailableError
    from engine.checkpoints.seg_decoder import MaskDecoderError
    from engine.processing import mask_decoder

    try:
        return mask_decoder.load_mask_decoder(path, opts.cache_dir, quiet=opts.quiet)
    except ModelUnavailableError as e:
        raise ModelUnavailable(str(e)) from None
    except MaskDecoderError as e:
        raise PaliError(str(e)) from None
