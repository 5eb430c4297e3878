"""Validation of DeepFashion2 / FLD COCO-style annotation files against what every stage needs.

A json made by our converters or by another tool is checked once, when its dataset is loaded
(:func:`kgdet.data.load_deepfashion2_json`, :func:`kgdet.data.load_fld_json`) and when its
evaluator is built (:class:`kgdet.evaluation.DeepFashion2Evaluator`), so that a problem is
reported before training or inference starts, never by pycocotools at the end of evaluation:

- **Structure** (refused, :class:`AnnotationFileError` naming the json, the record and the
  field): ``images`` / ``annotations`` / ``categories`` lists; integer, unique image ids with
  ``file_name``, ``width``, ``height``; annotations with an integer unique ``id``, an
  ``image_id`` of a listed image, a listed ``category_id``, ``bbox`` = 4 finite numbers with
  w, h >= 0, and 3 x K finite ``keypoints``. Duplicate image ids (typically ids taken from file
  names numbered per folder) are one error naming the clashing files.
- **Fields pycocotools needs but Detectron2's loader does not** are filled with the DeepFashion2
  definition and logged with a count: ``area`` = box area w * h (the OKS scale and size bucket
  of the official evaluation), ``iscrowd`` = 0, ``num_keypoints`` = #(v > 0).
- **Categories**: accepted when every listed id is an official id (1..13 for DeepFashion2,
  1..3 for FLD) and its name is the official one or the raw one (DeepFashion2's
  ``"short sleeve top"`` spelling; case, spaces and underscores ignored), in any order, also
  when only a subset is listed. Anything else is one error naming the json and every category
  that differs. Class indices always follow the official ids.
- **Box-only files**: an annotation whose ``keypoints`` is ``[]`` or missing gets K unlabelled
  slots (0, 0, 0) (counted and logged).
- **Across records and fields** (:mod:`kgdet.data.consistency`, after the checks above): a
  ``file_name`` used by several image records, boxes of zero width or height, labelled
  landmarks outside the annotation's class block are errors; a set without any labelled
  landmark is one warning (keypoint AP is not computed).
- **Segmentation** is not used by KGDet: a garment whose polygons are all invalid (fewer than 3
  points, odd length) keeps its box, class and keypoints (Detectron2's ``load_coco_json`` would
  drop it from training while evaluation keeps it); the count is logged.
"""

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..validators import is_int as _is_int
from ..validators import is_number as _finite
from ..validators import short_repr as _short
from .consistency import ConsistencyReport, check_coco_consistency

__all__ = [
    "AnnotationFileError",
    "AnnotationSchema",
    "AnnotationCheck",
    "check_coco_annotations",
    "check_annotation_file",
    "load_json_file",
    "official_categories",
    "has_valid_polygon",
    "check_image_record",
    "check_annotation_record",
    "all_finite_numbers",
]

logger = logging.getLogger(__name__)

_MAX_LISTED = 5  # problems quoted per kind in one error message


class AnnotationFileError(ValueError):
    """An annotation json that training or evaluation cannot use; names file, record, field."""


def _norm(name: Any) -> str:
    return str(name).strip().lower().replace("_", " ").replace("-", " ")


@dataclass(frozen=True)
class AnnotationSchema:
    """What a dataset's json must match: official category ids 1..C with their names (and
    accepted alternative names per id), K keypoint slots (0 = no keypoints required) and, per
    class, the global slots it has (``class_keypoint_slots``; empty = not checked)."""

    dataset: str
    class_names: Tuple[str, ...]
    alternative_names: Tuple[Tuple[str, ...], ...] = ()
    num_keypoints: int = 0
    class_keypoint_slots: Tuple[Tuple[int, ...], ...] = ()

    @property
    def official_ids(self) -> Tuple[int, ...]:
        return tuple(range(1, len(self.class_names) + 1))

    def accepts_name(self, category_id: int, name: Any) -> bool:
        names = [self.class_names[category_id - 1]]
        if self.alternative_names:
            names += list(self.alternative_names[category_id - 1])
        return _norm(name) in {_norm(n) for n in names}

    @classmethod
    def from_metadata(cls, metadata) -> Optional["AnnotationSchema"]:
        """Schema of a registered DeepFashion2 or FLD dataset (by its ``thing_classes``), or
        None for any other dataset."""
        from .deepfashion2_meta import DF2_CLASS_NAMES, DF2_RAW_CATEGORY_NAMES
        from .fld_meta import FLD_CLASS_NAMES

        classes = list(metadata.get("thing_classes", None) or ())
        num_keypoints = len(metadata.get("keypoint_names", None) or ())
        slots = tuple(tuple(s) for s in (metadata.get("class_keypoint_slots", None) or ()))
        if classes == DF2_CLASS_NAMES:
            raw = tuple((n,) for n in DF2_RAW_CATEGORY_NAMES)
            return cls("DeepFashion2", tuple(classes), raw, num_keypoints, slots)
        if classes == FLD_CLASS_NAMES:
            return cls("FLD", tuple(classes), (), num_keypoints, slots)
        return None


