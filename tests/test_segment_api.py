"""``lm.segment(image, "cat ; dog")``: the notebook API over the tiny checkpoint and a random decoder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine import PaliGemmaCausalLM
from engine.causal_lm import Completion
from engine.checkpoints import seg_decoder
from engine.processing.mask_decoder import MaskDecoder
from engine.processing.segmentation import Segment
from tests.helpers.checkpoints import TinySpec
from tests.helpers.mask_decoder import sha256_of, write_decoder_npz

ANSWER = "<loc0100><loc0200><loc0900><loc0800>" + "".join(f"<seg{i * 7:03d}>" for i in range(16)) + " cat"


@pytest.fixture(scope="module")
def lm(checkpoints):
    return PaliGemmaCausalLM.from_preset(checkpoints.checkpoint(TinySpec()), dtype="float32", device="cpu")


@pytest.fixture
def fresh_lm(lm, tmp_path, monkeypatch):
    path = write_decoder_npz(tmp_path / "vae.npz", seed=2)
    monkeypatch.setattr(seg_decoder, "VAE_OID_SHA256", sha256_of(path))
    monkeypatch.setenv("PALI_SEG_DECODER", str(path))
    monkeypatch.setattr(lm, "mask_decoder", None)
    return lm


def test_segment_places_masks_on_the_image_and_loads_the_decoder_once(fresh_lm, monkeypatch):
    prompts, loads = [], []
    real_from_npz = MaskDecoder.from_npz

    def complete(images, texts, max_new_tokens=64, stop_token_ids="auto"):
        prompts.extend(texts)
        return [Completion(ANSWER, [1], "stop")]

    def counting_from_npz(path):
        loads.append(path)
        return real_from_npz(path)

    monkeypatch.setattr(fresh_lm, "complete", complete)
    monkeypatch.setattr(MaskDecoder, "from_npz", staticmethod(counting_from_npz))
    image = Image.new("RGB", (300, 150), (10, 20, 30))
    [cat] = fresh_lm.segment(image, "cat")
    assert isinstance(cat, Segment) and cat.label == "cat"
    assert cat.box == (int(200 / 1023 * 300), int(100 / 1023 * 150), int(800 / 1023 * 300), int(900 / 1023 * 150))
    assert cat.mask is not None and cat.mask.shape == (150, 300) and cat.mask.dtype == np.bool_
    fresh_lm.segment(image, ["cat", "dog"])
    assert prompts == ["segment cat\n", "segment cat ; dog\n"]
    assert len(loads) == 1  # loaded on first use, then kept


def test_segment_runs_the_real_model(fresh_lm):
    found = fresh_lm.segment(Image.new("RGB", (64, 48)), "cat", max_new_tokens=8)
    assert isinstance(found, list) and all(isinstance(s, Segment) for s in found)
