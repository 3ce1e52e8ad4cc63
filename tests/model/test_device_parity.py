"""Parity with transformers on a chosen device, in fp32 and bf16: both models on the same device in
the same dtype, our logits against the reference's and greedy tokens against its generate().

Devices come from ``PALI_TEST_DEVICES`` (comma-separated, default ``cpu``); benchmarks/gpu_check.sh
sets ``cuda``. A listed device this machine lacks is skipped, naming it.

Tolerances: fp32 logits within 1e-4 of the reference's (TF32 is switched off on both sides, so the
GPU runs true fp32 matmuls and convolutions). bf16 has no exact reference (the order of roundings
differs between any two implementations), so both bf16 models are measured against the fp32
reference and ours may be off by at most twice the reference's own bf16 error (+ 2e-2 absolute:
one bf16 step of logits of size ~4).
"""

from __future__ import annotations

import os

import pytest
import torch

from engine.checkpoints.weights import load_backbone
from engine.generate import generate_tokens
from engine.model.config import load_config
from engine.runtime.optimize import optimize
from engine.samplers import greedy
from tests.helpers.checkpoints import IMAGE_TOKEN_ID, TOKENIZER_VOCAB, TinySpec

DEVICES = [d.strip() for d in os.environ.get("PALI_TEST_DEVICES", "cpu").split(",") if d.strip()]
SPECS = {"pg1": TinySpec(), "pg2": TinySpec(family="gemma2", kv_heads=2, layers=3)}


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"PALI_TEST_DEVICES lists {name}, but torch {torch.__version__} sees no CUDA device here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        pytest.skip(f"PALI_TEST_DEVICES lists {name}, but MPS is not available here")
    return device


@pytest.fixture(autouse=True)
def _true_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _inputs(spec: TinySpec, device: torch.device):
    g = torch.Generator().manual_seed(5)
    pixels = torch.rand(2, 3, spec.image_size, spec.image_size, generator=g) * 2 - 1
    ids = torch.randint(5, TOKENIZER_VOCAB, (2, 8), generator=g)
    ids[:, 0] = 2
    return pixels.to(device), ids.to(device)


def _reference_logits(ref, n_img: int, pixels, ids, dtype) -> torch.Tensor:
    image = torch.full((ids.shape[0], n_img), IMAGE_TOKEN_ID, device=ids.device)
    row = torch.cat([image, ids], dim=1)
    with torch.no_grad():
        out = ref(input_ids=row, pixel_values=pixels.to(dtype), token_type_ids=torch.zeros_like(row))
    return out.logits[:, n_img:].float()


def _models(checkpoints, name: str, device: torch.device, dtype: torch.dtype):
    spec = SPECS[name]
    ref = checkpoints.reference(spec)
    path = checkpoints.checkpoint(spec)
    ours = optimize(load_backbone(path, load_config(path), dtype, device))
    import copy

    theirs = copy.deepcopy(ref).to(device=device, dtype=dtype).eval()
    return spec, ours, theirs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SPECS))
def test_fp32_logits_and_greedy_tokens_on_the_device(checkpoints, name, device):
    dev = _device(device)
    spec, ours, theirs = _models(checkpoints, name, dev, torch.float32)
    pixels, ids = _inputs(spec, dev)
    with torch.inference_mode():
        got = ours(pixels, ids)
    expected = _reference_logits(theirs, ours.num_image_tokens, pixels, ids, torch.float32)
    assert got.device.type == dev.type
    assert (got - expected).abs().max().item() <= 1e-4
    prompts = [[2, 40, 41, 42, 4], [2, 77, 4]]
    tokens = generate_tokens(ours, pixels, prompts, [10, 10], greedy, vocab_limit=TOKENIZER_VOCAB)
    for row, prompt in enumerate(prompts):
        full = torch.tensor([[IMAGE_TOKEN_ID] * ours.num_image_tokens + prompt], device=dev)
        ref_out = theirs.generate(
            input_ids=full,
            pixel_values=pixels[row : row + 1],
            attention_mask=torch.ones_like(full),
            token_type_ids=torch.zeros_like(full),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            suppress_tokens=list(range(TOKENIZER_VOCAB, theirs.config.text_config.vocab_size)),
        )
        assert tokens[row] == ref_out[0, full.shape[1] :].tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SPECS))
def test_bf16_error_is_the_references_on_the_device(checkpoints, name, device):
    dev = _device(device)
    spec, ours, theirs = _models(checkpoints, name, dev, torch.bfloat16)
    _, _, exact = _models(checkpoints, name, dev, torch.float32)
    pixels, ids = _inputs(spec, dev)
    with torch.inference_mode():
        got = ours(pixels, ids).float()
    reference = _reference_logits(exact, ours.num_image_tokens, pixels, ids, torch.float32)
    theirs_bf16 = _reference_logits(theirs, ours.num_image_tokens, pixels, ids, torch.bfloat16)
    ours_err = (got - reference).abs().max().item()
    their_err = (theirs_bf16 - reference).abs().max().item()
    assert torch.isfinite(got).all() and ours_err <= 2 * their_err + 2e-2, (ours_err, their_err)
