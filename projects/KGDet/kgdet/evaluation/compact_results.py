"""Compact per-detection results of a garment detector, and the ground truth they are scored on.

:class:`CompactDetections` holds what box and keypoint AP (DeepFashion2 protocol) need of each
detection as flat float32 / int64 numpy arrays instead of Detectron2's COCO json dicts (882
Python floats per detection with K = 294 keypoints):

- ``boxes``: (N, 4) float32 XYWH_ABS, converted from ``pred_boxes`` exactly as Detectron2's
  ``instances_to_coco_json`` does (float32 arithmetic), so the values are the ones it writes;
- ``scores`` (N,) float32, ``classes`` (N,) int64 (contiguous ids), ``image_ids`` (N,) int64;
- ``block_xy``: the (x, y) keypoints of the predicted class's slots (``class_keypoint_slots``),
  ragged, rows ``block_offsets[i]:block_offsets[i + 1]``, float32, Detectron2's result
  convention (model coordinate - 0.5, the inverse of the +0.5 added to the ground truth when
  loading);
- ``extent``: (N, 4) float32 ``x0, y0, x1, y1`` over **all** K keypoints (same convention): the
  detection area of an official keypoint result (no ``bbox``) is ``(x1 - x0) * (y1 - y0)``;
- ``full_xy``: (F, K, 2) float32 all K keypoints of the few detections whose (image, class)
  has a ground-truth garment compared on slots outside that class's block (a garment with no
  labelled landmark: OKS then uses all K detection keypoints against the garment's enlarged
  box); ``full_index`` (N,) int64 row in ``full_xy`` or -1.

:class:`CompactGroundTruth` is the matching view of a COCO-format ground truth (one keypoint GT
variant), with each garment's labelled keypoints only.
"""

import numpy as np
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

__all__ = ["CompactDetections", "CompactGroundTruth", "DetectionAccumulator"]


