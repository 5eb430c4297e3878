"""COCO box / keypoint AP of :class:`CompactDetections` with faster-coco-eval's C++ COCOeval.

The result equals stock pycocotools ``COCOeval`` on the same detections written as Detectron2
COCO results (``loadRes``): same images (every image of the ground truth), categories
(``useCats``), per (image, category) the top ``maxDets[-1]`` detections by score (stable order),
IoU / OKS formulas and area definitions. What changes is the input: IoU and OKS are computed
here from the compact arrays (keypoint OKS over each garment's labelled slots only, which lie in
its class block, except for garments handled with the detections' full keypoints, see
:mod:`kgdet.evaluation.compact_results`), and the images are evaluated in chunks whose
per-image results are concatenated before faster-coco-eval's C++ ``accumulate``, so memory
stays bounded by a chunk.
"""

import logging
import numpy as np
from typing import Dict, List, Optional, Sequence

import faster_coco_eval.faster_eval_api_cpp as _C
from faster_coco_eval.core import mask as mask_utils
from faster_coco_eval.core.cocoeval import Params
from faster_coco_eval.core.faster_eval_api import COCOeval_faster

from .compact_results import CompactDetections, CompactGroundTruth

__all__ = ["evaluate_compact"]

logger = logging.getLogger(__name__)

_EPS = np.spacing(1)


