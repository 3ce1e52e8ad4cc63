"""The checkpoint loader: every naming, sharding and dtype it meets, and every way a file can be wrong."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.checkpoints.weights import load_backbone
from engine.errors import CheckpointError
from engine.model.config import load_config
from tests.helpers.checkpoints import TinySpec

PG1 = TinySpec()
PG2 = TinySpec(family="gemma2", kv_heads=2)


def _load(path, dtype=torch.float32):
    return load_backbone(path, load_config(path), dtype)


def _probe(model, spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(1, 3, spec.image_size, spec.image_size, generator=g) * 2 - 1
    ids = torch.tensor([[2, 10, 20, 30, 4]])
    with torch.no_grad():
        return model(pixels, ids)


@pytest.mark.parametrize("spec", [PG1, PG2], ids=["pg1", "pg2"])
@pytest.mark.parametrize(
    "naming,shards", [("hub", 1), ("save_pretrained", 1), ("state_dict", 1), ("hub", 3), ("state_dict", 2)]
)
def test_every_naming_and_sharding_loads_the_same_model(checkpoints, spec, naming, shards):
    baseline = _probe(_load(checkpoints.checkpoint(spec)), spec)
    other = _probe(_load(checkpoints.checkpoint(spec, naming=naming, shards=shards)), spec)
    assert torch.equal(baseline, other)


def test_hub_naming_really_differs_from_save_pretrained(checkpoints):
    """Guards the fixture: the namings under test must be different files, or the test above is empty."""
    hub = set(load_file(checkpoints.checkpoint(PG1) / "model.safetensors"))
    raw = set(load_file(checkpoints.checkpoint(PG1, naming="save_pretrained") / "model.safetensors"))
    sd = set(load_file(checkpoints.checkpoint(PG1, naming="state_dict") / "model.safetensors"))
    assert any(k.startswith("vision_tower.vision_model.") for k in hub)
    assert not any("vision_model" in k for k in raw)
    assert any(k.startswith("model.language_model.") for k in sd)


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("target", [torch.float32, torch.bfloat16])
def test_stored_dtypes_load_into_requested_dtype(checkpoints, stored, target):
    model = _load(checkpoints.checkpoint(PG1, dtype=stored), dtype=target)
    assert model.language_model.layers[0].mlp.up_proj.weight.dtype == target
    assert model.vision_tower.patch_embedding.weight.dtype == target
    # Gemma norms run in fp32, and their scales stay there whatever the model dtype.
    assert model.language_model.norm.weight.dtype == torch.float32
    reference = _probe(_load(checkpoints.checkpoint(PG1, dtype=stored)), PG1)
    tol = 1e-4 if target == torch.float32 else 0.25
    assert (_probe(model, PG1).float() - reference).abs().max() <= tol


def test_tied_head_in_checkpoint_is_accepted_when_equal_and_refused_when_not(checkpoints, tmp_path):
    path = shutil.copytree(checkpoints.checkpoint(PG1), tmp_path / "ckpt")
    tensors = load_file(path / "model.safetensors")
    embed = tensors["language_model.model.embed_tokens.weight"]
    save_file({**tensors, "language_model.lm_head.weight": embed.clone()}, path / "model.safetensors")
    _load(path)
    save_file({**tensors, "language_model.lm_head.weight": embed + 1}, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        _load(path)


def _edit(checkpoints, tmp_path, edit):
    path = shutil.copytree(checkpoints.checkpoint(PG1), tmp_path / "ckpt")
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")
    return path


def test_missing_tensor_is_named(checkpoints, tmp_path):
    path = _edit(checkpoints, tmp_path, lambda t: t.pop("language_model.model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing .*language_model\.layers\.1\.mlp\.up_proj\.weight"):
        _load(path)


def test_unused_tensor_is_named(checkpoints, tmp_path):
    path = _edit(
        checkpoints, tmp_path, lambda t: t.update({"language_model.model.layers.9.extra.weight": torch.zeros(2)})
    )
    with pytest.raises(CheckpointError, match=r"match nothing.*layers\.9\.extra\.weight"):
        _load(path)


def test_misshaped_tensor_is_named(checkpoints, tmp_path):
    key = "multi_modal_projector.linear.weight"
    path = _edit(checkpoints, tmp_path, lambda t: t.update({key: torch.zeros(3, 3)}))
    with pytest.raises(CheckpointError, match=rf"{key} has shape \[3, 3\].*config.json implies \[64, 32\]"):
        _load(path)


def test_gemma2_tensors_in_a_gemma1_config_are_refused(checkpoints, tmp_path):
    """The decoder variant comes from config.json; a PaliGemma 2 file under a PaliGemma 1 config
    must fail loudly (extra norms), never run as the wrong architecture."""
    path = shutil.copytree(checkpoints.checkpoint(PG2), tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["model_type"] = "gemma"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="pre_feedforward_layernorm|post_feedforward_layernorm"):
        _load(path)


def test_truncated_file_is_reported(checkpoints, tmp_path):
    path = shutil.copytree(checkpoints.checkpoint(PG1), tmp_path / "ckpt")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(truncated|re-download)"):
        _load(path)


def test_missing_shard_is_reported(checkpoints, tmp_path):
    path = shutil.copytree(checkpoints.checkpoint(PG1, shards=2), tmp_path / "ckpt")
    (path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors: shard listed"):
        _load(path)


def test_pickled_weights_are_never_loaded(checkpoints, tmp_path):
    path = shutil.copytree(checkpoints.checkpoint(PG1), tmp_path / "ckpt")
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(CheckpointError, match="pickled weights are never loaded"):
        _load(path)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c.update(model_type="llava"), "not 'paligemma'"),
        (lambda c: c.pop("text_config"), "no text_config"),
        (lambda c: c["text_config"].update(model_type="llama"), "expected 'gemma'"),
        (lambda c: c["text_config"].update(num_key_value_heads=3), "not a multiple"),
        (lambda c: c["vision_config"].update(vision_use_head=True), "pooling head"),
    ],
)
def test_bad_config_is_reported_with_the_file(checkpoints, tmp_path, mutate, message):
    path = shutil.copytree(checkpoints.checkpoint(PG1), tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    mutate(config)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message) as err:
        load_config(path)
    assert "config.json" in str(err.value)


def test_unparseable_and_absent_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_config(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_config(tmp_path / "nowhere")


@pytest.mark.parametrize("spec", [PG1, PG2], ids=["pg1", "pg2"])
def test_saved_checkpoint_round_trips_and_transformers_reads_it(checkpoints, tmp_path, spec):
    """save_backbone writes the released layout: we load it back bit-exactly, and the reference
    implementation loads it too and computes the same logits."""
    from transformers import PaliGemmaForConditionalGeneration

    from engine.checkpoints.weights import save_backbone

    model = _load(checkpoints.checkpoint(spec))
    path = save_backbone(model, tmp_path / "saved")
    assert torch.equal(_probe(_load(path), spec), _probe(model, spec))
    ref = PaliGemmaForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    n = model.num_image_tokens
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, spec.image_size, spec.image_size, generator=g) * 2 - 1
    ids = torch.tensor([[2, 10, 20, 30, 4]])
    hf_ids = torch.cat([torch.full((1, n), ref.config.image_token_id), ids], dim=1)
    with torch.no_grad():
        theirs = ref(input_ids=hf_ids, pixel_values=pixels, token_type_ids=torch.zeros_like(hf_ids)).logits[:, n:]
    assert (theirs - _probe(model, spec)).abs().max() <= 1e-4