def official_categories(schema: AnnotationSchema, listed: Sequence[Dict]) -> List[Dict]:
    """All C official category records, keeping extra fields (``keypoints``, ...) of listed ones."""
    by_id = {c.get("id"): c for c in listed if isinstance(c, dict)}
    template = next(iter(by_id.values()), {})
    out = []
    for i, name in zip(schema.official_ids, schema.class_names):
        record = dict(by_id.get(i, {k: v for k, v in template.items() if k != "id"}))
        record.update(id=i, name=name)
        out.append(record)
    return out


def has_valid_polygon(segmentation: Any) -> bool:
    """True for RLE or for a polygon list with at least one polygon of >= 3 points."""
    if isinstance(segmentation, dict):
        return True
    return isinstance(segmentation, list) and any(
        isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation
    )


@dataclass
class AnnotationCheck:
    """Result of :func:`check_coco_annotations` (the json passed; fills were applied)."""

    json_file: str
    schema: AnnotationSchema
    num_images: int = 0
    num_annotations: int = 0
    filled: Counter = field(default_factory=Counter)
    without_valid_polygon: int = 0
    listed_category_ids: Tuple[int, ...] = ()
    consistency: Optional[ConsistencyReport] = None

    def messages(self) -> List[str]:
        """Human-readable notes (one line each) about what was filled or accepted, then the
        warnings across records (photos, boxes and landmarks of the whole file)."""
        out = self._record_messages()
        if self.consistency is not None:
            out += [f"{self.json_file}: {f.message}" for f in self.consistency.warnings]
        return out

    def _record_messages(self) -> List[str]:
        out = []
        definitions = {
            "area": "the box area w * h (DeepFashion2's definition)",
            "iscrowd": "0",
            "num_keypoints": "the number of keypoints with v > 0",
            "keypoints": f"{self.schema.num_keypoints} unlabelled slots (0, 0, 0)",
        }
        for key, n in sorted(self.filled.items()):
            missing = "missing or empty" if key == "keypoints" else "missing"
            out.append(
                f"{self.json_file}: '{key}' {missing} in {n} of {self.num_annotations} "
                f"annotations; filled with {definitions[key]}"
            )
        if self.without_valid_polygon:
            out.append(
                f"{self.json_file}: {self.without_valid_polygon} garment(s) have no valid "
                "segmentation polygon; kept for box, class and keypoints (KGDet uses no masks)"
            )
        official = self.schema.official_ids
        if self.listed_category_ids and tuple(sorted(self.listed_category_ids)) != official:
            out.append(
                f"{self.json_file}: 'categories' lists {len(self.listed_category_ids)} of the "
                f"{len(official)} official {self.schema.dataset} categories; class indices "
                "follow the official ids"
            )
        return out

    def log(self) -> None:
        """Log :meth:`messages`; the warnings across records once per process (the loader and
        the evaluator check the same file again)."""
        for m in self._record_messages():
            logger.warning(m)
        if self.consistency is not None:
            self.consistency.log()


