"""What each generation command asks the model, and how its answer is shown.

A ``Job`` is the command-specific part of a run: the prompt (built by ``engine.processing.tasks``,
whose InputError for an empty question or object list exits with the usage code), the default
token budget, extra record fields parsed from the output, and the plain-text rendering used when
one image is printed to a terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pali_cli.errors import UsageProblem
from pali_cli.records import Record

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

    @property
    def record_prompt(self) -> str:
        """The prompt as recorded (and keyed): without the separator."""
        return self.prompt.rstrip("\n")


def caption_job(lang: str) -> Job:
    from engine.processing.tasks import caption_prompt

    return Job("caption", caption_prompt(lang))


def answer_job(question: str, lang: str) -> Job:
    from engine.processing.tasks import answer_prompt

    return Job("answer", answer_prompt(question, lang), max_tokens=128)


def ocr_job() -> Job:
    from engine.processing.tasks import ocr_prompt

    return Job("ocr", ocr_prompt(), max_tokens=256)


def raw_job(prompt: str) -> Job:
    """A prompt typed by the user. ``"caption en\\n"`` typed in a shell arrives with a literal
    backslash-n; that and a real trailing newline are both read as the separator."""
    text = prompt.strip()
    if text.endswith("\\n"):
        text = text[:-2].rstrip()
    if not text:
        raise UsageProblem("the prompt is empty; e.g. 'caption en', 'ocr' or 'detect cat ; dog'")
    if "\n" in text:
        raise UsageProblem(
            "the prompt has a line break inside; PaliGemma prompts are one line (the newline ends the prompt)"
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


def detect_job(objects: str) -> Job:
    from engine.processing.tasks import detect_prompt

    return Job(
        "detect",
        detect_prompt(objects),
        max_tokens=256,
        extras=_detection_extras,
        render=_render_detections,
    )
