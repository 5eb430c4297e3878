"""Decoding and resizing image files for prediction, as ``DefaultPredictor`` does, in a Dataset.

:class:`PredictionImageDataset` reads each file with :mod:`kgdet.data.image_io` (by content:
EXIF orientation, gray, palette, 16-bit and transparent images as for training) and applies
Detectron2's test-time ``ResizeShortestEdge`` (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``).
A file that cannot be used becomes an :class:`ImageFailure` item instead of an exception, so a
``DataLoader`` with worker processes decodes in parallel and one bad file never stops a run.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union
import torch
import torch.utils.data as torchdata

import detectron2.data.transforms as T

from ..data.image_io import ImageReadError, decode_image

__all__ = ["ImageFailure", "PredictionImageDataset", "check_resizable", "resized_shape"]


@dataclass
class ImageFailure:
    """A file that was not predicted: ``reason`` says why (one line, names no path)."""

    index: int
    file_name: str
    reason: str

    def to_record(self) -> Dict[str, str]:
        return {"file_name": self.file_name, "reason": self.reason}


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """(height, width) after Detectron2's ``ResizeShortestEdge`` to ``min_size`` (longest edge
    at most ``max_size``), as ``DefaultPredictor`` resizes; 0 for a side that rounds to 0 px."""
    return T.ResizeShortestEdge.get_output_shape(height, width, min_size, max_size)


def check_resizable(height: int, width: int, min_size: int, max_size: int) -> Optional[str]:
    """None if a ``width`` x ``height`` image can be resized for the model, else the reason,
    e.g. "degenerate size: 1200x3 px resized ... leaves 160x0 px" at 160 / 160 px."""
    new_h, new_w = resized_shape(height, width, min_size, max_size)
    if new_h >= 1 and new_w >= 1:
        return None
    return (
        f"degenerate size: {width}x{height} px resized to the test size (shortest edge "
        f"{min_size}, longest at most {max_size} px) leaves {new_w}x{new_h} px"
    )


class PredictionImageDataset(torchdata.Dataset):
    """Map-style dataset of image files decoded and resized for the model.

    Args:
        files: image paths.
        input_format: ``cfg.INPUT.FORMAT`` ("BGR" or "RGB").
        min_size, max_size: ``cfg.INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``.
        keep_original: also return the decoded full-size image (for drawings).

    ``dataset[i]`` is either a dict in Detectron2's model input format: ``"image"`` (3, h, w)
    float32 tensor of the resized image in ``input_format`` channel order, ``"height"`` /
    ``"width"`` of the decoded image (EXIF orientation applied; predictions are returned in
    these pixels), ``"file_name"``, ``"index"`` (and ``"original"`` (H, W, 3) uint8 BGR with
    ``keep_original``) — or an :class:`ImageFailure` (unreadable, not an image, unsupported
    format, degenerate size).
    """

    def __init__(
        self,
        files: Sequence[str],
        input_format: str,
        min_size: int,
        max_size: int,
        keep_original: bool = False,
    ):
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got {input_format!r}")
        self.files = list(files)
        self.input_format = input_format
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.keep_original = keep_original
        self.aug = T.ResizeShortestEdge([self.min_size, self.min_size], self.max_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Union[Dict, ImageFailure]:
        path = self.files[index]
        try:
            bgr = decode_image(path, format="BGR").image
        except ImageReadError as e:
            return ImageFailure(index, path, e.problem)
        except Exception as e:  # noqa: B902 - a decoder bug or a file system error: one file
            return ImageFailure(index, path, f"cannot be read ({type(e).__name__}: {e})")
        height, width = bgr.shape[:2]
        problem = check_resizable(height, width, self.min_size, self.max_size)
        if problem:
            return ImageFailure(index, path, problem)
        image = bgr if self.input_format == "BGR" else bgr[:, :, ::-1]
        # As DefaultPredictor: resize the uint8 image, then float32 CHW.
        image = self.aug.get_transform(image).apply_image(image)
        item = {
            "index": index,
            "file_name": path,
            "height": height,
            "width": width,
            "image": torch.as_tensor(image.astype("float32").transpose(2, 0, 1)),
        }
        if self.keep_original:
            item["original"] = bgr
        return item


def split_batch(batch: List[Union[Dict, ImageFailure]]) -> Tuple[List[Dict], List[ImageFailure]]:
    """(decoded items, failures) of a loader batch."""
    items = [b for b in batch if not isinstance(b, ImageFailure)]
    failures = [b for b in batch if isinstance(b, ImageFailure)]
    return items, failures
