"""FLD landmark metrics NE and PDL on arrays (docs/DESIGN.md §16.5), independent of Detectron2.

Conventions (followed from docs/DESIGN.md §16.5; the DFA paper leaves some of them open):

- per-point error ``e = sqrt(((x̂ - x) / W)² + ((ŷ - y) / H)²)`` with W, H the **ground-truth box**
  size (the box stretched to a 224×224 crop, the convention of later FLD papers); the full-image
  variant divides by the image size instead; the **long-side** variant (keys ``*_long``)
  divides both axes by max(W, H), the DFA authors' convention (box long side resized to 224 and
  padded to a 224×224 square): for the same pixel error it is smaller by up to
  sqrt((r² + 1) / 2) for a box of aspect ratio r;
- ``NE_k`` = mean of e over the garments whose slot k is counted and that have a prediction;
  ``NE`` = mean of the ``NE_k`` (slots without any counted landmark are left out);
- ``PDL_k(d)`` = share of counted landmarks with ``224·e <= d`` (d in pixels of the 224×224 box
  frame); a garment without a prediction (a miss) counts as "not detected"; ``PDL(d)`` = mean
  over k. ``PDL_px`` uses the distance in original image pixels instead.

NE values are fractions (the paper's scale, e.g. 0.071); PDL values and miss rates are percent.
"""

import numpy as np
from typing import Dict, Mapping, Optional, Sequence

__all__ = [
    "PDL_THRESHOLDS",
    "NORMALISED_CROP_SIZE",
    "PAPER_SIX_LANDMARKS",
    "FLD_VARIATION_NAMES",
    "landmark_errors",
    "fld_metrics",
]

# PDL thresholds in pixels of the normalised crop; the paper's headline is 15 px.
PDL_THRESHOLDS = (5, 10, 15, 20, 25, 30, 35, 40)
# Side of the box crop the paper measures PDL in.
NORMALISED_CROP_SIZE = 224.0
# The six landmarks of the paper's Table 2 (waistlines are not reported there).
PAPER_SIX_LANDMARKS = (
    "left_collar",
    "right_collar",
    "left_sleeve",
    "right_sleeve",
    "left_hem",
    "right_hem",
)
# FLD's variation_type codes (docs/DESIGN.md §16.2).
FLD_VARIATION_NAMES = {
    1: "normal_pose",
    2: "medium_pose",
    3: "large_pose",
    4: "medium_zoom_in",
    5: "large_zoom_in",
}


def landmark_errors(pred: np.ndarray, gt: np.ndarray, scale_wh: np.ndarray) -> np.ndarray:
    """Per-point normalised Euclidean error.

    Args:
        pred, gt: (G, K, 2) x, y in the same pixel frame; NaN rows of ``pred`` = no prediction.
        scale_wh: (G, 2) width and height each garment's errors are divided by.

    Returns:
        (G, K) errors, NaN where there is no prediction.
    """
    diff = (pred - gt) / scale_wh[:, None, :]
    return np.sqrt((diff**2).sum(axis=-1))


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def _summary(
    err_box: np.ndarray,
    err_px: np.ndarray,
    err_img: np.ndarray,
    counted: np.ndarray,
    err_long: Optional[np.ndarray] = None,
) -> Dict[str, np.ndarray]:
    """Per-slot NE / PDL vectors (K,) over the given garments (rows already selected)."""
    matched = np.isfinite(err_box)
    valid = counted & matched
    n_counted = counted.sum(axis=0).astype(np.float64)
    n_valid = valid.sum(axis=0).astype(np.float64)
    e_box = np.where(valid, err_box, 0.0)
    e_img = np.where(valid, err_img, 0.0)
    ne_k = _safe_ratio(e_box.sum(axis=0), n_valid)
    ne_img_k = _safe_ratio(e_img.sum(axis=0), n_valid)
    pdl_k = {}
    pdl_px_k = {}
    for d in PDL_THRESHOLDS:
        hit = valid & (np.where(valid, err_box, np.inf) * NORMALISED_CROP_SIZE <= d)
        hit_px = valid & (np.where(valid, err_px, np.inf) <= d)
        pdl_k[d] = 100.0 * _safe_ratio(hit.sum(axis=0).astype(np.float64), n_counted)
        pdl_px_k[d] = 100.0 * _safe_ratio(hit_px.sum(axis=0).astype(np.float64), n_counted)
    out = {
        "ne_k": ne_k,
        "ne_img_k": ne_img_k,
        "pdl_k": pdl_k,
        "pdl_px_k": pdl_px_k,
    }
    if err_long is not None:
        out["ne_long_k"] = _safe_ratio(np.where(valid, err_long, 0.0).sum(axis=0), n_valid)
        out["pdl_long_k"] = {
            d: 100.0
            * _safe_ratio(
                (valid & (np.where(valid, err_long, np.inf) * NORMALISED_CROP_SIZE <= d))
                .sum(axis=0)
                .astype(np.float64),
                n_counted,
            )
            for d in PDL_THRESHOLDS
        }
    return out


