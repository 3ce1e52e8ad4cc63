"""Whole runs (in process, tiny random model) under the faults of issue 13: an -o that is not
ours, a second writer, devices, a full disk, odd names, link loops, FIFOs, unreadable directories,
NaN weights, and what is checked before the model loads."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image

from tests.cli.conftest import jsonl


def loaded(result) -> bool:
    return "Loading" in result.stderr


# ----------------------------------------------------------------------------- item 1, 4, 21: the output


def test_an_output_that_is_an_image_is_refused_before_loading_and_left_alone(tiny_pali, photos_dir):
    before = (photos_dir / "photos/img1.png").read_bytes()
    result = tiny_pali("caption", "photos/img1.png", "-o", "photos/img1.png")
    assert result.exit_code == 2, result.output
    assert "photos/img1.png exists and is not a pali results file" in result.stderr and not loaded(result)
    assert (photos_dir / "photos/img1.png").read_bytes() == before


def test_a_second_run_on_the_same_output_is_refused_before_loading(tiny_pali, photos_dir):
    from pali_cli.results import ResultsFile

    first = ResultsFile(photos_dir / "out.jsonl", print)  # another run holds the file
    try:
        result = tiny_pali("caption", "photos", "-o", "out.jsonl")
    finally:
        first.close()
    assert result.exit_code == 1, result.output
    assert "out.jsonl is being written by another pali run" in result.stderr and not loaded(result)


def test_an_output_that_cannot_be_created_fails_before_loading(tiny_pali, photos_dir):
    (photos_dir / "file").write_text("a file, not a directory")
    result = tiny_pali("caption", "photos", "-o", "file/out.jsonl")
    assert result.exit_code == 1 and "cannot write file/out.jsonl" in result.stderr and not loaded(result)


def test_a_single_unreadable_image_fails_before_loading(tiny_pali, photos_dir):
    (photos_dir / "bad.png").write_text("not an image")
    result = tiny_pali("caption", "bad.png")
    assert result.exit_code == 3 and "bad.png: PIL cannot identify it" in result.stderr and not loaded(result)
    result = tiny_pali("caption", "nope.png", "bad.png", "--json")
    assert result.exit_code == 3 and not loaded(result)
    assert [r["image"] for r in jsonl(result.stdout)] == ["nope.png", "bad.png"]
    assert "Done: 2 images" in result.stderr and "img/s" not in result.stderr  # no rate: nothing succeeded


def test_the_summary_rate_counts_only_the_images_that_succeeded(tiny_pali, photos_dir, monkeypatch):
    from pali_cli import runner

    class TenSeconds:
        seconds = 10.0

    monkeypatch.setattr(runner, "Stopwatch", TenSeconds)
    for name in ("bad1.png", "bad2.png"):
        (photos_dir / "photos" / name).write_bytes(b"not an image")
    result = tiny_pali("caption", "photos", "-o", "out.jsonl")
    assert result.exit_code == 3, result.output
    [summary] = [line for line in result.stderr.splitlines() if line.startswith("Done:")]
    assert "Done: 5 images" in summary and "(3.3 s/img)" in summary and "2 failed" in summary  # 10 s / 3 good


def test_dash_o_dash_is_stdout(tiny_pali, photos_dir):
    result = tiny_pali("caption", "photos", "-o", "-")
    assert result.exit_code == 0, result.output
    assert len(jsonl(result.stdout)) == 3 and not (photos_dir / "-").exists()


def test_dev_null_and_a_fifo_are_outputs_only(tiny_pali, photos_dir):
    assert tiny_pali("caption", "photos", "-o", "/dev/null").exit_code == 0
    fifo = photos_dir / "results.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = tiny_pali("caption", "photos", "-o", str(fifo))
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["image"] for line in got[0].splitlines()] == [f"photos/img{i}.png" for i in (1, 2, 3)]
    refused = tiny_pali("caption", "photos", "-o", "/dev/null", "--overwrite")
    assert refused.exit_code == 2 and "needs a regular file" in refused.stderr


def test_a_full_disk_is_said_as_such(tiny_pali, photos_dir):
    result = tiny_pali("caption", "photos", "-o", "/dev/full")
    assert result.exit_code == 1, result.output
    assert "cannot write /dev/full: the disk is full" in result.stderr and "report" not in result.stderr


# ----------------------------------------------------------------------------- items 2, 7, 9, 11: odd inputs


def test_names_that_are_not_utf8_are_recorded_and_never_stop_a_run(tiny_pali, photos_dir):
    odd = os.fsencode(photos_dir / "photos") + b"/m\xff.png"
    shutil.copy(photos_dir / "photos/img1.png", odd)
    with open(os.fsencode(photos_dir / "photos") + b"/z\xfe.png", "wb") as f:
        f.write(b"broken")
    result = tiny_pali("caption", "photos", "-o", "out.jsonl")
    assert result.exit_code == 3, result.output  # the broken odd file failed, the rest went on
    records = jsonl((photos_dir / "out.jsonl").read_text(encoding="utf-8"))
    assert len(records) == 5
    escaped = {os.fsencode(r["path_escaped"]): r for r in records if "path_escaped" in r}
    assert set(escaped) == {odd, os.fsencode(photos_dir / "photos") + b"/z\xfe.png"}
    assert escaped[odd]["error"] is None and escaped[odd]["image"] == "photos/m\ufffd.png"
    again = tiny_pali("caption", "photos", "-o", "out.jsonl")
    assert "Nothing to do" in again.stderr and not loaded(again)


def test_a_link_loop_in_a_directory_is_an_error_record(tiny_pali, photos_dir):
    os.symlink("loop.png", photos_dir / "photos/loop.png")
    result = tiny_pali("caption", "photos")
    assert result.exit_code == 3, result.output
    failed = [r for r in jsonl(result.stdout) if r["error"]]
    assert [r["image"] for r in failed] == ["photos/loop.png"] and "symbolic link loop" in failed[0]["error"]


def test_a_fifo_named_like_an_image_is_not_a_regular_file(tiny_pali, photos_dir):
    os.mkfifo(photos_dir / "x.jpg")
    result = tiny_pali("caption", "x.jpg", "photos/img1.png")
    assert result.exit_code == 3
    [failed] = [r for r in jsonl(result.stdout) if r["error"]]
    assert "x.jpg: it is not a regular file (a FIFO)" in failed["error"]


def test_an_unreadable_directory_is_one_warning_and_exit_3(tiny_pali, photos_dir, monkeypatch):
    (photos_dir / "photos/private").mkdir()
    Image.new("RGB", (8, 8)).save(photos_dir / "photos/private/secret.png")
    real = os.scandir

    def scandir(path="."):  # what a user who may not read it gets (the tests may run as root)
        if os.path.basename(os.fspath(path)) == "private":
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = tiny_pali("caption", "photos", "-r")
    assert result.exit_code == 3, result.output
    warnings = [line for line in result.stderr.splitlines() if "cannot read" in line]
    assert warnings == [
        "pali: warning: cannot read 1 directory, so their images are left out: photos/private (permission denied)"
    ]
    assert len(jsonl(result.stdout)) == 3


# ----------------------------------------------------------------------------- item 10: memory


def test_decoded_images_wait_at_the_model_size_not_their_own(monkeypatch):
    """A full-size image lives only while its thread decodes and resizes it: what waits for the
    model (batches ahead) is small, whatever the photos' sizes."""
    import weakref

    from pali_cli import batches

    alive: set[int] = set()
    most = [0]
    lock = threading.Lock()

    def decode(source):
        image = Image.new("RGB", (1200, 900))
        with lock:
            alive.add(id(image))
            most[0] = max(most[0], len(alive))
        weakref.finalize(image, alive.discard, id(image))
        return image

    monkeypatch.setattr(batches, "decode", decode)
    prefetcher = batches.Prefetcher(
        [Path(f"{i}.png") for i in range(24)], batch_size=4, fit=lambda im: im.resize((28, 28))
    )
    sizes = []
    for batch in prefetcher:
        sizes += [(fitted.image.size, fitted.size) for _, fitted in batch]
    prefetcher.close()
    assert sizes == [((28, 28), (1200, 900))] * 24  # boxes still use the original size
    assert most[0] <= 2  # one per decoding thread, not batch size x batches ahead (12)


