"""Detectron2 dataset dicts built on demand from :class:`CompactAnnotations`.

:class:`CompactDatasetDicts` is what ``DatasetCatalog.get`` returns for a DeepFashion2 json: a
read-only, picklable ``Sequence`` whose item ``i`` is the dict Detectron2's ``load_coco_json``
would make for image ``i`` (images sorted by id; ``file_name`` joined to the image root;
``bbox_mode`` XYWH_ABS; the 3 x K global keypoint values with +0.5 on x and y; contiguous
``category_id`` = json id - 1), built when it is accessed and not kept. Every Detectron2
consumer of dataset dicts works on it (mappers, ``Visualizer.draw_dataset_dict``, the filters
of ``detectron2.data.build``); only ``segmentation`` is absent (see :mod:`kgdet.data.compact`).

:func:`get_kgdet_dataset_dicts` is Detectron2's ``get_detection_dataset_dicts`` for such
sequences: it filters with the columns instead of iterating Python dicts and returns a
sequence again, so a training loader of the full DeepFashion2 train split never holds its
records as Python objects, and never pickles them per rank (``DatasetFromList`` serialization):
the memory-mapped columns exist once per machine.
"""

import itertools
import logging
import numpy as np
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import get_detection_dataset_dicts, print_instances_class_histogram
from detectron2.data.detection_utils import check_metadata_consistency
from detectron2.structures import BoxMode

from .compact import CompactAnnotations

__all__ = ["CompactDatasetDicts", "ConcatDatasetDicts", "get_kgdet_dataset_dicts"]

logger = logging.getLogger(__name__)


def _position(i, n: int) -> int:
    """Index ``i`` (negative counts from the end) of a sequence of ``n`` images as 0..n-1.

    Raises:
        IndexError: ``i`` outside ``-n .. n-1``.
    """
    if not -n <= i < n:
        raise IndexError(f"dataset dict index {i} out of range for {n} images")
    return int(i) % n


