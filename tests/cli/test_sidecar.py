"""Sidecar caption files (pali_cli.sidecar): naming, skip/overwrite/append, prefix/suffix, collisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from pali_cli.errors import UsageProblem
from pali_cli.sidecar import OnExisting, SidecarSpec, check_collisions


def test_sidecar_sits_next_to_the_image_with_its_stem():
    spec = SidecarSpec()
    assert spec.path_for(Path("data/cat.01.JPG")) == Path("data/cat.01.txt")
    assert SidecarSpec(ext=".caption").path_for(Path("x/a.png")) == Path("x/a.caption")


def test_new_sidecar_gets_prefix_text_suffix_and_a_newline(tmp_path):
    image = tmp_path / "a.jpg"
    SidecarSpec(prefix="photo of sks, ", suffix=", 4k").write(image, "a dog on grass")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "photo of sks, a dog on grass, 4k\n"


def test_on_existing_skip_overwrite_append(tmp_path):
    image = tmp_path / "a.jpg"
    target = tmp_path / "a.txt"
    target.write_text("hand-written caption", encoding="utf-8")  # no trailing newline

    skip = SidecarSpec(on_existing=OnExisting.skip)
    assert skip.should_skip(image)
    skip.write(image, "model caption")
    assert target.read_text() == "hand-written caption"

    SidecarSpec(on_existing=OnExisting.append).write(image, "model caption")
    assert target.read_text() == "hand-written caption\nmodel caption\n"

    SidecarSpec(on_existing=OnExisting.overwrite).write(image, "new")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary file left behind

    assert not SidecarSpec(on_existing=OnExisting.overwrite).should_skip(image)
    assert not skip.should_skip(tmp_path / "b.jpg")


def test_two_images_sharing_a_sidecar_are_a_usage_error():
    with pytest.raises(UsageProblem, match="a.jpg and .*a.png would share"):
        check_collisions([Path("d/a.jpg"), Path("d/b.jpg"), Path("d/a.png")], SidecarSpec())
    check_collisions([Path("d/a.jpg"), Path("e/a.jpg")], SidecarSpec())  # other folder: fine


@pytest.mark.parametrize("ext", ["txt", ".", "a/b", "", ".png", ".JPG"])
def test_bad_extension_is_a_usage_error(ext):
    with pytest.raises(UsageProblem, match="--sidecar-ext"):
        SidecarSpec(ext=ext)
