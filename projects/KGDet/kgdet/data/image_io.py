"""Image reading as the model sees it: Detectron2's ``read_image``, checked and with exact pixels.

Every stage that looks at an image file goes through this module (the DeepFashion2 and FLD
converters, ``KGDetDatasetMapper``, ``demo.py``, ``tools/visualize_data.py`` and
``tools/check_dataset.py``), so a converter judges an image by the same decoded array that
training and evaluation later feed to the model:

- **EXIF orientation** is applied exactly as ``detectron2.data.detection_utils.read_image``
  does (its ``_apply_exif_orientation``). Annotation files (DeepFashion2, FLD) give coordinates
  in the *stored* pixel frame, so an image whose orientation tag is anything but 1 (mirror,
  rotate 180, rotate 90, ...) would be trained on pixels its annotations do not describe; every
  such orientation is treated alike (:func:`orientation_changes_pixels`).
- **Decoding errors** (truncated files, corrupt data, files that are not images) raise
  :class:`ImageReadError`, an ``OSError`` naming the file; PIL's lazy loading is forced, so a
  truncated JPEG fails here and not later inside a data-loader worker.
- **Pixel formats**: 8-bit RGB, grayscale (L, 1), palette (P), CMYK and YCbCr convert as in
  Detectron2. Three cases Detectron2 gets wrong are handled: 16-bit grayscale (``I;16``, e.g.
  16-bit PNG), which PIL's ``convert("RGB")`` saturates at 255, is scaled to 8 bits
  (v * 255 / 65535, rounded); images with transparency (RGBA, LA, PA, palette with a
  transparent colour) are composited over white (``ALPHA_BACKGROUND``) instead of showing
  whatever colour is stored under transparent pixels; 32-bit integer and float images (no
  defined 8-bit scale) are refused with :class:`ImageReadError`.
- **Arrays handed to a predictor** (:func:`as_uint8_image`, used by every predictor of the
  project) are converted by the same rules: gray (H, W) replicated, a 4th (alpha) channel
  composited over white, 16-bit values scaled to 8 bits; float arrays are refused, since
  [0, 1] and [0, 255] scales cannot be told apart.

For every 8-bit RGB image without transparency the result equals Detectron2's ``read_image``.
"""

import logging
import numpy as np
import os
from dataclasses import dataclass
from typing import Optional

from detectron2.data.detection_utils import _apply_exif_orientation, convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager

from PIL import Image, UnidentifiedImageError

__all__ = [
    "ALPHA_BACKGROUND",
    "EXIF_ORIENTATION_NAMES",
    "ImageReadError",
    "ImageArrayError",
    "as_uint8_image",
    "ImageInfo",
    "DecodedImage",
    "decode_image",
    "read_image",
    "inspect_image",
    "orientation_changes_pixels",
]

logger = logging.getLogger(__name__)

_EXIF_ORIENTATION_TAG = 0x0112
# What each EXIF orientation makes Detectron2's read_image do to the stored pixels.
EXIF_ORIENTATION_NAMES = {
    1: "none",
    2: "mirror left-right",
    3: "rotate 180",
    4: "mirror top-bottom",
    5: "transpose",
    6: "rotate 90 clockwise",
    7: "transverse",
    8: "rotate 90 counter-clockwise",
}
# Background that transparent pixels are composited over (RGB, 8 bit).
ALPHA_BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_REFUSED_MODES = {
    "I": "32-bit integer pixels have no defined 8-bit scale",
    "F": "32-bit float pixels have no defined 8-bit scale",
}


