"""MaskDecoder against an independent numpy decoder, and from_npz's refusals of bad files.

The numpy reference follows the definitions, not PyTorch: a convolution is a sum over kernel taps
of channel contractions (einsum) on a zero-padded input; a transposed convolution scatters every
input pixel times the kernel into the output (``out[s*i + k - p] += w[k] * x[i]``) and crops the
padding. Layer order and the 4x4 code grid come from big_vision's description of the decoder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.checkpoints.seg_decoder import MaskDecoderError
from engine.processing.mask_decoder import MaskDecoder
from tests.helpers.mask_decoder import SHAPES, random_tensors, write_decoder_npz


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """x [C, H, W], w [O, C, k, k] -> [O, H', W'] (stride 1)."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    h, w_out = xp.shape[1] - k + 1, xp.shape[2] - k + 1
    out = np.zeros((w.shape[0], h, w_out))
    for i in range(k):
        for j in range(k):
            out += np.einsum("oc,chw->ohw", w[:, :, i, j], xp[:, i : i + h, j : j + w_out])
    return out + b[:, None, None]


def conv_transpose(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 2, pad: int = 1) -> np.ndarray:
    """x [C, H, W], w [C, O, k, k] -> [O, (H-1)*s + k - 2p, ...], by scatter-add."""
    c, h, wid = x.shape
    k = w.shape[-1]
    full = np.zeros((w.shape[1], (h - 1) * stride + k, (wid - 1) * stride + k))
    for y in range(h):
        for xx in range(wid):
            # every output pixel this input pixel reaches: (O, k, k) += sum_c x[c] * w[c]
            full[:, y * stride : y * stride + k, xx * stride : xx * stride + k] += np.einsum(
                "c,cokl->okl", x[:, y, xx], w
            )
    out = full[:, pad : full.shape[1] - pad, pad : full.shape[2] - pad]
    return out + b[:, None, None]


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def reference_decode(t: dict[str, np.ndarray], codes: np.ndarray) -> np.ndarray:
    t = {name: v.astype(np.float64) for name, v in t.items()}
    out = []
    for row in codes:
        grid = t["_vq_vae._embedding"][row].reshape(4, 4, 512).transpose(2, 0, 1)  # code k at (k // 4, k % 4)
        x = relu(conv(grid, t["decoder.0.weight"], t["decoder.0.bias"], 0))
        for block in ("decoder.2.net", "decoder.3.net"):
            y = relu(conv(x, t[f"{block}.0.weight"], t[f"{block}.0.bias"], 1))
            y = relu(conv(y, t[f"{block}.2.weight"], t[f"{block}.2.bias"], 1))
            x = x + conv(y, t[f"{block}.4.weight"], t[f"{block}.4.bias"], 0)
        for layer in ("decoder.4", "decoder.6", "decoder.8", "decoder.10"):
            x = relu(conv_transpose(x, t[f"{layer}.weight"], t[f"{layer}.bias"]))
        out.append(conv(x, t["decoder.12.weight"], t["decoder.12.bias"], 0)[0])
    return np.stack(out)


@pytest.fixture(scope="module")
def decoder_file(tmp_path_factory):
    return write_decoder_npz(tmp_path_factory.mktemp("vae") / "vae-oid.npz", seed=3)


def test_matches_the_numpy_reference_on_several_code_sets(decoder_file):
    decoder = MaskDecoder.from_npz(decoder_file)
    tensors = random_tensors(seed=3)
    rng = np.random.default_rng(0)
    code_sets = [
        rng.integers(0, 128, size=(3, 16)),
        np.zeros((1, 16), dtype=np.int64),
        np.full((1, 16), 127),
        np.arange(16)[None] * 8,  # every position a different code: catches a transposed grid
    ]
    exact = MaskDecoder.from_npz(decoder_file).double()  # the same module in float64: the math alone
    for codes in code_sets:
        reference = reference_decode(tensors, codes)
        in_float64 = exact(torch.from_numpy(codes)).numpy()
        assert in_float64.shape == (len(codes), 64, 64)
        assert np.abs(in_float64 - reference).max() <= 1e-9, np.abs(in_float64 - reference).max()
        # As loaded (float32), through 13 layers of 128-512 channel sums: float32 rounding only.
        assert np.abs(decoder(torch.from_numpy(codes)).numpy() - reference).max() <= 1e-4
    # Not a constant: the random decoder's field has both signs, so thresholds are exercised.
    field = decoder(torch.from_numpy(code_sets[0])).numpy()
    assert (field > 0).any() and (field < 0).any()


