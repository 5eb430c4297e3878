"""DeepFashion2-size simulated annotations and detections, for measuring the data and evaluation
paths at the scale of the real data set without its images.

:func:`write_simulated_split` writes a COCO-style json in the official converter's layout
(:mod:`kgdet.data.prepare.convert_deepfashion2`): the 13 official category records, one image record
per image (``NNNNNN.jpg``, id = number, width/height), one annotation per garment with ``bbox``
``[x, y, w, h]`` (integer pixels), ``area`` = box area, ``iscrowd`` 0, ``pair_id``, ``style``, 294 x
3 float ``keypoints`` (zeros outside the class block), ``num_keypoints`` = #(v > 0) and one polygon.
Records are streamed to a temporary file renamed into place at the end, so writing the full training
split needs little memory and a failure leaves no partial file.

What is simulated (and from where):

- counts per split: the released DeepFashion2 splits (docs: ``DF2_SPLITS``), scaled down
  proportionally with ``num_images``;
- class frequencies: the per-class garment counts quoted for the released training split
  (``DF2_TRAIN_CLASS_COUNTS``, sum 312,186), used as proportions for every split;
- image sizes, landmark visibility mix (59.7 % visible, 24.0 % occluded, 16.3 % unlabelled)
  and polygon lengths: measured on the 32-image DeepFashion2 demo subset;
- 1 to 5 garments per image, so that the split's garment total is met exactly.

:func:`simulated_detections` turns the compact ground-truth summary written next to the json
(``<json>.garments.npz``, see :func:`load_garment_summary`) into detections of one image at a
time as a model would output them: noisy copies of the garments (box jitter, some with the
wrong class, some duplicated) and false positives, up to the per-image cap.
"""

import json
import logging
import numpy as np
import os
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple
import cv2

from ..data.deepfashion2_meta import (
    DF2_KEYPOINT_SLOT_RANGES,
    DF2_NUM_KEYPOINTS,
    DF2_NUM_KEYPOINTS_PER_CLASS,
)
from ..data.prepare.convert_deepfashion2 import deepfashion2_categories
from ..file_io import atomic_output, write_atomic

