"""pali's command line (``pali ...``); the model itself lives in the ``engine`` package."""

from __future__ import annotations


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pali")
    except PackageNotFoundError:
        # A source checkout that was not pip-installed: read the version pyproject.toml declares.
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        if pyproject.is_file():
            m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
            if m:
                return m.group(1)
        return "0+unknown"


def __getattr__(name: str) -> str:
    # Computed on first use: importlib.metadata is not free and most imports never need it.
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'pali_cli' has no attribute {name!r}")
