"""What each generation command asks the model, and how its answer is shown.

A ``Job`` is the command-specific part of a run: the prompt (built by ``engine.processing.tasks``,
whose InputError for an empty question or object list exits with the usage code), the default
token budget, extra record fields parsed from the output, the plain-text rendering used when one
image is printed to a terminal, the image files written besides the records (``--draw``,
``--masks-dir``) and what must be loaded before the model (``segment``'s mask decoder).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pali_cli.errors import UsageProblem
from pali_cli.records import Record

if TYPE_CHECKING:
    from pali_cli.artifacts import ImageOutputs
    from pali_cli.console import Reporter
    from pali_cli.options import RunOptions

Extras = Callable[[str, tuple[int, int]], dict[str, Any]]


def _no_extras(text: str, size: tuple[int, int]) -> dict[str, Any]:
    return {}


def _plain(record: Record) -> str | None:
    return record.text


@dataclass(frozen=True)
class Job:
    task: str  # record "task" field and part of the resume key
    prompt: str  # exactly what the model gets (ends with the "\n" separator)
    max_tokens: int = 128
    extras: Extras = _no_extras
    render: Callable[[Record], str | None] = _plain
    outputs: ImageOutputs | None = None
    # Run once the run is planned and before the model loads; returns the job to run (with its
    # extras bound to what it loaded). Failing here costs no model load.
    prepare: Callable[[Job, RunOptions, Reporter], Job] | None = None

    @property
    def record_prompt(self) -> str:
        """The prompt as recorded (and keyed): without the separator."""
        return self.prompt.rstrip("\n")

    @property
    def plain_text(self) -> bool:
        """Whether the answer is shown as the model writes it (so it can be shown as it comes)."""
        return self.render is _plain

    def nothing_found(self, record: Record) -> bool:
        """A detection or segmentation that found no object: plain text shows no line for it."""
        return not self.plain_text and record.ok and self.render(record) is None


def caption_job(lang: str) -> Job:
    from engine.processing.tasks import caption_prompt

    return Job("caption", caption_prompt(lang))


def answer_job(question: str, lang: str) -> Job:
    from engine.processing.tasks import answer_prompt

    return Job("answer", answer_prompt(question, lang), max_tokens=128)


def ocr_job() -> Job:
    from engine.processing.tasks import ocr_prompt

    return Job("ocr", ocr_prompt(), max_tokens=256)


def raw_job(prompt: str, seg_decoder: Path | None = None) -> Job:
    """A prompt typed by the user. ``"caption en\\n"`` typed in a shell arrives with a literal
    backslash-n; that and a real trailing newline are both read as the separator. A detection or
    segmentation prompt (``detect cat``, ``segment cat``) gets its answer parsed as those commands
    do (boxes, masks); the record's task stays "prompt"."""
    text = prompt.strip()
    if text.endswith("\\n"):
        text = text[:-2].rstrip()
    if not text:
        raise UsageProblem("the prompt is empty; e.g. 'caption en', 'ocr' or 'detect cat ; dog'")
    if "\n" in text:
        raise UsageProblem(
            "the prompt has a line break inside; PaliGemma prompts are one line (the newline ends the prompt)"
        )
    task = text.split(maxsplit=1)[0].lower()
    if task == "detect":
        return Job("prompt", text + "\n", max_tokens=256, extras=_detection_extras, render=_render_detections)
    if task == "segment":
        return Job(
            "prompt", text + "\n", max_tokens=256, render=_render_segments, prepare=_with_mask_decoder(seg_decoder)
        )
    return Job("prompt", text + "\n")


def _detection_extras(text: str, size: tuple[int, int]) -> dict[str, Any]:
    from engine.processing.tasks import parse_detections

    found = parse_detections(text, *size)
    return {"detections": [{"label": d.label, "box": [round(v, 1) for v in d.box]} for d in found]}


def _render_detections(record: Record) -> str | None:
    # One object per line, tab-separated: label, then x_min y_min x_max y_max in pixels.
    rows = ["\t".join([d["label"], *(str(round(v)) for v in d["box"])]) for d in record.extra.get("detections", [])]
    return "\n".join(rows) if rows else None


def _outputs(task: str, draw: Path | None, masks_dir: Path | None = None) -> ImageOutputs | None:
    from pali_cli.artifacts import ImageOutputs

    return ImageOutputs(task, draw, masks_dir) if draw or masks_dir else None


def detect_job(objects: str, draw: Path | None = None) -> Job:
    from engine.processing.tasks import detect_prompt

    return Job(
        "detect",
        detect_prompt(objects),
        max_tokens=256,
        extras=_detection_extras,
        render=_render_detections,
        outputs=_outputs("detect", draw),
    )


def _render_segments(record: Record) -> str | None:
    # One object per line, tab-separated: label, x_min y_min x_max y_max (pixel edges), mask area in
    # pixels ("-" for an object answered with a box only).
    from pali_cli.artifacts import mask_area

    rows = [
        "\t".join([s["label"], *(str(v) for v in s["box"]), "-" if s["mask"] is None else str(mask_area(s["mask"]))])
        for s in record.extra.get("segments", [])
    ]
    return "\n".join(rows) if rows else None


def _segmentation_extras(decoder: Any) -> Extras:
    def extras(text: str, size: tuple[int, int]) -> dict[str, Any]:
        from engine import parse_segmentation
        from pali_cli.artifacts import encode_mask

        found = parse_segmentation(text, size, decoder=decoder)
        return {
            "segments": [
                {"label": s.label, "box": list(s.box), "mask": None if s.mask is None else encode_mask(s.mask)}
                for s in found
            ]
        }

    return extras


def _with_mask_decoder(path: Path | None) -> Callable[[Job, RunOptions, Reporter], Job]:
    def prepare(job: Job, opts: RunOptions, reporter: Reporter) -> Job:
        from pali_cli.model import load_mask_decoder

        decoder = load_mask_decoder(path, opts)
        return dataclasses.replace(job, extras=_segmentation_extras(decoder), prepare=None)

    return prepare


def segment_job(
    objects: str, seg_decoder: Path | None = None, masks_dir: Path | None = None, draw: Path | None = None
) -> Job:
    from engine.processing.tasks import segment_prompt

    return Job(
        "segment",
        segment_prompt(objects),
        max_tokens=256,
        render=_render_segments,
        outputs=_outputs("segment", draw, masks_dir),
        prepare=_with_mask_decoder(seg_decoder),
    )