class _Problems:
    """Collects problems by kind and raises one error listing them."""

    def __init__(self, json_file: str):
        self.json_file = json_file
        self.by_kind: Dict[str, List[str]] = {}

    def add(self, kind: str, text: str) -> None:
        self.by_kind.setdefault(kind, []).append(text)

    def raise_if_any(self) -> None:
        if not self.by_kind:
            return
        parts = []
        for kind, texts in self.by_kind.items():
            more = f" (and {len(texts) - _MAX_LISTED} more)" if len(texts) > _MAX_LISTED else ""
            parts.append(f"{kind}: " + "; ".join(texts[:_MAX_LISTED]) + more)
        total = sum(len(t) for t in self.by_kind.values())
        raise AnnotationFileError(
            f"{self.json_file}: {total} problem(s) that would break training or evaluation:\n  "
            + "\n  ".join(parts)
        )


def _check_categories(data: Dict, schema: AnnotationSchema, problems: _Problems) -> Tuple[int, ...]:
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        problems.add("categories", f"got {_short(categories)}; expected a list of category records")
        return ()
    differing, ids = [], []
    official = set(schema.official_ids)
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict):
            differing.append(f"record {i}: {_short(cat)}")
            continue
        cid, name = cat.get("id"), cat.get("name")
        if not _is_int(cid) or cid not in official:
            differing.append(f"id {_short(cid)} '{name}' (not an official id 1..{len(official)})")
        elif not schema.accepts_name(cid, name):
            differing.append(f"id {cid} '{name}' (official: '{schema.class_names[cid - 1]}')")
        if _is_int(cid):
            ids.append(cid)
    duplicated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicated:
        differing.append(f"ids listed twice: {duplicated}")
    if differing:
        problems.add(
            "categories",
            f"differ from the {len(official)} official {schema.dataset} categories: "
            + ", ".join(differing),
        )
    return tuple(ids)


def check_image_record(index: int, img: Any, problems: "_Problems") -> Optional[int]:
    """Check one ``images`` record (position ``index``); returns its id, or None when the
    record has no integer id (then it cannot be referenced). Problems go to ``problems``."""
    if not isinstance(img, dict):
        problems.add("images", f"record {index}: got {_short(img)}; expected an object")
        return None
    iid = img.get("id")
    if not _is_int(iid):
        problems.add("images", f"record {index}, field 'id': got {_short(iid)}; expected an int")
        return None
    if not isinstance(img.get("file_name"), str):
        problems.add("images", f"record {index} (id {iid}), field 'file_name': missing or not str")
    for key in ("width", "height"):
        if not _is_int(img.get(key)) or img[key] <= 0:
            problems.add(
                "images",
                f"record {index} (id {iid}), field '{key}': got {_short(img.get(key))}; "
                "expected a positive int",
            )
    return iid


def report_duplicate_image_ids(files: Dict[Any, List[str]], problems: "_Problems") -> None:
    """One problem naming the ids used by several image records (``files``: id -> names)."""
    clashes = {i: f for i, f in files.items() if len(f) > 1}
    if clashes:
        examples = "; ".join(f"id {i}: {' and '.join(f[:3])}" for i, f in list(clashes.items())[:3])
        problems.add(
            "image ids",
            f"{len(clashes)} image id(s) are used by more than one image ({examples}); ids taken "
            "from file names that are numbered per folder collide: give every image its own id",
        )


def _check_images(data: Dict, problems: _Problems) -> Dict[Any, str]:
    images = data.get("images")
    if not isinstance(images, list):
        problems.add("images", f"got {_short(images)}; expected a list of image records")
        return {}
    files: Dict[Any, List[str]] = {}
    for i, img in enumerate(images):
        iid = check_image_record(i, img, problems)
        if iid is not None:
            files.setdefault(iid, []).append(str(img.get("file_name")))
    report_duplicate_image_ids(files, problems)
    return {i: f[0] for i, f in files.items()}


def all_finite_numbers(values: Sequence[Any]) -> bool:
    """True iff every value is a finite int or float (a JSON ``true`` / ``false`` counts as
    1 / 0 when the others are numbers: the check runs at C speed on 882-value lists)."""
    try:
        total = sum(values, 0.0)
    except TypeError:
        return False
    if math.isfinite(total):
        return True
    return all(_finite(v) for v in values)  # overflow of the sum, or a NaN / infinity


