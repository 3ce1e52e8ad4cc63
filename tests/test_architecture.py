"""The dependency rule of ARCHITECTURE.md, checked on the source: the CLI reaches the engine only
through its public modules, the engine never imports the CLI, and nothing in the product imports
the tools around it (benchmarks, recipes, tests)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the CLI may import from the engine: the lazy public API and its torch-free modules.
CLI_MAY_IMPORT = {
    "engine",
    "engine.errors",
    "engine.sampler_config",
    "engine.checkpoints.hub",
    "engine.checkpoints.presets",
    "engine.processing.image",
    "engine.processing.tasks",
    "engine.checkpoints",  # the package namespaces of the above (docstring-only __init__)
    "engine.processing",
}


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from engine.checkpoints import hub`` counts as engine.checkpoints.hub)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["engine", "pali_cli"])
def test_the_product_never_imports_the_tools_around_it(package):
    for path in _package_files(package):
        bad = {m for m in _imports(path) if m.split(".")[0] in {"benchmarks", "recipes", "tests"}}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_engine_never_imports_the_cli():
    for path in _package_files("engine"):
        bad = {m for m in _imports(path) if m.split(".")[0] == "pali_cli"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_cli_uses_the_engines_public_modules_only():
    engine_modules = {
        p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".") for p in _package_files("engine")
    }
    engine_modules = {m.removesuffix(".__init__") for m in engine_modules}
    for path in _package_files("pali_cli"):
        used = {m for m in _imports(path) if m in engine_modules}  # names imported from a module are not modules
        assert used <= CLI_MAY_IMPORT, f"{path.relative_to(ROOT)} imports {sorted(used - CLI_MAY_IMPORT)}"


# The engine's layers, bottom up (ARCHITECTURE.md): a module imports only its own layer and lower ones.
LAYERS = ("errors", "model", "runtime", "checkpoints", "processing", "api", "demo")
CROSSINGS: set[tuple[str, str]] = set()  # none today: list (module, import) pairs that must cross the order


def _layer(module: str) -> str:
    part = module.split(".")[1] if "." in module else ""
    return part if part in LAYERS else "api"


def test_engine_modules_import_only_their_layer_and_lower_ones():
    for path in _package_files("engine"):
        module = path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
        if module == "engine":
            continue  # the lazy public API names every layer
        for imported in _imports(path):
            crossing = any(module == a and imported.startswith(b) for a, b in CROSSINGS)
            if not imported.startswith("engine.") or crossing:
                continue
            assert LAYERS.index(_layer(imported)) <= LAYERS.index(_layer(module)), f"{module} imports {imported}"


# Imported inside try/except and used only when a user installed them (engine.processing.image).
USED_IF_INSTALLED = ("pillow_heif", "pillow_avif")


def test_every_library_the_product_imports_is_a_declared_dependency():
    """No reliance on what another dependency happens to pull in (httpx2 comes with
    huggingface_hub today, but pali_cli.remote uses it itself)."""
    import re
    import sys
    from importlib.metadata import packages_distributions

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["ray"]]
    declared = {re.split(r"[^A-Za-z0-9_.-]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}
    providers = packages_distributions()
    missing: dict[str, set[str]] = {}
    for package in ("engine", "pali_cli"):
        for path in _package_files(package):
            for name in _imports(path):
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("engine", "pali_cli", *USED_IF_INSTALLED):
                    continue
                dists = {d.lower().replace("_", "-") for d in providers.get(top, [top])}
                if not dists & declared:
                    missing.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"
