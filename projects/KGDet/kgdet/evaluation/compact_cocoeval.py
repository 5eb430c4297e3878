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
            ious[:, j] = np.exp(-e).sum(axis=1) / e.shape[1]
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
    cat_ids = p.catIds
    cat_pos = {c: i for i, c in enumerate(cat_ids)}
    num_cats, num_areas = len(cat_ids), len(p.areaRng)
    if task == "keypoints":
        gt_ignore = (gt.num_keypoints == 0) | (gt.iscrowd != 0)
    else:
        gt_ignore = gt.iscrowd != 0
    # Detections by (image, category, descending score), stable: pycocotools' order within a
    # (image, category); garments by (image, category) in json order.
    d_order = np.lexsort((-dets.scores.astype(np.float64), dets.classes, dets.image_ids))
    d_img, d_cat = dets.image_ids[d_order], dets.classes[d_order]
    g_order = np.lexsort((gt.categories, gt.image_ids))
    g_img, g_cat = gt.image_ids[g_order], gt.categories[g_order]
    span = int(max(dets.classes.max(initial=0), gt.categories.max(initial=0))) + 1
    d_key = d_img * span + d_cat
    g_key = g_img * span + g_cat
    pair_keys, pair_starts = np.unique(g_key, return_index=True)
    pair_ends = np.append(pair_starts[1:], len(g_key))
    pair_d_start = np.searchsorted(d_key, pair_keys, "left")
    pair_d_end = np.searchsorted(d_key, pair_keys, "right")
    img_ids = np.asarray(p.imgIds, dtype=np.int64)
    # evaluations[(c * num_areas + a) * num_images + i], filled chunk by chunk
    layout: List[List[list]] = [[] for _ in range(num_cats * num_areas)]
    for start in range(0, len(img_ids), images_per_chunk):
        chunk = img_ids[start : start + images_per_chunk]
        lo, hi = chunk[0], chunk[-1]
        gt_ds, dt_ds = _C.Dataset(), _C.Dataset()
        gs = slice(np.searchsorted(g_img, lo, "left"), np.searchsorted(g_img, hi, "right"))
        g_sel = g_order[gs]
        g_sel = g_sel[np.isin(gt.image_ids[g_sel], chunk)]
        for img, cat, ann_id, area, crowd, ignore in zip(
            gt.image_ids[g_sel].tolist(),
            gt.categories[g_sel].tolist(),
            gt.ann_ids[g_sel].tolist(),
            gt.areas[g_sel].tolist(),
            gt.iscrowd[g_sel].tolist(),
            gt_ignore[g_sel].tolist(),
        ):
            gt_ds.append_ref(
                img, cat, {"id": ann_id, "area": area, "iscrowd": crowd, "ignore": int(ignore)}
            )
        ds = slice(np.searchsorted(d_img, lo, "left"), np.searchsorted(d_img, hi, "right"))
        d_sel = d_order[ds]
        d_sel = d_sel[np.isin(dets.image_ids[d_sel], chunk)]
        for img, cat, det_id, score, area in zip(
            dets.image_ids[d_sel].tolist(),
            dets.classes[d_sel].tolist(),
            (d_sel + 1).tolist(),
            dets.scores[d_sel].tolist(),
            areas[d_sel].tolist(),
        ):
            dt_ds.append_ref(img, cat, {"id": det_id, "score": score, "area": area})
        ious = [[[] for _ in cat_ids] for _ in chunk]
        img_pos = {int(img): i for i, img in enumerate(chunk)}
        first = np.searchsorted(pair_keys, lo * span, "left")
        last = np.searchsorted(pair_keys, (hi + 1) * span, "left")
        for q in range(first, last):
            d0, d1 = pair_d_start[q], pair_d_end[q]
            key = int(pair_keys[q])
            img, cat = key // span, key % span
            if d1 == d0 or img not in img_pos or cat not in cat_pos:
                continue
            d = d_order[d0 : min(d1, d0 + max_det)]
            g = g_order[pair_starts[q] : pair_ends[q]]
            ious[img_pos[img]][cat_pos[cat]] = scorer(d, g, cat)
        chunk_ids = chunk.tolist()
        evals = _C.COCOevalEvaluateImages(
            p.areaRng, max_det, p.iouThrs, ious, gt_ds, dt_ds, chunk_ids, cat_ids, True
        )
        n = len(chunk_ids)
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
