"""engine.checkpoints.hub when a download cannot be had: interrupted connections, offline, HTTP
401/403/404, pickled-only repositories, malformed addresses (against the fake Hub, see conftest.py)."""

from __future__ import annotations

import hashlib

import huggingface_hub.constants as hf_constants
import pytest

from engine.checkpoints import hub
from engine.errors import (
    AccessDeniedError,
    AuthenticationRequiredError,
    DownloadInterruptedError,
    ModelNotFoundError,
    ModelUnavailableError,
    OfflineError,
    UnsupportedCheckpointError,
)
from tests.helpers.fake_hub import FakeHub
from tests.helpers.hub_repos import PRESET, REPO, TOKEN, assert_same_files, checkpoint_files, sha256

# ----------------------------------------------------------------------------- interrupted downloads


def test_connection_dropped_mid_file_resumes_with_a_range_request(fake_hub, monkeypatch):
    files = checkpoint_files(weights=50_000)
    fake_hub.add_repo(REPO, files)
    fake_hub.add_fault(REPO, "model.safetensors", ("drop", 60_000))
    # huggingface_hub writes 10 MiB chunks; small chunks let a 200 kB file resume mid-way.
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 4096)

    folder = hub.resolve(PRESET, quiet=True)

    assert sha256(folder / "model.safetensors") == hashlib.sha256(files["model.safetensors"]).hexdigest()
    ranges = [r.range for r in fake_hub.requests if r.path.startswith("/cdn/") and r.range]
    assert len(ranges) == 1 and 0 < int(ranges[0].removeprefix("bytes=").rstrip("-")) <= 60_000


def test_failed_download_continues_on_the_next_call(fake_hub, env):
    files = checkpoint_files(weights=50_000)
    fake_hub.add_repo(REPO, files)
    # The connection drops, and the retry meets a server error: this call gives up.
    fake_hub.add_fault(REPO, "model.safetensors", ("drop", 60_000), ("status", 503))

    with pytest.raises(ModelUnavailableError, match="503"):
        hub.resolve(PRESET, quiet=True)
    assert not hub.is_cached(PRESET)
    fake_hub.clear_requests()

    folder = hub.resolve(PRESET, quiet=True)

    assert_same_files(folder, files)
    fetched = [r.path.rsplit("/", 1)[-1] for r in fake_hub.requests if r.method == "GET" and "/resolve/" in r.path]
    assert "config.json" not in fetched  # finished files were kept; only the broken one came again
    assert any(r.path.startswith("/cdn/") for r in fake_hub.requests)


@pytest.mark.slow  # huggingface_hub sleeps 1 s before each of its 5 retries
def test_connection_lost_for_good_is_an_interrupted_download(fake_hub, monkeypatch):
    files = checkpoint_files(weights=50_000)
    fake_hub.add_repo(REPO, files)
    fake_hub.add_fault(REPO, "model.safetensors", ("drop", 60_000), *[("drop", 0)] * 5)
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 4096)

    with pytest.raises(DownloadInterruptedError, match="try again to continue") as caught:
        hub.resolve(PRESET, quiet=True)
    assert caught.value.label == PRESET and "pali " not in str(caught.value)

    fake_hub.clear_faults()
    assert_same_files(hub.resolve(PRESET, quiet=True), files)


# ----------------------------------------------------------------------------- errors


def test_offline_and_not_cached(fake_hub, monkeypatch):
    fake_hub.add_repo(REPO, checkpoint_files())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(OfflineError) as caught:
        hub.resolve(PRESET)

    message = str(caught.value)
    assert PRESET in message and "HF_HUB_OFFLINE" in message and "while online" in message
    assert caught.value.label == PRESET  # for front ends to say how they download
    assert "pali presets" not in message  # the engine never names CLI commands
    assert fake_hub.requests == []


def test_no_download_allowed_and_not_cached(fake_hub):
    fake_hub.add_repo(REPO, checkpoint_files())
    with pytest.raises(OfflineError, match=f"{PRESET} is not downloaded") as caught:
        hub.resolve(PRESET, allow_download=False)
    assert caught.value.label == PRESET and "pali presets" not in str(caught.value)
    assert fake_hub.requests == []


def test_unreachable_hub_and_not_cached(env, monkeypatch):
    with FakeHub() as server:
        url = server.url  # a port that nothing listens on once the server is stopped
    monkeypatch.setenv("HF_ENDPOINT", url)
    with pytest.raises(OfflineError, match="cannot reach"):
        hub.resolve(PRESET, quiet=True)


def test_401_asks_for_a_login_and_never_shows_the_token(fake_hub, monkeypatch):
    fake_hub.add_repo(REPO, checkpoint_files(), access="private")

    with pytest.raises(AuthenticationRequiredError) as caught:
        hub.resolve(PRESET, quiet=True)
    message = str(caught.value)
    assert "HF_TOKEN" in message and "hf auth login" in message
    assert f"https://huggingface.co/{REPO}" in message and "no token" in message

    wrong = "hf_wrong_secret_value_12345"
    monkeypatch.setenv("HF_TOKEN", wrong)
    with pytest.raises(AuthenticationRequiredError) as caught:
        hub.resolve(PRESET, quiet=True)
    assert wrong not in str(caught.value) and "rejected" in str(caught.value)
    assert any(r.authorization == f"Bearer {wrong}" for r in fake_hub.requests)  # HF_TOKEN was used

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert (hub.resolve(PRESET, quiet=True) / "model.safetensors").is_file()


def test_403_gated_asks_to_accept_the_license(fake_hub, monkeypatch):
    fake_hub.add_repo(REPO, checkpoint_files(), access="gated", granted=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    with pytest.raises(AccessDeniedError) as caught:
        hub.resolve(PRESET, quiet=True)

    message = str(caught.value)
    assert "license" in message and f"https://huggingface.co/{REPO}" in message
    assert TOKEN not in message


def test_gated_without_a_token_is_a_401(fake_hub):
    fake_hub.add_repo(REPO, checkpoint_files(), access="gated", granted=True)
    with pytest.raises(AuthenticationRequiredError):
        hub.resolve(PRESET, quiet=True)


def test_404_repo_and_revision(fake_hub):
    fake_hub.add_repo("someone/exists", checkpoint_files())
    with pytest.raises(ModelNotFoundError, match="someone/missing"):
        hub.resolve("hf://someone/missing", quiet=True)
    with pytest.raises(ModelNotFoundError, match="revision 'nope'"):
        hub.resolve("hf://someone/exists@nope", quiet=True)


def test_pickled_only_repo_is_refused_without_fetching_the_pickle(fake_hub):
    files = {**checkpoint_files(), "pytorch_model.bin": b"\x80\x04 pickle"}
    del files["model.safetensors"]
    fake_hub.add_repo("someone/old-format", files)

    with pytest.raises(UnsupportedCheckpointError, match=r"pickled weights \(pytorch_model.bin\)"):
        hub.resolve("hf://someone/old-format", quiet=True)

    assert not any(r.path.endswith(".bin") for r in fake_hub.requests)
    assert not hub.is_cached("hf://someone/old-format")


def test_malformed_hub_uri(env):
    with pytest.raises(ModelNotFoundError, match="hf://owner/repo"):
        hub.resolve("hf://datasets/someone/data")