class ImageReadError(OSError):
    """An image file that cannot be decoded into the model's 8-bit input; names the file."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class ImageInfo:
    """What the model gets from an image file.

    ``width`` / ``height`` are those of the decoded array (EXIF orientation applied, as
    Detectron2 decodes it); ``stored_width`` / ``stored_height`` those of the stored pixels
    (which annotation files refer to); ``orientation`` is the EXIF tag (None when absent);
    ``mode`` is PIL's pixel format of the file.
    """

    path: str
    width: int
    height: int
    stored_width: int
    stored_height: int
    orientation: Optional[int]
    mode: str

    @property
    def orientation_changes_pixels(self) -> bool:
        return orientation_changes_pixels(self.orientation)

    def describe_orientation(self) -> str:
        """e.g. ``"EXIF orientation 3 (rotate 180)"``."""
        name = EXIF_ORIENTATION_NAMES.get(self.orientation, "unknown")
        return f"EXIF orientation {self.orientation} ({name})"


@dataclass
class DecodedImage:
    """A decoded image (HWC uint8 in the requested format) and its :class:`ImageInfo`."""

    image: np.ndarray
    info: ImageInfo


def orientation_changes_pixels(orientation: Optional[int]) -> bool:
    """True for every EXIF orientation Detectron2 applies (2..8): the decoded pixels are then
    mirrored and/or rotated relative to the stored ones; False for None, 1 and unknown tags."""
    return orientation in (2, 3, 4, 5, 6, 7, 8)


def _orientation(image: Image.Image) -> Optional[int]:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG)
    except Exception:  # noqa: B902 - Detectron2 ignores unreadable EXIF as well
        return None
    return int(value) if isinstance(value, int) else None


def _to_8bit_rgb(image: Image.Image, path: str) -> Image.Image:
    """An 8-bit RGB PIL image with the pixels the file shows (see the module docstring)."""
    mode = image.mode
    if mode in _REFUSED_MODES:
        raise ImageReadError(
            path,
            f"pixel format '{mode}': {_REFUSED_MODES[mode]}; expected an 8-bit or 16-bit image",
        )
    if mode in _SIXTEEN_BIT_MODES:
        gray = _sixteen_to_eight_bit(np.asarray(image))
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        return _composite_over_background(image.convert("RGBA"))
    return image.convert("RGB")


def _sixteen_to_eight_bit(values: np.ndarray) -> np.ndarray:
    """16-bit values (0..65535) scaled to 8 bits: round(v * 255 / 65535)."""
    scaled = np.round(np.asarray(values, dtype=np.float64) * (255.0 / 65535.0))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _composite_over_background(rgba: Image.Image) -> Image.Image:
    """An RGBA PIL image composited over :data:`ALPHA_BACKGROUND`, as RGB."""
    background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


class ImageArrayError(ValueError):
    """An image array a predictor cannot take; the message gives what was given and expected."""


def as_uint8_image(image, channel_order: str = "BGR", name: str = "image") -> np.ndarray:
    """The (H, W, 3) uint8 array in ``channel_order`` that a predictor takes, from an array.

    Args:
        image: (H, W, 3) uint8 in ``channel_order`` (returned as is), or an array converted as
            an image file of that kind is by :func:`decode_image`: gray (H, W) or (H, W, 1)
            (replicated to 3 channels), (H, W, 4) = ``channel_order`` + alpha (e.g. BGRA from
            ``cv2.imread(..., cv2.IMREAD_UNCHANGED)``; composited over
            :data:`ALPHA_BACKGROUND`), uint16 in any of these shapes (v * 255 / 65535, rounded).
        channel_order: "BGR" or "RGB": the order the predictor expects (for messages and for
            the colour channels of a 4-channel array).
        name: what the array is, for the message (e.g. "DFAPredictor image").

    Raises:
        ImageArrayError: (a ``ValueError``) not a numpy array, float or other dtypes (never
            guessed: [0, 1] and [0, 255] look alike), another shape or an empty image; one line
            saying what was given and what is expected.
    """
    expected = (
        f"expected (H, W, 3) uint8 in {channel_order} order (gray (H, W), {channel_order}A "
        "(H, W, 4) and 16-bit arrays are converted as image files are)"
    )
    if not isinstance(image, np.ndarray):
        raise ImageArrayError(f"{name}: got a {type(image).__name__}; {expected}")
    shape = tuple(image.shape)
    given = f"{name}: got shape {shape} dtype {image.dtype}"
    if image.dtype.kind == "f":
        raise ImageArrayError(
            f"{given}; {expected}; float images are refused (a [0, 1] or [0, 255] scale cannot "
            "be told apart): convert with (image * 255).round().astype(np.uint8) if in [0, 1]"
        )
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageArrayError(f"{given}; {expected}")
    if image.ndim == 3 and shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and shape[2] in (3, 4))) or 0 in shape[:2]:
        raise ImageArrayError(f"{given}; {expected}")
    if image.dtype == np.uint16:
        image = _sixteen_to_eight_bit(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if shape[2] == 4:
        rgba = image[:, :, [2, 1, 0, 3]] if channel_order == "BGR" else image
        rgb = np.asarray(_composite_over_background(Image.fromarray(np.ascontiguousarray(rgba))))
        image = rgb[:, :, ::-1] if channel_order == "BGR" else rgb
    return np.ascontiguousarray(image)


def _open(path: str) -> Image.Image:
    try:
        with PathManager.open(path, "rb") as f:
            image = Image.open(f)
            image.load()  # force decoding: truncated files fail here
            return image
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except UnidentifiedImageError as e:
        raise ImageReadError(path, f"not a readable image ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises all three for corrupt data
        raise ImageReadError(path, f"cannot be decoded ({e}); truncated or corrupt file?") from e


def decode_image(path: str, format: Optional[str] = "BGR") -> DecodedImage:
    """Decode ``path`` the way the model sees it.

    Args:
        path: image file (any path Detectron2's ``PathManager`` opens).
        format: ``"BGR"`` / ``"RGB"`` / ``"L"`` (as Detectron2's ``cfg.INPUT.FORMAT``), or any PIL
            mode; None keeps an 8-bit RGB array.

    Returns:
        :class:`DecodedImage` with ``image`` (H, W, C) uint8, H and W of the decoded frame
        (EXIF orientation applied as by Detectron2's ``read_image``).

    Raises:
        ImageReadError: missing, unreadable, truncated file, or a pixel format without an 8-bit
            meaning (32-bit integer / float).
    """
    path = os.fspath(path)
    image = _open(path)
    orientation = _orientation(image)
    stored_width, stored_height = image.size
    mode = image.mode
    try:
        rgb = _to_8bit_rgb(_apply_exif_orientation(image), path)
        array = convert_PIL_to_numpy(rgb, format if format is not None else "RGB")
    except ImageReadError:
        raise
    except (OSError, ValueError) as e:
        raise ImageReadError(path, f"pixel format '{mode}' cannot be converted ({e})") from e
    info = ImageInfo(
        path=path,
        width=int(array.shape[1]),
        height=int(array.shape[0]),
        stored_width=int(stored_width),
        stored_height=int(stored_height),
        orientation=orientation,
        mode=mode,
    )
    return DecodedImage(image=array, info=info)


def read_image(path: str, format: Optional[str] = "BGR") -> np.ndarray:
    """Drop-in for Detectron2's ``read_image`` (same array for ordinary images): see
    :func:`decode_image`. Raises :class:`ImageReadError` naming the file."""
    return decode_image(path, format).image


def inspect_image(path: str, decode: bool = True) -> ImageInfo:
    """:class:`ImageInfo` of ``path``; with ``decode=False`` only the header is read (fast, but
    truncated or corrupt pixel data is not detected).

    Raises:
        ImageReadError: as :func:`decode_image` (header problems only with ``decode=False``).
    """
    path = os.fspath(path)
    if decode:
        return decode_image(path, format="RGB").info
    try:
        with PathManager.open(path, "rb") as f, Image.open(f) as image:
            width, height = image.size
            orientation = _orientation(image)
            mode = image.mode
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except UnidentifiedImageError as e:
        raise ImageReadError(path, f"not a readable image ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"cannot be read ({e})") from e
    swapped = orientation in (5, 6, 7, 8)
    return ImageInfo(
        path=path,
        width=height if swapped else width,
        height=width if swapped else height,
        stored_width=width,
        stored_height=height,
        orientation=orientation,
        mode=mode,
    )
