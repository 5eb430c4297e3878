"""First parse of a COCO-style keypoint json into the columns of :class:`CompactAnnotations`.

One streaming pass (:func:`kgdet.data.json_stream.iter_top_level`) checks every record with
the per-record functions of :mod:`kgdet.data.validation` (same errors, same fills) and appends
its fields to typed ``array.array`` buffers; keypoints are reduced to the garment's class block
while parsing. Checks that need the whole file (duplicate ids, ``image_id`` / ``category_id``
references, which may come before the records they name) run on the finished columns.
"""

import array
import logging
import numpy as np
from typing import Any, Dict, List, Sequence, Tuple

from .json_stream import iter_top_level
from .validation import (
    AnnotationCheck,
    AnnotationSchema,
    _check_categories,
    _is_int,
    _Problems,
    _short,
    check_annotation_record,
    check_image_record,
    report_duplicate_image_ids,
)

__all__ = ["build_compact_columns"]

logger = logging.getLogger(__name__)


class _Blocks:
    """Class block extraction from a flat list of 3 x K keypoint values."""

    def __init__(self, class_keypoint_slots: Sequence[Sequence[int]], num_keypoints: int):
        self.num_keypoints = num_keypoints
        self.ranges: List[Tuple[int, int]] = []
        self.slots = [np.asarray(s, dtype=np.int64) for s in class_keypoint_slots]
        self.contiguous = []
        for s in self.slots:
            start = int(s[0]) if len(s) else 0
            self.ranges.append((start, start + len(s)))
            self.contiguous.append(bool(np.array_equal(s, np.arange(start, start + len(s)))))
        self.outside_masks = []
        for s in self.slots:
            mask = np.ones(num_keypoints, dtype=bool)
            mask[s] = False
            self.outside_masks.append(mask)

    def split(self, kps: List[Any], c: int) -> Tuple[List[Any], List[int]]:
        """(class block values, labelled slots outside the block)."""
        if self.contiguous[c]:
            start, end = self.ranges[c]
            block = kps[3 * start : 3 * end]
            outside_vis = kps[2 : 3 * start : 3] + kps[3 * end + 2 :: 3]
            outside: List[int] = []
            if outside_vis and max(outside_vis) > 0:
                vis = np.asarray(kps[2::3], dtype=np.float64)
                outside = np.flatnonzero((vis > 0) & self.outside_masks[c]).tolist()
        else:
            values = np.asarray(kps, dtype=np.float64).reshape(-1, 3)
            block = values[self.slots[c]].reshape(-1).tolist()
            outside = np.flatnonzero((values[:, 2] > 0) & self.outside_masks[c]).tolist()
        return block, outside


