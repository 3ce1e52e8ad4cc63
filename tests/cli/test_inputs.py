"""Input expansion: files, directories, quoted globs, --files-from lists (pali_cli.inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pali_cli.inputs import (
    case_insensitive_suffix,
    expand_braces,
    expand_inputs,
    expand_listed,
    merge,
    natural_key,
    read_list_file,
)


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    touch(
        tmp_path,
        "photos/a1.jpg",
        "photos/a10.JPG",
        "photos/a2.jpeg",
        "photos/notes.txt",
        "photos/.hidden.jpg",
        "photos/._a1.jpg",
        "photos/trip/b.png",
        "photos/trip/deep/c.webp",
        "photos/.thumbnails/t.jpg",
        "photos/a2.txt",
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def names(paths) -> list[str]:
    return [p.as_posix() for p in paths]


def test_directory_gives_its_images_in_natural_order_skipping_hidden_and_other_files(tree):
    got = expand_inputs(["photos"])
    assert names(got.paths) == ["photos/a1.jpg", "photos/a2.jpeg", "photos/a10.JPG"]
    assert got.missing == [] and got.empty == []


def test_recursive_descends_but_not_into_hidden_directories(tree):
    got = expand_inputs(["photos"], recursive=True)
    assert sorted(names(got.paths)) == sorted(
        ["photos/a1.jpg", "photos/a2.jpeg", "photos/a10.JPG", "photos/trip/b.png", "photos/trip/deep/c.webp"]
    )


def test_glob_with_double_star_and_case_insensitive_extension(tree):
    got = expand_inputs(["photos/**/*.jpg"])
    # *.jpg also finds .JPG; .jpeg is another extension; hidden files and dirs stay out.
    assert names(got.paths) == ["photos/a1.jpg", "photos/a10.JPG"]
    got = expand_inputs(["photos/**/*.{png,webp}"])
    assert names(got.paths) == ["photos/trip/b.png", "photos/trip/deep/c.webp"]


def test_globs_keep_only_images_but_named_files_are_taken_as_given(tree):
    assert names(expand_inputs(["photos/a2.*"]).paths) == ["photos/a2.jpeg"]
    assert names(expand_inputs(["photos/notes.txt"]).paths) == ["photos/notes.txt"]


def test_the_same_file_twice_is_kept_once_where_it_first_appears(tree):
    got = expand_inputs(["photos/a2.jpeg", "photos", "./photos/a1.jpg", str(tree / "photos/a10.JPG")])
    assert names(got.paths) == ["photos/a2.jpeg", "photos/a1.jpg", "photos/a10.JPG"]


def test_missing_files_are_kept_and_reported_and_empty_matches_are_reported(tree):
    (tree / "empty").mkdir()
    got = expand_inputs(["photos/a1.jpg", "nope.jpg", "photos/*.gif", "empty"])
    assert names(got.paths) == ["photos/a1.jpg", "nope.jpg"]
    assert got.missing == ["nope.jpg"]
    assert got.empty == ["photos/*.gif", "empty"]
    assert got.found == 1


def test_a_file_whose_name_looks_like_a_glob_is_taken_literally(tree):
    touch(tree, "odd/[1].jpg")
    assert names(expand_inputs(["odd/[1].jpg"]).paths) == ["odd/[1].jpg"]


def test_list_file_lines_are_literal_paths(tree):
    listing = tree / "list.txt"
    listing.write_text("photos/a1.jpg\n\nphotos/*.jpg\r\nphotos/a1.jpg\n")
    lines = read_list_file(str(listing))
    assert lines == ["photos/a1.jpg", "photos/*.jpg", "photos/a1.jpg"]
    got = expand_listed(lines)
    assert names(got.paths) == ["photos/a1.jpg", "photos/*.jpg"]
    assert got.missing == ["photos/*.jpg"]
    assert read_list_file("-", "a.jpg\nb.jpg\n") == ["a.jpg", "b.jpg"]


def test_merge_keeps_order_and_drops_repeats(tree):
    got = merge(expand_inputs(["photos/a1.jpg"]), expand_listed(["photos/a2.jpeg", "photos/a1.jpg"]))
    assert names(got.paths) == ["photos/a1.jpg", "photos/a2.jpeg"]


def test_pattern_helpers():
    assert expand_braces("a.{jpg,png}") == ["a.jpg", "a.png"]
    assert expand_braces("{x,y}/{1,2}") == ["x/1", "x/2", "y/1", "y/2"]
    assert expand_braces("plain[ab].jpg") == ["plain[ab].jpg"]
    assert case_insensitive_suffix("dir/*.jpg") == "dir/*.[jJ][pP][gG]"
    assert case_insensitive_suffix("*.j?g") == "*.[jJ]?[gG]"
    assert case_insensitive_suffix("*.[jp]ng") == "*.[jp]ng"
    assert case_insensitive_suffix("noext*") == "noext*"
    assert sorted(["a10", "a2", "a1"], key=lambda s: natural_key(Path(s))) == ["a1", "a2", "a10"]


def test_heic_and_avif_are_images_only_when_pil_can_read_them(tmp_path):
    from importlib.util import find_spec

    from PIL import features

    from pali_cli.inputs import image_extensions

    touch(tmp_path, "a.heic", "b.avif", "c.jpg")
    got = names(p.relative_to(tmp_path) for p in expand_inputs([str(tmp_path)]).paths if isinstance(p, Path))
    assert (".heic" in image_extensions()) == (find_spec("pillow_heif") is not None)
    assert ("a.heic" in got) == (find_spec("pillow_heif") is not None)
    assert ("b.avif" in got) == (features.check("avif") or find_spec("pillow_avif") is not None)
    assert "c.jpg" in got
