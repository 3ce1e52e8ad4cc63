"""engine.processing.tasks: prompt builders (the ai.google.dev prompt page) and loc/seg answer
parsing (big_vision). Pure text, no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.processing.tasks import (
    Detection,
    LocObject,
    answer_prompt,
    caption_prompt,
    detect_prompt,
    ocr_prompt,
    parse_detections,
    parse_loc_objects,
    segment_prompt,
    split_objects,
)


def test_prompts_follow_the_task_syntax():
    assert caption_prompt() == "caption en\n"
    assert caption_prompt("fr") == "caption fr\n"
    assert answer_prompt("Where is the cow standing?") == "answer en Where is the cow standing?\n"
    assert answer_prompt("¿qué es?", lang="es") == "answer es ¿qué es?\n"
    assert detect_prompt("cat ; dog") == "detect cat ; dog\n"
    assert detect_prompt(["cat", "red car"]) == "detect cat ; red car\n"
    assert segment_prompt("cat") == "segment cat\n"
    assert ocr_prompt() == "ocr\n"


def test_user_text_cannot_break_the_prompt():
    # A newline would end the prefix early; ";" separates classes; spacing is normalised.
    assert answer_prompt("  how many\ncows?\n ") == "answer en how many cows?\n"
    assert detect_prompt("cat;dog ;  ; big   truck") == "detect cat ; dog ; big truck\n"
    assert split_objects("a ;b;\n c") == ["a", "b", "c"]


@pytest.mark.parametrize(
    "call",
    [
        lambda: answer_prompt("   "),
        lambda: detect_prompt(" ; ;"),
        lambda: detect_prompt([]),
        lambda: caption_prompt("en us"),
        lambda: caption_prompt(""),
    ],
)
def test_empty_or_malformed_input_is_refused(call):
    with pytest.raises(ValueError):
        call()


def test_detection_in_pixels_of_the_original_image():
    # y_min, x_min, y_max, x_max as bins of 1024, mapped onto a 200 x 100 (W x H) image.
    [d] = parse_detections("<loc0256><loc0512><loc0768><loc1023> cat", width=200, height=100)
    assert d.label == "cat"
    assert d.box == pytest.approx((100.0, 25.0, 1023 / 1024 * 200, 75.0))
    assert d.normalized == pytest.approx((0.5, 0.25, 1023 / 1024, 0.75))


def test_the_spec_example_on_a_1024_pixel_square():
    # transformers' integration test output for "detect shoe" (test_modeling_paligemma.py): one bin is one pixel here.
    [d] = parse_detections("<loc0051><loc0309><loc0708><loc0646> shoe", width=1024, height=1024)
    assert (d.label, d.box) == ("shoe", (309.0, 51.0, 646.0, 708.0))


def test_several_objects_labels_with_spaces_and_segmentation_tokens():
    seg = "".join(f"<seg{i:03d}>" for i in range(16))
    text = (
        "<loc0000><loc0000><loc0512><loc0512> red car ; "
        f"<loc0512><loc0512><loc1023><loc1023>{seg} dog ; "
        "<loc0100><loc0100><loc0200><loc0200>"
    )
    found = parse_detections(text, width=1024, height=512)
    assert [d.label for d in found] == ["red car", "dog", ""]
    assert found[0].box == (0.0, 0.0, 512.0, 256.0)
    assert found[1].box == (512.0, 256.0, 1023.0, 511.5)


def test_inverted_boxes_are_ordered_and_nothing_leaves_the_image():
    [d] = parse_detections("<loc0768><loc0768><loc0256><loc0256> x", width=100, height=100)
    assert d.box == (25.0, 25.0, 75.0, 75.0)
    for d in parse_detections("<loc1023><loc1023><loc1023><loc1023> x", width=10, height=10):
        assert all(0 <= v <= 10 for v in d.box)


def test_text_without_boxes_gives_no_detections():
    assert parse_detections("a cat sitting on a sofa", 10, 10) == []
    assert parse_detections("<loc0001><loc0002> truncated", 10, 10) == []
    with pytest.raises(ValueError):
        parse_detections("", 0, 10)
    assert isinstance(parse_detections("<loc0001><loc0002><loc0003><loc0004>", 9, 9)[0], Detection)


def test_importing_tasks_does_not_import_torch():
    code = "import sys, engine.processing.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_loc_objects_keep_what_the_answer_wrote():
    seg = "".join(f"<seg{i:03d}>" for i in (0, 127, 500))
    text = f"junk <loc0001><loc0002><loc0003><loc9999>{seg} a cat ; <loc0010> <loc0020><loc0030><loc0040>dog;"
    assert parse_loc_objects(text) == [
        LocObject(label="a cat", bins=(1, 2, 3, 9999), seg=(0, 127, 500)),
        LocObject(label="dog", bins=(10, 20, 30, 40), seg=()),
    ]


def test_a_cut_seg_run_does_not_swallow_the_label():
    # 10 of 16 seg codes (a cut answer): the box and its label are still read for detection.
    seg = "".join("<seg001>" for _ in range(10))
    [d] = parse_detections(f"<loc0000><loc0000><loc0512><loc0512>{seg} cat", width=100, height=100)
    assert d.label == "cat"
