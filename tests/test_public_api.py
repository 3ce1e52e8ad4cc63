"""The lazy public API of ``engine``: every listed name resolves, and torch-free names stay torch-free."""

from __future__ import annotations

import subprocess
import sys

import engine


def test_all_lists_exactly_the_lazy_exports_and_each_resolves():
    assert sorted(engine.__all__) == sorted(engine._EXPORTS)
    for name in engine.__all__:
        assert getattr(engine, name).__name__ == name


def test_errors_and_sampler_config_import_without_torch():
    code = (
        "import sys, engine\n"
        "from engine import PaliError, InputError, ModelUnavailableError, SamplerConfig\n"
        "import pali_cli.errors\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