@dataclass
class CompactDetections:
    """Detections as flat arrays; see the module docstring for every field."""

    image_ids: np.ndarray  # (N,) int64
    classes: np.ndarray  # (N,) int64, contiguous
    scores: np.ndarray  # (N,) float32
    boxes: np.ndarray  # (N, 4) float32 XYWH_ABS
    extent: Optional[np.ndarray] = None  # (N, 4) float32 x0, y0, x1, y1 of all K keypoints
    block_offsets: Optional[np.ndarray] = None  # (N + 1,) int64
    block_xy: Optional[np.ndarray] = None  # (sum of block sizes, 2) float32
    full_index: Optional[np.ndarray] = None  # (N,) int64, -1 = not kept
    full_xy: Optional[np.ndarray] = None  # (F, K, 2) float32

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def has_keypoints(self) -> bool:
        return self.extent is not None

    @classmethod
    def concatenate(cls, parts: Sequence["CompactDetections"]) -> "CompactDetections":
        """One ``CompactDetections`` of ``parts`` in order (e.g. gathered from every rank)."""
        parts = [p for p in parts if p is not None]
        if not parts:
            return cls.empty(has_keypoints=False, num_keypoints=0)
        has_kp = parts[0].has_keypoints
        out = cls(
            image_ids=np.concatenate([p.image_ids for p in parts]),
            classes=np.concatenate([p.classes for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            boxes=np.concatenate([p.boxes for p in parts]),
        )
        if has_kp:
            out.extent = np.concatenate([p.extent for p in parts])
            out.block_xy = np.concatenate([p.block_xy for p in parts])
            sizes = np.concatenate([np.diff(p.block_offsets) for p in parts])
            out.block_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            full_index, shift = [], 0
            for p in parts:
                full_index.append(np.where(p.full_index >= 0, p.full_index + shift, -1))
                shift += len(p.full_xy)
            out.full_index = np.concatenate(full_index)
            out.full_xy = np.concatenate([p.full_xy for p in parts])
        return out

    @classmethod
    def empty(cls, has_keypoints: bool, num_keypoints: int) -> "CompactDetections":
        out = cls(
            image_ids=np.zeros(0, np.int64),
            classes=np.zeros(0, np.int64),
            scores=np.zeros(0, np.float32),
            boxes=np.zeros((0, 4), np.float32),
        )
        if has_keypoints:
            out.extent = np.zeros((0, 4), np.float32)
            out.block_offsets = np.zeros(1, np.int64)
            out.block_xy = np.zeros((0, 2), np.float32)
            out.full_index = np.zeros(0, np.int64)
            out.full_xy = np.zeros((0, num_keypoints, 2), np.float32)
        return out


def xyxy_to_xywh_like_detectron2(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) float32 XYXY -> XYWH in float32, as ``BoxMode.convert`` does for numpy input."""
    out = boxes.astype(np.float32, copy=True)
    out[:, 2] -= out[:, 0]
    out[:, 3] -= out[:, 1]
    return out


class DetectionAccumulator:
    """Collects one image's predictions at a time into :class:`CompactDetections`.

    Args:
        class_slots: per contiguous class, the global keypoint slots of its block; ``None``
            keeps all K keypoints of every detection (a dataset without per-class blocks).
        full_pairs: (image_id, contiguous class) pairs whose detections keep all K keypoints.
        num_keypoints: K, or 0 for box-only results.
    """

    def __init__(
        self,
        num_keypoints: int,
        class_slots: Optional[Sequence[Sequence[int]]] = None,
        full_pairs: Optional[Set[Tuple[int, int]]] = None,
    ):
        self._k = num_keypoints
        self._slots = None
        if class_slots is not None:
            sizes = np.array([len(s) for s in class_slots], dtype=np.int64)
            self._slots = np.concatenate([np.asarray(s, dtype=np.int64) for s in class_slots])
            self._slot_sizes = sizes
            self._slot_starts = np.cumsum(sizes) - sizes
        self._full_pairs = full_pairs or set()
        self._full_classes_of_image: Dict[int, List[int]] = {}
        for img, cls in self._full_pairs:
            self._full_classes_of_image.setdefault(img, []).append(cls)
        self._parts: List[Dict[str, np.ndarray]] = []
        self._num_full = 0

    def add(
        self,
        image_id: int,
        boxes_xyxy: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        keypoints: Optional[np.ndarray],
    ) -> None:
        """Add one image's detections.

        Args:
            boxes_xyxy: (N, 4) float32 XYXY_ABS; scores: (N,) float32; classes: (N,) int64.
            keypoints: (N, K, 3) float32 model keypoints (x, y, score), not shifted; or None.
        """
        n = len(scores)
        part = {
            "image_ids": np.full(n, image_id, dtype=np.int64),
            "classes": classes.astype(np.int64),
            "scores": scores.astype(np.float32),
            "boxes": xyxy_to_xywh_like_detectron2(boxes_xyxy),
        }
        if self._k:
            xy = keypoints[:, :, :2] - np.float32(0.5)  # Detectron2's export (float32)
            by_axis = np.ascontiguousarray(xy.transpose(0, 2, 1))  # (N, 2, K): fast reductions
            if n:
                part["extent"] = np.concatenate([by_axis.min(axis=2), by_axis.max(axis=2)], axis=1)
            else:
                part["extent"] = np.zeros((0, 4), np.float32)
            if self._slots is None:
                part["block_xy"] = xy.reshape(n * self._k, 2)
                part["block_sizes"] = np.full(n, self._k, dtype=np.int64)
            else:
                part["block_xy"], part["block_sizes"] = self._blocks(xy, part["classes"])
            full_classes = self._full_classes_of_image.get(image_id, ())
            keep_full = np.isin(part["classes"], full_classes) if n else np.zeros(0, bool)
            if self._slots is None:
                keep_full[:] = False  # the block is already all K keypoints
            full_index = np.full(n, -1, dtype=np.int64)
            full_index[keep_full] = self._num_full + np.arange(int(keep_full.sum()))
            self._num_full += int(keep_full.sum())
            part["full_index_local"] = full_index
            part["full_xy"] = xy[keep_full]
        self._parts.append(part)

    def _blocks(self, xy: np.ndarray, classes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Each detection's own class block of ``xy`` (N, K, 2), flattened, and block sizes."""
        sizes = self._slot_sizes[classes]
        total = int(sizes.sum())
        out_starts = np.cumsum(sizes) - sizes
        pos = np.arange(total) - np.repeat(out_starts - self._slot_starts[classes], sizes)
        det = np.repeat(np.arange(len(classes)), sizes)
        return xy[det, self._slots[pos]], sizes

    def result(self) -> CompactDetections:
        """Everything added so far, concatenated (image order kept). The per-image pieces are
        replaced by the concatenation, so memory is not held twice."""
        if not self._parts:
            return CompactDetections.empty(bool(self._k), self._k)
        if len(self._parts) > 1:
            # Field by field, each field's pieces freed as soon as it is joined: the transient
            # memory is one field (the keypoint blocks), not a second copy of everything.
            joined = {}
            for key in sorted(self._parts[0], key=lambda k: k == "block_xy"):
                pieces = [p.pop(key) for p in self._parts]
                joined[key] = np.concatenate(pieces)
                del pieces
            self._parts = [joined]
        part = self._parts[0]
        out = CompactDetections(
            image_ids=part["image_ids"],
            classes=part["classes"],
            scores=part["scores"],
            boxes=part["boxes"],
        )
        if self._k:
            out.extent = part["extent"]
            out.block_xy = part["block_xy"]
            out.block_offsets = np.concatenate([[0], np.cumsum(part["block_sizes"])]).astype(
                np.int64
            )
            out.full_index = part["full_index_local"]
            out.full_xy = part["full_xy"].reshape(-1, self._k, 2)
        return out


@dataclass
class CompactGroundTruth:
    """A COCO-format ground truth as arrays (json annotation order), one keypoint GT variant.

    ``keypoint_slots[j]`` / ``keypoint_xy[j]``: the labelled (v > 0) slots of garment j and
    their (x, y) (float64, the json's values). ``num_keypoints`` is the json field (pycocotools
    ignores a garment for keypoint AP when it is 0); ``image_ids_all`` every image of the json,
    sorted (the images AP is computed over); ``category_ids`` the json's categories, sorted.
    """

    image_ids_all: np.ndarray
    category_ids: np.ndarray
    ann_ids: np.ndarray
    image_ids: np.ndarray
    categories: np.ndarray  # dataset category ids
    bboxes: np.ndarray  # (G, 4) float64 XYWH
    areas: np.ndarray
    iscrowd: np.ndarray
    num_keypoints: np.ndarray
    keypoint_slots: List[np.ndarray] = field(default_factory=list)
    keypoint_xy: List[np.ndarray] = field(default_factory=list)

    @classmethod
    def from_coco_dataset(
        cls, dataset: dict, keypoint_variant: Optional[str] = None
    ) -> "CompactGroundTruth":
        """From a loaded COCO json dict (``COCO.dataset``).

        Args:
            keypoint_variant: None (boxes only), "vis_occ" (v > 0 labelled, ``num_keypoints``
                as in the json) or "vis" (only v == 2 labelled and counted; see
                :func:`kgdet.evaluation.keypoint_gt_variant_api`).
        """
        annos = dataset.get("annotations", [])
        slots, xys = [], []
        num_keypoints = [a.get("num_keypoints", 0) for a in annos]
        if keypoint_variant is not None:
            for j, a in enumerate(annos):
                kp = np.asarray(a.get("keypoints", ()), dtype=np.float64).reshape(-1, 3)
                if keypoint_variant == "vis":
                    labelled = np.flatnonzero(kp[:, 2] == 2)
                    num_keypoints[j] = len(labelled)
                else:
                    labelled = np.flatnonzero(kp[:, 2] > 0)
                slots.append(labelled)
                xys.append(kp[labelled, :2].copy())
        return cls(
            image_ids_all=np.array(sorted(img["id"] for img in dataset.get("images", []))),
            category_ids=np.array(sorted(c["id"] for c in dataset.get("categories", []))),
            ann_ids=np.array([a["id"] for a in annos], dtype=np.int64),
            image_ids=np.array([a["image_id"] for a in annos], dtype=np.int64),
            categories=np.array([a["category_id"] for a in annos], dtype=np.int64),
            bboxes=np.array([a["bbox"] for a in annos], dtype=np.float64).reshape(-1, 4),
            areas=np.array([a["area"] for a in annos], dtype=np.float64),
            iscrowd=np.array([int(a.get("iscrowd", 0)) for a in annos], dtype=np.int64),
            num_keypoints=np.array(num_keypoints, dtype=np.int64),
            keypoint_slots=slots,
            keypoint_xy=xys,
        )

    def full_keypoint_pairs(
        self, class_slots: Optional[Sequence[Sequence[int]]], dataset_to_contiguous: Dict[int, int]
    ) -> Set[Tuple[int, int]]:
        """(image_id, contiguous class) of garments whose OKS needs detection keypoints outside
        the class's block: no labelled landmark (OKS on all K against the enlarged box), or a
        labelled slot outside the block."""
        if class_slots is None:
            return set()
        blocks = [set(int(s) for s in slots) for slots in class_slots]
        pairs = set()
        for j, labelled in enumerate(self.keypoint_slots):
            cls = dataset_to_contiguous.get(int(self.categories[j]))
            if cls is None:
                continue
            if len(labelled) == 0 or not set(labelled.tolist()) <= blocks[cls]:
                pairs.add((int(self.image_ids[j]), cls))
        return pairs
