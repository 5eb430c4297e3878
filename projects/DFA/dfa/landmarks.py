"""Landmark geometry: box normalisation (Appendix B's N), crops, and per-garment targets.

Coordinates follow Detectron2's dataset-dict convention (continuous pixel coordinates, as boxes;
``load_coco_json`` adds 0.5 to integer keypoint indices). A landmark is normalised to its
*landmark frame* f = (xc, yc, fw, fh) as ``((x - xc) / fw, (y - yc) / fh)`` (DeepPose
normalisation; DESIGN.md §1). The frame is the box itself for the ``stretch`` crop (points on
the box border at +-0.5; an error of e is the per-axis box-normalised NE) and the square of side
max(bw, bh) centred on the box for the authors' ``pad`` crop (both axes divided by the long
side, the DFA paper's NE).
"""

import logging
import numpy as np
from typing import Dict, List, Sequence
import cv2
import torch

from detectron2.structures import BoxMode

from kgdet.data.fld_meta import FLD_CLASS_KEYPOINT_SLOTS

__all__ = [
    "FLD_VISIBLE",
    "FLD_OCCLUDED",
    "FLD_TRUNCATED",
    "FLD_CLASS_SLOTS",
    "normalize_landmarks",
    "denormalize_landmarks",
    "normalized_to_crop_pixels",
    "crop_pixels_to_normalized",
    "CROP_MODES",
    "landmark_frame",
    "crop_box",
    "sanitize_box",
    "garment_targets",
]

logger = logging.getLogger(__name__)

# Raw FLD visibility codes (docs/DESIGN.md §16.3); also the visibility classifier's class indices.
FLD_VISIBLE, FLD_OCCLUDED, FLD_TRUNCATED = 0, 1, 2
# Slots defined per clothing type (Upper, Lower, Whole), docs/DESIGN.md §16.1; used when the dataset
# metadata has no ``class_keypoint_slots``.
FLD_CLASS_SLOTS = FLD_CLASS_KEYPOINT_SLOTS
# MODEL.DFA.CROP_MODE values: box resized to a square / long side resized + zero padding.
CROP_MODES = ("stretch", "pad")


def _box_centre_size(boxes: torch.Tensor):
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    size = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1e-6)
    return centre, size


