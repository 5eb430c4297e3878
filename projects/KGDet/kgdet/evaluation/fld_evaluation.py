"""``FLDEvaluator``: FLD landmark metrics NE and PDL as a Detectron2 ``DatasetEvaluator``.

Metric definitions: :mod:`kgdet.evaluation.fld_metrics` (docs/DESIGN.md §16.5). What counts:

- landmarks defined for the **ground-truth** clothing type (``class_keypoint_slots``) and
  FLD-visible (raw ``fld_visibility == 0``; ``visible_only=False`` also counts occluded ones,
  code 1). Truncated landmarks (code 2) never count. Datasets without ``fld_visibility`` fall
  back to COCO visibility (v == 2, resp. v > 0), which is the same set for converted FLD files.
- Two kinds of outputs are accepted per image:

  * detector outputs ``{"instances": Instances}`` with ``pred_boxes``, ``scores`` and
    ``pred_keypoints`` (N, K, 3). Primary protocol (docs/DESIGN.md §16.5): each detection is
    assigned to the ground-truth garment it overlaps most and every garment takes the
    highest-scoring detection assigned to it, class-agnostic — for FLD's one garment per image
    this is exactly "the top-1 detection of the image" (every detection is assigned to the one
    garment, whatever its IoU). With several garments per image (synthetic data) a detection
    that overlaps no garment is not assigned. Secondary protocol (keys ``iou50/...``): only
    detections with IoU >= 0.5 may be assigned. A garment without a detection is a miss: it is
    left out of NE and counts as "not detected" in PDL; ``miss_rate`` reports it.
  * aligned outputs ``{"aligned_keypoints": Tensor (G, K, 2)}``: one row per ground-truth
    annotation of the image, in dataset order (what DFA produces from the GT boxes),
    optionally with ``"aligned_keypoints_per_stage": [Tensor (G, K, 2), ...]`` which adds
    ``fld_s1``, ``fld_s2``, ... to the results.

Coordinates must be in the frame of the dataset dicts' keypoints (Detectron2's continuous frame
after ``load_coco_json``'s +0.5, which is also the frame of the model's ``pred_keypoints``).
"""

import copy
import itertools
import logging
import numpy as np
import os
from collections import OrderedDict
from typing import Dict, List, Optional
import torch

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_iou

from ..file_io import write_json_atomic
from .fld_metrics import PDL_THRESHOLDS, fld_metrics

__all__ = ["FLDEvaluator", "match_detections_to_garments"]

logger = logging.getLogger(__name__)


def match_detections_to_garments(
    det_boxes: torch.Tensor, scores: torch.Tensor, gt_boxes: torch.Tensor, min_iou: float = 0.0
) -> List[int]:
    """Pick one detection per ground-truth garment (docs/DESIGN.md §16.5, generalised to G >= 1).

    Every detection is assigned to the garment it overlaps most; with a single garment every
    detection is assigned to it. A garment takes the highest-scoring detection among those
    assigned to it whose IoU with it is >= ``min_iou``.

    Args:
        det_boxes: (N, 4) XYXY detections; scores: (N,); gt_boxes: (G, 4) XYXY.
        min_iou: 0 for the primary (top-1) protocol, 0.5 for the secondary one.

    Returns:
        G detection indices, -1 for a garment without detection (a miss).
    """
    num_gt = gt_boxes.shape[0]
    if det_boxes.shape[0] == 0 or num_gt == 0:
        return [-1] * num_gt
    iou = pairwise_iou(Boxes(gt_boxes.float()), Boxes(det_boxes.float()))  # (G, N)
    best_iou, best_gt = iou.max(dim=0)
    assignable = best_iou > 0 if num_gt > 1 else torch.ones_like(best_iou, dtype=torch.bool)
    chosen = []
    for g in range(num_gt):
        cand = assignable & (best_gt == g) & (iou[g] >= min_iou)
        if not cand.any():
            chosen.append(-1)
            continue
        masked = torch.where(cand, scores.float(), torch.full_like(scores.float(), -float("inf")))
        chosen.append(int(masked.argmax()))
    return chosen


