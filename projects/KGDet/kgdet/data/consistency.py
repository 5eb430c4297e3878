"""Checks across records and fields of a garment annotation set (one implementation).

:mod:`kgdet.data.validation` checks each record and field on its own. Some annotation files pass
those checks and still change what the model learns and how it is scored; they are caught here:

- **a photo listed more than once** (one ``file_name``, several image records, its garments
  split between them, as exports with one image record per annotation produce): training treats
  the other records' garments as background and evaluation counts them as missed. Error naming
  the file names and their image ids.
- **boxes of zero width or height** (two clicks on one line): training would drop them while
  evaluation keeps them as ground truth that nothing can match. Error naming the annotations,
  like a negative size.
- **labelled landmarks (v > 0) outside the annotation's class block** (metadata
  ``class_keypoint_slots``; e.g. a converter that writes each garment's n landmarks into slots
  0..n-1): the keypoint loss and the evaluation only use the class's own slots. Error naming
  the annotations and counting the landmarks.
- **no labelled landmark in the whole data set** (a box-only file): one warning; keypoint AP
  cannot be computed and is not reported (box AP only).

The check works on per-record columns (lists or numpy arrays), so a loader that parses json into
columnar arrays calls :func:`check_annotation_consistency` directly; a parsed COCO dict goes
through :func:`consistency_columns_from_coco` (or :func:`check_coco_consistency`). Registration
(:func:`kgdet.data.validation.check_coco_annotations`), ``tools/check_dataset.py`` and
:class:`kgdet.evaluation.DeepFashion2Evaluator` all call it, so they never disagree.
"""

import logging
import numpy as np
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

__all__ = [
    "ConsistencyFinding",
    "ConsistencyReport",
    "check_annotation_consistency",
    "check_coco_consistency",
    "consistency_columns_from_coco",
    "count_labelled_keypoints",
]

logger = logging.getLogger(__name__)

# Warnings already logged by this process (ConsistencyReport.log).
_LOGGED: Set[str] = set()

_MAX_EXAMPLES = 5
_CHUNK = 8192  # annotations per block when counting landmarks of a COCO dict


@dataclass(frozen=True)
class ConsistencyFinding:
    """One kind of problem: ``kind`` (a short identifier), ``level`` ("error" or "warning"),
    ``count`` (records affected), ``message`` (one line with the count, the first examples and
    what it does to training / evaluation) and ``examples`` (the first records, as text)."""

    kind: str
    level: str
    count: int
    message: str
    examples: Tuple[str, ...] = ()


