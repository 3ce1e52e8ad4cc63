"""Generation commands end to end, in process, on a tiny random checkpoint: output formats, batches,
resume, retries, broken files, sidecars, detection boxes.

Expected texts come from the engine's own ``complete()`` on the same image and prompt: the CLI must
print exactly what the library generates, for the prompt the task syntax prescribes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from engine.processing.image import load_image
from pali_cli.app import app
from tests.helpers.checkpoints import TinySpec

TOKENS = "5"  # short outputs keep these tests fast; the model is random anyway


@pytest.fixture(scope="module")
def ckpt(checkpoints) -> Path:
    return checkpoints.checkpoint(TinySpec())


@pytest.fixture(scope="module")
def engine_lm(ckpt):
    from engine import PaliGemmaCausalLM

    return PaliGemmaCausalLM.from_preset(ckpt, dtype="float32", device="cpu")


def expected(lm, image: Path, prompt: str, max_tokens: int = int(TOKENS)) -> str:
    return lm.complete([load_image(image)], [prompt], max_new_tokens=max_tokens)[0].text


@pytest.fixture
def photos(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("PALI_PRESET", "PALI_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "photos"
    folder.mkdir()
    colours = [(220, 20, 20), (20, 200, 20), (20, 20, 220), (240, 240, 0), (0, 0, 0)]
    for i, colour in enumerate(colours):
        Image.new("RGB", (32 + 8 * i, 24 + 4 * i), colour).save(folder / f"img{i + 1}.png")
    (folder / "notes.txt").write_text("not an image, and not picked up from a directory")
    return folder


@pytest.fixture
def pali(ckpt):
    import torch

    threads = torch.get_num_threads()

    def invoke(command: str, *args: str, env: dict | None = None, input: str | None = None, preset: bool = True):
        # Defaults go first so that a test's own options (given later) win. One thread: on a busy
        # shared machine, extra threads make a tiny model's many small matmuls several times slower.
        defaults = ["--max-tokens", TOKENS, "--device", "cpu", "--dtype", "float32", "--threads", "1"]
        defaults += ["--preset", str(ckpt)] if preset else []
        return CliRunner().invoke(app, [command, *defaults, *args], env=env, input=input, catch_exceptions=False)

    yield invoke
    torch.set_num_threads(threads)  # --threads is process-wide; leave the session as it was


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_caption_one_image_prints_plain_text(pali, photos, engine_lm):
    result = pali("caption", "photos/img1.png")
    assert result.exit_code == 0, result.output
    assert result.stdout == expected(engine_lm, photos / "img1.png", "caption en\n") + "\n"
    assert "Loading" in result.stderr
    assert pali("caption", "photos/img1.png", "-q").stderr == ""


def test_json_record_for_one_image(pali, photos, ckpt, engine_lm):
    result = pali("ask", "photos/img2.png", "what colour is it?", "--lang", "fr", "--json", "-q")
    assert result.exit_code == 0
    [record] = jsonl(result.stdout)
    assert record["image"] == "photos/img2.png"
    assert (record["task"], record["prompt"]) == ("answer", "answer fr what colour is it?")
    assert record["preset"] == str(ckpt.resolve())
    assert record["text"] == expected(engine_lm, photos / "img2.png", "answer fr what colour is it?\n")
    assert record["error"] is None and record["tokens"] >= 1 and record["seconds"] >= 0
    assert record["finish_reason"] in ("stop", "length")


def test_raw_prompt_accepts_a_typed_backslash_n(pali, photos, engine_lm):
    result = pali("prompt", "photos/img3.png", "caption es\\n", "--json")
    [record] = jsonl(result.stdout)
    assert (record["task"], record["prompt"]) == ("prompt", "caption es")
    assert record["text"] == expected(engine_lm, photos / "img3.png", "caption es\n")


def test_a_batch_prints_jsonl_in_order_and_broken_files_become_error_records(pali, photos):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (photos / "empty.jpg").write_bytes(b"")
    result = pali("caption", "photos", "photos/missing.png")
    assert result.exit_code == 3, result.output
    records = jsonl(result.stdout)
    assert [r["image"] for r in records] == [
        "photos/broken.png",
        "photos/empty.jpg",
        "photos/img1.png",
        "photos/img2.png",
        "photos/img3.png",
        "photos/img4.png",
        "photos/img5.png",
        "photos/missing.png",
    ]
    failed = {r["image"]: r["error"] for r in records if r["error"]}
    assert sorted(failed) == ["photos/broken.png", "photos/empty.jpg", "photos/missing.png"]
    assert all(image in message for image, message in failed.items())  # each message names its file
    assert all(r["text"] is None for r in records if r["error"])
    assert "3 failed" in result.stderr


def test_batch_size_does_not_change_results(pali, photos):
    one = jsonl(pali("caption", "photos", "-q").stdout)
    three = jsonl(pali("caption", "photos", "-q", "--batch-size", "3").stdout)
    assert [(r["image"], r["text"]) for r in one] == [(r["image"], r["text"]) for r in three]


def test_output_file_resumes_and_never_duplicates(pali, photos):
    first = pali("caption", "photos/img1.png", "photos/img2.png", "-o", "out.jsonl")
    assert first.exit_code == 0 and first.stdout == ""
    before = Path("out.jsonl").read_bytes()

    second = pali("caption", "photos", "-o", "out.jsonl")
    assert second.exit_code == 0
    assert "2 of 5 images already recorded, 3 to go" in second.stderr
    records = jsonl(Path("out.jsonl").read_text())
    assert Path("out.jsonl").read_bytes().startswith(before)  # earlier records untouched
    assert sorted(r["image"] for r in records) == [f"photos/img{i}.png" for i in range(1, 6)]

    # Same task, prompt and preset: nothing to do, even with other sampling options.
    third = pali("caption", str(photos), "-o", "out.jsonl", "--sampler", "top-k", "--seed", "3")
    assert third.exit_code == 0 and "Nothing to do" in third.stderr and "Loading" not in third.stderr
    assert len(jsonl(Path("out.jsonl").read_text())) == 5

    # Another prompt is other work: it is added alongside.
    french = pali("caption", "photos", "-o", "out.jsonl", "--lang", "fr", "-q")
    assert french.exit_code == 0
    prompts = [r["prompt"] for r in jsonl(Path("out.jsonl").read_text())]
    assert prompts.count("caption en") == 5 and prompts.count("caption fr") == 5

    redo = pali("caption", "photos", "-o", "out.jsonl", "--overwrite", "-q")
    assert redo.exit_code == 0
    assert [r["prompt"] for r in jsonl(Path("out.jsonl").read_text())] == ["caption en"] * 5


def test_failed_images_are_kept_until_retry_failed(pali, photos):
    bad = photos / "img9.png"
    bad.write_bytes(b"garbage")
    assert pali("caption", "photos", "-o", "out.jsonl", "-q").exit_code == 3
    Image.new("RGB", (30, 30), (1, 2, 3)).save(bad)  # the user repairs the file

    kept = pali("caption", "photos", "-o", "out.jsonl")
    assert kept.exit_code == 3 and "--retry-failed" in kept.stderr
    assert len(jsonl(Path("out.jsonl").read_text())) == 6

    retried = pali("caption", "photos", "-o", "out.jsonl", "--retry-failed")
    assert retried.exit_code == 0, retried.output
    records = jsonl(Path("out.jsonl").read_text())
    assert len(records) == 6 and all(r["error"] is None for r in records)
    assert [r["image"] for r in records][-1] == "photos/img9.png"


def test_sidecars_for_a_dataset(pali, photos):
    result = pali("caption", "photos", "--sidecar", "--prefix", "photo of sks, ", "--suffix", ".")
    assert result.exit_code == 0 and result.stdout == ""  # results went to the sidecars
    texts = {p.stem: p.read_text(encoding="utf-8") for p in photos.glob("img*.txt")}
    assert sorted(texts) == [f"img{i}" for i in range(1, 6)]
    assert all(t.startswith("photo of sks, ") and t.endswith(".\n") for t in texts.values())

    (photos / "img1.txt").write_text("keep me")
    again = pali("caption", "photos", "--sidecar", "--json")
    assert again.exit_code == 0 and "Nothing to do" in again.stderr and again.stdout == ""
    assert (photos / "img1.txt").read_text() == "keep me"

    Image.new("RGB", (20, 20)).save(photos / "img6.png")
    appended = pali("caption", "photos", "--sidecar", "--on-existing", "append", "--json", "-q")
    assert len(jsonl(appended.stdout)) == 6
    assert (photos / "img1.txt").read_text().startswith("keep me\n") and (photos / "img1.txt").read_text().count(
        "\n"
    ) == 2


def test_detect_prints_pixel_boxes_that_match_the_record(pali, photos):
    text = pali("detect", "photos/img5.png", "cat ; dog", "--max-tokens", "60")
    record = jsonl(pali("detect", "photos/img5.png", "cat ; dog", "--max-tokens", "60", "--json").stdout)[0]
    assert record["prompt"] == "detect cat ; dog"
    rows = [line.split("\t") for line in text.stdout.splitlines()]
    assert len(rows) == len(record["detections"])
    width, height = Image.open(photos / "img5.png").size
    for row, det in zip(rows, record["detections"], strict=True):
        assert row[0] == det["label"]
        assert [int(v) for v in row[1:]] == [round(v) for v in det["box"]]
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height


def test_files_from_stdin_and_preset_from_environment(pali, photos, ckpt):
    listing = "photos/img2.png\nphotos/img4.png\n"
    result = pali("ocr", "--files-from", "-", input=listing, env={"PALI_PRESET": str(ckpt)}, preset=False)
    assert result.exit_code == 0, result.output
    records = jsonl(result.stdout)
    assert [r["image"] for r in records] == ["photos/img2.png", "photos/img4.png"]
    assert {r["preset"] for r in records} == {str(ckpt.resolve())} and {r["task"] for r in records} == {"ocr"}


def test_seeded_sampling_is_reproducible(pali, photos):
    runs = [
        pali("caption", "photos", "--top-k", "40", "--temperature", "1.5", "--seed", "7", "-q").stdout for _ in range(2)
    ]
    assert [r["text"] for r in jsonl(runs[0])] == [r["text"] for r in jsonl(runs[1])]


def test_output_cut_at_the_token_limit_is_flagged(pali, photos):
    result = pali("caption", "photos/img1.png", "--json")
    [record] = jsonl(result.stdout)
    if record["finish_reason"] == "length":
        assert "stopped at the token limit (5)" in result.stderr
    else:
        assert "token limit" not in result.stderr


def test_progress_bar_only_on_a_terminal_and_results_stay_on_stdout(pali, photos):
    # FORCE_COLOR makes rich treat stderr as a terminal; stdout is a pipe (the runner's buffer).
    with_bar = pali("caption", "photos", env={"FORCE_COLOR": "1"})
    assert "━" in with_bar.stderr and "caption" in with_bar.stderr
    assert len(jsonl(with_bar.stdout)) == 5 and "{" not in with_bar.stderr  # no record strayed to stderr
    plain = pali("caption", "photos")
    assert "━" not in plain.stderr and len(jsonl(plain.stdout)) == 5
    assert pali("caption", "photos", "-q", env={"FORCE_COLOR": "1"}).stderr == ""


def test_an_image_over_the_pixel_limit_is_an_error_record(pali, photos, monkeypatch):
    # PIL's decompression-bomb guard is global state of PIL's; lower it instead of writing a huge file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # refused above 2 x 600 pixels
    Image.new("RGB", (50, 50)).save(photos / "huge.png")
    result = pali("caption", "photos/huge.png", "photos/img1.png")
    assert result.exit_code == 3
    failed = [r for r in jsonl(result.stdout) if r["error"]]
    assert [r["image"] for r in failed] == ["photos/huge.png"] and "pixels" in failed[0]["error"]
