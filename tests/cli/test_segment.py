"""``pali segment`` and ``--draw`` end to end, in process, on a tiny random checkpoint and a random
mask decoder file (the real vae-oid.npz cannot be downloaded here; its expected hash is replaced
by the random file's for these tests).

A random model rarely writes a well-formed segmentation answer, so the tests that check boxes,
masks and files give the model a fixed answer (``answers`` fixture): what is under test there is
everything the CLI does with an answer. The others run the model as it is.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco
from typer.testing import CliRunner

from engine.checkpoints import seg_decoder
from engine.processing.mask_decoder import MaskDecoder
from engine.processing.segmentation import parse_segmentation
from pali_cli.app import app
from tests.helpers.checkpoints import TinySpec
from tests.helpers.mask_decoder import sha256_of, write_decoder_npz

SIZE = (200, 120)  # width, height of the test photos
CODES = [(5 * i + 3) % 128 for i in range(16)]
# "cat" with a mask in the top-left, a box-only "dog" in the bottom-right, and a malformed object.
ANSWER = (
    "<loc0000><loc0000><loc0600><loc0500>" + "".join(f"<seg{c:03d}>" for c in CODES) + " cat ; "
    "<loc0600><loc0600><loc1000><loc1000> dog ; <loc0010><loc0010><loc0020><loc0020><seg001> junk"
)


@pytest.fixture(scope="module")
def ckpt(checkpoints) -> Path:
    return checkpoints.checkpoint(TinySpec())


@pytest.fixture
def decoder_file(tmp_path, monkeypatch) -> Path:
    path = write_decoder_npz(tmp_path / "vae-random.npz", seed=11)
    monkeypatch.setattr(seg_decoder, "VAE_OID_SHA256", sha256_of(path))
    monkeypatch.setenv("PALI_SEG_DECODER", str(path))
    return path


@pytest.fixture
def photos(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("PALI_PRESET", "PALI_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(1, 3):
        Image.new("RGB", SIZE, (128, 128, 128 + 20 * i)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def pali(ckpt, decoder_file):
    import torch

    threads = torch.get_num_threads()

    def invoke(command: str, *args: str, env: dict | None = None):
        defaults = ["--max-tokens", "5", "--device", "cpu", "--dtype", "float32", "--threads", "1"]
        defaults += ["--preset", str(ckpt)]
        return CliRunner().invoke(app, [command, *defaults, *args], env=env, catch_exceptions=False)

    yield invoke
    torch.set_num_threads(threads)


@pytest.fixture
def answers(monkeypatch):
    """The model answers ``ANSWER`` to every image."""
    from engine.causal_lm import Completion, PaliGemmaCausalLM

    def complete(self, images, prompts, max_new_tokens=64, stop_token_ids="auto"):
        return [Completion(ANSWER, list(range(42)), "stop") for _ in images]

    monkeypatch.setattr(PaliGemmaCausalLM, "complete", complete)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def expected_segments(decoder_file: Path, size=SIZE):
    return parse_segmentation(ANSWER, size, decoder=MaskDecoder.from_npz(decoder_file))


# ----------------------------------------------------------------------------- with the model as it is


def test_segment_runs_the_model_and_resumes(pali, photos):
    first = pali("segment", "photos", "cat ; dog", "-o", "out.jsonl")
    assert first.exit_code == 0, first.output
    records = jsonl(Path("out.jsonl").read_text())
    assert [(r["task"], r["prompt"]) for r in records] == [("segment", "segment cat ; dog")] * 2
    assert all(isinstance(r["segments"], list) and r["error"] is None for r in records)

    again = pali("segment", "photos", "cat ; dog", "-o", "out.jsonl")
    assert again.exit_code == 0 and "Nothing to do" in again.stderr and "Loading" not in again.stderr


def test_usage_errors_come_before_anything_loads(pali, photos):
    result = pali("segment", "photos/img1.png")  # the one word goes to OBJECTS
    assert result.exit_code == 2 and "what to segment is missing" in result.stderr


# ----------------------------------------------------------------------------- with a fixed answer


def test_plain_text_one_line_per_object(pali, photos, answers, decoder_file):
    result = pali("segment", "photos/img1.png", "cat ; dog")
    assert result.exit_code == 0, result.output
    cat, dog = expected_segments(decoder_file)
    assert cat.area > 0  # the random decoder's mask is not empty for these codes
    assert result.stdout.splitlines() == [
        "\t".join(["cat", *map(str, cat.box), str(cat.area)]),
        "\t".join(["dog", *map(str, dog.box), "-"]),
    ]
    # The boxes are the evaluator's int(bin / 1023 * size): (0, 0, 97, 70) and (117, 70, 195, 117).
    assert (cat.box, dog.box) == ((0, 0, 97, 70), (117, 70, 195, 117))


def test_json_masks_are_coco_rle_that_round_trip(pali, photos, answers, decoder_file):
    [record] = jsonl(pali("segment", "photos/img1.png", "cat ; dog", "--json").stdout)
    cat, dog = expected_segments(decoder_file)
    assert [s["label"] for s in record["segments"]] == ["cat", "dog"]
    rle = record["segments"][0]["mask"]
    assert rle["size"] == [SIZE[1], SIZE[0]] and isinstance(rle["counts"], str)
    decoded = coco.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
    assert np.array_equal(decoded, cat.mask)
    assert record["segments"][0]["box"] == list(cat.box)
    assert record["segments"][1] == {"label": "dog", "box": list(dog.box), "mask": None}


def test_masks_dir_writes_one_png_per_mask(pali, photos, answers, decoder_file):
    result = pali("segment", "photos", "cat ; dog", "--masks-dir", "masks", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in Path("masks").iterdir()) == ["img1.mask0.png", "img2.mask0.png"]  # dog: no mask
    [cat, _] = expected_segments(decoder_file)
    with Image.open("masks/img1.mask0.png") as png:
        assert png.mode == "L" and png.size == SIZE
        pixels = np.asarray(png)
    assert set(np.unique(pixels)) <= {0, 255} and np.array_equal(pixels == 255, cat.mask)

    # Running again replaces pali's own files, and removes masks that no longer apply.
    Image.new("L", SIZE).save("masks/img1.mask5.png")  # not pali's: refused, and kept
    refused = pali("segment", "photos", "cat ; dog", "--masks-dir", "masks")
    assert refused.exit_code == 2 and "img1.mask5.png exists and pali did not write it" in refused.stderr
    Path("masks/img1.mask5.png").unlink()
    assert pali("segment", "photos", "cat ; dog", "--masks-dir", "masks", "-q").exit_code == 0


def test_draw_writes_the_image_with_masks_boxes_and_labels(pali, photos, answers, decoder_file):
    result = pali("segment", "photos/img1.png", "cat ; dog", "--draw", "drawn")
    assert result.exit_code == 0, result.output
    original = np.asarray(Image.open(photos / "img1.png").convert("RGB")).astype(int)
    with Image.open("drawn/img1.segment.png") as png:
        assert png.size == SIZE
        drawn = np.asarray(png.convert("RGB")).astype(int)
    cat, dog = expected_segments(decoder_file)
    inner = cat.mask.copy()
    inner[:, :4] = inner[:, 93:] = False  # away from the box outline and label
    inner[:20] = inner[66:] = False
    assert inner.sum() > 50
    assert (np.abs(drawn - original).sum(axis=2)[inner] > 0).all()  # every masked pixel is tinted
    assert np.array_equal(drawn[80:, :100], original[80:, :100])  # far from both objects: untouched
    x0, y0, x1, y1 = dog.box
    assert (np.abs(drawn[y0 + 10 : y1 - 10, x0] - original[y0 + 10 : y1 - 10, x0]).sum(axis=1) > 0).all()  # outline


def test_detect_draw_uses_the_same_drawing(pali, photos, answers):
    result = pali("detect", "photos/img2.png", "cat ; dog", "--draw", "drawn")
    assert result.exit_code == 0, result.output
    assert [p.name for p in Path("drawn").iterdir()] == ["img2.detect.png"]
    original = np.asarray(Image.open(photos / "img2.png").convert("RGB")).astype(int)
    drawn = np.asarray(Image.open("drawn/img2.detect.png").convert("RGB")).astype(int)
    assert drawn.shape == original.shape
    assert (np.abs(drawn[30:60, 0] - original[30:60, 0]).sum(axis=1) > 0).all()  # the cat box's left edge
    assert np.array_equal(drawn[40:60, 30:60], original[40:60, 30:60])  # inside a box: no mask, no tint


def test_exif_rotated_inputs_are_segmented_and_drawn_upright(pali, photos, answers):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 200 x 120, shown rotated: 120 x 200
    buffer = io.BytesIO()
    Image.new("RGB", SIZE, (90, 90, 90)).save(buffer, format="JPEG", exif=exif)
    (photos / "turned.jpg").write_bytes(buffer.getvalue())
    [record] = jsonl(pali("segment", "photos/turned.jpg", "cat", "--json", "--draw", "drawn").stdout)
    assert record["segments"][0]["mask"]["size"] == [200, 120]
    assert Image.open("drawn/turned.segment.png").size == (120, 200)


def test_outputs_that_would_collide_or_overwrite_are_refused_before_loading(pali, photos, answers):
    Image.new("RGB", SIZE).save(photos / "img1.jpg")  # same stem as img1.png
    clash = pali("segment", "photos", "cat", "--draw", "drawn")
    assert clash.exit_code == 2 and "same name stem" in clash.stderr and "Loading" not in clash.stderr
    (photos / "img1.jpg").unlink()

    Path("drawn").mkdir()
    mine = Path("drawn/img1.segment.png")
    Image.new("RGB", (5, 5)).save(mine)
    before = mine.read_bytes()
    refused = pali("segment", "photos", "cat", "--draw", "drawn")
    assert refused.exit_code == 2 and "pali did not write it" in refused.stderr and "Loading" not in refused.stderr
    assert mine.read_bytes() == before

    # An output named like an input (drawing into the photos folder next to a look-alike file).
    mine.unlink()
    Image.new("RGB", SIZE).save(photos / "img2.segment.png")
    into_inputs = pali("segment", "photos", "cat", "--draw", "photos")
    assert into_inputs.exit_code == 2 and "is one of the input images" in into_inputs.stderr

    file_not_dir = pali("segment", "photos/img1.png", "cat", "--draw", "photos/img1.png")
    assert file_not_dir.exit_code == 2


def test_pali_replaces_its_own_drawing_but_not_another_images(pali, photos, answers, tmp_path):
    assert pali("segment", "photos/img1.png", "cat", "--draw", "drawn").exit_code == 0
    assert pali("segment", "photos/img1.png", "cat", "--draw", "drawn").exit_code == 0  # its own: replaced
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", SIZE).save(other / "img1.png")
    result = pali("segment", str(other / "img1.png"), "cat", "--draw", "drawn")
    assert result.exit_code == 2 and "pali did not write it for" in result.stderr


def test_an_output_that_cannot_be_written_makes_an_error_record(pali, photos, answers, monkeypatch):
    import pali_cli.artifacts
    import pali_cli.sidecar

    real = pali_cli.sidecar.atomic_write_bytes

    def disk_full(target, data):
        raise OSError(28, "No space left on device", str(target))

    monkeypatch.setattr(pali_cli.artifacts, "atomic_write_bytes", disk_full)
    result = pali("segment", "photos", "cat", "--draw", "drawn", "-o", "out.jsonl")
    assert result.exit_code == 3
    records = jsonl(Path("out.jsonl").read_text())
    assert len(records) == 2
    assert all("No space left on device" in r["error"] and r["image"] in r["error"] for r in records)
    monkeypatch.setattr(pali_cli.artifacts, "atomic_write_bytes", real)
    retried = pali("segment", "photos", "cat", "--draw", "drawn", "-o", "out.jsonl", "--retry-failed")
    assert retried.exit_code == 0, retried.output
    assert sorted(p.name for p in Path("drawn").iterdir()) == ["img1.segment.png", "img2.segment.png"]


def test_no_object_found_prints_nothing(pali, photos, monkeypatch):
    from engine.causal_lm import Completion, PaliGemmaCausalLM

    monkeypatch.setattr(
        PaliGemmaCausalLM, "complete", lambda self, images, prompts, **kw: [Completion("no", [5], "stop")] * len(images)
    )
    for command in ("segment", "detect"):
        result = pali(command, "photos/img1.png", "cat")
        assert result.exit_code == 0 and result.stdout == "", result.output


# ----------------------------------------------------------------------------- the decoder file


def test_a_bad_decoder_file_is_a_one_line_runtime_error(pali, photos, tmp_path, monkeypatch):
    wrong = write_decoder_npz(tmp_path / "other.npz", seed=12)  # a valid npz, but not the expected file
    result = pali("segment", "photos/img1.png", "cat", "--seg-decoder", str(wrong))
    assert result.exit_code == 1 and str(wrong) in result.stderr and "SHA-256" in result.stderr
    assert "Loading" not in result.stderr  # refused before the model loads

    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    monkeypatch.setattr(seg_decoder, "VAE_OID_SHA256", sha256_of(broken))
    result = pali("segment", "photos/img1.png", "cat", "--seg-decoder", str(broken))
    assert result.exit_code == 1 and "not a readable .npz" in result.stderr and str(broken) in result.stderr


def test_a_failed_download_exits_4(pali, photos, fake_hub, monkeypatch):
    monkeypatch.delenv("PALI_SEG_DECODER")
    result = pali("segment", "photos/img1.png", "cat")  # the fake Hub has no such Space
    assert result.exit_code == 4 and "404" in result.stderr
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = pali("segment", "photos/img1.png", "cat")
    assert offline.exit_code == 4 and "PALI_SEG_DECODER" in offline.stderr
