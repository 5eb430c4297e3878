"""Checks of the garment boxes given to DFA's public inference APIs."""

import numpy as np
from typing import Any
import torch

__all__ = ["check_boxes_xyxy"]


def check_boxes_xyxy(boxes: Any, where: str = "boxes", allow_zero_size: bool = False) -> np.ndarray:
    """``boxes`` as a (G, 4) float64 XYXY array, refusing boxes DFA cannot crop.

    Args:
        boxes: (G, 4) or (4 * G,) array-like or tensor on any device, XYXY in image pixels
            (continuous coordinates); G = 0 is fine. A box may lie partly or wholly outside the
            image (the crop is padded with zeros).
        where: names the argument in errors.
        allow_zero_size: accept x1 == x2 / y1 == y2 (degenerate ground truth; grown to 1 px by
            :func:`dfa.landmarks.sanitize_box`). Public APIs keep the default, strict check.

    Returns:
        (G, 4) float64 array.

    Raises:
        ValueError: naming the index of the first box that is not finite, or whose x2 < x1 or
            y2 < y1 (x2 <= x1, y2 <= y1 unless ``allow_zero_size``): often an (x, y, w, h)
            box passed as XYXY.
    """
    if isinstance(boxes, torch.Tensor):
        # CUDA tensors (a detector's pred_boxes on the GPU) and tensors requiring grad.
        boxes = boxes.detach().cpu()
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: expected (G, 4) numbers XYXY, got {boxes!r} ({e})") from e
    if arr.size % 4:
        raise ValueError(f"{where}: expected (G, 4) XYXY boxes, got shape {arr.shape}")
    arr = arr.reshape(-1, 4)
    for i, (x1, y1, x2, y2) in enumerate(arr.tolist()):
        if not np.isfinite([x1, y1, x2, y2]).all():
            raise ValueError(f"{where}[{i}] = {[x1, y1, x2, y2]} is not finite")
        inverted = (x2 < x1 or y2 < y1) if allow_zero_size else (x2 <= x1 or y2 <= y1)
        if inverted:
            raise ValueError(
                f"{where}[{i}] = {[x1, y1, x2, y2]} has width {x2 - x1:g} and height "
                f"{y2 - y1:g}; expected XYXY with x1 < x2 and y1 < y2 (an (x, y, w, h) box? "
                "convert it with detectron2.structures.BoxMode.convert)"
            )
    return arr