__all__ = [
    "DF2_SPLITS",
    "DF2_TRAIN_CLASS_COUNTS",
    "SplitSpec",
    "GarmentSummary",
    "split_counts",
    "write_simulated_split",
    "load_garment_summary",
    "garment_summary_path",
    "simulated_detections",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitSpec:
    """Number of images and garments of one released DeepFashion2 split."""

    num_images: int
    num_garments: int


DF2_SPLITS: Dict[str, SplitSpec] = {
    "train": SplitSpec(191_961, 312_186),
    "validation": SplitSpec(32_153, 52_490),
}

# Garments per class (category ids 1..13) of the released training split, as quoted by public
# analyses of the data set; they sum to the split's 312,186 garments. Used as proportions.
DF2_TRAIN_CLASS_COUNTS: Tuple[int, ...] = (
    71_645, 36_064, 543, 13_457, 16_095, 1_985, 36_616, 55_387, 30_835, 17_211, 7_907, 17_949,
    6_492,
)  # fmt: skip

# (width, height) of the demo subset's images and how many of its 32 images have each size.
_IMAGE_SIZES: Tuple[Tuple[int, int, int], ...] = (
    (468, 624, 5), (640, 960, 4), (468, 832, 2), (468, 702, 2), (640, 955, 1), (880, 813, 1),
    (880, 1173, 1), (468, 848, 1), (880, 587, 1), (640, 963, 1), (468, 631, 1), (750, 755, 1),
    (468, 468, 1), (750, 1125, 1), (880, 1402, 1), (800, 800, 1), (790, 793, 1), (640, 640, 1),
    (790, 1185, 1), (880, 1320, 1), (640, 961, 1), (750, 499, 1), (750, 612, 1),
)  # fmt: skip
# Landmark visibility v = 0 / 1 / 2 inside the class block (demo subset: 186 / 274 / 682).
_VISIBILITY_P = np.array([186, 274, 682], dtype=np.float64) / 1142
# Garments per image 1..5 before the split's total is met exactly.
_GARMENTS_PER_IMAGE_P = np.array([0.48, 0.42, 0.08, 0.015, 0.005])
_MAX_GARMENTS = 5
_MAX_BLOCK = max(DF2_NUM_KEYPOINTS_PER_CLASS)  # 39
_CHUNK_IMAGES = 4096
_SLOT_CLASS = np.repeat(np.arange(13), DF2_NUM_KEYPOINTS_PER_CLASS)  # class of each global slot


def split_counts(split: str, num_images: Optional[int] = None) -> SplitSpec:
    """Images and garments of ``split`` ("train" / "validation"), or of ``num_images`` images
    with the split's garments per image (rounded, at least one garment per image).

    Raises:
        ValueError: unknown split or ``num_images`` < 1.
    """
    if split not in DF2_SPLITS:
        raise ValueError(
            f"unknown DeepFashion2 split '{split}'; expected one of {list(DF2_SPLITS)}"
        )
    full = DF2_SPLITS[split]
    if num_images is None:
        return full
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    garments = round(num_images * full.num_garments / full.num_images)
    return SplitSpec(num_images, min(max(garments, num_images), _MAX_GARMENTS * num_images))


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _garments_per_image(spec: SplitSpec, rng: np.random.Generator) -> np.ndarray:
    counts = rng.choice(
        np.arange(1, _MAX_GARMENTS + 1), size=spec.num_images, p=_GARMENTS_PER_IMAGE_P
    )
    diff = spec.num_garments - int(counts.sum())
    while diff != 0:  # +-1 on random images that stay within 1..5
        room = np.flatnonzero(counts < _MAX_GARMENTS if diff > 0 else counts > 1)
        pick = rng.choice(room, size=min(abs(diff), len(room)), replace=False)
        counts[pick] += 1 if diff > 0 else -1
        diff = spec.num_garments - int(counts.sum())
    return counts


class GarmentSummary(NamedTuple):
    """Compact ground truth of a simulated split (what detections are simulated from).

    Per image (I images): ``image_ids`` (I,) int64, ``widths``/``heights`` (I,) int32 pixels,
    ``first_garment`` (I + 1,) int64 offsets into the garment arrays. Per garment (G): ``classes``
    (G,) int8 0-based class, ``boxes`` (G, 4) float32 XYXY absolute pixels, ``keypoints``
    (G, 39, 3) float32 the class block's (x, y, v) padded with zeros to the longest block.
    """

    image_ids: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    first_garment: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray


def garment_summary_path(json_file: str) -> str:
    """Path of the compact ground-truth summary written next to ``json_file``."""
    return os.fspath(json_file) + ".garments.npz"


def load_garment_summary(json_file: str) -> GarmentSummary:
    """Read the summary written by :func:`write_simulated_split` for ``json_file``.

    Raises:
        FileNotFoundError: no summary next to the json (it was not written by the simulator).
    """
    path = garment_summary_path(json_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found; expected the garment summary that simulate_deepfashion2 writes "
            f"next to {json_file}"
        )
    with np.load(path) as z:
        return GarmentSummary(*(z[f] for f in GarmentSummary._fields))


def _simulate_garments(
    classes: np.ndarray, widths: np.ndarray, heights: np.ndarray, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray]:
    """Integer XYXY boxes (G, 4) inside their images and class-block landmarks (G, 39, 3)."""
    g = len(classes)
    rel_w = rng.uniform(0.2, 0.95, g)
    rel_h = rng.uniform(0.2, 0.85, g)
    bw = np.maximum(np.floor(rel_w * widths), 8)
    bh = np.maximum(np.floor(rel_h * heights), 8)
    x1 = np.floor(rng.uniform(0, 1, g) * (widths - bw))
    y1 = np.floor(rng.uniform(0, 1, g) * (heights - bh))
    boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)
    kp = np.zeros((g, _MAX_BLOCK, 3), dtype=np.float32)
    kp[:, :, 0] = np.floor(x1[:, None] + rng.uniform(0, 1, (g, _MAX_BLOCK)) * bw[:, None])
    kp[:, :, 1] = np.floor(y1[:, None] + rng.uniform(0, 1, (g, _MAX_BLOCK)) * bh[:, None])
    kp[:, :, 2] = rng.choice(3, size=(g, _MAX_BLOCK), p=_VISIBILITY_P)
    # 1 garment in 50 without any labelled landmark (DeepFashion2 has such garments).
    kp[rng.uniform(0, 1, g) < 0.02, :, 2] = 0
    n = np.asarray(DF2_NUM_KEYPOINTS_PER_CLASS)[classes]
    kp[np.arange(_MAX_BLOCK)[None, :] >= n[:, None]] = 0
    kp[kp[:, :, 2] == 0] = 0  # unlabelled landmarks are 0, 0, 0
    return boxes, kp


