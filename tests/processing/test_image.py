"""Image loading (files, bytes, PIL, numpy; every PIL mode) and pixel preprocessing."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import ImageLoadError
from engine.processing.image import load_image, preprocess_images

RNG = np.random.default_rng(1234)
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _noise(h: int, w: int, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def _rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


# ----------------------------------------------------------------------------- reference parity


@pytest.fixture(scope="module")
def hf_image_processor():
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    return SiglipImageProcessorPil(
        size={"height": 32, "width": 32},
        resample=3,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )


@pytest.mark.parametrize("shape", [(57, 83, 3), (20, 24, 3), (300, 200, 3), (41, 29, 4)])
def test_bicubic_matches_transformers_siglip_processor(hf_image_processor, shape) -> None:
    # Both sides run the same PIL bicubic resize on uint8 pixels; only the float arithmetic differs
    # ((x/255 - 0.5)/0.5 there, x/127.5 - 1 here), which is a few float32 ulps, hence 1e-6.
    # The RGBA case also checks that both composite transparency on white.
    img = Image.fromarray(_noise(*shape))
    expected = hf_image_processor(images=[img], return_tensors="np")["pixel_values"]
    ours = preprocess_images(img, 32, resample="bicubic")
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(57, 83), (20, 24), (300, 200)])
def test_bilinear_is_antialiased_bilinear(shape) -> None:
    # torch's antialiased bilinear uses the same widened triangle filter as tf.image.resize(antialias=
    # True) and PIL. We round to uint8 after resizing (as big_vision does) and PIL resamples in fixed
    # point, so allow 1.5 grey levels; without antialiasing, random noise would differ by tens.
    pixels = _noise(*shape)
    ours = preprocess_images(pixels, 32).numpy()
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].double()
    ref = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    np.testing.assert_allclose(ours, (ref / 127.5 - 1).numpy(), rtol=0, atol=1.5 / 127.5)


def test_downscaling_a_checkerboard_gives_grey() -> None:
    # A 1-pixel checkerboard shrunk 3x: an antialiasing filter averages it to mid-grey, whereas
    # point-sampled bilinear (antialias=False) would return a coarser black/white checkerboard.
    board = ((np.indices((48, 48)).sum(axis=0) % 2) * 255).astype(np.uint8)
    out = preprocess_images(board, 16)
    assert out.abs().max().item() < 0.15


def test_shape_dtype_and_range_for_a_mixed_batch(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_noise(50, 70)).save(path)
    batch = preprocess_images([path, str(path), Image.fromarray(_noise(10, 300)), _noise(9, 9)], 24)
    assert batch.shape == (4, 3, 24, 24)
    assert batch.dtype == torch.float32 and batch.is_contiguous()
    assert batch.min().item() >= -1.0 and batch.max().item() <= 1.0
    assert torch.equal(batch[0], batch[1])


def test_uniform_colours_map_to_exact_values() -> None:
    colour = (0, 51, 255)
    out = preprocess_images(Image.new("RGB", (40, 30), colour), 16, resample="bicubic")
    for channel, value in enumerate(colour):
        assert torch.allclose(out[0, channel], torch.tensor(value / 127.5 - 1.0), atol=1e-6)
    assert out[0, 0].eq(-1.0).all() and out[0, 2].eq(1.0).all()


def test_channels_are_rgb_order_in_nchw() -> None:
    out = preprocess_images(Image.new("RGB", (8, 8), RED), 8)
    assert out[0, 0].eq(1.0).all() and out[0, 1].eq(-1.0).all() and out[0, 2].eq(-1.0).all()


def test_numpy_batch_and_single_image() -> None:
    batch = np.stack([_noise(20, 20), _noise(20, 20)])
    out = preprocess_images(batch, 8)
    assert out.shape == (2, 3, 8, 8)
    assert torch.equal(out[1:], preprocess_images(batch[1], 8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"image_size": 0}, "image_size"), ({"image_size": 16, "resample": "lanczos9"}, "resample")],
)
def test_bad_preprocess_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        preprocess_images(Image.new("RGB", (4, 4)), **kwargs)


def test_import_does_not_load_torch() -> None:
    code = "import sys, engine.processing.image; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


# ----------------------------------------------------------------------------- EXIF orientation


def _left_red_right_blue(path: Path, orientation: int) -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20], pixels[:, 20:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation  # the EXIF Orientation tag
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def test_exif_orientation_6_is_rotated_clockwise(tmp_path: Path) -> None:
    # Orientation 6 means "display rotated 90 degrees clockwise": the stored left edge goes on top.
    path = tmp_path / "rot.jpg"
    _left_red_right_blue(path, 6)
    img = load_image(path)
    assert img.size == (20, 40)
    pixels = _rgb(img)
    assert np.abs(pixels[5, 10] - RED).max() < 30
    assert np.abs(pixels[35, 10] - BLUE).max() < 30


def test_exif_orientation_3_is_rotated_half_a_turn(tmp_path: Path) -> None:
    path = tmp_path / "rot.jpg"
    _left_red_right_blue(path, 3)
    pixels = _rgb(load_image(path.read_bytes()))  # bytes take the same decode path as files
    assert pixels.shape == (20, 40, 3)
    assert np.abs(pixels[10, 35] - RED).max() < 30
    assert np.abs(pixels[10, 5] - BLUE).max() < 30


def test_pil_images_are_taken_as_given(tmp_path: Path) -> None:
    # Documented choice: orientation is applied only to what we decode ourselves.
    path = tmp_path / "rot.jpg"
    _left_red_right_blue(path, 6)
    with Image.open(path) as img:
        assert load_image(img).size == (40, 20)


# ----------------------------------------------------------------------------- modes


def test_gray_modes() -> None:
    assert _rgb(load_image(Image.new("L", (2, 2), 100)))[0, 0].tolist() == [100, 100, 100]
    assert _rgb(load_image(Image.new("1", (2, 2), 1)))[0, 0].tolist() == [255, 255, 255]
    assert _rgb(load_image(Image.new("1", (2, 2), 0)))[0, 0].tolist() == [0, 0, 0]


def test_16_bit_gray_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 50 * 257, 200 * 257, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    assert _rgb(load_image(img))[0, :, 0].tolist() == [0, 50, 200, 255]
    path = tmp_path / "deep.png"  # and through a real 16-bit PNG file
    img.save(path)
    assert _rgb(load_image(path))[0, :, 0].tolist() == [0, 50, 200, 255]


def test_32_bit_int_and_float_gray() -> None:
    sixteen_bit = Image.fromarray(np.array([[0, 100 * 257, 65535]], dtype=np.int32))
    assert sixteen_bit.mode == "I"
    assert _rgb(load_image(sixteen_bit))[0, :, 0].tolist() == [0, 100, 255]
    eight_bit = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))
    assert _rgb(load_image(eight_bit))[0, :, 0].tolist() == [0, 100, 255]
    unit_float = Image.fromarray(np.array([[0.0, 0.2, 1.0]], dtype=np.float32))
    assert unit_float.mode == "F"
    assert _rgb(load_image(unit_float))[0, :, 0].tolist() == [0, 51, 255]
    signed = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32))  # no known range: stretched
    low, mid, high = _rgb(load_image(signed))[0, :, 0].tolist()
    assert (low, high) == (0, 255) and mid in (127, 128)


def test_cmyk() -> None:
    assert _rgb(load_image(Image.new("CMYK", (2, 2), (0, 255, 255, 0))))[0, 0].tolist() == list(RED)
    assert _rgb(load_image(Image.new("CMYK", (2, 2), (0, 0, 0, 0))))[0, 0].tolist() == [255, 255, 255]


def test_rgba_is_composited_on_white() -> None:
    pixels = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [255, 0, 0, 128]]], dtype=np.uint8)
    out = _rgb(load_image(Image.fromarray(pixels, mode="RGBA")))[0]
    assert out[0].tolist() == [255, 255, 255]  # fully transparent -> background
    assert out[1].tolist() == list(RED)  # opaque -> unchanged
    assert np.abs(out[2] - [255, 127, 127]).max() <= 1  # half -> halfway to white


def test_la_is_composited_on_white() -> None:
    img = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), mode="LA")
    assert _rgb(load_image(img))[0].tolist() == [[255, 255, 255], [0, 0, 0]]


def test_palette_with_transparency_from_a_png_file(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0])
    img.putdata([0, 1])
    path = tmp_path / "pal.png"
    img.save(path, transparency=1)
    assert _rgb(load_image(path))[0].tolist() == [list(RED), [255, 255, 255]]
    assert _rgb(load_image(img))[0].tolist() == [list(RED), [0, 255, 0]]  # no transparency set


def test_ycbcr_converts_to_rgb() -> None:
    ycbcr = Image.new("RGB", (2, 2), (10, 200, 30)).convert("YCbCr")
    assert np.abs(_rgb(load_image(ycbcr))[0, 0] - [10, 200, 30]).max() <= 3


# ----------------------------------------------------------------------------- numpy input


def test_numpy_uint8_and_float_equal_the_pil_path() -> None:
    pixels = _noise(23, 31)
    via_pil = preprocess_images(Image.fromarray(pixels), 16)
    assert np.array_equal(_rgb(load_image(pixels)), pixels)
    for dtype in (np.float16, np.float32, np.float64):
        as_float = (pixels / 255.0).astype(dtype)
        assert np.array_equal(_rgb(load_image(as_float)), pixels), dtype
        assert torch.equal(preprocess_images(as_float, 16), via_pil)
    assert torch.equal(preprocess_images(pixels, 16), via_pil)


def test_numpy_gray_and_rgba() -> None:
    gray = RNG.integers(0, 256, (5, 6), dtype=np.uint8)
    assert np.array_equal(_rgb(load_image(gray)), np.repeat(gray[..., None], 3, axis=-1))
    assert np.array_equal(_rgb(load_image(gray[..., None])), _rgb(load_image(gray)))
    rgba = np.zeros((2, 2, 4), np.uint8)  # fully transparent black
    assert (_rgb(load_image(rgba)) == 255).all()


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.full((4, 4, 3), 255.0, np.float32), r"\[0, 1\]"),
        (np.full((4, 4, 3), -0.5, np.float64), r"\[0, 1\]"),
        (np.zeros((4, 4, 3), np.int16), "int16"),
        (np.zeros((4, 4, 3), bool), "bool"),
        (np.zeros((3, 8, 8), np.uint8), "channels-first"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_numpy_arrays(array, match) -> None:
    with pytest.raises(ImageLoadError, match=match):
        load_image(array)


def test_unsupported_type() -> None:
    with pytest.raises(ImageLoadError, match="list"):
        load_image([[1, 2, 3]])  # type: ignore[arg-type]  # on purpose


# ----------------------------------------------------------------------------- broken files


def _assert_one_line_naming(err: pytest.ExceptionInfo, path: Path) -> None:
    message = str(err.value)
    assert str(path) in message
    assert "\n" not in message


def _encoded(fmt: str) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    Image.fromarray(_noise(64, 64)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.png", b"", "empty"),
        ("notes.jpg", b"this is plain text, not pixels\n" * 10, "identify"),
        ("half.jpg", _encoded("JPEG")[:800], "truncated or corrupt"),
        ("half.png", _encoded("PNG")[:4000], "truncated or corrupt"),
        ("header_only.png", _encoded("PNG")[:40], "identify|truncated"),
        ("photo.heic", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, "heif|identify"),
    ],
)
def test_broken_files_name_the_file(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=match) as err:
        load_image(path)
    _assert_one_line_naming(err, path)
    assert isinstance(err.value, ValueError)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="no such file") as err:
        load_image(tmp_path / "nope.jpg")
    _assert_one_line_naming(err, tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="directory") as err:
        load_image(str(tmp_path))
    _assert_one_line_naming(err, tmp_path)


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lower PIL's own guard instead of writing a 180-megapixel file; the code path is the same.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    big, medium = tmp_path / "bomb.png", tmp_path / "medium.png"
    Image.new("RGB", (20, 20)).save(big)  # 400 px > 2 x 100: PIL's error threshold
    Image.new("RGB", (12, 12)).save(medium)  # 144 px: PIL would only warn
    with pytest.raises(ImageLoadError, match="pixels") as err:
        load_image(big)
    _assert_one_line_naming(err, big)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(medium).size == (12, 12)


def test_lazily_opened_broken_pil_image_names_its_file(tmp_path: Path) -> None:
    path = tmp_path / "half.png"
    path.write_bytes(_encoded("PNG")[:4000])
    with Image.open(path) as img:  # only the header is read here, so this succeeds
        with pytest.raises(ImageLoadError, match="truncated or corrupt") as err:
            load_image(img)
    _assert_one_line_naming(err, path)


# ----------------------------------------------------------------------------- odd files (issue 13)


def test_a_fifo_is_not_a_regular_file_and_is_never_opened(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(ImageLoadError, match=r"x\.jpg: it is not a regular file \(a FIFO\)"):
        load_image(fifo)


def test_link_loops_and_broken_links_say_so(tmp_path: Path) -> None:
    import os

    os.symlink("b.jpg", tmp_path / "a.jpg")
    os.symlink("a.jpg", tmp_path / "b.jpg")
    os.symlink("nowhere.jpg", tmp_path / "dangling.jpg")
    with pytest.raises(ImageLoadError, match=r"a\.jpg: it is a symbolic link loop"):
        load_image(tmp_path / "a.jpg")
    with pytest.raises(ImageLoadError, match=r"dangling\.jpg: it is a symbolic link to a missing file"):
        load_image(tmp_path / "dangling.jpg")


def test_bytes_can_be_named_for_messages() -> None:
    with pytest.raises(ImageLoadError, match=r"cannot load image https://example\.com/x\.jpg: PIL cannot"):
        load_image(b"not an image", name="https://example.com/x.jpg")


def test_check_image_file_reads_the_header_only(tmp_path: Path) -> None:
    from engine.processing.image import check_image_file

    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    check_image_file(good)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageLoadError, match=r"text\.png: PIL cannot identify it"):
        check_image_file(tmp_path / "text.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="the file is empty"):
        check_image_file(tmp_path / "empty.png")
