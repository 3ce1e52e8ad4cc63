"""Shared fixtures: tiny random reference models and their checkpoints, built once per session."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.helpers.fixtures_text import tiny_tokenizer, tiny_tokenizer_dir  # noqa: F401  (shared fixtures)

pytest_plugins = ["tests.helpers.isolation", "pytester", "tests.helpers.hub_fixtures"]  # hub_env, fake_hub

# Tests never reach the real hub, and a developer's own token must not leak into them.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.pop("HF_TOKEN", None)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Every test gets private pali and Hugging Face caches: never the user's real ones."""
    root = tmp_path_factory.getbasetemp() / "caches"
    monkeypatch.setenv("PALI_CACHE_DIR", str(root / "pali"))
    monkeypatch.setenv("HF_HOME", str(root / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "hf_home" / "hub"))


class CheckpointFactory:
    """Builds (and caches for the session) a random reference model + its saved checkpoint per spec."""

    def __init__(self, root):
        self.root = root
        self._models: dict = {}
        self._dirs: dict = {}

    def reference(self, spec, seed: int = 0):
        from tests.helpers.checkpoints import build_reference

        key = (spec, seed)
        if key not in self._models:
            self._models[key] = build_reference(spec, seed)
        return self._models[key]

    def checkpoint(self, spec, seed: int = 0, naming: str = "hub", shards: int = 1, dtype=None):
        """The checkpoint's directory, named by a hash of what defines it, so that the isolated
        tests' child processes (tests/helpers/isolation.py) find the parent's and skip building."""
        from tests.helpers.checkpoints import save_checkpoint

        key = (spec, seed, naming, shards, str(dtype))
        if key not in self._dirs:
            path = self.root / f"ckpt-{hashlib.sha256(repr(key).encode()).hexdigest()[:16]}"
            if not path.exists():
                tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
                save_checkpoint(self.reference(spec, seed), tmp, naming=naming, shards=shards, dtype=dtype)
                tmp.rename(path)  # whole or not at all: a child never sees a half-written one
            self._dirs[key] = path
        return self._dirs[key]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> CheckpointFactory:
    from tests.helpers.isolation import SHARED_CHECKPOINTS

    shared = os.environ.get(SHARED_CHECKPOINTS)
    if shared:  # an isolated test's child process: reuse the parent's
        return CheckpointFactory(Path(shared))
    root = tmp_path_factory.mktemp("checkpoints")
    os.environ[SHARED_CHECKPOINTS] = str(root)
    return CheckpointFactory(root)
