"""Columnar, memory-mappable form of a DeepFashion2-style COCO json.

A DeepFashion2 garment carries 294 x 3 keypoint values in the json, but only its class block
(8-39 landmarks, 25 on average) can be labelled. :class:`CompactAnnotations` keeps the whole
annotation file as a few numpy columns: per image (sorted by image id, as Detectron2's
``load_coco_json`` orders them) and per garment (grouped by image, json order within an image),
with each garment's keypoints stored as its class block only. The arrays are read from a cache
file with memory mapping (:mod:`kgdet.data.compact_cache`), so every process of a multi-GPU
launch and every DataLoader worker share one copy of the pages.

Conventions:

- Coordinates are the json's, unchanged: boxes XYWH in pixels, keypoints (x, y, v) in pixels
  *without* the +0.5 that Detectron2's loader adds (dataset dicts add it, see
  :class:`kgdet.data.compact_dicts.CompactDatasetDicts`).
- Keypoints are float32: integers and half-integers below 2**23 (every DeepFashion2 value) are
  exact; other fractions are rounded to float32 (relative error < 6e-8). Boxes and areas are
  float64, the json's values exactly; ``bbox_is_integer`` remembers integer boxes, because
  Detectron2's transforms keep an integer box integer (truncating after a resize) and training
  must see what ``load_coco_json`` gives.
- ``category_ids`` are the json's (official) ids 1..C; the contiguous class is ``id - 1``.
- Segmentation polygons are not kept: KGDet uses no masks, and DeepFashion2's polygons would
  double the parse time and the file size. Dataset dicts therefore have no ``segmentation``.
- Labelled = visibility v > 0. A labelled landmark outside the garment's class block (a
  converter error) is counted per garment (``num_labelled_outside``) and its slots are kept in
  :attr:`CompactAnnotations.outside_block_slots`; its values are not stored.
"""

import logging
import numpy as np
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .consistency import ConsistencyReport, check_annotation_consistency
from .deepfashion2_meta import (
    DF2_CLASS_KEYPOINT_SLOTS,
    DF2_CLASS_NAMES,
    DF2_NUM_KEYPOINTS,
    DF2_RAW_CATEGORY_NAMES,
)
from .validation import AnnotationFileError, AnnotationSchema