def _polygon(box: np.ndarray, num_points: int) -> List[int]:
    x1, y1, x2, y2 = (float(v) for v in box)
    t = np.linspace(0, 2 * np.pi, num_points, endpoint=False)
    xs = np.round((x1 + x2) / 2 + (x2 - x1) / 2 * np.cos(t)).astype(int)
    ys = np.round((y1 + y2) / 2 + (y2 - y1) / 2 * np.sin(t)).astype(int)
    return np.stack([xs, ys], axis=1).ravel().tolist()


# "0.0, " * n for the zeros before / after each class block of the flat 882-value list.
_ZEROS = [", ".join(["0.0"] * (3 * n)) for n in range(DF2_NUM_KEYPOINTS + 1)]


def _keypoints_text(cls: int, block: np.ndarray) -> str:
    start, end = DF2_KEYPOINT_SLOT_RANGES[cls]
    values = ", ".join(f"{int(v)}.0" for v in block[: end - start].ravel())
    parts = [p for p in (_ZEROS[start], values, _ZEROS[DF2_NUM_KEYPOINTS - end]) if p]
    return "[" + ", ".join(parts) + "]"


def _make_placeholder_images(image_root: str, file_names: List[str], sizes: np.ndarray) -> None:
    """Symlink every image name to a small flat JPEG of its size (one file per distinct size)."""
    folder = os.path.join(image_root, ".placeholders")
    os.makedirs(folder, exist_ok=True)
    placeholder = {}
    for w, h, _ in _IMAGE_SIZES:
        path = os.path.join(folder, f"{w}x{h}.jpg")
        if not os.path.isfile(path):
            image = np.full((h, w, 3), 128, dtype=np.uint8)
            write_atomic(path, lambda tmp, im=image: cv2.imwrite(tmp, im))
        placeholder[(w, h)] = os.path.join(".placeholders", f"{w}x{h}.jpg")
    for name, (w, h) in zip(file_names, sizes):
        link = os.path.join(image_root, name)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(placeholder[(int(w), int(h))], link)


