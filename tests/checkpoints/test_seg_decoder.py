"""engine.checkpoints.seg_decoder: the mask decoder file from a local path or the fake Hub's Space.

The real vae-oid.npz cannot be downloaded here, so the Space serves a random npz with the right
names and shapes, and each test passes that file's SHA-256 as the expected hash (the parameter's
default is the real file's).
"""

from __future__ import annotations

import pytest

from engine.checkpoints import seg_decoder
from engine.checkpoints.seg_decoder import resolve_mask_decoder
from engine.errors import MaskDecoderError, ModelNotFoundError, ModelUnavailableError, OfflineError
from tests.helpers.fake_hub import FakeHub
from tests.helpers.mask_decoder import sha256_of, write_decoder_npz

SPACE = "google/paligemma-hf"


@pytest.fixture
def npz(tmp_path):
    path = write_decoder_npz(tmp_path / "random-vae.npz", seed=7)
    return path, sha256_of(path)


@pytest.fixture
def space(fake_hub, npz):
    path, _ = npz
    fake_hub.add_repo(SPACE, {"vae-oid.npz": path.read_bytes(), "app.py": b"print()"}, repo_type="space")
    return fake_hub


def test_the_real_file_is_the_default():
    assert seg_decoder.VAE_OID_SHA256 == "5586010257b8536dddefab65e7755077f21d5672d5674dacf911f73ae95a4447"
    assert (seg_decoder.VAE_OID_REPO, seg_decoder.VAE_OID_REPO_TYPE) == (SPACE, "space")


def test_downloads_once_into_pali_cache_then_works_offline(space, npz, hub_env, monkeypatch):
    path, digest = npz
    got = resolve_mask_decoder(sha256=digest, quiet=True)
    assert got.read_bytes() == path.read_bytes()
    assert str(got).startswith(str(hub_env["pali"]))
    assert any(r.path == f"/spaces/{SPACE}/resolve/main/vae-oid.npz" for r in space.requests)
    space.clear_requests()

    assert resolve_mask_decoder(sha256=digest) == got
    assert space.requests == []  # the cached copy is verified locally: no request at all
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_mask_decoder(sha256=digest) == got


def test_a_copy_in_the_shared_huggingface_cache_is_used_in_place(space, npz, hub_env):
    from huggingface_hub import hf_hub_download

    _, digest = npz
    shared = hf_hub_download(SPACE, "vae-oid.npz", repo_type="space", cache_dir=hub_env["hf"], endpoint=space.url)
    space.clear_requests()
    assert str(resolve_mask_decoder(sha256=digest)) == shared
    assert space.requests == []


def test_a_file_with_another_hash_is_refused_and_not_kept(space, npz, hub_env):
    _, digest = npz
    with pytest.raises(ModelUnavailableError, match="not the expected file") as caught:
        resolve_mask_decoder(quiet=True)  # the real hash: the random file cannot have it
    assert not isinstance(caught.value, MaskDecoderError)
    assert "vae-oid.npz" in str(caught.value) and "\n" not in str(caught.value)
    assert not list(hub_env["pali"].rglob("vae-oid.npz"))  # nothing bad stays in the cache
    assert resolve_mask_decoder(sha256=digest, quiet=True).is_file()  # and the right one still comes


def test_a_damaged_cached_copy_is_replaced(space, npz):
    _, digest = npz
    cached = resolve_mask_decoder(sha256=digest, quiet=True)
    cached.resolve().write_bytes(b"damaged")
    space.clear_requests()
    again = resolve_mask_decoder(sha256=digest, quiet=True)
    assert sha256_of(again) == digest
    assert any(r.path.startswith("/cdn/") for r in space.requests)


def test_offline_and_not_cached(space, npz, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="PALI_SEG_DECODER"):
        resolve_mask_decoder(sha256=npz[1])
    assert space.requests == []


@pytest.mark.slow  # huggingface_hub retries a failed HEAD 5 times with back-off (23 s)
def test_unreachable_hub(hub_env, npz, monkeypatch):
    with FakeHub() as server:
        url = server.url  # nothing listens there once stopped
    monkeypatch.setenv("HF_ENDPOINT", url)
    with pytest.raises(OfflineError, match="cannot reach") as caught:
        resolve_mask_decoder(sha256=npz[1], quiet=True)
    assert "pali segment" in str(caught.value) and "pali presets download" not in str(caught.value)


def test_missing_space_is_a_404(fake_hub, npz):
    with pytest.raises(ModelNotFoundError, match="404"):
        resolve_mask_decoder(sha256=npz[1], quiet=True)


def test_a_local_copy_is_verified_too(npz, tmp_path, monkeypatch, hub_env):
    path, digest = npz
    assert resolve_mask_decoder(path, sha256=digest) == path
    monkeypatch.setenv("PALI_SEG_DECODER", str(path))
    assert resolve_mask_decoder(sha256=digest) == path
    for bad, message in [(path, "SHA-256"), (tmp_path / "nope.npz", "does not exist"), (tmp_path, "directory")]:
        with pytest.raises(MaskDecoderError, match=message) as caught:
            resolve_mask_decoder(bad)  # the real hash for the first: a random file is not it
        assert str(bad) in str(caught.value)


def test_the_expected_hash_defaults_to_the_module_constant_at_call_time(npz, monkeypatch):
    path, digest = npz
    monkeypatch.setattr(seg_decoder, "VAE_OID_SHA256", digest)
    assert resolve_mask_decoder(path) == path