__all__ = [
    "CompactAnnotations",
    "OutsideClassBlockError",
    "load_compact_annotations",
    "DEEPFASHION2_SCHEMA",
    "IMAGE_COLUMNS",
    "ANNOTATION_COLUMNS",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

DEEPFASHION2_SCHEMA = AnnotationSchema(
    "DeepFashion2",
    tuple(DF2_CLASS_NAMES),
    tuple((n,) for n in DF2_RAW_CATEGORY_NAMES),
    DF2_NUM_KEYPOINTS,
    tuple(tuple(s) for s in DF2_CLASS_KEYPOINT_SLOTS),
)

# name -> (dtype, trailing shape); leading dimension N (images), N + 1 (offsets), A
# (annotations), A + 1, P (stored keypoint rows) or B (file-name bytes).
IMAGE_COLUMNS: Dict[str, Tuple[str, Tuple[int, ...]]] = {
    "image_ids": ("int64", ()),  # (N,) ascending
    "image_heights": ("int32", ()),  # (N,)
    "image_widths": ("int32", ()),  # (N,)
    "file_name_offsets": ("int64", ()),  # (N + 1,) into file_name_bytes
    "file_name_bytes": ("uint8", ()),  # (B,) UTF-8 file names, concatenated
    "image_annotation_offsets": ("int64", ()),  # (N + 1,) annotations of image i: [o[i], o[i+1])
}
ANNOTATION_COLUMNS: Dict[str, Tuple[str, Tuple[int, ...]]] = {
    "annotation_ids": ("int64", ()),  # (A,)
    "annotation_image_index": ("int64", ()),  # (A,) row in the image columns
    "category_ids": ("int32", ()),  # (A,) json ids 1..C
    "bboxes": ("float64", (4,)),  # (A, 4) XYWH
    "bbox_is_integer": ("uint8", ()),  # (A,) 1 where the json wrote the 4 values as integers
    "areas": ("float64", ()),  # (A,) json 'area' (or w * h where it was missing)
    "iscrowd": ("uint8", ()),  # (A,)
    "json_num_keypoints": ("int32", ()),  # (A,) json 'num_keypoints' (#(v > 0) if missing)
    "num_labelled": ("int32", ()),  # (A,) #(v > 0) over all K slots
    "num_labelled_outside": ("int32", ()),  # (A,) #(v > 0) outside the class block
    "keypoint_offsets": ("int64", ()),  # (A + 1,) rows of annotation a: [o[a], o[a+1])
    "keypoints": ("float32", (3,)),  # (P, 3) class-block (x, y, v), raw json coordinates
}


class OutsideClassBlockError(AnnotationFileError):
    """Labelled landmarks outside a garment's class block (the json names slots its class does
    not have); the message names the json, the annotation ids and the slots."""


class CompactAnnotations:
    """A COCO-style keypoint annotation file as numpy columns (see the module docstring).

    Image columns (N images, sorted by id): ``image_ids`` (N,) int64, ``image_heights`` /
    ``image_widths`` (N,) int32, ``file_name_bytes`` (B,) uint8 + ``file_name_offsets``
    (N + 1,) int64 (use :meth:`file_name`), ``image_annotation_offsets`` (N + 1,) int64.

    Annotation columns (A garments, grouped by image): ``annotation_ids`` (A,) int64,
    ``annotation_image_index`` (A,) int64, ``category_ids`` (A,) int32 (json ids, 1-based),
    ``bboxes`` (A, 4) float64 XYWH, ``bbox_is_integer`` (A,) uint8 (1: the json wrote the box
    as 4 integers; dataset dicts then give ints, as ``load_coco_json`` does), ``areas`` (A,)
    float64, ``iscrowd`` (A,) uint8,
    ``json_num_keypoints`` (A,) int32 (the json's ``num_keypoints`` field), ``num_labelled``
    (A,) int32 (#(v > 0) over all K slots), ``num_labelled_outside`` (A,) int32 (#(v > 0)
    outside the class block),
    ``keypoint_offsets`` (A + 1,) int64 and ``keypoints`` (P, 3) float32: rows
    ``keypoint_offsets[a]:keypoint_offsets[a + 1]`` are annotation a's class block, in the
    order of ``class_keypoint_slots[category_ids[a] - 1]``.

    Attributes:
        json_file: the json the columns were read from.
        num_keypoints: K, the number of global keypoint slots (294 for DeepFashion2).
        class_keypoint_slots: per contiguous class, the global slots (int64 arrays).
        outside_block_slots: annotation id -> global 0-based slots labelled outside its class
            block (empty for a correct file).
        info: what the first parse filled or noticed (``filled`` counts of ``area`` /
            ``iscrowd`` / ``num_keypoints``, ``without_valid_polygon``,
            ``listed_category_ids``).
        cache_file: the memory-mapped cache the arrays come from, or None (in memory).

    Arrays read from a cache are read-only memory maps. Pickling (DataLoader workers started
    with ``spawn``) sends the cache path only and maps the file again.
    """

    def __init__(
        self,
        json_file: str,
        arrays: Dict[str, np.ndarray],
        num_keypoints: int,
        class_keypoint_slots: Sequence[Sequence[int]],
        outside_block_slots: Optional[Dict[int, List[int]]] = None,
        info: Optional[Dict[str, Any]] = None,
        cache_file: Optional[str] = None,
    ):
        missing = set(IMAGE_COLUMNS) | set(ANNOTATION_COLUMNS)
        missing -= set(arrays)
        if missing:
            raise ValueError(f"CompactAnnotations: missing columns {sorted(missing)}")
        self.json_file = json_file
        self.num_keypoints = int(num_keypoints)
        self.class_keypoint_slots = [np.asarray(s, dtype=np.int64) for s in class_keypoint_slots]
        self.outside_block_slots = dict(outside_block_slots or {})
        self.info = dict(info or {})
        self.consistency: Optional[ConsistencyReport] = None
        self.cache_file = cache_file
        self._arrays = dict(arrays)
        for name, array in arrays.items():
            setattr(self, name, array)

    # Declared for type checkers; set from ``arrays`` in __init__.
    image_ids: np.ndarray
    image_heights: np.ndarray
    image_widths: np.ndarray
    file_name_offsets: np.ndarray
    file_name_bytes: np.ndarray
    image_annotation_offsets: np.ndarray
    annotation_ids: np.ndarray
    annotation_image_index: np.ndarray
    category_ids: np.ndarray
    bboxes: np.ndarray
    bbox_is_integer: np.ndarray
    areas: np.ndarray
    iscrowd: np.ndarray
    json_num_keypoints: np.ndarray
    num_labelled: np.ndarray
    num_labelled_outside: np.ndarray
    keypoint_offsets: np.ndarray
    keypoints: np.ndarray

    @property
    def arrays(self) -> Dict[str, np.ndarray]:
        """All columns by name (see the class docstring)."""
        return dict(self._arrays)

    @property
    def num_images(self) -> int:
        return int(self.image_ids.shape[0])

    @property
    def num_annotations(self) -> int:
        return int(self.annotation_ids.shape[0])

    def file_name(self, image_index: int) -> str:
        """The json ``file_name`` of image row ``image_index`` (not joined to an image root)."""
        o = self.file_name_offsets
        return bytes(self.file_name_bytes[o[image_index] : o[image_index + 1]]).decode("utf-8")

    def file_names(self) -> List[str]:
        """The json ``file_name`` of every image row, in row order."""
        data = self.file_name_bytes.tobytes()
        o = self.file_name_offsets.tolist()
        return [data[o[i] : o[i + 1]].decode("utf-8") for i in range(self.num_images)]

    def annotation_range(self, image_index: int) -> range:
        """Annotation rows of image row ``image_index``."""
        o = self.image_annotation_offsets
        return range(int(o[image_index]), int(o[image_index + 1]))

    def class_slots(self, annotation_index: int) -> np.ndarray:
        """(n_c,) int64 global slots of annotation row ``annotation_index``'s class block."""
        return self.class_keypoint_slots[int(self.category_ids[annotation_index]) - 1]

    def class_keypoints(self, annotation_index: int) -> np.ndarray:
        """(n_c, 3) float32 view: the class block (x, y, v) of one annotation, raw json
        coordinates, ordered as :meth:`class_slots`."""
        o = self.keypoint_offsets
        return self.keypoints[o[annotation_index] : o[annotation_index + 1]]

    def global_keypoints(self, annotation_index: int, dtype=np.float32) -> np.ndarray:
        """(K, 3) array of one annotation's keypoints in the K global slots, raw json
        coordinates (no +0.5), zeros outside its class block. Landmarks a json labelled
        outside the class block (see ``num_labelled_outside``) are not restored."""
        out = np.zeros((self.num_keypoints, 3), dtype=dtype)
        out[self.class_slots(annotation_index)] = self.class_keypoints(annotation_index)
        return out

    def image_index_of_id(self, image_id: int) -> int:
        """Row of image ``image_id``; KeyError if the json has no such image."""
        i = int(np.searchsorted(self.image_ids, image_id))
        if i >= self.num_images or int(self.image_ids[i]) != image_id:
            raise KeyError(f"{self.json_file}: no image with id {image_id}")
        return i

    def check_consistency(self, source: str = "") -> ConsistencyReport:
        """The checks across records and fields of :mod:`kgdet.data.consistency` on these
        columns (a ``file_name`` used by several image records, boxes of zero width or height,
        labelled landmarks outside the class block, no labelled landmark at all).

        Returns:
            :class:`kgdet.data.consistency.ConsistencyReport`; nothing is raised here.
        """
        labelled = self.num_labelled.astype(np.int64)
        outside = self.num_labelled_outside.astype(np.int64)
        return check_annotation_consistency(
            self.file_names(),
            self.image_ids,
            self.image_ids[self.annotation_image_index],
            self.annotation_ids,
            self.category_ids,
            self.bboxes,
            labelled - outside,
            outside,
            source=source or self.json_file,
        )

    def check_outside_block(self) -> None:
        """Raise :class:`OutsideClassBlockError` if any garment has labelled landmarks outside
        its class block (naming the json, up to 5 annotation ids and their 1-based slots)."""
        bad = np.flatnonzero(np.asarray(self.num_labelled_outside) > 0)
        if not len(bad):
            return
        listed = []
        for a in bad[:5].tolist():
            aid = int(self.annotation_ids[a])
            slots = self.outside_block_slots.get(aid, [])
            cid = int(self.category_ids[a])
            listed.append(
                f"annotation id {aid} (category_id {cid}): slot(s) "
                f"{[s + 1 for s in slots]} labelled, its class block is "
                f"{self._block_text(cid - 1)}"
            )
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise OutsideClassBlockError(
            f"{self.json_file}: {len(bad)} garment(s) have labelled keypoints (v > 0) outside "
            f"the keypoint slots of their class (1-based slot numbers): "
            + "; ".join(listed)
            + more
            + ". The slots belong to another class: fix the converter that wrote this json"
        )

    def _block_text(self, c: int) -> str:
        slots = self.class_keypoint_slots[c]
        if len(slots) and np.array_equal(slots, np.arange(slots[0], slots[0] + len(slots))):
            return f"{int(slots[0]) + 1}..{int(slots[-1]) + 1}"
        return str([int(s) + 1 for s in slots])

    def __reduce__(self):
        if self.cache_file is not None:
            from .compact_cache import open_cache_file

            return open_cache_file, (self.cache_file, None, None, False)
        return (
            CompactAnnotations,
            (
                self.json_file,
                {k: np.asarray(v) for k, v in self._arrays.items()},
                self.num_keypoints,
                [s.tolist() for s in self.class_keypoint_slots],
                self.outside_block_slots,
                self.info,
                None,
            ),
        )

    def __repr__(self) -> str:
        return (
            f"CompactAnnotations({self.json_file!r}, {self.num_images} images, "
            f"{self.num_annotations} annotations, {len(self.keypoints)} keypoint rows)"
        )


def load_compact_annotations(
    json_file: PathLike,
    *,
    schema: AnnotationSchema = DEEPFASHION2_SCHEMA,
    class_keypoint_slots: Optional[Sequence[Sequence[int]]] = None,
    cache_dir: Optional[PathLike] = None,
    use_cache: bool = True,
    outside_block: str = "raise",
) -> CompactAnnotations:
    """Load a COCO-style keypoint json (DeepFashion2 by default) as :class:`CompactAnnotations`.

    The first call parses the json in one streaming pass (never holding it as Python objects),
    checks every record as :func:`kgdet.data.validation.check_coco_annotations` does (missing
    ``area`` / ``iscrowd`` / ``num_keypoints`` filled and logged) and writes a cache file;
    later calls, in any process, memory-map the cache (see :mod:`kgdet.data.compact_cache` for
    where it lives, how it is keyed and validated).

    Args:
        json_file: the COCO-style json (every annotation with 3 x K keypoint values).
        schema: categories and K that the json must match (default: DeepFashion2's).
        class_keypoint_slots: per contiguous class, its global slots (default: DeepFashion2's
            metadata ``class_keypoint_slots``).
        cache_dir: folder of the cache file (default ``$KGDET_CACHE/annotations``, else
            ``~/.cache/kgdet/annotations``; a temporary folder if neither is writable).
        use_cache: False parses the json and neither reads nor writes a cache.
        outside_block: "raise" (default) raises :class:`OutsideClassBlockError` when a garment
            has labelled landmarks outside its class block; "count" only counts them
            (``num_labelled_outside``, ``outside_block_slots``) for a checker to report.

    Returns:
        :class:`CompactAnnotations`.

    Raises:
        FileNotFoundError: ``json_file`` does not exist.
        AnnotationFileError: the json is not valid JSON or a record breaks the schema (the
            message names the file, the records and the fields).
        OutsideClassBlockError: see ``outside_block``.
    """
    from .compact_cache import load_or_build

    if outside_block not in ("raise", "count"):
        raise ValueError(f"outside_block must be 'raise' or 'count', got {outside_block!r}")
    if class_keypoint_slots is None:
        if schema.num_keypoints != DF2_NUM_KEYPOINTS:
            raise ValueError(
                f"class_keypoint_slots is required for a {schema.dataset} schema of "
                f"{schema.num_keypoints} keypoints"
            )
        class_keypoint_slots = DF2_CLASS_KEYPOINT_SLOTS
    if len(class_keypoint_slots) != len(schema.class_names):
        raise ValueError(
            f"class_keypoint_slots has {len(class_keypoint_slots)} classes; the "
            f"{schema.dataset} schema has {len(schema.class_names)}"
        )
    compact = load_or_build(
        os.fspath(json_file),
        schema,
        [list(map(int, s)) for s in class_keypoint_slots],
        cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        use_cache=use_cache,
    )
    compact.consistency = compact.check_consistency(os.fspath(json_file))
    if outside_block == "raise":
        try:
            compact.check_outside_block()
        except OutsideClassBlockError as e:  # named with every problem across records
            kinds = "".join(f"\n  {f.kind}: {f.message}" for f in compact.consistency.errors)
            raise OutsideClassBlockError(f"{e}{kinds}") from None
        compact.consistency.raise_if_errors()
        compact.consistency.log()
    return compact