def check_annotation_record(
    index: int,
    ann: Any,
    problems: "_Problems",
    num_keypoints: int,
    *,
    image_ids: Optional[Any] = None,
    category_ids: Optional[Any] = None,
    seen_ids: Optional[Dict[Any, int]] = None,
    check: Optional["AnnotationCheck"] = None,
    fill: bool = True,
) -> Tuple[bool, bool]:
    """Check (and with ``fill``, complete in place) one ``annotations`` record.

    Args:
        index: position of the record in ``annotations`` (used in messages).
        num_keypoints: K; the record must carry 3 x K finite keypoint values (0: not checked).
        image_ids / category_ids: containers of the listed ids, or None to leave the
            ``image_id`` / ``category_id`` check to the caller (a streaming reader that has
            not seen the images or categories yet).
        seen_ids: annotation id -> index of the records so far (duplicates are problems);
            updated. None: not checked.
        check: receives the counts of filled fields and of garments without a valid polygon.

    Returns:
        (box_ok, keypoints_ok): whether ``bbox`` and ``keypoints`` passed.
    """
    if not isinstance(ann, dict):
        problems.add("annotations", f"annotation {index}: got {_short(ann)}; expected an object")
        return False, False
    aid = ann.get("id")

    def where() -> str:
        return f"annotation {index} (id {_short(aid)})"

    if not _is_int(aid):
        problems.add("annotation ids", f"{where()}, field 'id': missing or not an int")
    elif seen_ids is not None:
        if aid in seen_ids:
            problems.add("annotation ids", f"{where()}: id also used by annotation {seen_ids[aid]}")
        else:
            seen_ids[aid] = index
    if image_ids is not None and ann.get("image_id") not in image_ids:
        problems.add(
            "image_id",
            f"{where()}, field 'image_id': got {_short(ann.get('image_id'))}; expected the id "
            "of a listed image",
        )
    if category_ids is not None and ann.get("category_id") not in category_ids:
        problems.add(
            "category_id",
            f"{where()}, field 'category_id': got {_short(ann.get('category_id'))}; expected "
            f"one of the listed categories {sorted(category_ids)}",
        )
    bbox = ann.get("bbox")
    box_ok = isinstance(bbox, list) and len(bbox) == 4 and all(map(_finite, bbox))
    if not box_ok or bbox[2] < 0 or bbox[3] < 0:
        problems.add(
            "bbox",
            f"{where()}, field 'bbox': got {_short(bbox)}; expected [x, y, w, h] of 4 finite "
            "numbers with w, h >= 0",
        )
        box_ok = False
    k = num_keypoints
    kps = ann.get("keypoints")
    kps_ok = False
    if k and (kps is None or kps == []):  # a box-only record: K unlabelled slots
        if fill:
            kps = ann["keypoints"] = [0] * (3 * k)
            if check is not None:
                check.filled["keypoints"] += 1
        kps_ok = fill
    elif k:
        if not isinstance(kps, list) or len(kps) != 3 * k:
            got = f"{len(kps)} values" if isinstance(kps, list) else _short(kps)
            problems.add(
                "keypoints",
                f"{where()}, field 'keypoints': got {got}; expected 3 x {k} = {3 * k} values "
                "(all global slots)",
            )
        elif not all_finite_numbers(kps):
            problems.add("keypoints", f"{where()}, field 'keypoints': non-finite or non-number")
        else:
            kps_ok = True
    for key, ok in (
        ("area", lambda v: _finite(v) and v >= 0),
        ("iscrowd", lambda v: v in (0, 1) and not isinstance(v, float)),
        ("num_keypoints", lambda v: _is_int(v) and v >= 0),
    ):
        if key in ann and not ok(ann[key]):
            problems.add(key, f"{where()}, field '{key}': got {_short(ann[key])}")
    if fill:
        filled = check.filled if check is not None else Counter()
        if "area" not in ann and box_ok:
            ann["area"] = float(bbox[2]) * float(bbox[3])
            filled["area"] += 1
        if "iscrowd" not in ann:
            ann["iscrowd"] = 0
            filled["iscrowd"] += 1
        if "num_keypoints" not in ann and (kps_ok or not k):
            vis = kps[2::3] if isinstance(kps, list) else []
            ann["num_keypoints"] = sum(1 for v in vis if v > 0)
            filled["num_keypoints"] += 1
    if check is not None and "segmentation" in ann and not has_valid_polygon(ann["segmentation"]):
        check.without_valid_polygon += 1
    return box_ok, kps_ok


