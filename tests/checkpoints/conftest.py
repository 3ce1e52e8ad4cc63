"""Fixtures for the download tests. The private caches and the fake Hub are tests/helpers/hub_fixtures.py
(a plugin loaded by tests/conftest.py, shared with the CLI tests); ``env`` is its caches under the
name these tests use."""

from __future__ import annotations

import pytest


@pytest.fixture
def env(hub_env: dict) -> dict:
    return hub_env