def fld_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    counted: np.ndarray,
    classes: np.ndarray,
    box_wh: np.ndarray,
    image_wh: np.ndarray,
    class_slots: Sequence[Sequence[int]],
    class_names: Sequence[str],
    keypoint_names: Sequence[str],
    variations: Optional[np.ndarray] = None,
    variation_names: Optional[Mapping[int, str]] = None,
) -> Dict[str, float]:
    """NE and PDL over all garments, per landmark, per clothing type and per variation type.

    Args:
        pred: (G, K, 2) predicted x, y (NaN for a garment without prediction = miss).
        gt: (G, K, 2) ground-truth x, y in the same frame.
        counted: (G, K) bool, landmarks that count (defined for the GT type and visible).
        classes: (G,) contiguous GT class index.
        box_wh, image_wh: (G, 2) GT box size and image size in pixels.
        class_slots: per class, the slots defined for it.
        class_names, keypoint_names: names used in the result keys.
        variations: (G,) int variation type, or None (no per-variation keys).
        variation_names: code -> name (default: FLD's, :data:`FLD_VARIATION_NAMES`).

    Returns:
        flat dict ``{"NE": .., "NE/<landmark>": .., "PDL@15": .., "type=<cls>/NE": .., ...}``;
        ``NE``/``PDL`` are box-normalised per axis, ``NE_long``, ``NE6_long``, ``PDL_long@d``,
        ``NE_long/<landmark>``, ``type=<cls>/NE_long``, ``variation=<name>/NE_long`` the same
        normalised by the box's long side on both axes (the DFA paper's convention).
    """
    num_garments = counted.shape[0]
    err_box = landmark_errors(pred, gt, box_wh)
    err_img = landmark_errors(pred, gt, image_wh)
    err_px = landmark_errors(pred, gt, np.ones_like(box_wh))
    err_long = landmark_errors(pred, gt, np.repeat(box_wh.max(axis=1, keepdims=True), 2, axis=1))
    missed = ~np.isfinite(pred).all(axis=(1, 2))

    res: Dict[str, float] = {
        "N": float(num_garments),
        "N_landmarks": float(counted.sum()),
        "miss_rate": 100.0 * float(missed.mean()) if num_garments else float("nan"),
    }
    overall = _summary(err_box, err_px, err_img, counted, err_long)
    res["NE"] = _nanmean(overall["ne_k"])
    res["NE_long"] = _nanmean(overall["ne_long_k"])
    if all(name in keypoint_names for name in PAPER_SIX_LANDMARKS):
        six = [list(keypoint_names).index(name) for name in PAPER_SIX_LANDMARKS]
        res["NE6"] = _nanmean(overall["ne_k"][six])
        res["NE6_long"] = _nanmean(overall["ne_long_k"][six])
    for d in PDL_THRESHOLDS:
        res[f"PDL@{d}"] = _nanmean(overall["pdl_k"][d])
    for d in PDL_THRESHOLDS:
        res[f"PDL_long@{d}"] = _nanmean(overall["pdl_long_k"][d])
    res["NE_img"] = _nanmean(overall["ne_img_k"])
    for d in PDL_THRESHOLDS:
        res[f"PDL_px@{d}"] = _nanmean(overall["pdl_px_k"][d])
    for k, name in enumerate(keypoint_names):
        res[f"NE/{name}"] = float(overall["ne_k"][k])
        res[f"NE_long/{name}"] = float(overall["ne_long_k"][k])
        res[f"PDL@15/{name}"] = float(overall["pdl_k"][15][k])

    for c, cls_name in enumerate(class_names):
        rows = classes == c
        if not rows.any():
            continue
        slots = list(class_slots[c])
        part = _summary(err_box[rows], err_px[rows], err_img[rows], counted[rows], err_long[rows])
        res[f"type={cls_name}/N"] = float(rows.sum())
        res[f"type={cls_name}/NE"] = _nanmean(part["ne_k"][slots])
        res[f"type={cls_name}/NE_long"] = _nanmean(part["ne_long_k"][slots])
        res[f"type={cls_name}/PDL@15"] = _nanmean(part["pdl_k"][15][slots])

    if variations is not None:
        for v in sorted(set(int(x) for x in variations.tolist())):
            rows = variations == v
            name = (variation_names or FLD_VARIATION_NAMES).get(v, str(v))
            part = _summary(
                err_box[rows], err_px[rows], err_img[rows], counted[rows], err_long[rows]
            )
            res[f"variation={name}/N"] = float(rows.sum())
            res[f"variation={name}/NE"] = _nanmean(part["ne_k"])
            res[f"variation={name}/NE_long"] = _nanmean(part["ne_long_k"])
            res[f"variation={name}/PDL@15"] = _nanmean(part["pdl_k"][15])
    return res
