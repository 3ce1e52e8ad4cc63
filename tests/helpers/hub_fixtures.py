"""Fixtures for tests that download from the fake Hub (tests/helpers/fake_hub.py).

huggingface_hub reads a few settings once, when it is imported (endpoint, offline flag, telemetry,
token file path). pali reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_TOKEN itself at call time; ``hub_env``
also pins those import-time constants so that no test depends on the order in which modules were
imported, or on the developer's own login. tests/conftest.py loads this module as a pytest plugin.
"""

from __future__ import annotations

import huggingface_hub.constants as hf_constants
import pytest

from tests.helpers.fake_hub import FakeHub
from tests.helpers.hub_repos import TOKEN


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()  # snapshot paths come back resolved
    caches = {"pali": tmp_path / "pali-cache", "hf": tmp_path / "hf-home" / "hub"}
    monkeypatch.setenv("PALI_CACHE_DIR", str(caches["pali"]))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(caches["hf"]))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)  # no registry fetch
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    return caches


@pytest.fixture
def fake_hub(hub_env, monkeypatch):
    with FakeHub(token=TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server
