"""parse_spec: the one place that tells a preset, a Hub address and a local directory apart, and
the one resolver (hub.resolve) that every caller -- from_preset, the CLI -- goes through."""

from __future__ import annotations

import pytest

from engine.checkpoints import hub
from engine.checkpoints.presets import get_preset
from engine.checkpoints.specs import CheckpointSpec, parse_spec
from engine.errors import LocalModelError, ModelNotFoundError, UnknownPresetError


def test_a_preset_alias_is_labelled_by_its_canonical_name():
    spec = parse_spec("pali_gemma2_3b_pt_224")  # keras-hub's old name
    assert spec.label == "pali_gemma2_pt_3b_224" and spec.preset is get_preset("pali_gemma2_pt_3b_224")
    assert spec.hub is not None and spec.hub.repo_id == "google/paligemma2-3b-pt-224" and spec.local is None


def test_a_paligemma1_preset_names_the_bfloat16_branch():
    spec = parse_spec("pali_gemma_3b_mix_224")
    assert spec.hub is not None and spec.hub.revision == "bfloat16"


def test_a_bundled_preset_is_local():
    spec = parse_spec("pali-demo-shapes")
    demo = get_preset("pali-demo-shapes")
    assert spec.local == demo.bundled_dir and spec.hub is None and spec.preset is demo


def test_a_hub_address_is_kept_as_written(monkeypatch):
    spec = parse_spec(" hf://someone/model@v2 ")
    assert spec.label == "hf://someone/model@v2" and spec.preset is None
    assert spec.hub is not None and (spec.hub.repo_id, spec.hub.revision) == ("someone/model", "v2")
    with pytest.raises(ModelNotFoundError):
        parse_spec("hf://datasets/someone/data")


def test_a_directory_is_labelled_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    spec = parse_spec("ckpt")  # exists, so a path even without a slash
    assert spec.local is not None and spec.label == str((tmp_path / "ckpt").resolve())
    assert parse_spec(tmp_path / "ckpt").label == spec.label
    assert parse_spec(spec) is spec


def test_unknown_names_say_what_a_spec_can_be():
    with pytest.raises(UnknownPresetError, match="hf://owner/repo"):
        parse_spec("no_such_model")


def test_resolve_checks_every_local_directory(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(LocalModelError, match="no config.json"):
        hub.resolve(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert hub.resolve(CheckpointSpec(label="x", local=tmp_path / "ckpt")) == (tmp_path / "ckpt").resolve()


def test_from_preset_and_the_cli_name_a_checkpoint_alike(checkpoints, tmp_path, monkeypatch):
    import shutil

    from engine import PaliGemmaCausalLM
    from pali_cli.model import canonical_preset
    from tests.helpers.checkpoints import TinySpec

    shutil.copytree(checkpoints.checkpoint(TinySpec()), tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    lm = PaliGemmaCausalLM.from_preset("tiny", dtype="float32", device="cpu", preprocessor=None)
    assert lm.preset == canonical_preset("tiny") == str((tmp_path / "tiny").resolve())
    (tmp_path / "empty").mkdir()
    with pytest.raises(LocalModelError, match="no config.json"):  # from_preset runs the same checks
        PaliGemmaCausalLM.from_preset("empty", preprocessor=None)
