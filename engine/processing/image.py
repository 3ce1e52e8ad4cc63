"""Image loading and PaliGemma pixel preprocessing.

``load_image`` turns a path, bytes, PIL image or numpy array into an 8-bit RGB PIL image; it needs
only PIL and numpy, so the CLI can validate inputs without importing torch. ``preprocess_images``
turns a batch into the model's input, ``float32[B, 3, R, R]`` in [-1, 1]; torch is imported inside it.

Pixel pipeline (big_vision pp/ops_image.py and value_range(-1, 1); transformers
SiglipImageProcessor): RGB uint8 -> squash-resize to R x R (no crop, no aspect-ratio padding:
PaliGemma was trained on squashed images) -> uint8 -> ``x / 127.5 - 1`` -> NCHW.

Resize filter. The checkpoints were trained in big_vision with ``tf.image.resize(method="bilinear",
antialias=True)`` and the result rounded back to uint8. PIL's BILINEAR is a triangle filter whose
support widens with the downscale factor, i.e. it antialiases on downscale the same way, and it
uses half-pixel centres like TF; so ``resample="bilinear"`` (our default) is the closest match to
the training distribution available without TensorFlow. ``resample="bicubic"`` reproduces Hugging
Face's ``SiglipImageProcessor`` (PIL backend: bicubic resize on uint8, then (x/255 - 0.5)/0.5, which
equals x/127.5 - 1), for users who want bit-comparable inputs with transformers. Both filters are
used with the released models and the difference in outputs is small.

Decisions worth knowing:
* EXIF orientation is applied to files and bytes we decode, not to PIL images handed to us: a PIL
  image is taken as the pixels its owner means (they may have rotated it already), which is also
  what transformers and KerasHub do.
* Transparent images are composited on white (as transformers does), not on black: a transparent
  background becoming black changes what the model "sees" far more than white does.
* High-bit-depth images are scaled, never clipped: I;16 by 1/257 (65535 -> 255); mode I and F by a
  range rule (see ``_scale_to_uint8``).
* Files larger than PIL's decompression-bomb error threshold (2 x ``Image.MAX_IMAGE_PIXELS``,
  about 179 megapixels) are refused; PIL's softer warning threshold is ignored so that 100 MP phone
  photos load quietly.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import ImageLoadError, InputError

if TYPE_CHECKING:
    import torch

ImageSource = str | Path | bytes | Image.Image | np.ndarray

RESAMPLE_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_PLUGIN_HINTS = {
    ".heic": "install pillow-heif or convert it to JPEG/PNG",
    ".heif": "install pillow-heif or convert it to JPEG/PNG",
    ".avif": "install pillow-avif-plugin (or a Pillow built with AVIF) or convert it to JPEG/PNG",
}
_WHITE = (255, 255, 255, 255)


# ------------------------------------------------------------------------------------ loading


def load_image(src: ImageSource, name: str | None = None) -> Image.Image:
    """Returns ``src`` as an 8-bit RGB PIL image.

    Accepts a file path (str or Path), the bytes of an image file, a PIL image (any mode), or a
    numpy array ``HxW``, ``HxWx1``, ``HxWx3`` or ``HxWx4`` that is uint8 or floating point in [0, 1].
    Raises ImageLoadError (a ValueError) with a one-line message for anything it cannot read;
    ``name`` names bytes in that message (a URL, "stdin"), instead of ``<bytes>``.
    """
    if isinstance(src, (str, Path)):
        return _load_file(Path(src))
    if isinstance(src, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        return _decode(io.BytesIO(bytes(src)), label, suffix=Path(label).suffix.lower() if name else "")
    if isinstance(src, Image.Image):
        name = getattr(src, "filename", "") or "PIL image"
        try:
            src.load()  # an image from Image.open() is decoded lazily and can still fail here
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageLoadError(
                f"cannot load image {name}: the image data is truncated or corrupt ({_reason(e)})"
            ) from None
        return to_rgb(src, name)
    if isinstance(src, np.ndarray):
        return to_rgb(_from_array(src), "numpy image")
    raise ImageLoadError(
        f"cannot load image of type {type(src).__name__}: pass a file path, image bytes, a PIL image "
        "or an HxWxC numpy array"
    )


_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _check_file(path: Path) -> None:
    """Refuses, without opening it, anything but a non-empty regular file (a FIFO would block)."""

    def refuse(why: str) -> ImageLoadError:
        return ImageLoadError(f"cannot load image {path}: {why}")

    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise refuse("it is a symbolic link to a missing file; fix or remove the link") from None
        raise refuse("no such file; check the path") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise refuse("it is a symbolic link loop; fix or remove the link") from None
        raise refuse(f"{(e.strerror or str(e)).lower()}") from None
    if stat.S_ISDIR(info.st_mode):
        raise refuse("it is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        kind = next((what for test, what in _NOT_REGULAR if test(info.st_mode)), "a socket or other special file")
        raise refuse(f"it is not a regular file ({kind}); pass image files")
    if info.st_size == 0:
        raise refuse("the file is empty; re-export or re-download it")


def _load_file(path: Path) -> Image.Image:
    _check_file(path)
    try:
        with open(path, "rb") as f:
            return _decode(f, str(path), suffix=path.suffix.lower())
    except PermissionError:
        raise ImageLoadError(f"cannot load image {path}: permission denied; check the file's permissions") from None


def check_image_file(path: str | Path) -> None:
    """Raises the ImageLoadError ``load_image(path)`` would for a file that is missing, unreadable,
    not a regular file, empty or not an image PIL knows, reading only its header (no decoding):
    a cheap check before slow work. A file that passes can still turn out truncated or corrupt."""
    path = Path(path)
    _check_file(path)
    _register_optional_plugins()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path):
                pass
    except PermissionError:
        raise ImageLoadError(f"cannot load image {path}: permission denied; check the file's permissions") from None
    except UnidentifiedImageError:
        hint = _PLUGIN_HINTS.get(path.suffix.lower(), "use JPEG, PNG, WebP, GIF, BMP or TIFF")
        raise ImageLoadError(
            f"cannot load image {path}: PIL cannot identify it as an image (unknown format or damaged header); {hint}"
        ) from None
    except Image.DecompressionBombError:
        pass  # load_image names the limit; the run reports it in the image's record
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageLoadError(
            f"cannot load image {path}: the file is truncated or corrupt ({_reason(e)}); re-export or re-download it"
        ) from None


def _decode(fp: Any, name: str, suffix: str) -> Image.Image:
    """Opens, fully decodes, orients and converts one encoded image."""
    _register_optional_plugins()
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we only keep the error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                img.load()  # decode now: Image.open only reads the header
                img = _exif_transpose(img)
                return to_rgb(img, name)
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageLoadError(
            f"cannot load image {name}: it has more than {limit} pixels (decompression-bomb guard); "
            "downscale it before use"
        ) from None
    except UnidentifiedImageError:
        hint = _PLUGIN_HINTS.get(suffix, "use JPEG, PNG, WebP, GIF, BMP or TIFF")
        raise ImageLoadError(
            f"cannot load image {name}: PIL cannot identify it as an image (unknown format or damaged header); {hint}"
        ) from None
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Truncated or corrupt data surfaces as OSError ("image file is truncated"), SyntaxError
        # (broken PNG chunks) or ValueError/EOFError from individual decoders.
        raise ImageLoadError(
            f"cannot load image {name}: the file is truncated or corrupt ({_reason(e)}); re-export or re-download it"
        ) from None


def _exif_transpose(img: Image.Image) -> Image.Image:
    # A damaged EXIF block should not make an otherwise good picture unreadable, so fall back to the
    # stored orientation instead of failing.
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - any EXIF parsing failure means "no usable orientation"
        return img


@functools.cache
def _register_optional_plugins() -> None:
    """Registers HEIC/AVIF openers if their optional PIL plugins are installed."""
    try:
        from pillow_heif import register_heif_opener  # type: ignore[import-not-found]

        register_heif_opener()
    except Exception:  # noqa: BLE001 - optional, missing or broken plugin means "not supported"
        pass
    try:
        import pillow_avif  # type: ignore[import-not-found]  # noqa: F401  (registers on import)
    except Exception:  # noqa: BLE001
        pass


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


# ------------------------------------------------------------------------------------ conversion


def to_rgb(img: Image.Image, name: str = "PIL image") -> Image.Image:
    """Converts any PIL mode to 8-bit RGB (alpha on white, high bit depth scaled, not clipped).
    ``name`` identifies the image in the error raised for a mode PIL cannot convert."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        # Checked before transparency: PIL's own conversion of these modes clips to 255, and a
        # transparent grey key in a 16-bit PNG is rare enough to ignore.
        gray = _scale_to_uint8(np.asarray(img), img.mode)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode == "La":  # premultiplied; PIL converts it to nothing but LA
        img = img.convert("LA")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise ImageLoadError(
            f"cannot load image {name}: its mode {img.mode} cannot be converted to RGB ({_reason(e)}); "
            "save it as an RGB JPEG or PNG"
        ) from None


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Maps one high-bit-depth channel to uint8.

    I;16* is 16-bit by definition, so 0..65535 -> 0..255. Mode I (32-bit int) and F (float) carry no
    range, so: values already in 0..255 are kept (F in [0, 1] is scaled by 255), values in 0..65535
    are treated as 16-bit, anything else is stretched min..max. NaNs become 0.
    """
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if mode.startswith("I;16"):
        scaled = a / 257.0
    else:
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = a * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = a
        elif lo >= 0.0 and hi <= 65535.0:
            scaled = a / 257.0
        elif hi > lo:
            scaled = (a - lo) * (255.0 / (hi - lo))
        else:  # a constant image outside every known range: nothing to show
            scaled = np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _from_array(a: np.ndarray) -> Image.Image:
    """numpy HxW / HxWx{1,3,4}, uint8 or float in [0, 1] -> PIL image (L, RGB or RGBA)."""
    shape = tuple(a.shape)
    if a.ndim == 3 and shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        hint = ""
        if a.ndim == 3 and shape[0] in (1, 3, 4):
            hint = " (it looks channels-first: use a.transpose(1, 2, 0))"
        raise ImageLoadError(f"cannot load numpy image of shape {shape}: expected HxW, HxWx3 or HxWx4{hint}")
    if a.size == 0:
        raise ImageLoadError(f"cannot load numpy image of shape {shape}: it is empty")
    if a.dtype == np.uint8:
        pass
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageLoadError("cannot load numpy image: it contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageLoadError(
                f"cannot load float numpy image with values in [{lo:g}, {hi:g}]: floats must be in [0, 1]; "
                "divide by 255 or pass uint8"
            )
        # Rounding (not truncating) makes uint8 -> /255 -> here an exact round trip.
        a = np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageLoadError(f"cannot load numpy image of dtype {a.dtype}: use uint8 (0..255) or float (0..1)")
    return Image.fromarray(np.ascontiguousarray(a))


# ------------------------------------------------------------------------------------ model input


def resize_square(img: Image.Image, image_size: int, resample: str = "bilinear") -> Image.Image:
    """Squash-resizes an RGB image to ``image_size`` x ``image_size`` with the named filter."""
    if resample not in RESAMPLE_FILTERS:
        raise InputError(f"unknown resample filter {resample!r}; choose one of {sorted(RESAMPLE_FILTERS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise InputError(f"image_size must be a positive int, got {image_size!r}")
    if img.size == (image_size, image_size):
        return img
    return img.resize((image_size, image_size), RESAMPLE_FILTERS[resample])


def preprocess_images(
    images: ImageSource | Sequence[ImageSource],
    image_size: int,
    resample: str = "bilinear",
) -> torch.Tensor:
    """Loads and preprocesses images into ``float32[B, 3, image_size, image_size]`` in [-1, 1].

    ``images`` is one image or a list of them (anything ``load_image`` takes); a 4-D numpy array is
    read as a batch ``B x H x W x C``. The result is float32 on the CPU; the model moves it to its
    own device and dtype.
    """
    import torch

    batch: list[Any]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        batch = list(images)
    elif isinstance(images, (list, tuple)):
        batch = list(images)
    else:
        batch = [images]
    if not batch:
        raise InputError("preprocess_images() needs at least one image")
    pixels = np.stack([np.asarray(resize_square(load_image(im), image_size, resample)) for im in batch])
    # uint8 [B, H, W, 3] -> float32 [B, 3, H, W]; x/127.5 - 1 maps 0..255 onto [-1, 1].
    chw = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)
    return torch.from_numpy(chw / np.float32(127.5) - np.float32(1.0))