def test_boxes_are_in_pixels_of_the_original_image(tiny_pali, photos_dir, monkeypatch):
    from engine import PaliGemmaCausalLM
    from engine.causal_lm import Completion

    seen: list[tuple[int, int]] = []

    def complete(self, images, prompts, max_new_tokens=64, stop_token_ids="auto", on_step=None):
        seen.extend(im.size for im in images)
        return [Completion("<loc0000><loc0000><loc1023><loc1023> cat", [1], "stop") for _ in images]

    monkeypatch.setattr(PaliGemmaCausalLM, "complete", complete)
    Image.new("RGB", (400, 200)).save(photos_dir / "big.png")
    [record] = jsonl(tiny_pali("detect", "big.png", "cat", "--json").stdout)
    assert seen == [(28, 28)]  # the model got the resized image ...
    assert record["detections"][0]["box"] == [0.0, 0.0, round(1023 / 1024 * 400, 1), round(1023 / 1024 * 200, 1)]


# ----------------------------------------------------------------------------- item 16: NaN weights


def test_nan_weights_stop_the_run_with_one_line_naming_the_checkpoint(checkpoints, photos_dir):
    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    from pali_cli.app import app
    from tests.helpers.checkpoints import TinySpec

    ckpt = photos_dir / "nan-ckpt"
    shutil.copytree(checkpoints.checkpoint(TinySpec()), ckpt)
    [weights] = ckpt.glob("*.safetensors")
    tensors = load_file(weights)
    tensors[next(n for n in tensors if "embed_tokens" in n)][:] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    args = ["caption", "photos", "-o", "out.jsonl", "-p", str(ckpt), "--device", "cpu", "--dtype", "float32"]
    result = CliRunner().invoke(app, [*args, "--max-tokens", "3"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    [line] = [line for line in result.stderr.splitlines() if line.startswith("pali: error")]
    assert str(ckpt) in line and "NaN or Inf" in line
    assert not (photos_dir / "out.jsonl").exists()  # no image was blamed for the weights


# ----------------------------------------------------------------------------- item 22: stopped before any record


def test_a_run_stopped_before_its_first_record_names_no_file_it_never_wrote(tiny_pali, photos_dir, monkeypatch):
    from pali_cli import batches

    def interrupted(self, items):
        raise KeyboardInterrupt  # a second Ctrl-C during the first batch

    monkeypatch.setattr(batches.ModelCalls, "run", interrupted)
    result = tiny_pali("caption", "photos", "-o", "out.jsonl")
    assert result.exit_code == 130, result.output
    assert "out.jsonl" not in result.stderr and "No image was finished yet" in result.stderr
    assert not (photos_dir / "out.jsonl").exists()


@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_a_signal_mid_run_finishes_the_batch_and_fsyncs_the_records(tiny_pali, photos_dir, monkeypatch, signame, code):
    import signal

    from engine import PaliGemmaCausalLM
    from engine.causal_lm import Completion

    def complete(self, images, prompts, max_new_tokens=64, stop_token_ids="auto", on_step=None):
        os.kill(os.getpid(), getattr(signal, signame))  # arrives while the first batch runs
        return [Completion("a photo", [1], "stop") for _ in images]

    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(PaliGemmaCausalLM, "complete", complete)
    monkeypatch.setattr(os, "fsync", fsync)  # pali_cli.results calls os.fsync
    result = tiny_pali("caption", "photos", "-o", "out.jsonl", "-b", "2")
    assert result.exit_code == code, result.output
    assert "stopped after 2 of 3 images" in result.stderr
    data = (photos_dir / "out.jsonl").read_bytes()
    assert len(jsonl(data.decode())) == 2 and synced == [len(data)]  # fsynced once everything was written


@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)])
def test_a_signal_while_the_model_loads_stops_at_once(tiny_pali, photos_dir, monkeypatch, signame, code):
    import signal
    import time

    from pali_cli import runner

    def load_model(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, signame))
        time.sleep(30)  # a load that takes long; the signal must not wait for it
        raise AssertionError("the signal did not stop the load")

    monkeypatch.setattr(runner, "load_model", load_model)
    result = tiny_pali("caption", "photos", "-o", "out.jsonl")
    assert result.exit_code == code, result.output
    assert "stopped after 0 of 3 images" in result.stderr and "No image was finished yet" in result.stderr
    assert not (photos_dir / "out.jsonl").exists()
