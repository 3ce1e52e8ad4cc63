"""``pali presets`` and model downloads end to end, against the fake Hub on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants as hf_constants
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save
from typer.testing import CliRunner

from engine.checkpoints.presets import DEFAULT_PRESET, list_presets
from pali_cli.app import app
from tests.helpers.checkpoints import TinySpec
from tests.helpers.fake_hub import FakeHub

PRESET = "pali_gemma2_mix_3b_224"
REPO = "google/paligemma2-3b-mix-224"
TOKEN = "hf_fake_valid_token_1234"


def fake_files() -> dict[str, bytes]:
    """What a repo needs to count as a checkpoint for the download code (not a loadable model)."""
    return {
        "config.json": b'{"model_type": "paligemma"}',
        "model.safetensors": save({"w": np.arange(5000, dtype=np.float32)}),
        "tokenizer.model": b"\x0a\x05dummy",
        "README.md": b"not downloaded",
    }


@pytest.fixture
def env(tmp_path, monkeypatch):
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "PALI_PRESET",
        "PALI_DEVICE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PALI_CACHE_DIR", str(tmp_path / "pali-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    # huggingface_hub reads these once at import; pin them so the developer's login never leaks in.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def hub(env, monkeypatch):
    with FakeHub(token=TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def pali(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def listing() -> dict[str, dict]:
    result = pali("presets", "list", "--json")
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_list_shows_every_preset_and_marks_the_default(env):
    rows = listing()
    assert list(rows) == [p.name for p in list_presets()]
    assert [n for n, r in rows.items() if r["default"]] == [DEFAULT_PRESET]
    row = rows[PRESET]
    assert (row["family"], row["size"], row["image_size"], row["hf_repo"]) == ("paligemma2", "3b", 224, REPO)
    assert row["downloaded"] is False and row["size_on_disk"] == 0
    table = pali("presets", "list").stdout
    assert f"{DEFAULT_PRESET} *" in table and "PaliGemma 2 mix" in table and "224 px" in table


def test_path_prints_the_cache_dir_from_env_or_option(env):
    assert pali("presets", "path").stdout.strip() == str(env / "pali-cache")
    assert pali("presets", "path", "--cache-dir", str(env / "elsewhere")).stdout.strip() == str(env / "elsewhere")


def test_the_bundled_demo_is_listed_as_bundled_and_never_removed(env):
    row = listing()["pali-demo-shapes"]
    assert row["downloaded"] is True and row["size_on_disk"] > 1_000_000
    assert "bundled" in pali("presets", "list").stdout
    refused = pali("presets", "rm", "pali-demo-shapes")
    assert refused.exit_code == 2 and "ships inside the pali package" in refused.stderr  # a usage error
    assert (Path(pali("presets", "path", "pali-demo-shapes").stdout.strip()) / "model.safetensors").is_file()


def test_download_then_use_offline_then_remove(hub, env):
    files = fake_files()
    hub.add_repo(REPO, files)

    result = pali("presets", "download", PRESET)
    assert result.exit_code == 0, result.output
    folder = Path(result.stdout.strip())
    assert folder.is_relative_to(env / "pali-cache")
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert not (folder / "README.md").exists()
    row = listing()[PRESET]
    assert row["downloaded"] and row["size_on_disk"] >= len(files["model.safetensors"])

    hub.stop()  # from now on nothing may need the network
    hub.clear_requests()
    again = pali("presets", "download", PRESET)
    assert again.exit_code == 0 and again.stdout.strip() == str(folder)
    assert "already downloaded" in again.stderr
    assert pali("presets", "path", PRESET).stdout.strip() == str(folder)
    # The demo model ships inside the package, so it is always usable without a download.
    assert [r["name"] for r in json.loads(pali("presets", "list", "--downloaded", "--json").stdout)] == [
        PRESET,
        "pali-demo-shapes",
    ]
    assert hub.requests == []

    removed = pali("presets", "rm", PRESET)
    assert removed.exit_code == 0 and "freed" in removed.stderr
    assert not listing()[PRESET]["downloaded"]
    assert "nothing to remove" in pali("presets", "rm", PRESET).stderr


def test_download_without_name_gets_the_preset_from_env(hub, env):
    hub.add_repo("google/paligemma-3b-mix-224", fake_files(), revision="bfloat16")
    result = pali("download", env={"PALI_PRESET": "pali_gemma_3b_mix_224"})  # the hidden short form
    assert result.exit_code == 0, result.output
    assert listing()["pali_gemma_3b_mix_224"]["downloaded"]


def test_gated_repo_without_login_is_a_401_with_how_to_log_in(hub, env):
    hub.add_repo(REPO, fake_files(), access="gated", granted=False)
    no_login = pali("presets", "download", PRESET)
    assert no_login.exit_code == 4
    assert "HF_TOKEN" in no_login.stderr and "401" in no_login.stderr


def test_gated_repo_license_not_accepted_is_a_403_with_the_model_page(hub, env):
    hub.add_repo(REPO, fake_files(), access="gated", granted=False)
    not_accepted = pali("presets", "download", PRESET, env={"HF_TOKEN": TOKEN})
    assert not_accepted.exit_code == 4
    assert "accept the license" in not_accepted.stderr and f"https://huggingface.co/{REPO}" in not_accepted.stderr
    assert TOKEN not in not_accepted.output


def test_interrupted_download_fails_with_4_and_the_rerun_finishes_it(hub, env, monkeypatch):
    files = fake_files()
    hub.add_repo(REPO, files)
    hub.add_fault(REPO, "model.safetensors", ("drop", 100), ("status", 503))
    first = pali("presets", "download", PRESET, "-q")
    assert first.exit_code == 4, first.output
    second = pali("presets", "download", PRESET, "-q")
    assert second.exit_code == 0
    assert (Path(second.stdout.strip()) / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_unknown_or_missing_presets(env, hub):
    unknown = pali("presets", "download", "pali_gemma2_mix_3b_22")
    assert unknown.exit_code == 2 and "did you mean" in unknown.stderr
    assert "`pali presets list`" in unknown.stderr  # the CLI's own hint, added to the engine's message
    missing = pali("presets", "path", PRESET)
    assert missing.exit_code == 4 and "not downloaded" in missing.stderr
    assert f"pali presets download {PRESET}" in missing.stderr
    assert pali("presets", "rm").exit_code == 2  # NAME is required for rm


def test_caption_downloads_the_preset_on_first_use_then_runs_offline(hub, env, checkpoints):
    """The whole path a new user takes: a preset name, a first download, a caption; then the same
    command with the Hub gone gives the same caption from the cache."""
    ckpt = checkpoints.checkpoint(TinySpec())
    hub.add_repo(REPO, {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()})
    Image.new("RGB", (40, 30), (200, 30, 30)).save(env / "red.png")

    first = pali("caption", "red.png", "-p", PRESET, "--max-tokens", "6", "-q")
    assert first.exit_code == 0, first.output
    hub.stop()
    second = pali("caption", "red.png", "-p", PRESET, "--max-tokens", "6", "--json", "-q", env={"HF_HUB_OFFLINE": "1"})
    assert second.exit_code == 0, second.output
    record = json.loads(second.stdout)
    assert record["preset"] == PRESET and record["text"] + "\n" == first.stdout

    unavailable = pali("caption", "red.png", "-p", "pali_gemma2_mix_10b_224", "-q")
    assert unavailable.exit_code == 4 and "pali_gemma2_mix_10b_224" in unavailable.stderr
