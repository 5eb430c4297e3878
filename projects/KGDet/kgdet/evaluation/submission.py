"""DeepFashion2 submission files in the official result format (docs/DESIGN.md §15.3).

Two JSON lists, one record per detection:

- detection: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``;
- landmarks: ``{"image_id", "category_id", "keypoints": [x1, y1, v1, ..., xK, yK, vK], "score"}``
  with all K (294) triplets, ``v = 1`` as DeepFashion2 recommends, and **no** ``bbox`` key (so
  the official evaluator derives the detection area from the keypoints, as for an official
  submission and the official KGDet writer).

Coordinates are 0-indexed floats (Detectron2's export already subtracted its +0.5 from the
keypoints); ``category_id`` is the dataset's (1..13 for DeepFashion2); ``image_id`` is the
dataset's image id (for DeepFashion2 the integer of the 6-digit file name).
"""

import logging
import os
from typing import Dict, List, Sequence

from .result_files import write_json_lists

__all__ = ["SUBMISSION_FILES", "to_submission_records", "write_deepfashion2_submission"]

logger = logging.getLogger(__name__)

SUBMISSION_FILES = {
    "bbox": "deepfashion2_bbox_results.json",
    "keypoints": "deepfashion2_keypoints_results.json",
}


def to_submission_records(coco_results: Sequence[dict]) -> Dict[str, List[dict]]:
    """Split Detectron2 COCO-format results (dataset category ids) into the two official lists."""
    bbox_records, keypoint_records = [], []
    for r in coco_results:
        common = {
            "image_id": r["image_id"],
            "category_id": int(r["category_id"]),
            "score": float(r["score"]),
        }
        bbox_records.append({**common, "bbox": [float(v) for v in r["bbox"]]})
        if "keypoints" in r:
            kps = [float(v) for v in r["keypoints"]]
            kps[2::3] = [1.0] * (len(kps) // 3)
            keypoint_records.append({**common, "keypoints": kps})
    return {"bbox": bbox_records, "keypoints": keypoint_records}


def write_deepfashion2_submission(coco_results: Sequence[dict], output_dir: str) -> Dict[str, str]:
    """Write the official bbox and keypoint result files into ``output_dir`` atomically.

    (The evaluator writes the same files record by record from its compact results.)

    Returns:
        task -> written path (the keypoint file only when the results carry keypoints).
    """
    records = to_submission_records(coco_results)
    paths = {}
    for task, items in records.items():
        if task == "keypoints" and not items and coco_results:
            continue
        paths[task] = os.path.join(output_dir, SUBMISSION_FILES[task])
    counts = write_json_lists(paths, [records])
    for task, path in paths.items():
        logger.info(f"Wrote {counts[task]} DeepFashion2 {task} results to {path}")
    return paths