def write_simulated_split(
    json_file: str,
    split: str = "validation",
    num_images: Optional[int] = None,
    seed: int = 0,
    image_root: Optional[str] = None,
) -> SplitSpec:
    """Write a simulated DeepFashion2 split as an official-layout COCO-style json (module
    docstring), plus its compact summary ``<json_file>.garments.npz`` for
    :func:`simulated_detections`; both atomically.

    Args:
        json_file: output path.
        split: "train" or "validation" (counts of the released split).
        num_images: fewer images than the full split (garments scale with it); None = full.
        seed: the data is a function of (split counts, seed).
        image_root: if given, a folder where every ``file_name`` is created as a symlink to a
            flat placeholder JPEG of the image's size (23 distinct files in all).

    Returns:
        The numbers of images and garments written.

    Memory: O(images + garments) small arrays (about 100 bytes per garment); the json text is
    streamed.
    """
    spec = split_counts(split, num_images)
    rng = np.random.default_rng(seed)
    per_image = _garments_per_image(spec, rng)
    class_weights = np.asarray(DF2_TRAIN_CLASS_COUNTS, dtype=np.float64)
    classes = np.repeat(np.arange(13), _largest_remainder(class_weights, spec.num_garments))
    classes = rng.permutation(classes).astype(np.int8)
    size_p = np.array([n for _, _, n in _IMAGE_SIZES], dtype=np.float64)
    size_idx = rng.choice(len(_IMAGE_SIZES), size=spec.num_images, p=size_p / size_p.sum())
    sizes = np.array([(w, h) for w, h, _ in _IMAGE_SIZES], dtype=np.int32)[size_idx]
    image_ids = np.arange(1, spec.num_images + 1, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(per_image)]).astype(np.int64)
    boxes = np.zeros((spec.num_garments, 4), dtype=np.float32)
    keypoints = np.zeros((spec.num_garments, _MAX_BLOCK, 3), dtype=np.float32)

    with atomic_output(json_file) as f:
        f.write('{"info": {}, "licenses": [], "images": [')
        for i in range(spec.num_images):
            w, h = sizes[i]
            f.write(
                (", " if i else "")
                + json.dumps(
                    {
                        "coco_url": "",
                        "date_captured": "",
                        "file_name": f"{image_ids[i]:06d}.jpg",
                        "flickr_url": "",
                        "id": int(image_ids[i]),
                        "license": 0,
                        "width": int(w),
                        "height": int(h),
                    }
                )
            )
        f.write('], "annotations": [')
        for c0 in range(0, spec.num_images, _CHUNK_IMAGES):
            c1 = min(c0 + _CHUNK_IMAGES, spec.num_images)
            g0, g1 = first[c0], first[c1]
            img_of = np.repeat(np.arange(c0, c1), per_image[c0:c1])
            b, k = _simulate_garments(classes[g0:g1], sizes[img_of, 0], sizes[img_of, 1], rng)
            boxes[g0:g1], keypoints[g0:g1] = b, k
            poly_len = rng.integers(6, 26, size=g1 - g0)
            pair_ids = rng.integers(1, 15_000, size=c1 - c0)
            for j in range(g1 - g0):
                gid, cls = int(g0 + j), int(classes[g0 + j])
                x1, y1, x2, y2 = (int(v) for v in b[j])
                head = json.dumps(
                    {
                        "area": (x2 - x1) * (y2 - y1),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "category_id": cls + 1,
                        "id": gid + 1,
                        "pair_id": int(pair_ids[img_of[j] - c0]),
                        "image_id": int(image_ids[img_of[j]]),
                        "iscrowd": 0,
                        "style": int(gid % 3),
                        "num_keypoints": int((k[j, :, 2] > 0).sum()),
                    }
                )
                f.write(
                    (", " if gid else "")
                    + head[:-1]
                    + ', "keypoints": '
                    + _keypoints_text(cls, k[j])
                    + ', "segmentation": '
                    + json.dumps([_polygon(b[j], int(poly_len[j]))])
                    + "}"
                )
        f.write('], "categories": ' + json.dumps(deepfashion2_categories()) + "}")

    summary = GarmentSummary(
        image_ids, sizes[:, 0].copy(), sizes[:, 1].copy(), first, classes, boxes, keypoints
    )
    write_atomic(
        garment_summary_path(json_file),
        lambda tmp: np.savez(tmp, **summary._asdict()),
    )
    if image_root is not None:
        _make_placeholder_images(image_root, [f"{i:06d}.jpg" for i in image_ids], sizes)
    logger.info(
        f"Wrote {spec.num_images} images / {spec.num_garments} garments ({split}) to {json_file}"
    )
    return spec


