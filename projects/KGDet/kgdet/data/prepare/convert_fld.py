"""FLD (DeepFashion Fashion Landmark Detection) lists -> COCO-style json (docs/DESIGN.md §16.4).

Inputs under ``root`` (the layout of the release): ``Anno/list_bbox.txt``,
``Anno/list_landmarks.txt``, ``Eval/list_eval_partition.txt`` and the images at the relative
paths the lists name (``img/img_00000001.jpg``). Each list: line 1 = number of records,
line 2 = column names, then one whitespace-separated record per image.

Output per image of the split: an image record (``id`` = the number in the file name,
``file_name`` as listed, ``width``/``height`` from the image, ``variation_type``) and one
annotation: ``category_id`` = ``clothes_type`` (1 Upper, 2 Lower, 3 Whole),
``bbox = [x1, y1, x2 - x1, y2 - y1]``, ``area`` = box area, ``iscrowd`` 0, 8 keypoint slots
(raw triplet k of the clothes type -> its slot, see ``fld_meta``) with FLD visibility mapped to
COCO (0 visible -> 2, 1 occluded -> 1, 2 truncated -> 0 with x = y = 0), ``num_keypoints`` =
#(v > 0), and the extra keys ``fld_visibility`` (8 raw codes; slots the clothes type does not
have get FLD's padding code 0, so select slots by class first) and ``variation_type`` (raw
code 1..5).
"""

import json
import logging
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple
from tqdm import tqdm

from ..fld_meta import (
    FLD_CLASS_KEYPOINT_SLOTS,
    FLD_CLASS_NAMES,
    FLD_KEYPOINT_NAMES,
    FLD_NUM_KEYPOINTS,
    FLD_VARIATION_TYPES,
    FLD_VISIBILITY_PADDING,
    FLD_VISIBILITY_TO_COCO,
)
from .conversion import (
    ConversionReport,
    ConversionSummary,
    atomic_output,
    check_image_file,
    coco_categories,
    report_path_for,
)

__all__ = ["convert_fld", "fld_categories", "read_fld_list", "FLD_SPLITS"]

logger = logging.getLogger(__name__)

FLD_SPLITS = ("train", "val", "test")
BBOX_LIST = os.path.join("Anno", "list_bbox.txt")
LANDMARK_LIST = os.path.join("Anno", "list_landmarks.txt")
PARTITION_LIST = os.path.join("Eval", "list_eval_partition.txt")

_BBOX_COLUMNS = ["image_name", "x_1", "y_1", "x_2", "y_2"]
_LANDMARK_COLUMNS = ["image_name", "clothes_type", "variation_type"] + [
    f"landmark_{field}_{k}"
    for k in range(1, FLD_NUM_KEYPOINTS + 1)
    for field in ("visibility", "location_x", "location_y")
]
_PARTITION_COLUMNS = ["image_name", "evaluation_status"]
_BOX_SLACK_PX = 1.0
_SKIP = "image skipped"


def fld_categories() -> List[Dict[str, Any]]:
    """The 3 FLD clothing types as COCO-style category records (8 shared keypoints)."""
    return coco_categories(FLD_CLASS_NAMES, FLD_KEYPOINT_NAMES)


