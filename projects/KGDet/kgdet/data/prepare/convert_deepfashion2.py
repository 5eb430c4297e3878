"""DeepFashion2 raw per-image annotations -> the official COCO-style json (docs/DESIGN.md §15.2).

Same semantics as the official ``evaluation/deepfashion2_to_coco.py`` for every field the
evaluation reads: one image per annotation file (``id`` = the file's number, ``file_name``
``NNNNNN.jpg``, ``width``/``height`` of the image), one annotation per item in the file's key
order with a running ``id`` from 1, ``bbox = [x1, y1, x2 - x1, y2 - y1]``, ``area`` = box area,
``iscrowd`` 0, 294 x 3 float ``keypoints`` (the item's landmarks in its category's block, zeros
elsewhere), ``num_keypoints`` = #(v > 0), ``segmentation`` copied, ``pair_id`` and ``style``
copied, the 13 official category records. Additionally ``source``, ``scale``, ``occlusion``,
``zoom_in`` and ``viewpoint`` are kept as extra annotation keys when present (for subset
evaluation; the evaluators ignore them).

Known problems of the official converter fixed here:

* it does not run as published: ``num_images`` is undefined and the paths are placeholders
  (DeepFashion2 issues #56, #83); here the files are discovered in ``--annos-dir``;
* it iterates ``1..num_images`` and crashes on any gap in the numbering or a missing image;
  here ``image_id`` is read from each file name and a missing image is reported;
* it holds the whole split in memory and writes at the very end (a crash loses everything, a
  kill leaves a truncated file); here annotations are streamed to a temporary file and the
  output is moved into place atomically;
* it indexes landmarks without checking their count (too few -> crash, too many -> silently
  truncated) and never checks category ids, visibility codes or box sizes; here every bad
  record is reported by file and field with the expected value and its image is skipped;
* its category names (``short_sleeved_shirt``, ...) differ from the raw ``category_name``
  strings (``short sleeve top``, ...) (switchablenorms/DeepFashion2 #62). The official
  names are kept (they are what the official COCO-style files and Detectron2 metadata use); each raw
  ``category_name`` is checked against its ``category_id`` and a disagreement is reported;
* it reads the size from the image header, ignoring EXIF orientation, while Detectron2's
  ``read_image`` applies it (mirroring or rotating the pixels under the annotations); here every
  image is checked by :func:`kgdet.data.prepare.conversion.check_image_file` as the model will
  see it:
  an image with any EXIF orientation other than 1, an unreadable or truncated image (the pixels
  are decoded unless ``decode=False``), and an image too small for its boxes are reported and
  skipped;
* ``pair_id`` and ``source`` matter only for retrieval: a missing, ``null`` or non-integer
  ``pair_id`` or a missing ``source`` never costs a garment (warned and counted; an integer
  string such as ``"5"`` is coerced; a missing value is left out of the annotations), and item
  numbering gaps or items out of order (``item1``, ``item3``; ``item10`` before ``item2``) keep
  every garment, in file order as the official converter;
* two annotation files whose names give the same image id (``1.json`` and ``000001.json``) are
  refused up front, before anything is converted.
"""

import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple
from tqdm import tqdm

from ...validators import short_repr as _short
from ..deepfashion2_meta import (
    DF2_CLASS_NAMES,
    DF2_KEYPOINT_NAMES,
    DF2_KEYPOINT_SLOT_RANGES,
    DF2_NUM_KEYPOINTS,
    DF2_NUM_KEYPOINTS_PER_CLASS,
    DF2_RAW_CATEGORY_NAMES,
)
from .conversion import (
    ConversionReport,
    ConversionSummary,
    atomic_output,
    check_image_file,
    coco_categories,
    is_int,
    is_number,
    report_path_for,
)

__all__ = ["convert_deepfashion2", "deepfashion2_categories"]

logger = logging.getLogger(__name__)

_ITEM_KEY = re.compile(r"^item\d+$")
# Raw item keys copied as extra annotation keys when present (not copied by the official script).
_OPTIONAL_ITEM_KEYS = ("scale", "occlusion", "zoom_in", "viewpoint")
# A box may end this many pixels outside the image before the image is taken for a wrong one.
_BOX_SLACK_PX = 1.0
_SKIP = "image skipped"


def deepfashion2_categories() -> List[Dict[str, Any]]:
    """The 13 category records of the official COCO-style files."""
    return coco_categories(DF2_CLASS_NAMES, DF2_KEYPOINT_NAMES)


