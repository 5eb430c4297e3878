"""COCO results and the official DeepFashion2 submission files from merged prediction records.

Records are those of :mod:`kgdet.predict.records` (continuous pixel coordinates, contiguous
class index, each garment's own keypoint slots). The COCO results follow Detectron2's
``instances_to_coco_json``: boxes XYWH, keypoints as all K ``[x, y, score]`` triplets with 0.5
subtracted (0 for the slots outside the garment's class), category ids mapped back through
``thing_dataset_id_to_contiguous_id`` when the metadata has it.
"""

import os
from typing import Dict, List, Sequence, Tuple

from ..evaluation.submission import write_deepfashion2_submission
from ..file_io import write_json_atomic

__all__ = ["COCO_RESULTS_FILE", "IMAGE_IDS_FILE", "image_ids", "to_coco_results", "write_formats"]

COCO_RESULTS_FILE = "coco_results.json"
IMAGE_IDS_FILE = "image_ids.json"
FORMATS = ("jsonl", "coco", "deepfashion2")


def image_ids(records: Sequence[dict]) -> List[int]:
    """One id per record: the integer of the file's stem when every stem is a number (as
    DeepFashion2's ``000001.jpg``), else the 1-based position in ``records``."""
    stems = [os.path.splitext(os.path.basename(r["file_name"]))[0] for r in records]
    if stems and all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(records) + 1))


def to_coco_results(records: Sequence[dict], metadata) -> Tuple[List[dict], List[dict]]:
    """(COCO results, image id table ``[{"id", "file_name"}]``) of prediction records.

    Args:
        records: merged records (:func:`kgdet.predict.records.read_records`).
        metadata: dataset metadata (``keypoint_names`` gives K; optional
            ``thing_dataset_id_to_contiguous_id``).
    """
    num_keypoints = len(metadata.get("keypoint_names", []) or [])
    to_dataset = metadata.get("thing_dataset_id_to_contiguous_id", None)
    reverse = {v: k for k, v in to_dataset.items()} if to_dataset else None
    ids = image_ids(records)
    results = []
    for image_id, record in zip(ids, records):
        for inst in record["instances"]:
            x1, y1, x2, y2 = inst["bbox"]
            cls = inst["category_id"]
            result = {
                "image_id": image_id,
                "category_id": reverse[cls] if reverse else cls,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": inst["score"],
            }
            if "keypoints" in inst and num_keypoints:
                flat = [0.0] * (3 * num_keypoints)
                for k in inst["keypoints"]:
                    s = k["slot"]
                    flat[3 * s : 3 * s + 3] = [k["x"] - 0.5, k["y"] - 0.5, k["score"]]
                result["keypoints"] = flat
            results.append(result)
    table = [{"id": i, "file_name": r["file_name"]} for i, r in zip(ids, records)]
    return results, table


def write_formats(
    records: Sequence[dict], metadata, output_dir: str, formats: Sequence[str]
) -> Dict[str, str]:
    """Write the requested extra formats ("coco", "deepfashion2") atomically into
    ``output_dir``, with ``image_ids.json`` (id -> file name). Returns name -> path."""
    extra = [f for f in formats if f != "jsonl"]
    if not extra:
        return {}
    results, table = to_coco_results(records, metadata)
    paths = {"image_ids": os.path.join(output_dir, IMAGE_IDS_FILE)}
    write_json_atomic(paths["image_ids"], table)
    if "coco" in extra:
        paths["coco"] = os.path.join(output_dir, COCO_RESULTS_FILE)
        write_json_atomic(paths["coco"], results)
    if "deepfashion2" in extra:
        for task, path in write_deepfashion2_submission(results, output_dir).items():
            paths[f"deepfashion2_{task}"] = path
    return paths