def read_fld_list(
    path: str, columns: Sequence[str], report: ConversionReport
) -> Dict[str, Tuple[int, List[str]]]:
    """Parse one FLD list file into {image_name: (line number, remaining fields)}.

    A broken file (missing, no record count, wrong header, count != number of records) raises
    ValueError / FileNotFoundError; a duplicated image name is reported and both entries dropped.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FLD list {path} not found (expected the released layout)")
    with open(path, "r", encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or not lines[0].strip().isdigit():
        got = repr(lines[0]) if lines else "an empty file"
        raise ValueError(f"{path}:1: got {got}; expected the number of records")
    declared = int(lines[0].strip())
    header = lines[1].split() if len(lines) > 1 else []
    if len(header) != len(columns):
        raise ValueError(
            f"{path}:2: header has {len(header)} column names; expected {len(columns)}: "
            f"{' '.join(columns)}"
        )
    if header != list(columns):
        report.warning(
            "header",
            path,
            "line 2",
            f"got {' '.join(header)}; expected {' '.join(columns)}",
            "used",
        )
    records = lines[2:]
    if len(records) != declared:
        raise ValueError(
            f"{path}: line 1 declares {declared} records but the file has {len(records)} "
            "(truncated or corrupted file)"
        )
    entries: Dict[str, Tuple[int, List[str]]] = {}
    duplicates = set()
    for lineno, line in enumerate(records, start=3):
        fields = line.split()
        if not fields:
            report.error(
                "empty_line", path, f"line {lineno}", "empty; expected a record", "ignored"
            )
            continue
        name = fields[0]
        if name in entries:
            report.error(
                "duplicate_record",
                f"{path}:{lineno}",
                "image_name",
                f"{name} already listed on line {entries[name][0]}; expected one line per image",
                _SKIP,
            )
            duplicates.add(name)
            continue
        entries[name] = (lineno, fields[1:])
    for name in duplicates:
        del entries[name]
    return entries


def _parse_ints(fields: Sequence[str]) -> Optional[List[int]]:
    try:
        return [int(v) for v in fields]
    except ValueError:
        return None


def _image_id(name: str) -> Optional[int]:
    digits = re.findall(r"\d+", os.path.basename(name))
    return int(digits[-1]) if digits else None


def _convert_image(
    root: str,
    name: str,
    bbox_entry: Optional[Tuple[int, List[str]]],
    landmark_entry: Optional[Tuple[int, List[str]]],
    report: ConversionReport,
    image_id: int,
    decode: bool = True,
) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """Validate one FLD image; return (image record, annotation without id) or None."""
    errors_before = report.num_errors
    bbox_file = os.path.join(root, BBOX_LIST)
    landmark_file = os.path.join(root, LANDMARK_LIST)

    box = None
    if bbox_entry is None:
        report.error(
            "missing_record", bbox_file, name, "no line for this image; expected one", _SKIP
        )
    else:
        lineno, fields = bbox_entry
        where = f"{bbox_file}:{lineno}"
        values = _parse_ints(fields)
        if values is None or len(values) != 4:
            report.error(
                "bbox_format",
                where,
                "x_1 y_1 x_2 y_2",
                f"got {' '.join(fields)!r}; expected 4 integers",
                _SKIP,
            )
        elif values[2] <= values[0] or values[3] <= values[1]:
            report.error(
                "box_size",
                where,
                "x_1 y_1 x_2 y_2",
                f"box {values} has width {values[2] - values[0]} and height "
                f"{values[3] - values[1]}; expected x_2 > x_1 and y_2 > y_1",
                _SKIP,
            )
        else:
            box = values

    clothes_type = variation_type = None
    triplets: List[List[int]] = []
    if landmark_entry is None:
        report.error(
            "missing_record", landmark_file, name, "no line for this image; expected one", _SKIP
        )
    else:
        lineno, fields = landmark_entry
        where = f"{landmark_file}:{lineno}"
        values = _parse_ints(fields)
        if values is None or len(values) < 2:
            report.error(
                "landmark_format",
                where,
                "(record)",
                f"got {' '.join(fields)!r}; expected integers: clothes_type variation_type "
                "and 8 landmark triplets",
                _SKIP,
            )
        else:
            clothes_type, variation_type, flat = values[0], values[1], values[2:]
            if clothes_type not in (1, 2, 3):
                report.error(
                    "category_id",
                    where,
                    "clothes_type",
                    f"got {clothes_type}; expected 1 (upper), 2 (lower) or 3 (full body)",
                    _SKIP,
                )
                clothes_type = None
            if variation_type not in FLD_VARIATION_TYPES:
                report.error(
                    "variation_type",
                    where,
                    "variation_type",
                    f"got {variation_type}; expected 1..{len(FLD_VARIATION_TYPES)}",
                    _SKIP,
                )
            if clothes_type is not None:
                n = len(FLD_CLASS_KEYPOINT_SLOTS[clothes_type - 1])
                # The release pads every record to 8 triplets; accept the unpadded form too.
                if len(flat) not in (3 * FLD_NUM_KEYPOINTS, 3 * n):
                    unpadded = f" (or 3 x {n} = {3 * n} unpadded)" if n < FLD_NUM_KEYPOINTS else ""
                    report.error(
                        "keypoint_length",
                        where,
                        "landmarks",
                        f"got {len(flat)} values; expected 3 x {FLD_NUM_KEYPOINTS} = "
                        f"{3 * FLD_NUM_KEYPOINTS}{unpadded} for clothes_type {clothes_type}",
                        _SKIP,
                    )
                else:
                    triplets = [flat[3 * k : 3 * k + 3] for k in range(len(flat) // 3)]
                    bad = [
                        (k + 1, t[0]) for k, t in enumerate(triplets[:n]) if t[0] not in (0, 1, 2)
                    ]
                    if bad:
                        report.error(
                            "keypoint_visibility",
                            where,
                            f"landmark_visibility_{bad[0][0]}",
                            f"got {bad[0][1]}; expected 0 (visible), 1 (occluded) or 2 (truncated)",
                            _SKIP,
                        )
                    padding = [k + 1 for k, t in enumerate(triplets[n:], start=n) if any(t)]
                    if padding:
                        report.warning(
                            "padding",
                            where,
                            f"landmark triplet {padding[0]}",
                            f"non-zero, but clothes_type {clothes_type} has only {n} landmarks; "
                            "expected 0 0 0",
                            "ignored",
                        )
                    triplets = triplets[:n]

    image_path = os.path.join(root, name)
    size = None
    if not os.path.isfile(image_path):
        report.error(
            "missing_image", image_path, "(file)", "not found; expected the FLD image", _SKIP
        )
    else:
        info = check_image_file(image_path, report, decode=decode)
        if info is not None:
            width, height = info.width, info.height
            size = (width, height)
            if box is not None and (
                box[0] < -_BOX_SLACK_PX
                or box[1] < -_BOX_SLACK_PX
                or box[2] > width + _BOX_SLACK_PX
                or box[3] > height + _BOX_SLACK_PX
            ):
                report.error(
                    "image_size",
                    image_path,
                    "width/height",
                    f"box {box} lies outside this {width}x{height} image; expected the released "
                    "image (long side 512 px) the lists refer to",
                    _SKIP,
                )

    if report.num_errors > errors_before or size is None:
        return None

    slots = FLD_CLASS_KEYPOINT_SLOTS[clothes_type - 1]
    keypoints = [0.0] * (3 * FLD_NUM_KEYPOINTS)
    fld_visibility = [FLD_VISIBILITY_PADDING] * FLD_NUM_KEYPOINTS
    for slot, (code, x, y) in zip(slots, triplets):
        v = FLD_VISIBILITY_TO_COCO[code]
        fld_visibility[slot] = code
        if v > 0:
            keypoints[3 * slot : 3 * slot + 3] = [float(x), float(y), float(v)]
    x1, y1, x2, y2 = box
    image = {
        "id": image_id,
        "file_name": name,
        "width": size[0],
        "height": size[1],
        "variation_type": variation_type,
    }
    annotation = {
        "id": None,
        "image_id": image_id,
        "category_id": clothes_type,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": (x2 - x1) * (y2 - y1),
        "iscrowd": 0,
        "keypoints": keypoints,
        "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0),
        "fld_visibility": fld_visibility,
        "variation_type": variation_type,
    }
    return image, annotation


def assign_image_ids(names: Sequence[str], report: ConversionReport, where: str) -> List[int]:
    """Image ids of ``names``: the number in each file name, as the release names its images
    (``img/img_00000001.jpg`` -> 1). When names carry no number or their numbers collide (e.g.
    DeepFashion's per-folder numbering ``img/Blouse/img_00000001.jpg`` and
    ``img/Dress/img_00000001.jpg``), every image is numbered 1..N in list order instead, with one
    warning that names the layout problem."""
    derived = [_image_id(name) for name in names]
    first: Dict[int, str] = {}
    clashes, unnumbered = [], [n for n, i in zip(names, derived) if i is None]
    for name, image_id in zip(names, derived):
        if image_id is None:
            continue
        if image_id in first:
            clashes.append((first[image_id], name))
        else:
            first[image_id] = name
    if not clashes and not unnumbered:
        return derived
    problems = []
    if clashes:
        a, b = clashes[0]
        problems.append(
            f"{len(clashes)} image name(s) repeat the number of another image (e.g. {a} and {b}: "
            "images numbered per folder)"
        )
    if unnumbered:
        problems.append(f"{len(unnumbered)} image name(s) have no number (e.g. {unnumbered[0]})")
    message = (
        f"image ids cannot be taken from the file names: {'; '.join(problems)}; expected one "
        "number per image as in the release (img/img_00000001.jpg)"
    )
    report.warning(
        "image_ids", where, "image_name", message, "all images numbered 1..N in list order"
    )
    logger.warning(f"{where}: {message}; all images are numbered 1..N in list order instead")
    return list(range(1, len(names) + 1))


def convert_fld(
    root: str, split: str, output: str, *, progress: bool = True, decode: bool = True
) -> ConversionSummary:
    """Convert the FLD ``split`` under ``root`` to COCO-style ``output`` (+ report).

    Image ids come from :func:`assign_image_ids`; ``decode=False`` checks images by their
    header only (faster; truncated images are then not caught).
    """
    root, output = os.fspath(root), os.fspath(output)
    if split not in FLD_SPLITS:
        raise ValueError(f"split must be one of {FLD_SPLITS}, got {split!r}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"FLD root {root} is not a directory")
    report = ConversionReport(f"prepare_fld: {root} split {split} -> {output}")
    partition_file = os.path.join(root, PARTITION_LIST)
    partition = read_fld_list(partition_file, _PARTITION_COLUMNS, report)
    bboxes = read_fld_list(os.path.join(root, BBOX_LIST), _BBOX_COLUMNS, report)
    landmarks = read_fld_list(os.path.join(root, LANDMARK_LIST), _LANDMARK_COLUMNS, report)

    names = []
    for name, (lineno, fields) in partition.items():
        if len(fields) != 1 or fields[0] not in FLD_SPLITS:
            report.error(
                "evaluation_status",
                f"{partition_file}:{lineno}",
                "evaluation_status",
                f"got {' '.join(fields)!r}; expected one of {', '.join(FLD_SPLITS)}",
                _SKIP,
            )
        elif fields[0] == split:
            names.append(name)
    if not names:
        raise ValueError(f"{partition_file}: no image with evaluation_status '{split}'")

    image_ids = assign_image_ids(names, report, partition_file)
    images, annotations = [], []
    progress_bar = tqdm(names, desc=f"FLD {split}", unit="image", disable=not progress)
    for name, image_id in zip(progress_bar, image_ids):
        result = _convert_image(
            root, name, bboxes.get(name), landmarks.get(name), report, image_id, decode
        )
        if result is None:
            continue
        image, annotation = result
        annotation["id"] = len(annotations) + 1
        images.append(image)
        annotations.append(annotation)

    dataset = {
        "info": {"description": f"FLD {split} split, converted by prepare_fld.py"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": fld_categories(),
    }
    with atomic_output(output) as f:
        json.dump(dataset, f)
    summary = ConversionSummary(
        output=output,
        report=report_path_for(output),
        num_inputs=len(names),
        num_images=len(images),
        num_annotations=len(annotations),
        num_errors=report.num_errors,
        num_warnings=report.num_warnings,
    )
    with atomic_output(summary.report) as f:
        f.write(report.render([str(summary)]))
    (logger.warning if report.num_errors else logger.info)(str(summary))
    return summary
