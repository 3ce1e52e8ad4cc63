"""Checkpoint directories that are wrong in ways that used to hang or eat memory (issue 13): an
index linked to /dev/zero or a FIFO, a config.json asking for more layers than the weights hold,
a config.json that is not a regular file. Each is one line naming the file, found before any
module is built."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from engine.checkpoints import weights
from engine.checkpoints.weights import load_backbone, weight_files
from engine.errors import CheckpointError, LocalModelError
from engine.model.config import load_config
from tests.helpers.checkpoints import TinySpec
from tests.helpers.fifo import raised_without_waiting


@pytest.fixture
def tiny(checkpoints, tmp_path):
    target = tmp_path / "tiny"
    shutil.copytree(checkpoints.checkpoint(TinySpec()), target)
    return target


def test_an_index_linked_to_dev_zero_is_refused_unread(tiny):
    os.symlink("/dev/zero", tiny / "model.safetensors.index.json")
    with pytest.raises(CheckpointError, match=r"index\.json is not a regular file \(a character device\)"):
        weight_files(tiny)


def test_an_index_that_is_a_fifo_is_refused_without_waiting(tiny):
    fifo = tiny / "model.safetensors.index.json"
    os.mkfifo(fifo)
    error = raised_without_waiting(lambda: weight_files(tiny), fifo)
    assert isinstance(error, CheckpointError) and "not a regular file (a FIFO)" in str(error)


def test_an_index_without_a_weight_map_is_one_line(tiny):
    (tiny / "model.safetensors.index.json").write_text(json.dumps({"weight_map": [1, 2]}))
    with pytest.raises(CheckpointError, match="not a safetensors index"):
        weight_files(tiny)


@pytest.mark.parametrize("key, tower", [("text_config", "language_model"), ("vision_config", "vision_tower")])
def test_more_layers_than_the_weights_hold_fail_before_anything_is_built(tiny, monkeypatch, key, tower):
    config = json.loads((tiny / "config.json").read_text())
    config[key]["num_hidden_layers"] = 1000  # within the sane bound: the tensors must say it is wrong
    (tiny / "config.json").write_text(json.dumps(config))
    built = []
    monkeypatch.setattr(weights, "PaliGemmaBackbone", lambda *a, **k: built.append(1))
    with pytest.raises(CheckpointError) as caught:
        load_backbone(tiny, load_config(tiny))
    assert f"{key}.num_hidden_layers is 1000 but the weights hold 2 {tower} layers" in str(caught.value)
    assert built == []


def test_a_config_json_that_is_a_fifo_is_named_as_such(tiny):
    from engine.checkpoints import hub

    (tiny / "config.json").unlink()
    os.mkfifo(tiny / "config.json")
    with pytest.raises(CheckpointError, match=r"config\.json is not a regular file"):
        hub.resolve(tiny)


def test_a_path_that_is_no_checkpoint_is_a_bad_argument(tmp_path):
    from engine import InputError
    from engine.checkpoints import hub

    with pytest.raises(LocalModelError, match="no such directory") as caught:
        hub.resolve(tmp_path / "nothing")
    assert isinstance(caught.value, InputError)
