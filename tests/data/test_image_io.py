"""kgdet.data.image_io: images exactly as Detectron2's read_image gives them, or a named error."""

import numpy as np
import cv2
import pytest

from detectron2.data.detection_utils import read_image as d2_read_image

from kgdet.data.image_io import (
    ALPHA_BACKGROUND,
    ImageReadError,
    decode_image,
    inspect_image,
    orientation_changes_pixels,
    read_image,
)
from PIL import Image

W, H = 40, 30


def _gradient() -> np.ndarray:
    """(H, W, 3) uint8 with distinct rows and columns, so any flip or rotation shows."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 6, y * 8, (x + y) * 3], axis=-1).astype(np.uint8)


def _save(path, array, orientation=None, fmt="PNG", **kw):
    image = Image.fromarray(array)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    image.save(path, fmt, **kw)
    return str(path)


@pytest.mark.parametrize("orientation", [None, 1, 2, 3, 4, 5, 6, 7, 8])
def test_every_exif_orientation_decodes_as_detectron2(tmp_path, orientation):
    path = _save(tmp_path / "x.png", _gradient(), orientation)
    decoded = decode_image(path, "BGR")
    np.testing.assert_array_equal(decoded.image, d2_read_image(path, "BGR"))
    info = decoded.info
    assert info.orientation == orientation
    assert (info.stored_width, info.stored_height) == (W, H)
    swapped = orientation in (5, 6, 7, 8)
    assert (info.width, info.height) == ((H, W) if swapped else (W, H))
    # Every orientation Detectron2 applies changes the pixels under the annotations, alike.
    assert info.orientation_changes_pixels == (orientation not in (None, 1))
    assert orientation_changes_pixels(orientation) == info.orientation_changes_pixels
    header = inspect_image(path, decode=False)
    assert (header.width, header.height, header.orientation) == (
        info.width,
        info.height,
        orientation,
    )


def test_ordinary_jpeg_equals_detectron2_in_every_format(tmp_path):
    path = _save(tmp_path / "x.jpg", _gradient(), fmt="JPEG", quality=90)
    for fmt in ("BGR", "RGB", "L"):
        np.testing.assert_array_equal(read_image(path, fmt), d2_read_image(path, fmt))


def test_truncated_and_missing_files_raise_naming_the_file(tmp_path):
    path = tmp_path / "cut.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    _save(path, noise, fmt="JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg") as info:
        read_image(str(path))
    assert isinstance(info.value, OSError) and info.value.path == str(path)
    # The header alone looks fine: only decoding catches truncation.
    assert inspect_image(str(path), decode=False).width == 400
    with pytest.raises(ImageReadError, match="cut.jpg"):
        inspect_image(str(path), decode=True)
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match="text.jpg: not a readable image"):
        read_image(str(tmp_path / "text.jpg"))
    with pytest.raises(ImageReadError, match="nope.jpg: file not found"):
        read_image(str(tmp_path / "nope.jpg"))


def test_16_bit_grayscale_png_is_scaled_not_saturated(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(2, axis=0)
    path = str(tmp_path / "g16.png")
    assert cv2.imwrite(path, values)
    assert Image.open(path).mode.startswith("I;16")
    out = read_image(path, "BGR")
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    assert (out[..., 0] == out[..., 2]).all()
    # Detectron2's own reader saturates every non-zero value.
    assert (d2_read_image(path, "BGR")[0, 1:, 0] == 255).all()


def test_16_bit_rgb_png_keeps_the_high_byte(tmp_path):
    bgr16 = np.zeros((2, 2, 3), np.uint16)
    bgr16[..., 0], bgr16[..., 1], bgr16[..., 2] = 1000, 40000, 65535
    path = str(tmp_path / "rgb16.png")
    assert cv2.imwrite(path, bgr16)
    np.testing.assert_array_equal(read_image(path, "BGR")[0, 0], [3, 156, 255])


def test_alpha_and_palette_transparency_composite_over_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[0, 1] = (10, 20, 30, 0)  # fully transparent: shows the background
    rgba[1, 0] = (0, 0, 0, 128)  # half transparent black over white
    path = str(tmp_path / "a.png")
    Image.fromarray(rgba, "RGBA").save(path)
    out = read_image(path, "RGB")
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], ALPHA_BACKGROUND)
    assert abs(int(out[1, 0, 0]) - 127) <= 1
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    ppath = str(tmp_path / "p.png")
    palette.save(ppath, transparency=0)
    out = read_image(ppath, "RGB")
    np.testing.assert_array_equal(out[0], [ALPHA_BACKGROUND, (200, 0, 0)])


def test_grayscale_cmyk_palette_give_8_bit_three_channels(tmp_path):
    gray = str(tmp_path / "l.png")
    Image.new("L", (3, 2), 77).save(gray)
    np.testing.assert_array_equal(read_image(gray, "BGR")[0, 0], [77, 77, 77])
    cmyk = str(tmp_path / "c.jpg")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk, "JPEG", quality=100)
    red = read_image(cmyk, "RGB")[4, 4].astype(int)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    pal = str(tmp_path / "p.png")
    p = Image.new("P", (2, 2))
    p.putpalette([0, 0, 255] * 256)
    p.save(pal)
    np.testing.assert_array_equal(read_image(pal, "BGR")[0, 0], [255, 0, 0])


def test_32_bit_integer_and_float_images_are_refused(tmp_path):
    for mode, value in (("I", 70000), ("F", 0.5)):
        path = str(tmp_path / f"{mode}.tif")
        Image.new(mode, (4, 4), value).save(path)
        with pytest.raises(ImageReadError, match=rf"{mode}.tif: pixel format '{mode}'"):
            read_image(path)
