"""Whole runs (in process, tiny random model) of what issue 13 adds or fixes for everyday use:
images from stdin and URLs, text streamed to a terminal, raw task prompts parsed, resuming from
another directory, "nothing found", warnings under -q. Expected texts come from the engine's own
``complete()`` on the same image: the CLI must print what the library generates."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from engine.processing.image import load_image
from tests.cli.conftest import jsonl
from tests.helpers.image_server import ImageServer, png


@pytest.fixture(scope="module")
def engine_lm(tiny_ckpt):
    from engine import PaliGemmaCausalLM

    return PaliGemmaCausalLM.from_preset(tiny_ckpt, dtype="float32", device="cpu")


def expected(lm, image, prompt: str = "caption en\n", tokens: int = 4) -> str:
    return lm.complete([load_image(image)], [prompt], max_new_tokens=tokens)[0].text


@pytest.fixture
def server(monkeypatch):
    from pali_cli import remote

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(remote, "_client", None)
    with ImageServer() as srv:
        srv.images["/red.png"] = png((250, 0, 0), (40, 30))
        yield srv


# ----------------------------------------------------------------------------- stdin and URLs


def test_an_image_piped_to_stdin(tiny_pali, photos_dir, engine_lm):
    from pali_cli import remote

    remote.forget_stdin()
    data = (photos_dir / "photos/img2.png").read_bytes()
    result = tiny_pali("caption", "-", input=data)
    remote.forget_stdin()
    assert result.exit_code == 0, result.output
    assert result.stdout == expected(engine_lm, data) + "\n"


def test_stdin_is_never_skipped_as_done_and_cannot_also_carry_a_list(tiny_pali, photos_dir):
    from pali_cli import remote

    data = (photos_dir / "photos/img1.png").read_bytes()
    for _ in range(2):
        remote.forget_stdin()
        result = tiny_pali("caption", "-", "-o", "out.jsonl", input=data)
        assert result.exit_code == 0, result.output
    remote.forget_stdin()
    assert [r["image"] for r in jsonl((photos_dir / "out.jsonl").read_text())] == ["-", "-"]
    both = tiny_pali("caption", "-", "--files-from", "-", input="photos/img1.png\n")
    assert both.exit_code == 2 and "both read stdin" in both.stderr


def test_urls_are_downloaded_and_a_bad_one_is_an_error_record(tiny_pali, photos_dir, server, engine_lm):
    good, missing = f"{server.url}/red.png", f"{server.url}/missing.png"
    result = tiny_pali("caption", good, missing, "-o", "out.jsonl")
    assert result.exit_code == 3, result.output
    first, second = jsonl((photos_dir / "out.jsonl").read_text())
    assert (first["image"], first["path"]) == (good, good)
    assert first["text"] == expected(engine_lm, server.images["/red.png"])
    assert second["image"] == missing and "HTTP 404" in second["error"]
    again = tiny_pali("caption", good, "-o", "out.jsonl")  # a URL is resumed like a file
    assert "Nothing to do" in again.stderr


def test_one_url_prints_plain_text(tiny_pali, photos_dir, server, engine_lm):
    result = tiny_pali("caption", f"{server.url}/red.png?size=large")
    assert result.exit_code == 0 and result.stdout == expected(engine_lm, server.images["/red.png"]) + "\n"


# ----------------------------------------------------------------------------- streaming


class Piped(io.StringIO):
    """stdout as a pipe, recording each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


class Terminal(Piped):
    """stdout as a terminal, recording each write."""

    def isatty(self) -> bool:
        return True


def test_one_image_in_a_terminal_streams_its_text(tiny_ckpt, photos_dir, engine_lm, monkeypatch):
    from pali_cli.jobs import caption_job
    from pali_cli.options import Device, DType, RunOptions
    from pali_cli.runner import run_command

    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    opts = RunOptions(
        preset=str(tiny_ckpt), device=Device.cpu, dtype=DType.float32, max_tokens=8, threads=1, quiet=True
    )
    run_command(caption_job("en"), ["photos/img3.png"], opts)
    text = expected(engine_lm, photos_dir / "photos/img3.png", tokens=8)
    assert terminal.getvalue() == text + "\n"
    assert len([w for w in terminal.writes if w]) > 2  # piece by piece, as generated, then the newline