class FLDEvaluator(DatasetEvaluator):
    """NE / PDL per landmark, clothing type and variation type on an FLD-format dataset.

    ``evaluate()`` returns ``{"fld": {...}}`` plus ``{"fld_s1": ..., "fld_s2": ...}`` when
    per-stage aligned outputs were given. Keys: ``NE``, ``NE6`` (the paper's six landmarks),
    ``NE/<landmark>``, ``PDL@5`` … ``PDL@40`` (percent, 224-px box frame), ``PDL@15/<landmark>``,
    ``NE_img`` and ``PDL_px@d`` (full-image variants), ``NE_long``, ``NE6_long``,
    ``PDL_long@d`` (normalised by the box's long side, the DFA paper's convention),
    ``type=<class>/{N,NE,PDL@15}``,
    ``variation=<name>/{N,NE,PDL@15}``, ``N``, ``N_landmarks``, ``miss_rate`` and, for detector
    outputs, ``iou50/{NE,NE6,PDL@d,miss_rate}``.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        visible_only: bool = True,
    ):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._visible_only = visible_only
        meta = MetadataCatalog.get(dataset_name)
        for key in ("thing_classes", "keypoint_names", "class_keypoint_slots"):
            if not hasattr(meta, key):
                raise ValueError(
                    f"FLDEvaluator: dataset '{dataset_name}' has no metadata '{key}' "
                    "(FLD-format datasets must set thing_classes, keypoint_names and "
                    "class_keypoint_slots)."
                )
        self._class_names = list(meta.thing_classes)
        self._keypoint_names = list(meta.keypoint_names)
        self._class_slots = [list(s) for s in meta.class_keypoint_slots]
        variation_names = meta.get("variation_types", None)
        self._variation_names = (
            {int(k): str(v) for k, v in variation_names.items()} if variation_names else None
        )
        if len(self._class_slots) != len(self._class_names):
            raise ValueError(
                f"FLDEvaluator: dataset '{dataset_name}': class_keypoint_slots has "
                f"{len(self._class_slots)} entries, expected one per class "
                f"({len(self._class_names)})."
            )
        self._gt = self._index_ground_truth(DatasetCatalog.get(dataset_name))
        self.reset()

    # ---------------------------------------------------------------- ground truth
    def _index_ground_truth(self, dataset_dicts: List[dict]) -> Dict[object, dict]:
        """image_id -> arrays of the image's non-crowd garments (in dataset order)."""
        num_kp = len(self._keypoint_names)
        num_classes = len(self._class_names)
        index: Dict[object, dict] = {}
        fallback_images = 0
        for record in dataset_dicts:
            image_id = record["image_id"]
            annos = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
            gt, counted, classes, variations, boxes = [], [], [], [], []
            for anno in annos:
                where = f"dataset '{self._dataset_name}', image_id {image_id}"
                cls = int(anno["category_id"])
                if not 0 <= cls < num_classes:
                    raise ValueError(
                        f"FLDEvaluator: {where}: unknown clothing type category_id={cls}; "
                        f"expected a contiguous id in [0, {num_classes - 1}] "
                        f"({self._class_names})."
                    )
                kps = np.asarray(anno.get("keypoints", []), dtype=np.float64)
                if kps.size != 3 * num_kp:
                    raise ValueError(
                        f"FLDEvaluator: {where}: 'keypoints' has {kps.size} values, "
                        f"expected {3 * num_kp} (3 x {num_kp})."
                    )
                kps = kps.reshape(num_kp, 3)
                box = BoxMode.convert(list(anno["bbox"]), anno["bbox_mode"], BoxMode.XYXY_ABS)
                if box[2] <= box[0] or box[3] <= box[1]:
                    raise ValueError(
                        f"FLDEvaluator: {where}: 'bbox' {anno['bbox']} has non-positive size; "
                        "NE is normalised by the box size."
                    )
                defined = np.zeros(num_kp, dtype=bool)
                defined[self._class_slots[cls]] = True
                if "fld_visibility" in anno:
                    vis = np.asarray(anno["fld_visibility"], dtype=np.int64)
                    if vis.size != num_kp:
                        raise ValueError(
                            f"FLDEvaluator: {where}: 'fld_visibility' has {vis.size} values, "
                            f"expected {num_kp}."
                        )
                    ok = vis == 0 if self._visible_only else (vis == 0) | (vis == 1)
                else:
                    fallback_images += 1
                    ok = kps[:, 2] == 2 if self._visible_only else kps[:, 2] > 0
                gt.append(kps[:, :2])
                counted.append(defined & ok)
                classes.append(cls)
                variations.append(int(anno.get("variation_type", record.get("variation_type", -1))))
                boxes.append(box)
            index[image_id] = {
                "gt": np.asarray(gt, dtype=np.float64).reshape(-1, num_kp, 2),
                "counted": np.asarray(counted, dtype=bool).reshape(-1, num_kp),
                "classes": np.asarray(classes, dtype=np.int64),
                "variations": np.asarray(variations, dtype=np.int64),
                "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                "image_wh": (float(record["width"]), float(record["height"])),
            }
        if fallback_images:
            logger.info(
                f"FLDEvaluator: {fallback_images} annotations of '{self._dataset_name}' have no "
                "'fld_visibility'; using COCO visibility (v == 2 visible, v == 1 occluded)."
            )
        return index

    # ---------------------------------------------------------------- accumulation
    def reset(self):
        self._records: List[dict] = []

    def _check_points(self, points: torch.Tensor, image_id, num_gt: int, field: str) -> np.ndarray:
        num_kp = len(self._keypoint_names)
        if points.dim() != 3 or tuple(points.shape[1:]) != (num_kp, 2) or points.shape[0] != num_gt:
            raise ValueError(
                f"FLDEvaluator: image_id {image_id}: '{field}' has shape {tuple(points.shape)}, "
                f"expected ({num_gt}, {num_kp}, 2) (one row per ground-truth garment)."
            )
        return points.detach().to("cpu", torch.float64).numpy()

    def process(self, inputs, outputs):
        num_kp = len(self._keypoint_names)
        for inp, out in zip(inputs, outputs):
            image_id = inp["image_id"]
            if image_id not in self._gt:
                raise ValueError(
                    f"FLDEvaluator: image_id {image_id} is not in dataset '{self._dataset_name}'."
                )
            gt = self._gt[image_id]
            num_gt = gt["gt"].shape[0]
            record = {"image_id": image_id}
            if "aligned_keypoints" in out:
                record["kind"] = "aligned"
                record["pred"] = self._check_points(
                    out["aligned_keypoints"], image_id, num_gt, "aligned_keypoints"
                )
                stages = out.get("aligned_keypoints_per_stage") or []
                record["stages"] = [
                    self._check_points(p, image_id, num_gt, f"aligned_keypoints_per_stage[{i}]")
                    for i, p in enumerate(stages)
                ]
            elif "instances" in out:
                inst = out["instances"].to("cpu")
                if not inst.has("pred_keypoints"):
                    raise ValueError(
                        f"FLDEvaluator: image_id {image_id}: instances have no 'pred_keypoints'."
                    )
                kps = inst.pred_keypoints
                if kps.dim() != 3 or kps.shape[1] != num_kp or kps.shape[2] < 2:
                    raise ValueError(
                        f"FLDEvaluator: image_id {image_id}: pred_keypoints has shape "
                        f"{tuple(kps.shape)}, expected (N, {num_kp}, 3)."
                    )
                record["kind"] = "detector"
                boxes = inst.pred_boxes.tensor
                gt_boxes = torch.as_tensor(gt["boxes"])
                for key, min_iou in (("pred", 0.0), ("pred_iou50", 0.5)):
                    chosen = match_detections_to_garments(boxes, inst.scores, gt_boxes, min_iou)
                    pred = np.full((num_gt, num_kp, 2), np.nan)
                    for g, idx in enumerate(chosen):
                        if idx >= 0:
                            pred[g] = kps[idx, :, :2].to(torch.float64).numpy()
                    record[key] = pred
            else:
                raise ValueError(
                    f"FLDEvaluator: output for image_id {image_id} has neither 'instances' nor "
                    f"'aligned_keypoints' (keys: {sorted(out.keys())})."
                )
            self._records.append(record)

    # ---------------------------------------------------------------- evaluation
    def _metrics(self, records: List[dict], field: str) -> Dict[str, float]:
        gts = [self._gt[r["image_id"]] for r in records]
        if field.startswith("stage:"):
            stage = int(field.split(":")[1])
            preds = [r["stages"][stage] for r in records]
        else:
            preds = [r[field] for r in records]
        num_kp = len(self._keypoint_names)
        boxes = np.concatenate([g["boxes"] for g in gts]).reshape(-1, 4)
        image_wh = np.concatenate(
            [np.tile(np.asarray(g["image_wh"]), (g["boxes"].shape[0], 1)) for g in gts]
        ).reshape(-1, 2)
        variations = np.concatenate([g["variations"] for g in gts])
        return fld_metrics(
            pred=np.concatenate(preds).reshape(-1, num_kp, 2),
            gt=np.concatenate([g["gt"] for g in gts]).reshape(-1, num_kp, 2),
            counted=np.concatenate([g["counted"] for g in gts]).reshape(-1, num_kp),
            classes=np.concatenate([g["classes"] for g in gts]),
            box_wh=boxes[:, 2:] - boxes[:, :2],
            image_wh=image_wh,
            class_slots=self._class_slots,
            class_names=self._class_names,
            keypoint_names=self._keypoint_names,
            variations=None if (variations < 0).any() else variations,
            variation_names=self._variation_names,
        )

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            records = list(itertools.chain(*comm.gather(self._records, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            records = self._records
        if not records:
            logger.warning(
                f"[FLDEvaluator] Did not receive predictions for '{self._dataset_name}'."
            )
            return {}
        kinds = {r["kind"] for r in records}
        if len(kinds) != 1:
            raise ValueError(
                "FLDEvaluator: mixed detector and aligned outputs in one evaluation; "
                "evaluate them separately."
            )
        kind = kinds.pop()
        n_images = len({r["image_id"] for r in records})
        if n_images < len(self._gt):
            logger.warning(
                f"[FLDEvaluator] {len(self._gt) - n_images} of {len(self._gt)} images of "
                f"'{self._dataset_name}' received no output; they are not evaluated."
            )

        results = OrderedDict()
        fld = self._metrics(records, "pred")
        if kind == "detector":
            secondary = self._metrics(records, "pred_iou50")
            for key in ["NE", "NE6", "miss_rate"] + [f"PDL@{d}" for d in PDL_THRESHOLDS]:
                if key in secondary:
                    fld[f"iou50/{key}"] = secondary[key]
        results["fld"] = fld
        num_stages = {len(r.get("stages", [])) for r in records}
        if kind == "aligned" and len(num_stages) == 1 and num_stages != {0}:
            for s in range(num_stages.pop()):
                results[f"fld_s{s + 1}"] = self._metrics(records, f"stage:{s}")

        variant = "visible" if self._visible_only else "visible + occluded"
        logger.info(
            f"FLD results on '{self._dataset_name}' ({kind} outputs, {variant} landmarks, "
            f"box-normalised): NE {fld['NE']:.4f} (per axis) / {fld['NE_long']:.4f} (long side), "
            f"PDL@15 {fld['PDL@15']:.2f}%, "
            f"miss rate {fld['miss_rate']:.2f}%"
        )
        if self._output_dir:
            write_json_atomic(
                os.path.join(self._output_dir, "fld_metrics.json"),
                {"visible_only": self._visible_only, "kind": kind, **copy.deepcopy(results)},
            )
        return copy.deepcopy(results)
