"""Prediction records and their JSON Lines shards: writing with fsync, resuming, merging.

One line per image, in ``predictions.rank{r}-of-{w}.jsonl``::

    {"file_name": "shop/0001.jpg", "height": 320, "width": 240,
     "instances": [{"bbox": [x1, y1, x2, y2], "score": 0.91, "category_id": 0,
                    "category_name": "short_sleeve_top",
                    "keypoints": [{"slot": 0, "name": "...", "x": 120.5, "y": 60.25,
                                   "score": 0.91}, ...]}, ...]}

Boxes and keypoints are in pixels of the decoded image (EXIF orientation applied), Detectron2's
continuous coordinates (a pixel's centre at +0.5); ``category_id`` is the contiguous class
index; each garment carries only its own class's keypoint slots. Files that could not be
predicted go to ``failed.rank{r}-of-{w}.jsonl`` as ``{"file_name", "reason"}``.

Every write is a whole number of lines followed by ``fsync``; a process killed mid-write leaves
at most one torn last line, which :class:`ShardWriter` cuts off (and counts) before appending.
"""

import glob
import json
import logging
import os
import re
from typing import Dict, Iterable, List, Set, Tuple

__all__ = [
    "PREDICTION_SHARD",
    "FAILED_SHARD",
    "ShardWriter",
    "file_key",
    "instances_to_records",
    "read_done_files",
    "read_jsonl",
    "read_records",
    "shard_name",
]

logger = logging.getLogger(__name__)

PREDICTION_SHARD = "predictions"
FAILED_SHARD = "failed"
SHARD_PATTERN = re.compile(r"^(predictions|failed)\.rank\d+-of-\d+\.jsonl$")


def shard_name(kind: str, rank: int, world_size: int) -> str:
    """``"predictions.rank0-of-2.jsonl"`` for ``kind`` "predictions" (or "failed")."""
    return f"{kind}.rank{rank}-of-{world_size}.jsonl"


def file_key(file_name: str) -> str:
    """The identity of an input file across runs: its absolute, normalised path."""
    return os.path.normcase(os.path.abspath(file_name))


def instances_to_records(instances, metadata) -> List[dict]:
    """Detections of one image as JSON-ready dicts (see the module docstring).

    Args:
        instances: Detectron2 ``Instances`` on the CPU with ``pred_boxes``, ``scores``,
            ``pred_classes`` and optionally ``pred_keypoints`` (N, K, 3).
        metadata: the dataset metadata: ``thing_classes``, ``keypoint_names`` and
            ``class_keypoint_slots`` (the keypoint slots of each class); without the slots no
            keypoints are written.
    """
    names = metadata.get("thing_classes", None)
    kp_names = metadata.get("keypoint_names", None)
    class_slots = metadata.get("class_keypoint_slots", None)
    boxes = instances.pred_boxes.tensor.tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    kps = instances.pred_keypoints.numpy() if instances.has("pred_keypoints") else None
    out = []
    for i, (box, score, cls) in enumerate(zip(boxes, scores, classes)):
        item = {
            "bbox": [round(v, 2) for v in box],
            "score": round(float(score), 5),
            "category_id": int(cls),
            "category_name": names[cls] if names else str(cls),
        }
        if kps is not None and class_slots is not None:
            item["keypoints"] = [
                {
                    "slot": int(s),
                    "name": kp_names[s] if kp_names else str(s),
                    "x": round(float(kps[i, s, 0]), 2),
                    "y": round(float(kps[i, s, 1]), 2),
                    "score": round(float(kps[i, s, 2]), 5),
                }
                for s in class_slots[cls]
            ]
        out.append(item)
    return out


def read_jsonl(path: str) -> Tuple[List[dict], int]:
    """Records of a shard and the number of lines that are torn (no final newline) or not valid
    JSON objects; those are left out."""
    records, bad = [], 0
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        lines.pop()  # a torn last line: the write in flight when the process died
        bad += 1
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict) and "file_name" in record:
            records.append(record)
        else:
            bad += 1
    return records, bad


def _shards(output_dir: str, kind: str) -> List[str]:
    return sorted(glob.glob(os.path.join(glob.escape(output_dir), f"{kind}.rank*-of-*.jsonl")))


def read_done_files(output_dir: str) -> Tuple[Set[str], int]:
    """Keys (:func:`file_key`) of every file with a record in any shard of ``output_dir`` (a
    prediction or a failure, from runs with any number of processes), and the number of
    unusable lines met."""
    done, bad = set(), 0
    for kind in (PREDICTION_SHARD, FAILED_SHARD):
        for path in _shards(output_dir, kind):
            records, n = read_jsonl(path)
            bad += n
            done.update(file_key(r["file_name"]) for r in records)
    return done, bad


def read_records(output_dir: str, kind: str = PREDICTION_SHARD) -> List[dict]:
    """Merge the ``kind`` shards of ``output_dir`` ("predictions" or "failed"): one record per
    file (the first met), sorted by file name. Torn or invalid lines are skipped with a
    warning."""
    merged: Dict[str, dict] = {}
    bad = 0
    for path in _shards(output_dir, kind):
        records, n = read_jsonl(path)
        bad += n
        for r in records:
            merged.setdefault(file_key(r["file_name"]), r)
    if bad:
        logger.warning(f"{output_dir}: {bad} torn or invalid line(s) in the {kind} shards skipped")
    return sorted(merged.values(), key=lambda r: r["file_name"])


class ShardWriter:
    """Appends records to one JSON Lines shard; ``fsync`` after every :meth:`write`.

    Opening cuts off a torn last line left by a killed process (``torn`` is 1 then), so
    appended records always start on a line of their own.
    """

    def __init__(self, path: str):
        self.path = path
        self.torn = 0
        self._file = None

    def __enter__(self) -> "ShardWriter":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        if os.path.exists(self.path):
            with open(self.path, "rb+") as f:
                data = f.read()
                end = data.rfind(b"\n") + 1
                if end < len(data):
                    logger.warning(
                        f"{self.path}: cut off a torn last line ({len(data) - end} bytes) left by "
                        "an interrupted run"
                    )
                    f.truncate(end)
                    f.flush()
                    os.fsync(f.fileno())
                    self.torn = 1
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, records: Iterable[dict]) -> int:
        """Append ``records`` (one line each) and make them durable; returns how many."""
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
        if lines:
            self._file.write("".join(lines))
            self._file.flush()
            os.fsync(self._file.fileno())
        return len(lines)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def is_shard_name(name: str) -> bool:
    """True if ``name`` (a base name) is a prediction or failure shard's."""
    return bool(SHARD_PATTERN.match(name))