def test_piped_or_json_output_is_not_streamed(tiny_ckpt, photos_dir, engine_lm, monkeypatch):
    from pali_cli.jobs import caption_job
    from pali_cli.options import Device, DType, RunOptions
    from pali_cli.runner import run_command

    text = expected(engine_lm, photos_dir / "photos/img3.png", tokens=8)
    for json_out, out in ((False, Piped()), (True, Terminal())):
        monkeypatch.setattr("sys.stdout", out)
        opts = RunOptions(
            preset=str(tiny_ckpt), device=Device.cpu, dtype=DType.float32, max_tokens=8, quiet=True, json=json_out
        )
        run_command(caption_job("en"), ["photos/img3.png"], opts)
        [written] = [w for w in out.writes if w]  # the whole result at once
        assert (jsonl(written)[0]["text"] if json_out else written) == (text if json_out else text + "\n")


# ----------------------------------------------------------------------------- item 27: raw task prompts, resume


def test_a_raw_detect_prompt_gets_its_boxes_parsed(tiny_pali, photos_dir, monkeypatch):
    from engine import PaliGemmaCausalLM
    from engine.causal_lm import Completion

    def complete(self, images, prompts, max_new_tokens=64, stop_token_ids="auto", on_step=None):
        return [Completion("<loc0000><loc0000><loc0512><loc0512> circle", [1], "stop") for _ in images]

    monkeypatch.setattr(PaliGemmaCausalLM, "complete", complete)
    [record] = jsonl(tiny_pali("prompt", "photos/img1.png", "detect circle", "--json").stdout)
    assert record["task"] == "prompt" and record["detections"] == [{"label": "circle", "box": [0.0, 0.0, 16.0, 12.0]}]
    plain = tiny_pali("prompt", "photos/img1.png", "detect circle")
    assert plain.stdout == "circle\t0\t0\t16\t12\n"


def test_resume_from_another_directory_and_through_a_link(tiny_pali, photos_dir, monkeypatch):
    assert tiny_pali("caption", "photos", "-o", "cap.jsonl", "-q").exit_code == 0
    (photos_dir / "link").symlink_to("photos")
    monkeypatch.chdir(photos_dir / "photos")
    again = tiny_pali("caption", ".", "-o", "../cap.jsonl")
    assert again.exit_code == 0 and "Nothing to do" in again.stderr, again.output
    monkeypatch.chdir(photos_dir)
    assert "Nothing to do" in tiny_pali("caption", "link", "-o", "cap.jsonl").stderr
    assert [r["image"] for r in jsonl(Path("cap.jsonl").read_text())] == [f"photos/img{i}.png" for i in (1, 2, 3)]


# ----------------------------------------------------------------------------- items 17, 23


def test_detect_that_finds_nothing_says_so_on_stderr(tiny_pali, photos_dir, monkeypatch):
    from engine import PaliGemmaCausalLM
    from engine.causal_lm import Completion

    monkeypatch.setattr(
        PaliGemmaCausalLM, "complete", lambda self, images, *a, **k: [Completion("green", [1], "stop") for _ in images]
    )
    for objects in ("dog", "circle ; square"):
        result = tiny_pali("detect", "photos/img1.png", objects)
        assert result.exit_code == 0 and result.stdout == ""
        assert "Nothing found: the model's answer was 'green'." in result.stderr


def test_a_quantized_cache_that_cannot_be_written_is_one_warning_and_silent_under_q(tiny_pali, photos_dir):
    (photos_dir / "not-a-dir").write_text("so nothing can be cached below it")
    env = {"PALI_CACHE_DIR": str(photos_dir / "not-a-dir" / "cache")}
    loud = tiny_pali("caption", "photos/img1.png", "--quantize", "int8", env=env)
    assert loud.exit_code == 0, loud.output
    warned = [line for line in loud.stderr.splitlines() if "cache quantized weights" in line]
    assert len(warned) == 1 and warned[0].startswith("pali: warning: could not cache quantized weights")
    assert "warnings.warn" not in loud.stderr and "UserWarning" not in loud.stderr
    quiet = tiny_pali("caption", "photos/img1.png", "--quantize", "int8", "-q", env=env)
    assert quiet.exit_code == 0 and quiet.stderr == ""