def _check_item(
    key: str, item: Any, rel: str, size: Optional[Tuple[int, int]], report: ConversionReport
) -> Optional[Dict[str, Any]]:
    """Validate one raw item; return its annotation (without ids) or None if it is bad."""
    errors_before = report.num_errors
    if not isinstance(item, dict):
        report.error(
            "item_format",
            rel,
            key,
            f"got {_short(item)}; expected an object with category_id, bounding_box, landmarks",
            _SKIP,
        )
        return None

    cat = item.get("category_id")
    if not is_int(cat) or not 1 <= cat <= len(DF2_CLASS_NAMES):
        report.error(
            "category_id",
            rel,
            f"{key}.category_id",
            f"got {_short(cat)}; expected an integer category id in 1..{len(DF2_CLASS_NAMES)}",
            _SKIP,
        )
        cat = None
    elif "category_name" in item and item["category_name"] != DF2_RAW_CATEGORY_NAMES[cat - 1]:
        report.warning(
            "category_name",
            rel,
            f"{key}.category_name",
            f"got {_short(item['category_name'])} for category_id {cat}; expected "
            f"'{DF2_RAW_CATEGORY_NAMES[cat - 1]}'",
            "kept (category_id is used)",
        )

    box = item.get("bounding_box")
    if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
        report.error(
            "bbox_format",
            rel,
            f"{key}.bounding_box",
            f"got {_short(box)}; expected [x1, y1, x2, y2] (4 numbers)",
            _SKIP,
        )
        box = None
    else:
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            report.error(
                "box_size",
                rel,
                f"{key}.bounding_box",
                f"box {box} has width {x2 - x1} and height {y2 - y1}; expected x2 > x1 and y2 > y1",
                _SKIP,
            )
        elif size is not None and (
            x1 < -_BOX_SLACK_PX
            or y1 < -_BOX_SLACK_PX
            or x2 > size[0] + _BOX_SLACK_PX
            or y2 > size[1] + _BOX_SLACK_PX
        ):
            report.error(
                "image_size",
                rel,
                f"{key}.bounding_box",
                f"box {box} lies outside the {size[0]}x{size[1]} image; expected an image that "
                "contains its annotated boxes (image and annotation do not match)",
                _SKIP,
            )

    landmarks = item.get("landmarks")
    if cat is not None:
        n = DF2_NUM_KEYPOINTS_PER_CLASS[cat - 1]
        got = len(landmarks) if isinstance(landmarks, list) else _short(landmarks)
        if not isinstance(landmarks, list) or len(landmarks) != 3 * n:
            report.error(
                "keypoint_length",
                rel,
                f"{key}.landmarks",
                f"got {got} values; expected 3 x {n} = {3 * n} for category {cat} "
                f"({DF2_CLASS_NAMES[cat - 1]})",
                _SKIP,
            )
        elif not all(is_number(v) for v in landmarks):
            bad = next(v for v in landmarks if not is_number(v))
            report.error(
                "keypoint_value",
                rel,
                f"{key}.landmarks",
                f"got {_short(bad)}; expected numbers",
                _SKIP,
            )
        else:
            bad_v = [(j + 1, v) for j, v in enumerate(landmarks[2::3]) if v not in (0, 1, 2)]
            if bad_v:
                report.error(
                    "keypoint_visibility",
                    rel,
                    f"{key}.landmarks",
                    f"visibility {bad_v[0][1]} at landmark {bad_v[0][0]}; expected 0, 1 or 2",
                    _SKIP,
                )

    style = item.get("style")
    if "style" not in item:
        report.warning(
            "style", rel, f"{key}.style", "missing; expected an integer >= 0", "garment kept"
        )
    elif not is_int(style):
        coerced = int(style) if isinstance(style, str) and style.strip().isdigit() else None
        report.warning(
            "style",
            rel,
            f"{key}.style",
            f"got {_short(style)}; expected an integer >= 0",
            f"coerced to {coerced}" if coerced is not None else "left out; garment kept",
        )
        style = coerced

    seg = item.get("segmentation")
    polygons = seg if isinstance(seg, list) else []
    valid = [
        p
        for p in polygons
        if isinstance(p, list) and len(p) >= 6 and not len(p) % 2 and all(is_number(v) for v in p)
    ]
    if not isinstance(seg, list) or len(valid) < len(polygons) or (polygons and not valid):
        report.warning(
            "segmentation",
            rel,
            f"{key}.segmentation",
            f"{len(polygons) - len(valid)} of {len(polygons)} polygon(s) invalid (got "
            f"{_short(seg)}); expected polygons [x1, y1, ..., xm, ym] with >= 3 points",
            "invalid polygons left out; garment kept (box, class and keypoints; KGDet uses no "
            "masks)",
        )
    seg = valid

    if report.num_errors > errors_before:
        return None

    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    start = DF2_KEYPOINT_SLOT_RANGES[cat - 1][0]
    points = [0.0] * (3 * DF2_NUM_KEYPOINTS)
    points[3 * start : 3 * start + len(landmarks)] = [float(v) for v in landmarks]
    annotation = {
        "area": w * h,
        "bbox": [x1, y1, w, h],
        "category_id": cat,
        "id": None,  # filled by the caller (running counter)
        "pair_id": None,  # image level
        "image_id": None,
        "iscrowd": 0,
        "style": style,  # left out below when missing
        "num_keypoints": sum(1 for v in landmarks[2::3] if v > 0),
        "keypoints": points,
        "segmentation": seg,
    }
    if style is None:
        del annotation["style"]
    for k in _OPTIONAL_ITEM_KEYS:
        if k in item:
            annotation[k] = item[k]
    return annotation