def check_coco_annotations(
    data: Dict,
    json_file: str,
    schema: AnnotationSchema,
    *,
    fill: bool = True,
    check_consistency: bool = True,
) -> AnnotationCheck:
    """Check (and with ``fill``, complete in place) one COCO-style annotation dict.

    Args:
        data: the parsed json.
        json_file: its path (used in messages).
        schema: the dataset's :class:`AnnotationSchema`.
        fill: fill missing ``area`` / ``iscrowd`` / ``num_keypoints`` (and empty or missing
            ``keypoints``) in ``data``.
        check_consistency: also run the checks across records and fields
            (:func:`kgdet.data.consistency.check_coco_consistency`); their errors raise here,
            their warnings go to ``AnnotationCheck.consistency`` and ``messages()``.

    Returns:
        :class:`AnnotationCheck` (counts of what was filled, garments without a valid polygon,
        the consistency report).

    Raises:
        AnnotationFileError: the file cannot be used; the message names the json, the records
            and fields (first few per kind) and what was expected.
    """
    json_file = os.fspath(json_file)
    problems = _Problems(json_file)
    if not isinstance(data, dict):
        raise AnnotationFileError(f"{json_file}: got a {type(data).__name__}; expected an object")
    check = AnnotationCheck(json_file=json_file, schema=schema)
    check.listed_category_ids = _check_categories(data, schema, problems)
    image_files = _check_images(data, problems)
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        problems.add("annotations", f"got {_short(annotations)}; expected a list")
        annotations = []
    listed = set(check.listed_category_ids)
    seen_ids: Dict[Any, int] = {}
    for i, ann in enumerate(annotations):
        check_annotation_record(
            i,
            ann,
            problems,
            schema.num_keypoints,
            image_ids=image_files,
            category_ids=listed,
            seen_ids=seen_ids,
            check=check,
            fill=fill,
        )
    problems.raise_if_any()
    if check_consistency:
        check.consistency = check_coco_consistency(
            data, json_file, schema.class_keypoint_slots or None
        )
        check.consistency.raise_if_errors()
    check.num_images = len(image_files)
    check.num_annotations = len(annotations)
    return check


_CHECKED: Dict[Tuple[str, float, int, AnnotationSchema], AnnotationCheck] = {}


def load_json_file(json_file: str) -> Dict:
    """Parse ``json_file``; errors name the file."""
    try:
        with open(json_file, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {json_file} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationFileError(f"{json_file}: not valid JSON ({e})") from e


def _check_through_compact_columns(json_file: str, schema: AnnotationSchema) -> AnnotationCheck:
    """The same checks by :func:`kgdet.data.load_compact_annotations` (a streaming parse, or
    its cache): a DeepFashion2 json is never held as Python objects."""
    from .compact import load_compact_annotations

    compact = load_compact_annotations(json_file, schema=schema, outside_block="count")
    compact.consistency.raise_if_errors()
    info = compact.info
    return AnnotationCheck(
        consistency=compact.consistency,
        json_file=json_file,
        schema=schema,
        num_images=compact.num_images,
        num_annotations=compact.num_annotations,
        filled=Counter(info.get("filled", {})),
        without_valid_polygon=int(info.get("without_valid_polygon", 0)),
        listed_category_ids=tuple(info.get("listed_category_ids", ())),
    )


def check_annotation_file(
    json_file: str, schema: AnnotationSchema, data: Optional[Dict] = None
) -> AnnotationCheck:
    """:func:`check_coco_annotations` of a file (parsed unless ``data`` is given), remembered per
    (path, modification time, size, schema) so a file is read and logged once per process.
    A DeepFashion2 file given by path is checked by the compact loader (streaming parse or
    annotation cache) instead of ``json.load``."""
    json_file = os.fspath(json_file)
    st = os.stat(json_file)
    key = (os.path.abspath(json_file), st.st_mtime, st.st_size, schema)
    if key in _CHECKED and data is None:
        return _CHECKED[key]
    if data is None and schema.dataset == "DeepFashion2" and schema.num_keypoints == 294:
        check = _check_through_compact_columns(json_file, schema)
    else:
        check = check_coco_annotations(
            load_json_file(json_file) if data is None else data, json_file, schema
        )
    if key not in _CHECKED:
        check.log()
    _CHECKED[key] = check
    return check
