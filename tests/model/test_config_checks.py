"""config.json that is wrong in every way a file can be (issue 13): each is one line saying
"bad config.json: ..." and naming the field, never a ZeroDivisionError, an AttributeError or a
model that takes forever to build; and config.json is only read when it is a regular file of
sensible size (a link to /dev/zero or a FIFO is refused without reading it)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from engine.errors import CheckpointError
from engine.model.config import JSON_LIMIT, from_hf_config, load_config
from tests.helpers.fifo import raised_without_waiting
from tests.model.test_config import PG1_HUB


def with_field(path: str, value) -> dict:
    config = copy.deepcopy(PG1_HUB)
    *parents, leaf = path.split(".")
    target: Any = config
    for part in parents:
        target = target[part]
    target[leaf] = value
    return config


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("text_config.num_key_value_heads", 0, "text_config.num_key_value_heads must be a positive integer, got 0"),
        ("vision_config.patch_size", 0, "vision_config.patch_size must be a positive integer, got 0"),
        ("text_config.num_hidden_layers", 10**7, "text_config.num_hidden_layers is 10000000"),
        ("vision_config.num_hidden_layers", 10**6, "vision_config.num_hidden_layers is 1000000"),
        ("text_config.hidden_size", "2048", "text_config.hidden_size must be a positive integer, got '2048'"),
        ("text_config.vocab_size", True, "text_config.vocab_size must be a positive integer, got True"),
        ("vision_config.image_size", -224, "vision_config.image_size must be a positive integer, got -224"),
        ("text_config.rms_norm_eps", "tiny", "text_config.rms_norm_eps must be a number, got 'tiny'"),
        ("text_config.num_key_value_heads", 3, "num_attention_heads (8) is not a multiple of num_key_value_heads (3)"),
        ("vision_config.num_attention_heads", 7, "vision_config.hidden_size (1152) is not a multiple of"),
        ("text_config", [1, 2], "text_config must be an object, got a list"),
        ("vision_config", None, "vision_config must be an object, got null"),
    ],
)
def test_a_bad_field_is_one_line_naming_it(field, value, message):
    with pytest.raises(CheckpointError) as caught:
        from_hf_config(with_field(field, value))
    text = str(caught.value)
    assert text.startswith("bad config.json: ") and message in text and "\n" not in text, text


@pytest.mark.parametrize("content", ["null", "[]", '"paligemma"', "3"])
def test_a_config_that_is_not_an_object_is_one_line(tmp_path, content):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=r"config\.json: bad config\.json: it must be a JSON object"):
        load_config(tmp_path)


def test_load_config_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(with_field("text_config.num_key_value_heads", 0)))
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}/config\.json: bad config\.json: text_config"):
        load_config(tmp_path)


def test_a_config_linked_to_dev_zero_is_refused_unread(tmp_path):
    os.symlink("/dev/zero", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=r"config\.json is not a regular file \(a character device\)"):
        load_config(tmp_path)


def test_a_config_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "config.json")
    error = raised_without_waiting(lambda: load_config(tmp_path), tmp_path / "config.json")
    assert isinstance(error, CheckpointError) and "not a regular file (a FIFO)" in str(error)


def test_a_huge_config_is_refused_unread(tmp_path):
    path = tmp_path / "config.json"
    with open(path, "wb") as f:
        f.truncate(JSON_LIMIT + 1)  # sparse: no disk used
    with pytest.raises(CheckpointError, match=r"config\.json is 16777217 bytes, larger than config\.json can be"):
        load_config(tmp_path)


def test_the_default_layer_bound_accepts_every_released_size():
    from engine.model.config import MAX_LAYERS

    assert MAX_LAYERS >= 64  # Gemma 2 27B has 46 decoder layers, SigLIP So400m 27
    config = from_hf_config(with_field("text_config.num_hidden_layers", MAX_LAYERS))
    assert config.text.num_layers == MAX_LAYERS


def test_paths_are_what_is_read(tmp_path):
    """A config reached through a symbolic link to a regular file is fine."""
    real = tmp_path / "real.json"
    real.write_text(json.dumps(PG1_HUB))
    (tmp_path / "ckpt").mkdir()
    os.symlink(real, tmp_path / "ckpt" / "config.json")
    assert load_config(Path(tmp_path / "ckpt")).text.num_layers == 18