def _coerce_pair_id(raw: Dict[str, Any], rel: str, report: ConversionReport) -> Optional[int]:
    """``pair_id`` as an int, or None when missing / unusable (warned; the garments are kept)."""
    kept = "garments kept (pair_id is used only for retrieval)"
    if "pair_id" not in raw:
        report.warning("pair_id", rel, "pair_id", "missing; expected an integer", kept)
        return None
    pair_id = raw["pair_id"]
    if is_int(pair_id):
        return pair_id
    if isinstance(pair_id, str) and pair_id.strip().isdigit():
        report.warning(
            "pair_id",
            rel,
            "pair_id",
            f"got the string {pair_id!r}; expected an integer",
            f"coerced to {int(pair_id)}",
        )
        return int(pair_id)
    if isinstance(pair_id, float) and pair_id.is_integer():
        report.warning("pair_id", rel, "pair_id", f"got {pair_id}; expected an integer", "coerced")
        return int(pair_id)
    report.warning(
        "pair_id",
        rel,
        "pair_id",
        f"got {_short(pair_id)}; expected an integer",
        "left out; " + kept,
    )
    return None


def _check_item_order(keys: List[str], rel: str, report: ConversionReport) -> None:
    numbers = [int(k[4:]) for k in keys if _ITEM_KEY.match(k)]
    if numbers and numbers != list(range(1, len(numbers) + 1)):
        report.warning(
            "item_numbers",
            rel,
            ", ".join(f"item{n}" for n in numbers),
            "item numbers with gaps or out of order; expected item1..itemN in order",
            "every item kept, in file order (as the official converter)",
        )