@dataclass
class ConsistencyReport:
    """Result of :func:`check_annotation_consistency`.

    Attributes:
        source: what was checked (the json path or dataset name), used in messages.
        findings: every problem found, errors and warnings.
        num_labelled_keypoints: labelled landmarks (v > 0) in the whole set (None: not counted).
    """

    source: str
    findings: List[ConsistencyFinding] = field(default_factory=list)
    num_labelled_keypoints: Optional[int] = None

    @property
    def errors(self) -> List[ConsistencyFinding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> List[ConsistencyFinding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def no_labelled_keypoints(self) -> bool:
        """True when the set has annotations but not one labelled landmark (keypoint AP cannot
        be computed)."""
        return any(f.kind == "no_labelled_keypoints" for f in self.findings)

    def raise_if_errors(self) -> None:
        """Raise ``AnnotationFileError`` listing every error (one line per kind)."""
        if not self.errors:
            return
        from .validation import AnnotationFileError

        raise AnnotationFileError(
            f"{self.source}: {sum(f.count for f in self.errors)} problem(s) across records that "
            "would falsify training or evaluation:\n  "
            + "\n  ".join(f"{f.kind}: {f.message}" for f in self.errors)
        )

    def log(self) -> None:
        """Log each warning once per process (registration, the loader and the evaluator may
        check the same file)."""
        for f in self.warnings:
            message = f"{self.source}: {f.message}"
            if message not in _LOGGED:
                _LOGGED.add(message)
                logger.warning(message)


def _examples(examples: Sequence[str], total: int) -> str:
    more = f" (and {total - len(examples)} more)" if total > len(examples) else ""
    return "; ".join(examples) + more


def _box_text(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box.tolist()) + "]"


def count_labelled_keypoints(
    visibility: np.ndarray,
    category_ids: Sequence[int],
    class_keypoint_slots: Sequence[Sequence[int]],
    first_category_id: int = 1,
) -> Tuple[np.ndarray, np.ndarray]:
    """Labelled landmarks of each annotation inside and outside its class block.

    Args:
        visibility: (A, K) visibility flags (the third value of each keypoint triplet); v > 0
            is labelled.
        category_ids: (A,) category ids; class ``category_id - first_category_id`` indexes
            ``class_keypoint_slots`` (DeepFashion2 / FLD json: official ids from 1).
        class_keypoint_slots: per class, the global slots it has (metadata
            ``class_keypoint_slots``).
        first_category_id: the category id of class 0.

    Returns:
        (inside, outside): (A,) int64 counts. An annotation whose class has no entry in
        ``class_keypoint_slots`` counts all its labelled landmarks as outside.
    """
    visibility = np.asarray(visibility)
    num_keypoints = visibility.shape[1] if visibility.ndim == 2 else 0
    labelled = visibility.reshape(len(visibility), num_keypoints) > 0
    num_classes = len(class_keypoint_slots)
    mask = np.zeros((num_classes + 1, num_keypoints), dtype=bool)  # last row: unknown class
    for c, slots in enumerate(class_keypoint_slots):
        slots = [s for s in slots if 0 <= s < num_keypoints]
        mask[c, slots] = True
    classes = np.asarray(category_ids, dtype=np.int64).reshape(-1) - first_category_id
    classes = np.where((classes >= 0) & (classes < num_classes), classes, num_classes)
    inside = (labelled & mask[classes]).sum(axis=1).astype(np.int64)
    return inside, labelled.sum(axis=1).astype(np.int64) - inside


def check_annotation_consistency(
    image_file_names: Sequence[str],
    image_ids: Sequence[int],
    ann_image_ids: Sequence[int],
    ann_ids: Sequence[int],
    ann_category_ids: Sequence[int],
    ann_bboxes_xywh: Sequence[Sequence[float]],
    ann_labelled_in_class: Optional[Sequence[int]] = None,
    ann_labelled_outside_class: Optional[Sequence[int]] = None,
    *,
    source: str = "annotations",
) -> ConsistencyReport:
    """Check an annotation set given as columns (see the module docstring for what is checked).

    Args:
        image_file_names: (I,) ``file_name`` of every image record.
        image_ids: (I,) ``id`` of every image record.
        ann_image_ids: (A,) ``image_id`` of every annotation.
        ann_ids: (A,) ``id`` of every annotation.
        ann_category_ids: (A,) ``category_id`` of every annotation (as in the json).
        ann_bboxes_xywh: (A, 4) ``bbox`` [x, y, w, h] in pixels of every annotation.
        ann_labelled_in_class: (A,) labelled landmarks (v > 0) inside the annotation's class
            block, e.g. from :func:`count_labelled_keypoints`; None for a data set without
            keypoints (no landmark check).
        ann_labelled_outside_class: (A,) labelled landmarks outside it (None: as above).
        source: the json path or dataset name, for messages.

    Returns:
        :class:`ConsistencyReport`; call ``raise_if_errors()`` to refuse a set with errors
        (``AnnotationFileError``) and ``log()`` to log its warnings. Records whose fields are
        malformed (checked by :mod:`kgdet.data.validation`) are not re-checked here.
    """
    report = ConsistencyReport(source=source)
    names = np.asarray(list(image_file_names), dtype=object)
    ids = np.asarray(image_ids).reshape(-1)
    if len(names):
        unique, inverse, counts = np.unique(
            names.astype(str), return_inverse=True, return_counts=True
        )
        shared = np.flatnonzero(counts > 1)
        if len(shared):
            examples = []
            for u in shared[:_MAX_EXAMPLES]:
                listed = ", ".join(str(i) for i in ids[inverse.reshape(-1) == u][:4])
                examples.append(f"'{unique[u]}': image ids {listed}")
            records = int(counts[shared].sum())
            report.findings.append(
                ConsistencyFinding(
                    "file_name_listed_twice",
                    "error",
                    len(shared),
                    f"{len(shared)} file name(s) are used by {records} image records "
                    f"({_examples(examples, len(shared))}); the "
                    "garments of one photo are split between its records: training takes the "
                    "other records' garments for background and evaluation counts them as "
                    "missed. Give each photo one image record holding all its garments",
                    tuple(examples),
                )
            )
    boxes = np.asarray(ann_bboxes_xywh, dtype=np.float64).reshape(-1, 4)
    aids = np.asarray(ann_ids).reshape(-1)
    aimg = np.asarray(ann_image_ids).reshape(-1)
    cats = np.asarray(ann_category_ids).reshape(-1)
    zero = np.flatnonzero((boxes[:, 2] == 0) | (boxes[:, 3] == 0))
    if len(zero):
        examples = [
            f"annotation id {aids[i]} (image {aimg[i]}): bbox {_box_text(boxes[i])}"
            for i in zero[:_MAX_EXAMPLES]
        ]
        report.findings.append(
            ConsistencyFinding(
                "zero_size_box",
                "error",
                len(zero),
                f"{len(zero)} annotation(s) have a box of zero width or height "
                f"({_examples(examples, len(zero))}); a box needs "
                "w > 0 and h > 0: training would drop it while evaluation keeps it as a "
                "garment nothing can match. Fix or remove these annotations",
                tuple(examples),
            )
        )
    if ann_labelled_in_class is None or ann_labelled_outside_class is None:
        return report
    inside = np.asarray(ann_labelled_in_class, dtype=np.int64).reshape(-1)
    outside = np.asarray(ann_labelled_outside_class, dtype=np.int64).reshape(-1)
    report.num_labelled_keypoints = int(inside.sum() + outside.sum())
    wrong = np.flatnonzero(outside > 0)
    if len(wrong):
        examples = [
            f"annotation id {aids[i]} (category {cats[i]}): {outside[i]} of "
            f"{outside[i] + inside[i]} labelled landmarks outside the category's slots"
            for i in wrong[:_MAX_EXAMPLES]
        ]
        report.findings.append(
            ConsistencyFinding(
                "keypoints_outside_class",
                "error",
                len(wrong),
                f"{len(wrong)} of {len(outside)} annotation(s) have labelled landmarks (v > 0) "
                "in slots that do not belong to their category "
                f"({int(outside.sum())} of {report.num_labelled_keypoints} labelled landmarks; "
                f"{_examples(examples, len(wrong))}); the keypoint "
                "loss and the evaluation only read the category's own slots (metadata "
                "class_keypoint_slots, e.g. DeepFashion2's long sleeve top: slots 25-57), so "
                "these landmarks are lost. Write each garment's landmarks into its category's "
                "block",
                tuple(examples),
            )
        )
    if len(inside) and report.num_labelled_keypoints == 0:
        report.findings.append(
            ConsistencyFinding(
                "no_labelled_keypoints",
                "warning",
                len(inside),
                f"none of the {len(inside)} annotations has a labelled landmark (v > 0): a "
                "box-only annotation set; keypoint AP cannot be computed and is not reported, "
                "and the keypoint losses have no target",
            )
        )
    return report


def consistency_columns_from_coco(
    data: Dict[str, Any],
    class_keypoint_slots: Optional[Sequence[Sequence[int]]] = None,
    first_category_id: int = 1,
) -> Dict[str, Any]:
    """The columns :func:`check_annotation_consistency` takes, from a parsed COCO-style dict.

    Args:
        data: with ``images`` (``id``, ``file_name``) and ``annotations`` (``id``,
            ``image_id``, ``category_id``, ``bbox``, ``keypoints``), official category ids.
        class_keypoint_slots: per class (category id - ``first_category_id``), its global
            slots; None (or a set without keypoints) skips the landmark checks.
        first_category_id: the category id of class 0 (1 for DeepFashion2 / FLD json; 0 for
            Detectron2's ``convert_to_coco_dict`` of a dataset without
            ``thing_dataset_id_to_contiguous_id``).

    Returns:
        keyword arguments for :func:`check_annotation_consistency` (without ``source``).
        An annotation with an empty or missing ``keypoints`` counts no landmark; one whose
        ``keypoints`` length differs from the others' is left to the structure check.
    """
    images = data.get("images", [])
    anns = data.get("annotations", [])
    cols: Dict[str, Any] = {
        "image_file_names": [str(i.get("file_name")) for i in images],
        "image_ids": [i.get("id") for i in images],
        "ann_image_ids": [a.get("image_id") for a in anns],
        "ann_ids": [a.get("id") for a in anns],
        "ann_category_ids": [a.get("category_id") for a in anns],
        "ann_bboxes_xywh": [a.get("bbox") for a in anns],
    }
    if class_keypoint_slots:
        num_keypoints = 1 + max((s for slots in class_keypoint_slots for s in slots), default=-1)
        inside, outside = [], []
        unlabelled = [0] * num_keypoints
        for start in range(0, len(anns), _CHUNK):  # bounded memory on DeepFashion2's 312k
            chunk = anns[start : start + _CHUNK]
            rows = [a.get("keypoints") or [] for a in chunk]
            rows = [r[2::3] if len(r) == 3 * num_keypoints else unlabelled for r in rows]
            labelled = np.array(rows, dtype=np.float64).reshape(len(chunk), num_keypoints) > 0
            counts = count_labelled_keypoints(
                labelled,
                cols["ann_category_ids"][start : start + _CHUNK],
                class_keypoint_slots,
                first_category_id,
            )
            inside.append(counts[0])
            outside.append(counts[1])
        empty = np.zeros(0, dtype=np.int64)
        cols["ann_labelled_in_class"] = np.concatenate(inside) if inside else empty
        cols["ann_labelled_outside_class"] = np.concatenate(outside) if outside else empty
    return cols


def check_coco_consistency(
    data: Dict[str, Any],
    source: str,
    class_keypoint_slots: Optional[Sequence[Sequence[int]]] = None,
    first_category_id: int = 1,
) -> ConsistencyReport:
    """:func:`check_annotation_consistency` of a parsed COCO-style dict (see
    :func:`consistency_columns_from_coco`)."""
    columns = consistency_columns_from_coco(data, class_keypoint_slots, first_category_id)
    return check_annotation_consistency(**columns, source=source)
