"""The shapes task generator, the demo tokenizer, and the shipped pali-demo-shapes model.

The model tests are golden tests with an independent truth: the generator knows what it drew, so
a caption, a colour or a box is right when it matches the scene, not when it matches an earlier
run. They use seeds that neither training (seed 0) nor recipes.demo_shapes.evaluate's default uses.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from engine.checkpoints.presets import get_preset
from engine.demo import shapes
from recipes.demo_shapes.evaluate import detection_hit, held_out_examples, iou

TEST_SEED = 4242
COUNT = 30  # examples per task
# Held-out accuracy measured on 600 examples per task (recipes.demo_shapes.evaluate) is in the report; these
# floors sit a few examples below it, so a regression fails and sampling noise on 30 does not.
MIN_CAPTION, MIN_VQA, MIN_DETECT = 0.8, 0.9, 0.8


# ----------------------------------------------------------------------------- generator


def test_same_seed_same_scenes_and_pixels():
    a, b = shapes.examples(7, 12), shapes.examples(7, 12)
    assert [(e.prefix, e.suffix) for e in a] == [(e.prefix, e.suffix) for e in b]
    assert np.array_equal(np.asarray(a[3].scene.render(112)), np.asarray(b[3].scene.render(112)))
    assert [e.scene for e in shapes.examples(8, 12)] != [e.scene for e in a]


def test_caption_and_prompts_read_as_specified():
    red = shapes.Shape("circle", "red", (220, 40, 40), 10, 20, 30)
    blue = shapes.Shape("square", "blue", (40, 80, 220), 60, 60, 30)
    green = shapes.Shape("triangle", "green", (40, 170, 60), 10, 80, 30)
    assert shapes.caption(shapes.Scene(240, (red,))) == "a red circle"
    assert shapes.caption(shapes.Scene(240, (red, blue))) == "a red circle and a blue square"
    assert shapes.caption(shapes.Scene(240, (red, blue, green))) == "a red circle, a blue square and a green triangle"
    scene = shapes.Scene(240, (red, blue))
    vqa = shapes.make_example(scene, "vqa", "square")
    assert (vqa.prefix, vqa.suffix) == ("answer en what color is the square?\n", "blue")
    det = shapes.make_example(scene, "detect", "circle")
    # x 10..40, y 20..50 grid units of 128; one unit = 8 bins; order y_min x_min y_max x_max.
    assert (det.prefix, det.suffix) == ("detect circle\n", "<loc0160><loc0080><loc0400><loc0320> circle")
    with pytest.raises(ValueError, match="no 'triangle'"):
        shapes.make_example(scene, "detect", "triangle")


def test_rendered_pixels_match_the_geometry():
    """The colour named in the truth is where the box says, and only background is outside boxes."""
    size = 128  # one pixel per grid unit
    for ex in shapes.examples(11, 20):
        img = np.asarray(ex.scene.render(size)).astype(int)
        covered = np.zeros((size, size), dtype=bool)
        for s in ex.scene.shapes:
            cx, cy = s.x + s.size // 2, s.y + s.size * 2 // 3  # inside circle, square and triangle alike
            assert np.abs(img[cy, cx] - shapes.COLORS[s.color]).max() <= shapes.COLOR_JITTER + 1, (s, img[cy, cx])
            covered[s.y : s.y + s.size, s.x : s.x + s.size] = True
        assert np.all(img[~covered] == ex.scene.background)


def test_scenes_have_distinct_kinds_and_disjoint_boxes():
    rng = random.Random(3)
    for _ in range(200):
        scene = shapes.random_scene(rng)
        kinds = [s.kind for s in scene.shapes]
        assert 1 <= len(kinds) <= 3 and len(set(kinds)) == len(kinds)
        assert kinds == sorted(kinds, key=shapes.KINDS.index)
        for i, a in enumerate(scene.shapes):
            assert shapes.MARGIN <= a.x and a.x + a.size <= shapes.GRID - shapes.MARGIN
            for b in scene.shapes[i + 1 :]:
                assert iou(a.box, b.box) == 0.0


def test_vision_pretraining_labels():
    from recipes.demo_shapes.vision_pretrain import scene_labels

    red = shapes.Shape("circle", "red", (220, 40, 40), 10, 20, 30)
    purple = shapes.Shape("triangle", "purple", (140, 60, 180), 60, 60, 30)
    # per kind (circle, square, triangle): 0 = absent, else 1 + index in COLORS (red 0 ... purple 4)
    assert scene_labels(shapes.Scene(240, (red, purple))) == [1, 0, 5]


def test_training_stream_batches():
    data = shapes.ShapesBatches(seed=1, batch_size=4, num_batches=3, image_size=64)
    batches = list(data)
    assert len(batches) == len(data) == 3
    assert batches[0]["images"].shape == (4, 64, 64, 3) and batches[0]["images"].dtype == np.uint8
    assert len(batches[0]["prefixes"]) == len(batches[0]["suffixes"]) == 4
    assert list(data)[2]["suffixes"] == batches[2]["suffixes"]  # every pass restarts the seed


def test_iou_and_detection_scoring():
    assert iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert iou((0, 0, 2, 1), (1, 0, 3, 1)) == pytest.approx(1 / 3)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    scene = shapes.Scene(240, (shapes.Shape("square", "blue", (40, 80, 220), 32, 32, 64),))
    ex = shapes.make_example(scene, "detect", "square")
    assert detection_hit(ex.suffix, ex) == (True, True)
    assert detection_hit("<loc0000><loc0000><loc0200><loc0200> square", ex) == (False, True)
    assert detection_hit("square", ex) == (False, False)


def test_demo_tokenizer_has_the_paligemma_layout(tmp_path):
    from engine.processing.tokenizer import PaliGemmaTokenizer
    from recipes.demo_shapes.tokenizer import train_demo_tokenizer

    tok = PaliGemmaTokenizer(train_demo_tokenizer(tmp_path / "tokenizer.model"))  # validates specials, loc, seg
    assert (tok.pad_token_id, tok.end_token_id, tok.start_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.loc_token_id(1023) - tok.loc_token_id(0) == 1023
    for word in ["circle", "square", "triangle", *shapes.COLORS]:
        assert len(tok.tokenize(" " + word)) == 1, word
    assert tok.detokenize(tok.tokenize("ümlaut ❤")) == "ümlaut ❤"  # byte fallback, nothing lost


# ----------------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def demo_lm():
    from engine import PaliGemmaCausalLM

    bundled = get_preset("pali-demo-shapes").bundled_dir
    if bundled is None or not (bundled / "model.safetensors").is_file():
        pytest.fail("engine/demo_model/ is missing; run `python -m recipes.demo_shapes.train`")
    return PaliGemmaCausalLM.from_preset("pali-demo-shapes", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def fresh():
    return held_out_examples(TEST_SEED, COUNT)


def _outputs(lm, examples):
    done = lm.complete([e.scene.render(224) for e in examples], [e.prefix for e in examples], max_new_tokens=24)
    return [c.text for c in done]


def test_demo_preset_matches_its_files(demo_lm):
    preset = get_preset("pali-demo-shapes")
    assert preset.bundled_dir is not None
    assert demo_lm.backbone.config.text.variant == "gemma2"
    assert demo_lm.backbone.config.image_size == preset.image_size
    size = sum(f.stat().st_size for f in preset.bundled_dir.iterdir())
    assert size < 20 * 2**20, f"the bundled demo model is {size / 2**20:.1f} MiB; keep it a few MB"


def test_demo_captions_fresh_images(demo_lm, fresh):
    texts = _outputs(demo_lm, fresh["caption"])
    right = sum(t == e.suffix for t, e in zip(texts, fresh["caption"], strict=True))
    assert right >= MIN_CAPTION * COUNT, list(zip(texts, [e.suffix for e in fresh["caption"]], strict=True))


def test_demo_answers_colour_questions(demo_lm, fresh):
    texts = _outputs(demo_lm, fresh["vqa"])
    right = sum(t == e.suffix for t, e in zip(texts, fresh["vqa"], strict=True))
    assert right >= MIN_VQA * COUNT, list(zip(texts, [e.suffix for e in fresh["vqa"]], strict=True))


def test_demo_detects_boxes(demo_lm, fresh):
    texts = _outputs(demo_lm, fresh["detect"])
    hits = [detection_hit(t, e) for t, e in zip(texts, fresh["detect"], strict=True)]
    expected = [e.suffix for e in fresh["detect"]]
    assert sum(h for h, _ in hits) >= MIN_DETECT * COUNT, list(zip(texts, expected, strict=True))
    assert sum(label for _, label in hits) >= 0.9 * COUNT


def test_demo_through_the_cli(tmp_path, monkeypatch):
    """The README quick start: `pali caption` / `pali ask` / `pali detect` on a sample image."""
    from typer.testing import CliRunner

    from pali_cli.app import app

    monkeypatch.chdir(tmp_path)
    for name in ("PALI_PRESET", "PALI_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    scene = shapes.Scene(
        245,
        (
            shapes.Shape("circle", "red", (220, 40, 40), 12, 16, 40),
            shapes.Shape("square", "blue", (40, 80, 220), 70, 64, 40),
        ),
    )
    scene.render(224).save("shapes.png")
    runner = CliRunner()
    common = ["-p", "pali-demo-shapes", "--device", "cpu"]
    result = runner.invoke(app, ["caption", "shapes.png", *common])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "a red circle and a blue square"
    result = runner.invoke(app, ["ask", "shapes.png", "what color is the square?", *common])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "blue"
    result = runner.invoke(app, ["detect", "shapes.png", "circle", *common])
    assert result.exit_code == 0, result.output
    label, *box = result.stdout.strip().split("\t")
    truth = [v * 224 for v in scene.shapes[0].box]  # x_min y_min x_max y_max in pixels
    assert label == "circle" and iou([float(v) for v in box], truth) > 0.5, (result.stdout, truth)


def test_demo_int8_through_the_cli(tmp_path, monkeypatch):
    """--quantize int8 still captions right, and the quantized weights land in the cache for reuse."""
    from typer.testing import CliRunner

    from pali_cli.app import app

    monkeypatch.chdir(tmp_path)
    for name in ("PALI_PRESET", "PALI_DEVICE", "PALI_QUANTIZE"):
        monkeypatch.delenv(name, raising=False)
    scene = shapes.Scene(
        240,
        (
            shapes.Shape("square", "green", (40, 180, 60), 20, 20, 44),
            shapes.Shape("triangle", "yellow", (230, 210, 40), 60, 70, 44),
        ),
    )
    scene.render(224).save("shapes.png")
    args = [
        "caption",
        "shapes.png",
        "-p",
        "pali-demo-shapes",
        "--device",
        "cpu",
        "--quantize",
        "int8",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    for _ in range(2):  # the first run quantizes and writes the cache, the second loads it
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == shapes.caption(scene)
    assert list((tmp_path / "cache").rglob("*.safetensors")), "no quantized weights were cached"


@pytest.mark.slow
def test_train_demo_script_runs_and_writes_a_loadable_model(tmp_path):
    from engine import PaliGemmaCausalLM
    from recipes.demo_shapes import train as train_demo

    args = ["--vision-steps", "10", "--frozen-steps", "10", "--steps", "10", "--polish-steps", "5", "--batch-size", "4"]
    train_demo.main(["--out", str(tmp_path / "demo"), *args])
    lm = PaliGemmaCausalLM.from_preset(tmp_path / "demo", dtype="float32", device="cpu")
    assert lm.backbone.config.image_size == train_demo.IMAGE_SIZE
