"""parse_segmentation: where boxes and masks land, and what it does with malformed answers.

Placement is checked against an analytic reference: a stand-in decoder samples a known ellipse on
the 64x64 grid, and the expected mask is that ellipse evaluated directly at every image pixel's
centre inside the box (no resizing involved). Boxes are checked against the continuous edges
``bin / 1023 * size`` (big_vision's segmentation evaluator's scale).
"""

from __future__ import annotations

import io
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.processing.image import load_image
from engine.processing.segmentation import Segment, parse_segmentation
from engine.processing.tasks import parse_detections


def loc(*bins: int) -> str:
    return "".join(f"<loc{b:04d}>" for b in bins)


def seg(codes) -> str:
    return "".join(f"<seg{c:03d}>" for c in codes)


def ellipse(u, v, codes) -> np.ndarray:
    """A field > 0 inside an ellipse whose centre and radii depend on the first codes (so each
    object of an answer gets its own shape); (u, v) are fractions of the box's width and height."""
    cu, cv = 0.35 + codes[0] / 127 * 0.3, 0.35 + codes[1] / 127 * 0.3
    ru, rv = 0.2 + codes[2] / 127 * 0.25, 0.2 + codes[3] / 127 * 0.25
    return 1.0 - ((u - cu) / ru) ** 2 - ((v - cv) / rv) ** 2


def ellipse_decoder(codes):
    centres = (np.arange(64) + 0.5) / 64
    u, v = np.meshgrid(centres, centres)  # u along x (columns), v along y (rows)
    return np.stack([ellipse(u, v, row) for row in np.asarray(codes)])


def reference_mask(box, codes, width, height) -> np.ndarray:
    x1, y1, x2, y2 = box
    ys, xs = np.mgrid[0:height, 0:width]
    u, v = (xs + 0.5 - x1) / (x2 - x1), (ys + 0.5 - y1) / (y2 - y1)
    inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
    return inside & (ellipse(u, v, codes) > 0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def ones_decoder(codes):
    return np.ones((len(codes), 64, 64))


# (width, height) of several sizes and aspect ratios, and boxes as bins (y1, x1, y2, x2).
SIZES = [(640, 480), (480, 640), (1000, 200), (150, 1203), (224, 224), (4032, 3024)]
BOXES = [(100, 50, 900, 700), (0, 0, 1023, 1023), (300, 512, 1000, 1010), (10, 700, 400, 990)]


@pytest.mark.parametrize("size", SIZES)
def test_boxes_and_masks_land_where_the_reference_puts_them(size):
    width, height = size
    codes = [[(7 * i + 13 * j) % 128 for j in range(16)] for i in range(len(BOXES))]
    text = " ; ".join(f"{loc(*b)}{seg(c)} thing {i}" for i, (b, c) in enumerate(zip(BOXES, codes, strict=True)))
    found = parse_segmentation(text, (width, height), decoder=ellipse_decoder)
    assert [s.label for s in found] == [f"thing {i}" for i in range(len(BOXES))]
    for s, bins, c in zip(found, BOXES, codes, strict=True):
        y1, x1, y2, x2 = bins
        ideal = (x1 / 1023 * width, y1 / 1023 * height, x2 / 1023 * width, y2 / 1023 * height)
        assert all(abs(got - want) <= 1 for got, want in zip(s.box, ideal, strict=True)), (s.box, ideal)
        assert s.mask is not None and s.mask.shape == (height, width) and s.mask.dtype == bool
        bx1, by1, bx2, by2 = s.box
        outside = s.mask.copy()
        outside[by1:by2, bx1:bx2] = False
        assert not outside.any()
        assert iou(s.mask, reference_mask(s.box, c, width, height)) >= 0.99
        assert s.area == int(s.mask.sum()) > 0


def test_a_box_smaller_than_the_64_pixel_field_still_places_its_mask():
    # Downscaling (PIL's bilinear averages here); a 40 x 30 box on a 400 x 300 image.
    codes = [64] * 16
    [s] = parse_segmentation(loc(0, 0, 102, 102) + seg(codes), (400, 300), decoder=ellipse_decoder)
    assert s.box == (0, 0, 39, 29)  # int(102 / 1023 * 400), int(102 / 1023 * 300)
    assert s.mask is not None
    assert iou(s.mask, reference_mask(s.box, codes, 400, 300)) >= 0.99


def test_exif_rotated_images_use_the_upright_size():
    # Stored 300 x 200 with EXIF orientation 6 (rotate 90 degrees to view): upright it is 200 x 300.
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (300, 200), (90, 90, 90)).save(buffer, format="JPEG", exif=exif)
    upright = load_image(buffer.getvalue())
    assert upright.size == (200, 300)
    codes = list(range(16))
    [s] = parse_segmentation(loc(0, 0, 1023, 512) + seg(codes), upright.size, decoder=ellipse_decoder)
    assert s.mask is not None and s.mask.shape == (300, 200)
    assert s.box == (0, 0, 100, 300)
    assert iou(s.mask, reference_mask(s.box, codes, 200, 300)) >= 0.99


