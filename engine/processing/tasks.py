"""PaliGemma task prompts and the parsing of their structured outputs (pure text, no torch).

Prompt syntax (ai.google.dev "PaliGemma prompt and system instructions"; big_vision transfer
configs): ``"caption {lang}\\n"``, ``"answer {lang} {question}\\n"``,
``"detect {object} ; {object}\\n"``, ``"segment {object}\\n"``, ``"ocr\\n"``. The trailing newline
is the prompt/answer separator; the preprocessor accepts prompts with or without it, the builders
here always add it so a prompt reads the same wherever it is printed.

A newline inside a prompt would end the prefix early and ``;`` separates detection classes, so
user text is normalised before it goes in: whitespace runs (newlines included) collapse to one
space, and object names lose any ``;``.

Detection output (big_vision refcoco_mask2str; transformers' PaliGemma integration tests) is
``<locY1><locX1><locY2><locX2> label`` repeated and joined by ``" ; "``: four 0..1023 bins per box,
in the order y_min, x_min, y_max, x_max, as fractions ``bin / 1024`` of the image the model saw.
That image is the whole picture squashed to a square, so the fractions map straight onto the
original width and height.

Segmentation output (big_vision's segmentation evaluator) is the same with 16 ``<segNNN>`` codes
after the four loc tokens. ``parse_loc_objects`` is the one parser of such answers: it returns what
each instance says (label, raw bins, raw seg codes) and leaves geometry to ``parse_detections``
(boxes) and ``engine.processing.segmentation`` (boxes and masks).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from engine.errors import InputError

# <loc0000> .. <loc1023>; bin / 1024 is the common convention (Google's Keras tutorial, the
# big-vision/paligemma-hf space)
LOC_BINS = 1024

# Four loc tokens, any run of seg tokens (16 in a well-formed segmentation answer; the run is taken
# whole so that a cut or overlong one is seen as such, not half-read), then an optional label up to
# the next ";" or token. Applied repeatedly over the whole text, so junk between instances is skipped.
_INSTANCE = re.compile(
    r"<loc(\d{4})>\s*<loc(\d{4})>\s*<loc(\d{4})>\s*<loc(\d{4})>"
    r"((?:\s*<seg\d{3}>)*)"
    r"\s*([^;<>]*)"
)
_SEG = re.compile(r"<seg(\d{3})>")
_SPACES = re.compile(r"\s+")


def _one_line(text: str, what: str) -> str:
    cleaned = _SPACES.sub(" ", text).strip()
    if not cleaned:
        raise InputError(f"{what} is empty")
    return cleaned


def _lang(lang: str) -> str:
    # A language code is one word in the prompt; anything with spaces would shift the task syntax.
    code = lang.strip()
    if not code or _SPACES.search(code):
        raise InputError(f"language code {lang!r} must be one word, e.g. 'en', 'fr', 'zh'")
    return code


def caption_prompt(lang: str = "en") -> str:
    """``"caption {lang}\\n"``: a short caption in the given language."""
    return f"caption {_lang(lang)}\n"


def answer_prompt(question: str, lang: str = "en") -> str:
    """``"answer {lang} {question}\\n"``: visual question answering."""
    return f"answer {_lang(lang)} {_one_line(question, 'the question')}\n"


def split_objects(objects: str | Iterable[str]) -> list[str]:
    """Object names from ``"cat ; dog"`` (or a list of names), stripped, empty ones dropped."""
    parts = objects.split(";") if isinstance(objects, str) else [p for o in objects for p in o.split(";")]
    names = [_SPACES.sub(" ", p).strip() for p in parts]
    return [n for n in names if n]


def _objects_clause(objects: str | Iterable[str]) -> str:
    names = split_objects(objects)
    if not names:
        raise InputError("no object names given; name what to find, e.g. 'cat ; dog'")
    return " ; ".join(names)


def detect_prompt(objects: str | Iterable[str]) -> str:
    """``"detect {a} ; {b}\\n"`` from ``"a ; b"`` or ``["a", "b"]``."""
    return f"detect {_objects_clause(objects)}\n"


def segment_prompt(objects: str | Iterable[str]) -> str:
    """``"segment {a} ; {b}\\n"`` (PaliGemma 1 models are trained on one object per prompt)."""
    return f"segment {_objects_clause(objects)}\n"


def ocr_prompt() -> str:
    """``"ocr\\n"``: read the text in the image."""
    return "ocr\n"


@dataclass(frozen=True)
class Detection:
    """One detected object: ``box`` is ``(x_min, y_min, x_max, y_max)`` in pixels of the original
    image, ``normalized`` the same corners as fractions of the width and height (in [0, 1))."""

    label: str
    box: tuple[float, float, float, float]
    normalized: tuple[float, float, float, float]


@dataclass(frozen=True)
class LocObject:
    """One instance of a loc/seg answer as written: ``bins`` are the four loc numbers in the order
    y_min, x_min, y_max, x_max (0..9999 as text allows; 0..1023 are real tokens), ``seg`` the
    ``<segNNN>`` numbers that follow (empty for a detection), ``label`` the stripped text after."""

    label: str
    bins: tuple[int, int, int, int]
    seg: tuple[int, ...]


def parse_loc_objects(text: str) -> list[LocObject]:
    """Every ``<loc>``x4 instance of ``text``, in order; never raises, judges nothing."""
    found = []
    for m in _INSTANCE.finditer(text):
        y1, x1, y2, x2 = (int(g) for g in m.group(1, 2, 3, 4))
        seg = tuple(int(code) for code in _SEG.findall(m.group(5)))
        found.append(LocObject(label=m.group(6).strip(), bins=(y1, x1, y2, x2), seg=seg))
    return found


def parse_detections(text: str, width: int, height: int) -> list[Detection]:
    """Parses detection (or segmentation) output into boxes in pixels of a ``width`` x ``height``
    image. Inverted boxes are put in order and everything is clamped to the image; seg codes are
    ignored (see ``engine.processing.segmentation`` for masks)."""
    if width <= 0 or height <= 0:
        raise InputError(f"image size must be positive, got {width}x{height}")
    found = []
    for obj in parse_loc_objects(text):
        y1, x1, y2, x2 = (b / LOC_BINS for b in obj.bins)
        y1, y2 = sorted((y1, y2))
        x1, x2 = sorted((x1, x2))
        box = (
            _clamp(x1 * width, width),
            _clamp(y1 * height, height),
            _clamp(x2 * width, width),
            _clamp(y2 * height, height),
        )
        found.append(Detection(label=obj.label, box=box, normalized=(x1, y1, x2, y2)))
    return found


def _clamp(v: float, hi: int) -> float:
    return min(max(v, 0.0), float(hi))