def test_the_grid_is_row_major(decoder_file):
    # Swapping two codes must move the change to where the reference puts it, not just change it.
    decoder = MaskDecoder.from_npz(decoder_file)
    tensors = random_tensors(seed=3)
    codes = np.arange(16)[None] * 5
    swapped = codes.copy()
    swapped[0, [1, 4]] = swapped[0, [4, 1]]  # (row 0, col 1) <-> (row 1, col 0)
    ours = decoder.double()(torch.from_numpy(swapped)).numpy()
    assert np.abs(ours - reference_decode(tensors, swapped)).max() <= 1e-9
    assert np.abs(ours - decoder(torch.from_numpy(codes)).numpy()).max() > 1e-3


@pytest.mark.parametrize("codes", [np.zeros((2, 15)), np.zeros(16), np.full((1, 16), 128), np.full((1, 16), -1)])
def test_codes_of_the_wrong_shape_or_range_are_refused(decoder_file, codes):
    with pytest.raises(ValueError, match="mask codes"):
        MaskDecoder.from_npz(decoder_file)(codes.astype(np.int64))


def test_encoder_and_quantizer_training_state_are_ignored(decoder_file):
    assert MaskDecoder.from_npz(decoder_file) is not None  # the file holds encoder.* and _vq_vae._ema_*


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"decoder.6.weight": None}, "missing decoder.6.weight"),
        ({"_vq_vae._embedding": None}, "missing _vq_vae._embedding"),
        ({"decoder.14.weight": np.zeros((1, 1, 1, 1), np.float32)}, "unexpected decoder.14.weight"),
        ({"decoder.6.weight": np.zeros((64, 128, 4, 4), np.float32)}, r"decoder.6.weight has shape \(64, 128, 4, 4\)"),
        ({"decoder.0.bias": np.zeros(128, np.int32)}, "decoder.0.bias is int32"),
        ({"decoder.12.bias": np.array([np.nan], np.float32)}, "decoder.12.bias contains NaN"),
    ],
)
def test_mismatched_files_name_the_tensor_and_the_file(tmp_path, changes, message):
    path = write_decoder_npz(tmp_path / "bad.npz", **changes)
    with pytest.raises(MaskDecoderError, match=message) as info:
        MaskDecoder.from_npz(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_float64_file_loads(tmp_path):
    tensors = {name: v.astype(np.float64) for name, v in random_tensors(1).items()}
    path = tmp_path / "f64.npz"
    np.savez(path, **tensors)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    field = MaskDecoder.from_npz(path)(torch.zeros(1, 16, dtype=torch.long))
    assert field.dtype == torch.float32


def test_files_that_are_not_plain_npz_are_refused_without_unpickling(tmp_path):
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **random_tensors(0), extra=np.array([{"a": 1}], dtype=object))  # type: ignore[arg-type]
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x80\x04K\x01.")  # a pickle of the number 1
    text = tmp_path / "text.npz"
    text.write_text("hello")
    for path, reason in [
        (pickled, "readable .npz"),
        (single, "single array"),
        (junk, "readable .npz"),
        (text, "readable .npz"),
        (tmp_path / "missing.npz", "no such file"),
        (tmp_path, "no such file"),
    ]:
        with pytest.raises(MaskDecoderError, match=reason) as info:
            MaskDecoder.from_npz(path)
        assert str(path) in str(info.value)


def test_the_tensor_list_is_the_whole_decoder():
    # 1,188,993 parameters: the codebook plus the decoder, as counted for the real file.
    assert sum(int(np.prod(s)) for s in SHAPES.values()) == 1_188_993
    assert sum(p.numel() for p in MaskDecoder().parameters()) == 1_188_993