def test_detections_in_a_segmentation_answer_keep_their_boxes():
    text = f"{loc(0, 0, 512, 512)} cat ; {loc(512, 512, 1023, 1023)}{seg([5] * 16)} dog"
    cat, dog = parse_segmentation(text, (1023, 1023), decoder=ones_decoder)
    assert (cat.label, cat.box, cat.mask, cat.area) == ("cat", (0, 0, 512, 512), None, None)
    assert (dog.label, dog.box) == ("dog", (512, 512, 1023, 1023))
    assert dog.area == 511 * 511  # the decoder's field is > 0 everywhere: the whole box


def test_the_decoder_runs_once_for_all_objects():
    calls = []

    def counting(codes):
        calls.append(np.asarray(codes).shape)
        return ones_decoder(codes)

    text = " ; ".join(f"{loc(0, 0, 500, 500)}{seg([i] * 16)} x" for i in range(3))
    assert len(parse_segmentation(text, (100, 100), decoder=counting)) == 3
    assert calls == [(3, 16)]
    assert parse_segmentation("no objects here", (100, 100), decoder=counting) == [] and len(calls) == 1


@pytest.mark.parametrize(
    "text",
    [
        loc(0, 0, 500, 500) + seg([1] * 15) + " short",  # 15 codes
        loc(0, 0, 500, 500) + seg([1] * 17) + " long",  # 17 codes
        loc(0, 0, 500, 500) + seg([1] * 15 + [128]) + " out of range",
        loc(0, 0, 500, 1024) + seg([1] * 16) + " loc out of range",
        loc(500, 0, 500, 500) + seg([1] * 16) + " empty",
        loc(600, 0, 500, 500) + seg([1] * 16) + " inverted",
        loc(0, 0, 1, 1) + seg([1] * 16) + " empty in pixels",  # 1/1023 of 100 px truncates to 0
        loc(0, 0, 1, 1) + " empty detection",
    ],
)
def test_malformed_objects_are_skipped(text):
    assert (
        parse_segmentation(text + " ; " + loc(0, 0, 1023, 1023) + " ok", (100, 100), decoder=ones_decoder)[0].label
        == "ok"
    )
    assert parse_segmentation(text, (100, 100), decoder=ones_decoder) == []


def test_the_detection_parser_reads_the_same_answers():
    # One parser: a cut seg run no longer swallows the label, for detect as for segment.
    text = loc(0, 0, 512, 512) + seg([3] * 10) + " cat ; " + loc(512, 512, 1023, 1023) + seg([4] * 16) + " dog"
    assert [d.label for d in parse_detections(text, 100, 100)] == ["cat", "dog"]
    assert [s.label for s in parse_segmentation(text, (100, 100), decoder=ones_decoder)] == ["dog"]


