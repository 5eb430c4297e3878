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

import copy
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
    if task == "keypoints":
        gt_ignore = (gt.num_keypoints == 0) | (gt.iscrowd != 0)
    else:
        gt_ignore = gt.iscrowd != 0
    evaluated = np.asarray(p.imgIds, dtype=np.int64)
    # Detections by (category, image, descending score), stable: pycocotools' order within a
    # (image, category); garments by (category, image) in json order.
    d_order = np.lexsort((-dets.scores.astype(np.float64), dets.image_ids, dets.classes))
    d_order = d_order[np.isin(dets.image_ids[d_order], evaluated)]
    g_order = np.lexsort((gt.image_ids, gt.categories))
    g_order = g_order[np.isin(gt.image_ids[g_order], evaluated)]
    d_cat, g_cat = dets.classes[d_order], gt.categories[g_order]
    num_t, num_r, num_a, num_m = len(p.iouThrs), len(p.recThrs), len(p.areaRng), len(p.maxDets)
    precision = -np.ones((num_t, num_r, len(p.catIds), num_a, num_m))
    recall = -np.ones((num_t, len(p.catIds), num_a, num_m))
    scores = -np.ones((num_t, num_r, len(p.catIds), num_a, num_m))
    for k, cat in enumerate(p.catIds):
        # One category at a time: its per-image results are accumulated, then freed.
        d = d_order[np.searchsorted(d_cat, cat, "left") : np.searchsorted(d_cat, cat, "right")]
        g = g_order[np.searchsorted(g_cat, cat, "left") : np.searchsorted(g_cat, cat, "right")]
        if not len(d) and not len(g):
            continue  # pycocotools skips images without either; all -1
        result = _evaluate_category(
            p, cat, d, g, dets, gt, areas, gt_ignore, scorer, images_per_chunk
        )
        precision[:, :, k] = result["precision"][:, :, 0]
        recall[:, k] = result["recall"][:, 0]
        scores[:, :, k] = result["scores"][:, :, 0]
    coco_eval = COCOeval_faster(
        iouType=task, kpt_oks_sigmas=kpt_oks_sigmas, print_function=logger.debug
    )
    coco_eval.params = p
    coco_eval.eval = {
        "params": p,
        "counts": [num_t, num_r, len(p.catIds), num_a, num_m],
        "precision": precision,
        "recall": recall,
        "scores": scores,
    }
    coco_eval.summarize()
    return coco_eval


def _evaluate_category(
    p: Params,
    cat: int,
    d: np.ndarray,
    g: np.ndarray,
    dets: CompactDetections,
    gt: CompactGroundTruth,
    areas: np.ndarray,
    gt_ignore: np.ndarray,
    scorer: _Scorer,
    images_per_chunk: int,
) -> dict:
    """faster-coco-eval's evaluate + accumulate of one category over the images where it has
    a detection or a garment (``d``, ``g``: indices sorted by image, ``d`` by descending score
    within an image)."""
    max_det = p.maxDets[-1]
    d_img, g_img = dets.image_ids[d], gt.image_ids[g]
    images = np.union1d(d_img, g_img)
    params = copy.copy(p)
    params.catIds = [cat]
    params.imgIds = images.tolist()
    num_areas = len(p.areaRng)
    layout: List[list] = [[] for _ in range(num_areas)]
    for start in range(0, len(images), images_per_chunk):
        chunk = images[start : start + images_per_chunk]
        lo, hi = chunk[0], chunk[-1]
        gt_ds, dt_ds = _C.Dataset(), _C.Dataset()
        gs = g[np.searchsorted(g_img, lo, "left") : np.searchsorted(g_img, hi, "right")]
        for img, ann_id, area, crowd, ignore in zip(
            gt.image_ids[gs].tolist(),
            gt.ann_ids[gs].tolist(),
            gt.areas[gs].tolist(),
            gt.iscrowd[gs].tolist(),
            gt_ignore[gs].tolist(),
        ):
            gt_ds.append_ref(
                img, cat, {"id": ann_id, "area": area, "iscrowd": crowd, "ignore": int(ignore)}
            )
        ds = d[np.searchsorted(d_img, lo, "left") : np.searchsorted(d_img, hi, "right")]
        for img, det_id, score, area in zip(
            dets.image_ids[ds].tolist(),
            (ds + 1).tolist(),
            dets.scores[ds].tolist(),
            areas[ds].tolist(),
        ):
            dt_ds.append_ref(img, cat, {"id": det_id, "score": score, "area": area})
        ious = []
        gs_img, ds_img = gt.image_ids[gs], dets.image_ids[ds]
        g_bounds = np.searchsorted(gs_img, chunk, "left"), np.searchsorted(gs_img, chunk, "right")
        d_bounds = np.searchsorted(ds_img, chunk, "left"), np.searchsorted(ds_img, chunk, "right")
        for i in range(len(chunk)):
            gi = gs[g_bounds[0][i] : g_bounds[1][i]]
            di = ds[d_bounds[0][i] : d_bounds[1][i]][:max_det]
            ious.append([scorer(di, gi, cat) if len(gi) and len(di) else []])
        chunk_ids = chunk.tolist()
        evals = _C.COCOevalEvaluateImages(
            p.areaRng, max_det, p.iouThrs, ious, gt_ds, dt_ds, chunk_ids, [cat], True
        )
        n = len(chunk_ids)
        for a in range(num_areas):
            layout[a].extend(evals[a * n : (a + 1) * n])
    return _C.COCOevalAccumulate(params, [e for per_area in layout for e in per_area])