def simulated_detections(
    summary: GarmentSummary,
    image_index: int,
    max_per_image: int = 100,
    seed: int = 0,
) -> Dict[str, np.ndarray]:
    """Detections of one image as the model outputs them, simulated from its ground truth.

    Every garment is detected once (box edges jittered by ~5 % of its size, class wrong for
    1 garment in 10, landmarks moved by ~3 % of the box), 1 in 3 is detected a second time
    (larger jitter, lower score); false positives (random boxes and classes, scores 0.05-0.3)
    fill the image up to ``max_per_image`` detections. As ``KGDet.inference_single_image``
    makes them, ``keypoints`` has (x, y) for all 294 slots and the detection's score inside the
    predicted class's block, 0 elsewhere. Deterministic in (seed, image_index).

    Returns:
        dict with ``boxes`` (D, 4) float32 XYXY absolute pixels, ``scores`` (D,) float32,
        ``classes`` (D,) int64 0-based, ``keypoints`` (D, 294, 3) float32, D = max_per_image,
        sorted by decreasing score.
    """
    rng = np.random.default_rng([seed, image_index])
    w, h = float(summary.widths[image_index]), float(summary.heights[image_index])
    g0, g1 = summary.first_garment[image_index], summary.first_garment[image_index + 1]
    gt_cls = summary.classes[g0:g1].astype(np.int64)
    gt_box = summary.boxes[g0:g1].astype(np.float64)
    gt_kp = summary.keypoints[g0:g1]
    dup = rng.uniform(0, 1, len(gt_cls)) < 1 / 3
    src = np.concatenate([np.arange(len(gt_cls)), np.flatnonzero(dup)])[:max_per_image]
    is_dup = np.arange(len(src)) >= len(gt_cls)
    t = len(src)
    size = np.concatenate([gt_box[src, 2:] - gt_box[src, :2]] * 2, axis=1)
    jitter = np.where(is_dup, 0.12, 0.05)[:, None]
    boxes_tp = gt_box[src] + rng.normal(0, 1, (t, 4)) * size * jitter
    cls_tp = gt_cls[src].copy()
    wrong = rng.uniform(0, 1, t) < 0.1
    cls_tp[wrong] = (cls_tp[wrong] + rng.integers(1, 13, wrong.sum())) % 13
    scores_tp = np.where(is_dup, rng.uniform(0.1, 0.6, t), rng.uniform(0.5, 0.99, t))

    f = max_per_image - t
    fw, fh = rng.uniform(0.05, 0.6, f) * w, rng.uniform(0.05, 0.6, f) * h
    fx, fy = rng.uniform(0, 1, f) * (w - fw), rng.uniform(0, 1, f) * (h - fh)
    boxes = np.concatenate([boxes_tp, np.stack([fx, fy, fx + fw, fy + fh], axis=1)])
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    classes = np.concatenate([cls_tp, rng.integers(0, 13, f)])
    scores = np.concatenate([scores_tp, rng.uniform(0.05, 0.3, f)])

    d = max_per_image
    kp = np.zeros((d, DF2_NUM_KEYPOINTS, 3), dtype=np.float32)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    kp[:, :, 0] = boxes[:, :1] + rng.uniform(0, 1, (d, DF2_NUM_KEYPOINTS)) * bw[:, None]
    kp[:, :, 1] = boxes[:, 1:2] + rng.uniform(0, 1, (d, DF2_NUM_KEYPOINTS)) * bh[:, None]
    for i in np.flatnonzero(~wrong):  # a correctly classified copy follows its garment's landmarks
        c, g = int(classes[i]), int(src[i])
        start, end = DF2_KEYPOINT_SLOT_RANGES[c]
        labelled = gt_kp[g, : end - start, 2] > 0
        noise = rng.normal(0, 0.03, (end - start, 2)) * [bw[i], bh[i]]
        near = gt_kp[g, : end - start, :2] + noise
        kp[i, start:end, :2][labelled] = near[labelled]
    in_block = _SLOT_CLASS[None, :] == classes[:, None]
    kp[:, :, 2] = np.where(in_block, scores[:, None], 0.0)
    order = np.argsort(-scores, kind="stable")
    return {
        "boxes": boxes[order].astype(np.float32),
        "scores": scores[order].astype(np.float32),
        "classes": classes[order].astype(np.int64),
        "keypoints": kp[order],
    }