def _group(keys: np.ndarray) -> Dict[int, np.ndarray]:
    """key -> indices (ascending) of the entries with that key."""
    order = np.argsort(keys, kind="stable")
    uniq, starts = np.unique(keys[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    return {int(k): order[s:e] for k, s, e in zip(uniq, starts, ends)}


class _Scorer:
    """IoU / OKS of one (image, category): detections (sorted, cut) x garments (json order)."""

    def __init__(
        self,
        task: str,
        gt: CompactGroundTruth,
        dets: CompactDetections,
        sigmas: Optional[np.ndarray],
        class_slots: Optional[Sequence[Sequence[int]]],
        dataset_to_contiguous: Dict[int, int],
    ):
        self.task, self.gt, self.dets = task, gt, dets
        if task == "keypoints":
            self.vars = (np.asarray(sigmas, dtype=np.float64) * 2) ** 2
            k = len(self.vars)
            # Per contiguous class: position of each global slot within the class block.
            self.position = []
            for slots in class_slots if class_slots is not None else []:
                pos = np.full(k, -1, dtype=np.int64)
                pos[np.asarray(slots, dtype=np.int64)] = np.arange(len(slots))
                self.position.append(pos)
            self.all_slots = class_slots is None
            self.to_contiguous = dataset_to_contiguous

    def __call__(self, dt: np.ndarray, g: np.ndarray, category: int) -> np.ndarray:
        if self.task == "bbox":
            d_boxes = self.dets.boxes[dt].astype(np.float64)
            return np.asarray(
                mask_utils.iou(d_boxes, self.gt.bboxes[g], self.gt.iscrowd[g].tolist())
            ).reshape(len(dt), len(g))
        return self._oks(dt, g, category)

    def _oks(self, dt: np.ndarray, g: np.ndarray, category: int) -> np.ndarray:
        dets, gt = self.dets, self.gt
        offsets = dets.block_offsets
        size = int(offsets[dt[0] + 1] - offsets[dt[0]])
        rows = offsets[dt][:, None] + np.arange(size)[None, :]
        block = dets.block_xy[rows].astype(np.float64)  # (D, B, 2)
        full = None
        ious = np.zeros((len(dt), len(g)))
        for j, gi in enumerate(g):
            slots = gt.keypoint_slots[gi]
            k1 = len(slots)
            if self.all_slots:
                pos = slots
            else:
                pos = self.position[self.to_contiguous[category]][slots]
            if k1 > 0 and (pos >= 0).all():
                xd, yd = block[:, pos, 0], block[:, pos, 1]
            else:
                if full is None:
                    if self.all_slots:
                        full = block
                    else:
                        index = dets.full_index[dt]
                        if (index < 0).any():
                            raise RuntimeError(
                                "Internal error: a detection compared with a garment on slots "
                                "outside its class block has no full keypoints."
                            )
                        full = dets.full_xy[index].astype(np.float64)
                if k1 > 0:
                    xd, yd = full[:, slots, 0], full[:, slots, 1]
            var = self.vars[slots] if k1 > 0 else self.vars
            if k1 > 0:
                dx = xd - gt.keypoint_xy[gi][:, 0]
                dy = yd - gt.keypoint_xy[gi][:, 1]
            else:  # no labelled landmark: distance to the garment's box enlarged 3x
                bx, by, bw, bh = gt.bboxes[gi]
                x0, x1, y0, y1 = bx - bw, bx + bw * 2, by - bh, by + bh * 2
                xd, yd = full[:, :, 0], full[:, :, 1]
                dx = np.maximum(0, x0 - xd) + np.maximum(0, xd - x1)
                dy = np.maximum(0, y0 - yd) + np.maximum(0, yd - y1)
            e = (dx**2 + dy**2) / var / (gt.areas[gi] + _EPS) / 2
            ious[:, j] = [np.sum(row) / row.shape[0] for row in np.exp(-e)]
        return ious


def _detection_areas(dets: CompactDetections, task: str, keypoint_area: bool) -> np.ndarray:
    """pycocotools' ``loadRes`` areas: box w*h, or the keypoint extent for keypoint results
    without a box (the official submission format)."""
    if task == "keypoints" and keypoint_area:
        ext = dets.extent.astype(np.float64)
        return (ext[:, 2] - ext[:, 0]) * (ext[:, 3] - ext[:, 1])
    boxes = dets.boxes.astype(np.float64)
    return boxes[:, 2] * boxes[:, 3]


def evaluate_compact(
    gt: CompactGroundTruth,
    dets: CompactDetections,
    task: str,
    *,
    dataset_to_contiguous: Dict[int, int],
    kpt_oks_sigmas: Optional[Sequence[float]] = None,
    class_slots: Optional[Sequence[Sequence[int]]] = None,
    max_dets_per_image: Optional[Sequence[int]] = None,
    keypoint_area: bool = True,
    img_ids: Optional[Sequence[int]] = None,
    images_per_chunk: int = 1000,
) -> COCOeval_faster:
    """Evaluate ``dets`` (category ids already the dataset's) on ``gt`` for ``task``.

    Args:
        task: "bbox" (maxDets 1/10/100, or ``max_dets_per_image``) or "keypoints" (maxDets 20,
            ``kpt_oks_sigmas``: K floats).
        dataset_to_contiguous: dataset category id -> contiguous class (the index into
            ``class_slots``).
        keypoint_area: keypoint detections take their area from the extent of all K keypoints
            (official results, no ``bbox``); False: from the box (Detectron2's results).
        img_ids: the images to evaluate (default: every image of ``gt``).

    Returns:
        A ``COCOeval_faster`` with ``params``, ``eval`` (``precision`` [T, R, K, A, M], ...) and
        ``stats`` filled, as after ``evaluate(); accumulate(); summarize()``.

    Raises:
        ValueError: a detection's image is not in the ground truth (pycocotools' ``loadRes``
            refuses such results too).
    """
    p = Params(iouType=task, kpt_sigmas=kpt_oks_sigmas)
    if task == "bbox":
        if max_dets_per_image is not None:
            p.maxDets = [1, 10, int(max_dets_per_image[-1])]
    p.imgIds = sorted(set(int(i) for i in (gt.image_ids_all if img_ids is None else img_ids)))
    p.catIds = [int(c) for c in gt.category_ids]
    p.useCats = 1
    unknown = np.setdiff1d(dets.image_ids, gt.image_ids_all)
    if len(unknown):
        raise ValueError(
            f"{len(unknown)} image ids of the detections are not in the ground truth "
            f"(e.g. {unknown[:5].tolist()}); results must come from the evaluated dataset."
        )
    scorer = _Scorer(task, gt, dets, kpt_oks_sigmas, class_slots, dataset_to_contiguous)
    areas = _detection_areas(dets, task, keypoint_area)
    max_det = p.maxDets[-1]
    dets_of_image = _group(dets.image_ids)
    gts_of_image = _group(gt.image_ids)
    cat_ids = p.catIds
    num_cats, num_areas = len(cat_ids), len(p.areaRng)
    if task == "keypoints":
        gt_ignore = (gt.num_keypoints == 0) | (gt.iscrowd != 0)
    else:
        gt_ignore = gt.iscrowd != 0
    empty = np.zeros(0, dtype=np.int64)
    # evaluations[(c * num_areas + a) * num_images + i], filled chunk by chunk
    layout: List[List[list]] = [[] for _ in range(num_cats * num_areas)]
    for start in range(0, len(p.imgIds), images_per_chunk):
        chunk = p.imgIds[start : start + images_per_chunk]
        gt_ds, dt_ds = _C.Dataset(), _C.Dataset()
        ious = []
        for img in chunk:
            g_all = gts_of_image.get(img, empty)
            d_all = dets_of_image.get(img, empty)
            for cat, ann_id, area, crowd, ignore in zip(
                gt.categories[g_all].tolist(),
                gt.ann_ids[g_all].tolist(),
                gt.areas[g_all].tolist(),
                gt.iscrowd[g_all].tolist(),
                gt_ignore[g_all].tolist(),
            ):
                gt_ds.append_ref(
                    img, cat, {"id": ann_id, "area": area, "iscrowd": crowd, "ignore": int(ignore)}
                )
            d_cats = None
            if len(d_all):
                d_cats = dets.classes[d_all]
                for cat, det_id, score, area in zip(
                    d_cats.tolist(),
                    (d_all + 1).tolist(),
                    dets.scores[d_all].tolist(),
                    areas[d_all].tolist(),
                ):
                    dt_ds.append_ref(img, cat, {"id": det_id, "score": score, "area": area})
            row = []
            for cat in cat_ids:
                if not len(g_all) or not len(d_all):
                    row.append([])
                    continue
                g = g_all[gt.categories[g_all] == cat]
                d = d_all[d_cats == cat]
                if not len(g) or not len(d):
                    row.append([])
                    continue
                order = np.argsort(-dets.scores[d].astype(np.float64), kind="mergesort")
                d = d[order][:max_det]
                row.append(scorer(d, g, cat))
            ious.append(row)
        evals = _C.COCOevalEvaluateImages(
            p.areaRng, max_det, p.iouThrs, ious, gt_ds, dt_ds, chunk, cat_ids, True
        )
        n = len(chunk)
        for ca in range(num_cats * num_areas):
            layout[ca].extend(evals[ca * n : (ca + 1) * n])
    evaluations = [e for per_ca in layout for e in per_ca]
    coco_eval = COCOeval_faster(
        iouType=task, kpt_oks_sigmas=kpt_oks_sigmas, print_function=logger.debug
    )
    coco_eval.params = p
    coco_eval.eval = _C.COCOevalAccumulate(p, evaluations)
    coco_eval.summarize()
    return coco_eval