# ----------------------------------------------------------------------------- property tests

LABEL = st.text(alphabet="abcdefghij xyz-", max_size=12).map(lambda s: " ".join(s.split()))
BIN = st.integers(0, 1023)
CODE = st.integers(0, 127)


@st.composite
def good_box(draw, width, height):
    """Bins whose pixel box (int(bin / 1023 * size)) is not empty."""
    y1, y2 = sorted(draw(st.lists(BIN, min_size=2, max_size=2, unique=True)))
    x1, x2 = sorted(draw(st.lists(BIN, min_size=2, max_size=2, unique=True)))
    if int(y2 / 1023 * height) <= int(y1 / 1023 * height) or int(x2 / 1023 * width) <= int(x1 / 1023 * width):
        y1, x1, y2, x2 = 0, 0, 1023, 1023
    return (y1, x1, y2, x2)


@st.composite
def answer(draw):
    """A segmentation answer mixing good segments, detections, malformed objects and junk, with
    the objects a correct parser must return."""
    width, height = draw(st.integers(1, 2000)), draw(st.integers(1, 2000))
    parts, expected = [], []
    for kind in draw(st.lists(st.sampled_from(["seg", "det", "bad", "junk"]), max_size=6)):
        label = draw(LABEL)
        if kind == "junk":
            parts.append(draw(st.text(alphabet="abc .,:!?0123456789", max_size=10)))
            continue
        box = draw(good_box(width, height))
        if kind == "seg":
            parts.append(f"{loc(*box)}{seg(draw(st.lists(CODE, min_size=16, max_size=16)))} {label}")
            expected.append((label, True))
        elif kind == "det":
            parts.append(f"{loc(*box)} {label}")
            expected.append((label, False))
        else:
            flaw = draw(st.sampled_from(["few", "many", "code", "loc", "empty"]))
            codes = draw(st.lists(CODE, min_size=16, max_size=16))
            if flaw == "few":
                codes = codes[: draw(st.integers(1, 15))]
            elif flaw == "many":
                codes = codes + draw(st.lists(CODE, min_size=1, max_size=4))
            elif flaw == "code":
                codes[draw(st.integers(0, 15))] = draw(st.integers(128, 999))
            elif flaw == "loc":
                box = (*box[:3], draw(st.integers(1024, 9999)))
            else:
                box = (box[2], box[1], box[0], box[3])  # y_min >= y_max
            parts.append(f"{loc(*box)}{seg(codes)} {label}")
    return " ; ".join(parts), (width, height), expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer())
def test_mixed_answers_give_exactly_the_well_formed_objects(case):
    text, (width, height), expected = case
    found = parse_segmentation(text, (width, height), decoder=ones_decoder)
    assert [(s.label, s.mask is not None) for s in found] == expected
    for s in found:
        x1, y1, x2, y2 = s.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        if s.mask is not None:  # the field is > 0 everywhere: exactly the box
            assert s.mask.shape == (height, width) and s.area == (x2 - x1) * (y2 - y1)


TOKENS = st.sampled_from(["<loc0000>", "<loc1023>", "<loc0512>", "<loc9999>", "<seg000>", "<seg127>", "<seg999>"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(TOKENS, st.text(max_size=8), st.sampled_from([" ; ", ";", "<", ">", "<loc", "\n"])), max_size=40)
)
def test_any_text_never_raises_and_never_invents_objects(pieces):
    text = "".join(pieces)
    found = parse_segmentation(text, (64, 48), decoder=ones_decoder)
    assert all(isinstance(s, Segment) for s in found)
    # Every object needs four loc tokens of its own.
    assert len(found) <= len(re.findall(r"<loc\d{4}>", text)) // 4
    assert len(found) <= len(parse_detections(text, 64, 48))


def test_importing_segmentation_does_not_import_torch():
    code = "import sys, engine.processing.segmentation; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