def _convert_file(
    annos_dir: str, image_dir: str, name: str, report: ConversionReport, decode: bool = True
) -> Optional[Tuple[Dict[str, Any], List[Dict[str, Any]]]]:
    """One raw annotation file -> (image record, annotations) or None if it is bad."""
    rel = os.path.join(annos_dir, name)
    stem = os.path.splitext(name)[0]
    if not stem.isdigit():
        report.error(
            "file_name",
            rel,
            "file name",
            f"got '{name}'; expected a numbered file such as 000001.json (image id = number)",
            "file skipped",
        )
        return None
    try:
        with open(rel, "r", encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        report.error("malformed_json", rel, "(file)", f"{e}; expected valid JSON", _SKIP)
        return None
    if not isinstance(raw, dict):
        report.error(
            "malformed_json",
            rel,
            "(file)",
            f"got a {type(raw).__name__}; expected an object",
            _SKIP,
        )
        return None

    errors_before = report.num_errors
    image_rel = os.path.join(image_dir, stem + ".jpg")
    size = None
    if not os.path.isfile(image_rel):
        report.error(
            "missing_image", rel, "image", f"{image_rel} not found; expected the image file", _SKIP
        )
    else:
        info = check_image_file(image_rel, report, decode=decode)
        if info is not None:
            size = (info.width, info.height)

    pair_id = _coerce_pair_id(raw, rel, report)
    source = raw.get("source")
    if "source" not in raw:
        report.warning(
            "source", rel, "source", "missing; expected 'shop' or 'user'", "garments kept"
        )
    elif source not in ("shop", "user"):
        report.warning(
            "source", rel, "source", f"got {_short(source)}; expected 'shop' or 'user'", "kept"
        )

    annotations = []
    item_keys = [k for k in raw if k not in ("source", "pair_id")]
    _check_item_order(item_keys, rel, report)
    for key in item_keys:
        if not _ITEM_KEY.match(key):
            report.error(
                "unknown_key",
                rel,
                key,
                "unexpected key; expected 'source', 'pair_id' or 'item<N>'",
                _SKIP,
            )
            continue
        annotation = _check_item(key, raw[key], rel, size, report)
        if annotation is not None:
            annotations.append(annotation)
    if report.num_errors > errors_before or size is None:
        return None
    if not item_keys:
        report.warning("no_items", rel, "item1", "no items; expected at least one", "image kept")

    image_id = int(stem)
    for annotation in annotations:
        annotation["image_id"] = image_id
        if pair_id is None:
            del annotation["pair_id"]
        else:
            annotation["pair_id"] = pair_id
        if source is not None:
            annotation["source"] = source
    image = {
        "coco_url": "",
        "date_captured": "",
        "file_name": stem + ".jpg",
        "flickr_url": "",
        "id": image_id,
        "license": 0,
        "width": size[0],
        "height": size[1],
    }
    return image, annotations


def _check_unique_image_ids(annos_dir: str, files: List[str]) -> None:
    """Refuse, before converting, annotation files whose names give the same image id."""
    by_id: Dict[int, List[str]] = {}
    for name in files:
        stem = name[:-5]
        if stem.isdigit():
            by_id.setdefault(int(stem), []).append(name)
    clashes = {i: names for i, names in by_id.items() if len(names) > 1}
    if clashes:
        examples = "; ".join(
            f"{' and '.join(names)} -> {i}" for i, names in sorted(clashes.items())[:5]
        )
        raise ValueError(
            f"{annos_dir}: {len(clashes)} image id(s) are given by more than one annotation file "
            f"({examples}). DeepFashion2 numbers each image by its file name (image id = the "
            "number, the image is NNNNNN.jpg), so every number must appear once: remove or "
            "rename the duplicates (one zero-padded 6-digit name per image)"
        )


def _list_json_files(annos_dir: str) -> List[str]:
    with os.scandir(annos_dir) as entries:
        names = [e.name for e in entries if e.is_file()]
    json_names = [n for n in names if n.endswith(".json")]
    if len(json_names) < len(names):
        logger.info(f"{annos_dir}: ignored {len(names) - len(json_names)} non-.json files")
    # Numbered names first in numeric order (= the official 1..N loop), others after.
    return sorted(json_names, key=lambda n: (0, int(n[:-5]), n) if n[:-5].isdigit() else (1, 0, n))


def _check_dir(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{what} {path} is not a directory")


def convert_deepfashion2(
    annos_dir: str, image_dir: str, output: str, *, progress: bool = True, decode: bool = True
) -> ConversionSummary:
    """Convert ``annos_dir/NNNNNN.json`` + ``image_dir/NNNNNN.jpg`` to COCO-style ``output``.

    Bad records are reported (``<output stem>.report.txt``) and skipped; a missing/empty input
    folder, or two files giving the same image id, raises (ValueError / OSError) before anything
    is written. ``decode=False`` checks images by their header only (faster; truncated files
    are then not caught). Output and report are written atomically.
    """
    annos_dir, image_dir, output = os.fspath(annos_dir), os.fspath(image_dir), os.fspath(output)
    _check_dir(annos_dir, "annotation folder")
    _check_dir(image_dir, "image folder")
    files = _list_json_files(annos_dir)
    if not files:
        raise FileNotFoundError(
            f"annotation folder {annos_dir} has no .json files; expected DeepFashion2's "
            "per-image annotations (annos/000001.json, ...)"
        )
    _check_unique_image_ids(annos_dir, files)
    report = ConversionReport(f"prepare_deepfashion2: {annos_dir} + {image_dir} -> {output}")
    images: List[Dict[str, Any]] = []
    annotated_stems = set()
    num_annotations = 0
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryFile("w+", encoding="utf-8", dir=out_dir) as buffer:
        for name in tqdm(files, desc="DeepFashion2", unit="file", disable=not progress):
            result = _convert_file(annos_dir, image_dir, name, report, decode)
            annotated_stems.add(os.path.splitext(name)[0])
            if result is None:
                continue
            image, annotations = result
            images.append(image)
            for annotation in annotations:
                num_annotations += 1
                annotation["id"] = num_annotations
                buffer.write(("," if num_annotations > 1 else "") + json.dumps(annotation))

        with os.scandir(image_dir) as entries:
            stray = sorted(
                e.name
                for e in entries
                if e.name.endswith(".jpg") and e.name[:-4] not in annotated_stems
            )
        for name in stray:
            report.warning(
                "unannotated_image",
                os.path.join(image_dir, name),
                "(file)",
                f"no annotation file; expected {os.path.join(annos_dir, name[:-4] + '.json')}",
                "image not in the output",
            )

        with atomic_output(output) as f:
            f.write('{"info": {}, "licenses": [], "images": ')
            json.dump(images, f)
            f.write(', "annotations": [')
            buffer.seek(0)
            shutil.copyfileobj(buffer, f)
            f.write('], "categories": ')
            json.dump(deepfashion2_categories(), f)
            f.write("}")

    summary = ConversionSummary(
        output=output,
        report=report_path_for(output),
        num_inputs=len(files),
        num_images=len(images),
        num_annotations=num_annotations,
        num_errors=report.num_errors,
        num_warnings=report.num_warnings,
    )
    with atomic_output(summary.report) as f:
        f.write(report.render([str(summary)]))
    (logger.warning if report.num_errors else logger.info)(str(summary))
    return summary