class CompactDatasetDicts(Sequence[Dict[str, Any]]):
    """Lazy dataset dicts of the image rows ``indices`` (default: all) of ``compact``.

    ``dicts[i]`` builds a fresh dict (callers may modify it); ``dicts[a:b]`` returns a list.
    """

    def __init__(
        self,
        compact: CompactAnnotations,
        image_root: str,
        indices: Optional[np.ndarray] = None,
    ):
        self.compact = compact
        self.image_root = image_root
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return self.compact.num_images if self.indices is None else len(self.indices)

    def image_rows(self) -> np.ndarray:
        """(len(self),) int64 rows of ``compact``'s image columns."""
        if self.indices is None:
            return np.arange(self.compact.num_images, dtype=np.int64)
        return self.indices

    def subset(self, positions: Union[np.ndarray, Sequence[int]]) -> "CompactDatasetDicts":
        """The dicts at ``positions`` (of this sequence), as a new lazy sequence."""
        rows = self.image_rows()[np.asarray(positions, dtype=np.int64)]
        return CompactDatasetDicts(self.compact, self.image_root, rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = _position(i, len(self))
        return self.record(int(self.indices[i]) if self.indices is not None else i)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        """Equal to a list or sequence of the same dicts (as a list of dicts would be)."""
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def record(self, row: int) -> Dict[str, Any]:
        """The dataset dict of image row ``row`` of ``compact``."""
        c = self.compact
        annotations = []
        for a in c.annotation_range(row):
            bbox = c.bboxes[a]
            # Integers as the json wrote them (Detectron2's transforms treat int boxes as ints).
            bbox = bbox.astype(np.int64) if c.bbox_is_integer[a] else bbox
            keypoints = c.global_keypoints(a, dtype=np.float64)
            keypoints[:, :2] += 0.5
            annotations.append(
                {
                    "iscrowd": int(c.iscrowd[a]),
                    "bbox": bbox.tolist(),
                    "keypoints": keypoints.reshape(-1).tolist(),
                    "category_id": int(c.category_ids[a]) - 1,
                    "bbox_mode": BoxMode.XYWH_ABS,
                }
            )
        return {
            "file_name": os.path.join(self.image_root, c.file_name(row)),
            "height": int(c.image_heights[row]),
            "width": int(c.image_widths[row]),
            "image_id": int(c.image_ids[row]),
            "annotations": annotations,
        }

    def annotation_rows(self) -> np.ndarray:
        """Annotation rows of the selected images (in sequence order)."""
        o = self.compact.image_annotation_offsets
        rows = self.image_rows()
        starts, ends = o[rows], o[rows + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return np.repeat(starts - first, lengths) + np.arange(total, dtype=np.int64)

    def per_image_sum(self, values: np.ndarray) -> np.ndarray:
        """(len(self),) sums of a per-annotation column over each selected image."""
        cumulative = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
        o = self.compact.image_annotation_offsets
        rows = self.image_rows()
        return cumulative[o[rows + 1]] - cumulative[o[rows]]

    def __repr__(self) -> str:
        return f"CompactDatasetDicts({len(self)} images of {self.compact!r})"


class ConcatDatasetDicts(Sequence[Dict[str, Any]]):
    """Several dataset-dict sequences read as one (lazy)."""

    def __init__(self, parts: Sequence[Sequence[Dict[str, Any]]]):
        self.parts = list(parts)
        self._ends = np.cumsum([len(p) for p in self.parts]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = _position(i, len(self))
        p = int(np.searchsorted(self._ends, i, side="right"))
        start = int(self._ends[p - 1]) if p else 0
        return self.parts[p][i - start]


def _filter(
    dicts: CompactDatasetDicts, name: str, filter_empty: bool, min_keypoints: int
) -> CompactDatasetDicts:
    keep = np.ones(len(dicts), dtype=bool)
    c = dicts.compact
    if filter_empty:
        keep &= dicts.per_image_sum(np.asarray(c.iscrowd) == 0) > 0
        logger.info(
            f"Removed {int((~keep).sum())} images with no usable annotations. "
            f"{int(keep.sum())} images left."
        )
    if min_keypoints > 0:
        enough = dicts.per_image_sum(np.asarray(c.num_labelled)) >= min_keypoints
        logger.info(
            f"Removed {int((keep & ~enough).sum())} images with fewer than {min_keypoints} "
            f"keypoints. {int((keep & enough).sum())} images left."
        )
        keep &= enough
    if keep.all():
        return dicts
    return dicts.subset(np.flatnonzero(keep))


def _log_class_histogram(parts: List[CompactDatasetDicts], class_names: List[str]) -> None:
    counts = np.zeros(len(class_names), dtype=np.int64)
    for d in parts:
        rows = d.annotation_rows()
        classes = np.asarray(d.compact.category_ids)[rows] - 1
        crowd = np.asarray(d.compact.iscrowd)[rows] != 0
        counts += np.bincount(classes[~crowd], minlength=len(class_names))[: len(class_names)]
    # Detectron2's table, from one stand-in record holding one shared dict per class.
    stand_ins = [{"category_id": c} for c in range(len(class_names))]
    annotations = list(
        itertools.chain.from_iterable([stand_ins[c]] * int(n) for c, n in enumerate(counts))
    )
    print_instances_class_histogram([{"annotations": annotations}], class_names)


def get_kgdet_dataset_dicts(
    names: Union[str, Sequence[str]],
    filter_empty: bool = True,
    min_keypoints: int = 0,
    proposal_files: Optional[Sequence[str]] = None,
    check_consistency: bool = True,
) -> Sequence[Dict[str, Any]]:
    """Detectron2's ``get_detection_dataset_dicts`` (same arguments and filters: images with
    only crowd annotations, images with fewer than ``min_keypoints`` labelled keypoints, the
    class histogram, ``thing_classes`` consistency) that keeps :class:`CompactDatasetDicts`
    lazy: when every dataset returns one, the result is a :class:`CompactDatasetDicts` (one
    dataset) or a :class:`ConcatDatasetDicts`, never a list. Any other dataset (or proposal
    files) goes through Detectron2's function and gives its list.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("get_kgdet_dataset_dicts: no dataset names given")
    parts = [DatasetCatalog.get(n) for n in names]
    if proposal_files is not None or not all(isinstance(p, CompactDatasetDicts) for p in parts):
        return get_detection_dataset_dicts(
            names, filter_empty, min_keypoints, proposal_files, check_consistency
        )
    for name, part in zip(names, parts):
        if not len(part):
            raise AssertionError(f"Dataset '{name}' is empty!")
    parts = [_filter(p, n, filter_empty, min_keypoints) for n, p in zip(names, parts)]
    if check_consistency:
        class_names = MetadataCatalog.get(names[0]).get("thing_classes", None)
        if class_names is not None:
            check_metadata_consistency("thing_classes", names)
            _log_class_histogram(parts, class_names)
    if not sum(len(p) for p in parts):
        raise AssertionError(f"No valid data found in {','.join(names)}.")
    return parts[0] if len(parts) == 1 else ConcatDatasetDicts(parts)