def build_compact_columns(
    json_file: str,
    schema: AnnotationSchema,
    class_keypoint_slots: Sequence[Sequence[int]],
) -> Tuple[Dict[str, np.ndarray], Dict[int, List[int]], Dict[str, Any]]:
    """Parse and check ``json_file``; returns (columns, outside-block slots per annotation id,
    info) for :class:`kgdet.data.compact.CompactAnnotations`. The fills and notes are logged
    as :meth:`AnnotationCheck.log` does.

    Raises:
        AnnotationFileError: the json breaks the schema (names file, records and fields).
    """
    k = schema.num_keypoints
    blocks = _Blocks(class_keypoint_slots, k)
    num_classes = len(class_keypoint_slots)
    problems = _Problems(json_file)
    check = AnnotationCheck(json_file=json_file, schema=schema)

    image_ids = array.array("q")
    heights = array.array("i")
    widths = array.array("i")
    name_bytes = bytearray()
    name_offsets = array.array("q", [0])
    seen_top: Dict[str, bool] = {}

    ann_ids = array.array("q")
    json_index = array.array("q")  # position in the json's list, for messages
    ann_image_ids = array.array("q")
    category_ids = array.array("i")
    bboxes = array.array("d")
    bbox_is_integer = array.array("B")
    areas = array.array("d")
    iscrowd = array.array("B")
    json_num_keypoints = array.array("i")
    num_outside = array.array("i")
    block_lengths = array.array("q")
    keypoints = array.array("f")
    outside_slots: Dict[int, List[int]] = {}
    seen_ann_ids: Dict[Any, int] = {}
    categories: Any = None  # the json's list, collected item by item

    for key, index, item in iter_top_level(json_file):
        seen_top[key] = True
        if key == "images" and index is not None:
            iid = check_image_record(index, item, problems)
            if iid is None or not isinstance(item.get("file_name"), str):
                continue
            image_ids.append(iid)
            heights.append(item["height"] if _is_int(item.get("height")) else 0)
            widths.append(item["width"] if _is_int(item.get("width")) else 0)
            name_bytes += item["file_name"].encode("utf-8")
            name_offsets.append(len(name_bytes))
        elif key == "annotations" and index is not None:
            box_ok, kps_ok = check_annotation_record(
                index, item, problems, k, seen_ids=seen_ann_ids, check=check
            )
            if not isinstance(item, dict):
                continue
            if item.get("ignore", 0) != 0:
                problems.add("ignore", f"{_where(index, item)}: 'ignore' is not supported")
            cid, iid = item.get("category_id"), item.get("image_id")
            if not _is_int(iid):
                problems.add(
                    "image_id",
                    f"{_where(index, item)}, field 'image_id': got {_short(iid)}; expected the "
                    "id of a listed image",
                )
                continue
            if not _is_int(cid) or not 1 <= cid <= num_classes:
                problems.add(
                    "category_id",
                    f"{_where(index, item)}, field 'category_id': got {_short(cid)}; expected "
                    f"one of the official ids 1..{num_classes}",
                )
                continue
            if not (box_ok and kps_ok and _is_int(item.get("id"))) or problems.by_kind:
                continue  # the file is refused at the end; stop collecting
            block, outside = blocks.split(item["keypoints"], cid - 1)
            ann_ids.append(item["id"])
            json_index.append(index)
            ann_image_ids.append(iid)
            category_ids.append(cid)
            bboxes.extend(item["bbox"])
            bbox_is_integer.append(all(type(v) is int for v in item["bbox"]))
            areas.append(item["area"])
            iscrowd.append(item["iscrowd"])
            json_num_keypoints.append(item["num_keypoints"])
            num_outside.append(len(outside))
            block_lengths.append(len(block) // 3)
            keypoints.extend(block)
            if outside:
                outside_slots[item["id"]] = outside
        elif key == "categories":
            if index == 0:
                categories = []
            if index is None:
                categories = item
            elif isinstance(categories, list):
                categories.append(item)
        elif key in ("images", "annotations") and index is None and not isinstance(item, list):
            problems.add(key, f"got {_short(item)}; expected a list")
    if "images" not in seen_top:
        problems.add("images", "got null; expected a list of image records")
    listed = _check_categories({"categories": categories}, schema, problems)

    image_id_arr = np.frombuffer(image_ids, dtype=np.int64)
    _check_duplicate_images(image_id_arr, name_bytes, name_offsets, problems)
    ann_image_arr = np.frombuffer(ann_image_ids, dtype=np.int64)
    category_arr = np.frombuffer(category_ids, dtype=np.int32)
    ann_id_arr = np.frombuffer(ann_ids, dtype=np.int64)
    positions = np.frombuffer(json_index, dtype=np.int64)
    _check_references(positions, ann_id_arr, ann_image_arr, image_id_arr, "image_id", problems)
    listed_arr = np.asarray(listed, dtype=np.int64)
    _check_references(positions, ann_id_arr, category_arr, listed_arr, "category_id", problems)
    problems.raise_if_any()

    check.num_images = len(image_id_arr)
    check.num_annotations = len(ann_id_arr)
    check.listed_category_ids = tuple(listed)
    check.log()

    lengths = np.frombuffer(block_lengths, dtype=np.int64)
    kp_rows = np.frombuffer(keypoints, dtype=np.float32).reshape(-1, 3)
    outside_arr = np.frombuffer(num_outside, dtype=np.int32)
    labelled_rows = np.concatenate([[0], np.cumsum(kp_rows[:, 2] > 0)])
    ends = np.cumsum(lengths)
    in_block = labelled_rows[ends] - labelled_rows[ends - lengths]
    columns = _sorted_columns(
        image_id_arr,
        np.frombuffer(heights, dtype=np.int32),
        np.frombuffer(widths, dtype=np.int32),
        np.frombuffer(bytes(name_bytes), dtype=np.uint8),
        np.frombuffer(name_offsets, dtype=np.int64),
        {
            "annotation_ids": ann_id_arr,
            "category_ids": category_arr,
            "bboxes": np.frombuffer(bboxes, dtype=np.float64).reshape(-1, 4),
            "bbox_is_integer": np.frombuffer(bbox_is_integer, dtype=np.uint8),
            "areas": np.frombuffer(areas, dtype=np.float64),
            "iscrowd": np.frombuffer(iscrowd, dtype=np.uint8),
            "json_num_keypoints": np.frombuffer(json_num_keypoints, dtype=np.int32),
            "num_labelled": (in_block + outside_arr).astype(np.int32),
            "num_labelled_outside": outside_arr,
        },
        ann_image_arr,
        lengths,
        kp_rows,
    )
    info = {
        "filled": dict(check.filled),
        "without_valid_polygon": check.without_valid_polygon,
        "listed_category_ids": list(listed),
        "messages": check.messages(),
    }
    return columns, outside_slots, info


def _where(index: int, ann: Dict[str, Any]) -> str:
    return f"annotation {index} (id {_short(ann.get('id'))})"


def _check_duplicate_images(
    image_ids: np.ndarray, name_bytes: bytearray, name_offsets: array.array, problems: _Problems
) -> None:
    uniq, counts = np.unique(image_ids, return_counts=True)
    clashing = set(uniq[counts > 1].tolist())
    if not clashing:
        return
    files: Dict[int, List[str]] = {}
    for row in np.flatnonzero(np.isin(image_ids, list(clashing))).tolist():
        name = bytes(name_bytes[name_offsets[row] : name_offsets[row + 1]]).decode("utf-8")
        files.setdefault(int(image_ids[row]), []).append(name)
    report_duplicate_image_ids(files, problems)


def _check_references(
    positions: np.ndarray,
    ann_ids: np.ndarray,
    values: np.ndarray,
    listed: np.ndarray,
    field: str,
    problems: _Problems,
) -> None:
    bad = np.flatnonzero(~np.isin(values, listed))
    what = (
        "the id of a listed image"
        if field == "image_id"
        else (f"one of the listed categories {sorted(listed.tolist())}")
    )
    for a in bad[:50].tolist():
        problems.add(
            field,
            f"annotation {int(positions[a])} (id {int(ann_ids[a])}), field '{field}': got "
            f"{int(values[a])}; "
            f"expected {what}",
        )
    if len(bad) > 50:
        problems.add(field, f"{len(bad) - 50} more annotation(s) with an unlisted {field}")


def _sorted_columns(
    image_ids: np.ndarray,
    heights: np.ndarray,
    widths: np.ndarray,
    name_bytes: np.ndarray,
    name_offsets: np.ndarray,
    ann_columns: Dict[str, np.ndarray],
    ann_image_ids: np.ndarray,
    block_lengths: np.ndarray,
    keypoints: np.ndarray,
) -> Dict[str, np.ndarray]:
    """Images sorted by id, annotations grouped by image (stable: json order within)."""
    order = np.argsort(image_ids, kind="stable")
    sorted_ids = image_ids[order]
    if not np.array_equal(order, np.arange(len(order))):
        lengths = np.diff(name_offsets)[order]
        starts = name_offsets[:-1][order]
        new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        gather = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(int(new_offsets[-1]))
        name_bytes, name_offsets = name_bytes[gather], new_offsets
        heights, widths = heights[order], widths[order]
    image_index = np.searchsorted(sorted_ids, ann_image_ids).astype(np.int64)
    ann_order = np.argsort(image_index, kind="stable")
    kp_offsets = np.concatenate([[0], np.cumsum(block_lengths)]).astype(np.int64)
    if not np.array_equal(ann_order, np.arange(len(ann_order))):
        ann_columns = {k: v[ann_order] for k, v in ann_columns.items()}
        image_index = image_index[ann_order]
        lengths = block_lengths[ann_order]
        starts = kp_offsets[:-1][ann_order]
        kp_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        gather = np.repeat(starts - kp_offsets[:-1], lengths) + np.arange(int(kp_offsets[-1]))
        keypoints = keypoints[gather]
    per_image = np.bincount(image_index, minlength=len(sorted_ids))
    columns = {
        "image_ids": np.ascontiguousarray(sorted_ids),
        "image_heights": np.ascontiguousarray(heights),
        "image_widths": np.ascontiguousarray(widths),
        "file_name_offsets": np.ascontiguousarray(name_offsets),
        "file_name_bytes": np.ascontiguousarray(name_bytes),
        "image_annotation_offsets": np.concatenate([[0], np.cumsum(per_image)]).astype(np.int64),
        "annotation_image_index": image_index,
        "keypoint_offsets": kp_offsets,
        "keypoints": np.ascontiguousarray(keypoints),
    }
    columns.update({k: np.ascontiguousarray(v) for k, v in ann_columns.items()})
    return columns
