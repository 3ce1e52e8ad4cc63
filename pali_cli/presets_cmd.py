"""``pali presets``: list, download, remove and locate model checkpoints.

Thin over ``engine.checkpoints.presets`` (the catalogue) and ``engine.checkpoints.hub`` (caches and
downloads), neither of which imports torch, so these commands answer instantly. Their errors reach
``app.PaliGroup``, which maps them to exit codes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from engine.checkpoints.presets import DEFAULT_PRESET
from pali_cli.options import CacheDir, Quiet
from pali_cli.typer_classes import HelpGroup, PaliCommand, examples

presets_app = typer.Typer(
    name="presets",
    cls=HelpGroup,
    help="List, download and remove model presets.",
    epilog=examples("pali presets list", "pali presets download pali_gemma2_mix_3b_224", "pali presets path"),
    no_args_is_help=True,
    rich_markup_mode="rich",
)

Name = Annotated[
    str | None,
    typer.Argument(
        metavar="NAME",
        envvar="PALI_PRESET",
        show_default=False,
        help=f"Preset name or alias, or hf://owner/repo[@revision].  \\[default: {DEFAULT_PRESET}]",
    ),
]
RequiredName = Annotated[
    str, typer.Argument(metavar="NAME", help="Preset name or alias, or hf://owner/repo[@revision].")
]


def _spec(name: str | None) -> str:
    return (name or "").strip() or DEFAULT_PRESET


def format_bytes(n: int) -> str:
    """Decimal units, as download sizes are usually quoted: ``5.9 GB``."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def preset_rows(cache_dir: Path | None) -> list[dict[str, Any]]:
    from engine.checkpoints import hub
    from engine.checkpoints.presets import DEFAULT_PRESET, list_presets

    rows = []
    for p in list_presets():
        cached = hub.is_cached(p.name, cache_dir)
        rows.append(
            {
                "name": p.name,
                "family": p.family,
                "size": p.size,
                "kind": p.kind,
                "image_size": p.image_size,
                "params": p.params,
                "hf_repo": p.hf_repo,
                "revision": p.revision,
                "aliases": list(p.aliases),
                "description": p.description,
                "default": p.name == DEFAULT_PRESET,
                "downloaded": cached,
                "size_on_disk": hub.size_on_disk(p.name, cache_dir) if cached else 0,
            }
        )
    return rows


_FAMILY = {"paligemma": "PaliGemma", "paligemma2": "PaliGemma 2", "demo": "demo"}


@presets_app.command(
    "list", cls=PaliCommand, epilog=examples("pali presets list", "pali presets list --downloaded --json")
)
def list_command(
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print a JSON array instead of a table.")] = False,
    downloaded: Annotated[
        bool, typer.Option("--downloaded", metavar="", help="Only presets usable without a download.")
    ] = False,
    cache_dir: CacheDir = None,
) -> None:
    """List presets: family, size, resolution, whether downloaded, size on disk."""
    rows = preset_rows(cache_dir)
    if downloaded:
        rows = [r for r in rows if r["downloaded"]]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        box=None,
        pad_edge=False,
        header_style="bold",
        caption="* default preset (PALI_PRESET overrides it)",
        caption_justify="left",
    )
    for column, justify in (
        ("name", "left"),
        ("family", "left"),
        ("size", "right"),
        ("resolution", "right"),
        ("downloaded", "center"),
        ("on disk", "right"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        name = r["name"] + (" *" if r["default"] else "")
        table.add_row(
            name,
            f"{_FAMILY.get(r['family'], r['family'])} {r['kind']}",
            r["size"].upper(),
            f"{r['image_size']} px",
            ("bundled" if r["family"] == "demo" else "yes") if r["downloaded"] else "-",
            format_bytes(r["size_on_disk"]) if r["downloaded"] else "",
        )
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)  # a pipe gets whole lines, never wrapped cells
    console.print(table)


@presets_app.command(
    "download",
    cls=PaliCommand,
    epilog=examples(
        "pali presets download pali_gemma2_mix_3b_224", "pali presets download hf://google/paligemma2-3b-pt-224"
    ),
)
def download_command(name: Name = None, cache_dir: CacheDir = None, quiet: Quiet = False) -> None:
    """Download a preset (the default one without NAME) and print its directory."""
    from engine.checkpoints import hub
    from pali_cli.console import Reporter

    reporter = Reporter(quiet)
    spec = _spec(name)
    if hub.is_cached(spec, cache_dir):
        reporter.info(f"{spec} is already downloaded.")
    path = hub.download(spec, cache_dir, quiet=quiet)
    sys.stdout.write(f"{path}\n")


@presets_app.command(
    "rm",
    cls=PaliCommand,
    epilog=examples("pali presets rm pali_gemma2_mix_3b_224", "pali presets rm hf://google/paligemma2-3b-pt-224"),
)
def rm_command(name: RequiredName, cache_dir: CacheDir = None, quiet: Quiet = False) -> None:
    """Delete a downloaded preset from pali's cache (the shared Hugging Face cache is left alone)."""
    from engine.checkpoints import hub
    from pali_cli.console import Reporter

    reporter = Reporter(quiet)
    freed = hub.remove(name, cache_dir)
    if freed:
        reporter.info(f"Removed {name} ({format_bytes(freed)} freed).")
    elif hub.is_cached(name, cache_dir):
        reporter.warn(
            f"{name} is in the shared Hugging Face cache, which pali does not delete from (use `hf cache delete`)"
        )
    else:
        reporter.info(f"{name} is not downloaded; nothing to remove.")


@presets_app.command(
    "path", cls=PaliCommand, epilog=examples("pali presets path", "pali presets path pali-demo-shapes")
)
def path_command(
    name: Annotated[
        str | None,
        typer.Argument(metavar="NAME", show_default=False, help="A preset; without it, the cache directory."),
    ] = None,
    cache_dir: CacheDir = None,
) -> None:
    """Print the cache directory, or the directory of a downloaded preset."""
    from engine.checkpoints import hub

    if name is None:
        sys.stdout.write(f"{hub.default_cache_dir(cache_dir)}\n")
        return
    path = hub.resolve(name, cache_dir, allow_download=False)
    sys.stdout.write(f"{path}\n")
