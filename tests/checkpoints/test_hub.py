"""engine.checkpoints.hub end to end against a fake Hugging Face Hub on 127.0.0.1 (tests/helpers/fake_hub.py):
downloads, reuse of the caches, local directories, remove, cache locations. Failures are in
test_hub_failures.py; the fixtures in conftest.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from safetensors.numpy import save

from engine.checkpoints import hub
from engine.errors import (
    LocalModelError,
    ModelUnavailableError,
    UnknownPresetError,
)
from tests.helpers.hub_repos import PRESET, REPO, WANTED, assert_same_files, checkpoint_files

# ----------------------------------------------------------------------------- download and reuse


def test_first_resolve_downloads_into_pali_cache_then_works_offline(fake_hub, env, monkeypatch):
    files = checkpoint_files()
    fake_hub.add_repo(REPO, files)

    folder = hub.resolve(PRESET, quiet=True)

    assert folder.is_relative_to(env["pali"]) and not env["hf"].exists()
    assert_same_files(folder, files)  # README.md and .gitattributes are not fetched
    assert hub.is_cached(PRESET)
    assert hub.size_on_disk(PRESET) == sum(len(files[n]) for n in WANTED)

    # Only the endpoints a plain-HTTP snapshot download uses: no Xet, no telemetry.
    known = re.compile(rf"^/api/models/{REPO}/(revision|tree)/|^/{REPO}/resolve/|^/cdn/")
    assert all(known.match(r.path) for r in fake_hub.requests), fake_hub.requests

    fake_hub.stop()  # the second resolve must not need the network at all
    fake_hub.clear_requests()
    assert hub.resolve(PRESET) == folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve(PRESET, allow_download=False) == folder
    assert fake_hub.requests == []


def test_cached_copy_is_used_without_any_request(fake_hub):
    fake_hub.add_repo(REPO, checkpoint_files())
    hub.download(PRESET, quiet=True)
    fake_hub.clear_requests()

    hub.resolve(PRESET)
    hub.is_cached(PRESET)
    hub.size_on_disk(PRESET)

    assert fake_hub.requests == []


def test_paligemma1_presets_download_the_bfloat16_branch(fake_hub):
    fp32, bf16 = checkpoint_files(weights=4000), checkpoint_files(weights=2000)
    fake_hub.add_repo("google/paligemma-3b-mix-224", fp32, revision="main")
    fake_hub.add_repo("google/paligemma-3b-mix-224", bf16, revision="bfloat16")

    folder = hub.resolve("pali_gemma_3b_mix_224", quiet=True)

    assert_same_files(folder, bf16)


def test_hf_uri_with_revision(fake_hub):
    main, v2 = checkpoint_files(weights=100), checkpoint_files(weights=200)
    fake_hub.add_repo("someone/tuned-pali", main)
    commit = fake_hub.add_repo("someone/tuned-pali", v2, revision="v2")

    assert_same_files(hub.resolve("hf://someone/tuned-pali@v2", quiet=True), v2)
    assert_same_files(hub.resolve("hf://someone/tuned-pali", quiet=True), main)
    assert hub.resolve("hf://someone/tuned-pali@v2").name == commit


def test_sharded_checkpoint_directory_round_trips(fake_hub, tmp_path):
    source = tmp_path / "sharded"
    source.mkdir()
    shards = {f"model-0000{i}-of-00002.safetensors": save({f"w{i}": np.full(500, i, np.float32)}) for i in (1, 2)}
    index = {
        "metadata": {},
        "weight_map": {"w1": "model-00001-of-00002.safetensors", "w2": "model-00002-of-00002.safetensors"},
    }
    files = {
        **shards,
        "model.safetensors.index.json": json.dumps(index).encode(),
        "config.json": b"{}",
        "tokenizer.model": b"sp",
        "optimizer.pt": b"pickle",
    }
    for name, data in files.items():
        (source / name).write_bytes(data)
    fake_hub.add_repo_dir("someone/sharded", source)

    folder = hub.resolve("hf://someone/sharded", quiet=True)

    assert_same_files(folder, files, names=[n for n in files if n != "optimizer.pt"])
    (folder / "model-00002-of-00002.safetensors").unlink()  # a shard gone: no longer a usable copy
    assert not hub.is_cached("hf://someone/sharded")


def test_reuses_the_huggingface_cache_in_place_without_a_request(fake_hub, env):
    files = checkpoint_files()
    fake_hub.add_repo(REPO, files)
    # Another tool filled the shared cache (with everything, README included).
    shared = Path(huggingface_hub.snapshot_download(REPO, cache_dir=env["hf"], endpoint=fake_hub.url))
    fake_hub.stop()
    fake_hub.clear_requests()

    folder = hub.resolve(PRESET)

    assert folder == shared and not env["pali"].exists()
    assert hub.is_cached(PRESET)
    assert [p.name for p in hub.cached_presets()] == [PRESET, "pali-demo-shapes"]  # the demo is bundled
    assert fake_hub.requests == []


def test_reuses_a_huggingface_cache_filled_file_by_file(fake_hub, env):
    # transformers fetches files one by one (no tree listing is cached): still a complete copy.
    files = checkpoint_files()
    fake_hub.add_repo(REPO, files)
    for name in WANTED:
        huggingface_hub.hf_hub_download(REPO, name, cache_dir=env["hf"], endpoint=fake_hub.url)
    fake_hub.clear_requests()

    assert hub.resolve(PRESET).is_relative_to(env["hf"])
    assert fake_hub.requests == []


def test_incomplete_huggingface_cache_is_not_used(fake_hub, env):
    files = checkpoint_files()
    fake_hub.add_repo(REPO, files)
    huggingface_hub.hf_hub_download(REPO, "config.json", cache_dir=env["hf"], endpoint=fake_hub.url)

    folder = hub.resolve(PRESET, quiet=True)

    assert folder.is_relative_to(env["pali"])
    assert_same_files(folder, files)


def test_local_directory(tmp_path, env):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert hub.resolve(tmp_path / "ckpt") == (tmp_path / "ckpt").resolve()
    assert hub.resolve(str(tmp_path / "ckpt")) == (tmp_path / "ckpt").resolve()
    assert hub.is_cached(str(tmp_path / "ckpt"))

    (tmp_path / "empty").mkdir()
    with pytest.raises(LocalModelError, match="no config.json"):
        hub.resolve(str(tmp_path / "empty"))
    with pytest.raises(LocalModelError, match="is a file"):
        hub.resolve(str(tmp_path / "ckpt" / "config.json"))
    with pytest.raises(LocalModelError, match="no such directory"):
        hub.resolve(str(tmp_path / "missing"))


def test_bare_repo_id_hints_at_hf_uri(env, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LocalModelError, match="hf://google/paligemma2-3b-mix-224"):
        hub.resolve("google/paligemma2-3b-mix-224")


def test_unknown_name_says_what_a_spec_can_be(env):
    with pytest.raises(UnknownPresetError) as caught:
        hub.resolve("pali_gemma2_mix_3b_24")
    assert "pali_gemma2_mix_3b_224" in str(caught.value)
    assert "hf://owner/repo" in str(caught.value)


def test_bundled_demo_model_resolves_or_says_it_is_missing(env):
    from engine.checkpoints.presets import get_preset

    demo = get_preset("pali-demo-shapes")
    assert demo.bundled_dir is not None
    if (demo.bundled_dir / "config.json").is_file():
        assert hub.resolve("pali-demo-shapes") == demo.bundled_dir
    else:
        with pytest.raises(LocalModelError, match="pali-demo-shapes"):
            hub.resolve("pali-demo-shapes")
        assert not hub.is_cached("pali-demo-shapes")


# ----------------------------------------------------------------------------- remove


def test_remove_frees_pali_cache_and_leaves_the_huggingface_cache_alone(fake_hub, env):
    files = checkpoint_files()
    fake_hub.add_repo(REPO, files)
    shared = Path(huggingface_hub.snapshot_download(REPO, cache_dir=env["hf"], endpoint=fake_hub.url))
    shared_before = {p.name: p.read_bytes() for p in shared.iterdir()}
    ours = hub.resolve("hf://" + REPO)  # the shared copy...
    assert ours == shared
    # ...so fill pali's cache explicitly, as if it had been downloaded before the shared copy existed.
    own = Path(
        huggingface_hub.snapshot_download(
            REPO, cache_dir=env["pali"], endpoint=fake_hub.url, allow_patterns=list(hub.ALLOW_PATTERNS)
        )
    )
    assert hub.resolve(PRESET) == own

    freed = hub.remove(PRESET)

    assert freed == sum(len(files[n]) for n in WANTED)
    assert not own.exists()
    assert {p.name: p.read_bytes() for p in shared.iterdir()} == shared_before
    assert hub.resolve(PRESET) == shared  # still usable, from the shared cache
    assert hub.remove(PRESET) == 0


def test_remove_refuses_local_directories_and_the_shared_cache(tmp_path, env, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    with pytest.raises(LocalModelError, match="local directory"):
        hub.remove(str(tmp_path / "ckpt"))
    monkeypatch.setenv("PALI_CACHE_DIR", str(env["hf"]))
    env["hf"].mkdir(parents=True)
    with pytest.raises(LocalModelError, match="shared Hugging Face cache"):
        hub.remove(PRESET)


def test_remove_clears_an_aborted_download(fake_hub, env):
    files = checkpoint_files(weights=50_000)
    fake_hub.add_repo(REPO, files)
    fake_hub.add_fault(REPO, "model.safetensors", ("status", 500))
    with pytest.raises(ModelUnavailableError, match="500"):
        hub.resolve(PRESET, quiet=True)

    assert hub.remove(PRESET) > 0
    assert not any(env["pali"].glob("models--*/snapshots/*/*"))


# ----------------------------------------------------------------------------- cache locations


def test_default_cache_dir(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.setenv("PALI_CACHE_DIR", str(tmp_path / "mine"))
    assert hub.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("PALI_CACHE_DIR")
    assert hub.default_cache_dir() == Path(platformdirs.user_cache_dir("pali", appauthor=False))


@pytest.mark.parametrize(
    "variables",
    [
        {"HF_HUB_CACHE": "{tmp}/a"},
        {"HF_HOME": "{tmp}/b"},
        {"XDG_CACHE_HOME": "{tmp}/c"},
    ],
)
def test_hf_cache_dir_agrees_with_huggingface_hub(variables, monkeypatch, tmp_path):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    # huggingface_hub computes its cache path at import: ask a fresh interpreter.
    out = subprocess.run(
        [sys.executable, "-c", "import huggingface_hub.constants as c; print(c.HF_HUB_CACHE)"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=True,
    ).stdout.strip()
    assert hub.hf_cache_dir() == Path(out)


def test_quiet_hides_the_progress_bars(fake_hub, capfd):
    fake_hub.add_repo(REPO, checkpoint_files())
    fake_hub.add_repo("someone/other", checkpoint_files())

    hub.resolve(PRESET, quiet=True)
    assert "Fetching" not in capfd.readouterr().err

    # Another in-process caller (a CLI test run with -q) may have switched the bars off globally.
    was_disabled = huggingface_hub.utils.are_progress_bars_disabled()
    huggingface_hub.utils.enable_progress_bars()
    try:
        hub.resolve("hf://someone/other")
    finally:
        if was_disabled:
            huggingface_hub.utils.disable_progress_bars()
    assert "Fetching 4 files" in capfd.readouterr().err