def normalize_landmarks(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """N(l; b): points (..., L, 2) in pixels, boxes (..., 4) XYXY -> (..., L, 2) box units."""
    centre, size = _box_centre_size(boxes)
    return (points - centre.unsqueeze(-2)) / size.unsqueeze(-2)


def denormalize_landmarks(normalized: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """N^-1 (Eq. 6): (..., L, 2) box units, boxes (..., 4) XYXY -> (..., L, 2) pixels."""
    centre, size = _box_centre_size(boxes)
    return normalized * size.unsqueeze(-2) + centre.unsqueeze(-2)


def normalized_to_crop_pixels(normalized: torch.Tensor, crop_size: int, expand: float):
    """Landmark-frame units -> continuous pixel coordinates of the crop made by :func:`crop_box`
    (either mode, with the same ``expand``)."""
    return (normalized / expand + 0.5) * crop_size


def crop_pixels_to_normalized(pixels: torch.Tensor, crop_size: int, expand: float):
    """Inverse of :func:`normalized_to_crop_pixels`: crop pixels -> landmark-frame units."""
    return (pixels / crop_size - 0.5) * expand


def sanitize_box(box: Sequence[float], min_size: float = 1.0) -> np.ndarray:
    """XYXY box with width and height at least ``min_size`` (grown about its centre).

    Raises ValueError for a non-finite or inverted box (x2 < x1 or y2 < y1): only small valid
    boxes are grown.
    """
    x1, y1, x2, y2 = [float(v) for v in box]
    if not np.isfinite([x1, y1, x2, y2]).all() or x2 < x1 or y2 < y1:
        raise ValueError(f"box {[x1, y1, x2, y2]}: expected finite XYXY with x1 <= x2, y1 <= y2")
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = max(x2 - x1, min_size), max(y2 - y1, min_size)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float64)


def _check_mode(mode: str) -> None:
    if mode not in CROP_MODES:
        raise ValueError(f"MODEL.DFA.CROP_MODE must be one of {CROP_MODES}, got {mode!r}")


def landmark_frame(boxes: torch.Tensor, mode: str = "stretch") -> torch.Tensor:
    """The box landmarks are normalised to: boxes (..., 4) XYXY -> frames (..., 4) XYXY.

    ``stretch``: the box itself; ``pad``: the square of side max(width, height) with the box's
    centre (the region the authors' padded crop shows). Works on tensors and numpy arrays.
    """
    _check_mode(mode)
    if mode == "stretch":
        return boxes
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    size = boxes[..., 2:] - boxes[..., :2]
    if isinstance(boxes, np.ndarray):
        half = np.maximum(size[..., :1], size[..., 1:]) / 2
        return np.concatenate([centre - half, centre + half], axis=-1)
    half = torch.maximum(size[..., :1], size[..., 1:]) / 2
    return torch.cat([centre - half, centre + half], dim=-1)


def crop_box(
    image: np.ndarray,
    box: Sequence[float],
    size: int,
    expand: float = 1.0,
    mode: str = "stretch",
):
    """Bilinear crop of ``box`` (XYXY, continuous pixels) scaled by ``expand``, resized to a
    ``size`` x ``size`` image (HWC, same dtype); outside the image is filled with 0.

    ``mode`` "stretch" resizes the (expanded) box to the square; "pad" (the authors' crop)
    resizes its long side to ``size`` keeping the aspect ratio, centred, and fills the rest of
    the square with 0 (pixels whose centre is outside the expanded box). In both modes crop
    pixel (u, v) = (N(l; frame) / expand + 0.5) * size for a landmark l, with the frame of
    :func:`landmark_frame` (:func:`normalized_to_crop_pixels`).

    The only crop implementation: training, evaluation and the predictor all use it, so the
    network never sees two kinds of resampling.
    """
    _check_mode(mode)
    x1, y1, x2, y2 = landmark_frame(sanitize_box(box), mode)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = (x2 - x1) * expand, (y2 - y1) * expand
    sx, sy = size / w, size / h
    # Continuous u = (x - (cx - w/2)) * sx; cv2 works on pixel indices (centre = index + 0.5).
    tx = (0.5 - (cx - w / 2)) * sx - 0.5
    ty = (0.5 - (cy - h / 2)) * sy - 0.5
    matrix = np.array([[sx, 0.0, tx], [0.0, sy, ty]], dtype=np.float64)
    out = cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if out.ndim == 2:
        out = out[:, :, None]
    if mode == "pad":
        bx1, by1, bx2, by2 = sanitize_box(box)
        bw, bh = (bx2 - bx1) * expand * sx, (by2 - by1) * expand * sy  # box extent in the crop
        centres = np.arange(size) + 0.5
        keep_x = np.abs(centres - size / 2) <= bw / 2
        keep_y = np.abs(centres - size / 2) <= bh / 2
        out = out * (keep_y[:, None, None] & keep_x[None, :, None]).astype(out.dtype)
    return out


def garment_targets(
    annotation: Dict, class_slots: List[List[int]], num_landmarks: int = 8, where: str = ""
) -> Dict[str, np.ndarray]:
    """Targets of one FLD-format annotation (a Detectron2 dataset-dict annotation).

    Returns ``box`` (4,) XYXY, ``category`` int, ``points`` (L, 2) pixels, ``visibility`` (L,)
    raw FLD code (0 visible, 1 occluded, 2 truncated; -1 where the slot is not defined for the
    clothing type), ``labelled`` (L,) bool = defined and not truncated (position supervision).
    Raises ValueError naming ``where`` for a clothing type outside the dataset or a keypoint
    list of the wrong length.
    """
    category = int(annotation["category_id"])
    if not 0 <= category < len(class_slots):
        raise ValueError(
            f"{where}: category_id {category} is not a clothing type of this dataset "
            f"(expected 0..{len(class_slots) - 1}, contiguous ids)"
        )
    box = BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS)
    keypoints = np.asarray(annotation.get("keypoints", []), dtype=np.float64)
    if keypoints.size != 3 * num_landmarks:
        raise ValueError(
            f"{where}: 'keypoints' has {keypoints.size} values, expected {3 * num_landmarks}"
        )
    keypoints = keypoints.reshape(num_landmarks, 3)
    defined = np.zeros(num_landmarks, dtype=bool)
    defined[class_slots[category]] = True
    if "fld_visibility" in annotation:
        raw = np.asarray(annotation["fld_visibility"], dtype=np.int64)
        if raw.shape != (num_landmarks,) or not np.isin(raw, (0, 1, 2)).all():
            raise ValueError(
                f"{where}: 'fld_visibility' must be {num_landmarks} codes in {{0, 1, 2}}, "
                f"got {raw.tolist()}"
            )
    else:  # COCO v (2 visible, 1 occluded, 0 unlabelled) -> FLD code (docs/DESIGN.md §16.3)
        raw = np.array([2, 1, 0], dtype=np.int64)[keypoints[:, 2].astype(np.int64).clip(0, 2)]
    visibility = np.where(defined, raw, -1)
    # A truncated landmark has no trusted position (docs/DESIGN.md §16.3); an unlabelled COCO point
    # (v = 0) has none either, whatever fld_visibility says.
    labelled = defined & (visibility != FLD_TRUNCATED) & (keypoints[:, 2] > 0)
    return {
        "box": np.asarray(box, dtype=np.float64),
        "category": category,
        "points": keypoints[:, :2].copy(),
        "visibility": visibility,
        "labelled": labelled,
    }
