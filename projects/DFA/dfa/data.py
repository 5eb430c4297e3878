"""DFA data: garment-level records, the crop mapper (training) and the image mapper (evaluation).

DFA works on one garment at a time: its ground-truth (or detected) box is cropped and resized
to a square (Appendix B.1). Training iterates over garments, evaluation over images (one output
row per annotation, in dataset order, as FLDEvaluator's aligned mode expects).
"""

import copy
import logging
import numpy as np
from typing import Dict, List, Optional
import torch

from detectron2.config import configurable
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data import detection_utils as utils
from detectron2.data import get_detection_dataset_dicts
from detectron2.structures import BoxMode

from kgdet.data.fld_meta import FLD_FLIP_INDICES
from kgdet.data.image_io import read_image

from .landmarks import (
    FLD_CLASS_SLOTS,
    crop_box,
    garment_targets,
    landmark_frame,
    normalize_landmarks,
)

__all__ = [
    "class_slots_of",
    "flip_indices_of",
    "garment_records",
    "load_train_garments",
    "DFACropMapper",
    "DFAImageMapper",
    "build_dfa_train_loader",
    "build_dfa_garment_loader",
    "build_dfa_test_loader",
]

logger = logging.getLogger(__name__)


def class_slots_of(dataset_names: List[str]) -> List[List[int]]:
    """Per-class defined landmark slots from the metadata (FLD's table if absent)."""
    if not dataset_names:
        return [list(s) for s in FLD_CLASS_SLOTS]
    meta = MetadataCatalog.get(dataset_names[0])
    return [list(s) for s in meta.get("class_keypoint_slots", FLD_CLASS_SLOTS)]


def flip_indices_of(dataset_names: List[str], num_landmarks: int) -> List[int]:
    """Horizontal-flip slot permutation from the metadata's flip map (FLD's pairs if absent)."""
    if not dataset_names:
        return list(FLD_FLIP_INDICES[:num_landmarks])
    meta = MetadataCatalog.get(dataset_names[0])
    if meta.get("keypoint_names") is None or meta.get("keypoint_flip_map") is None:
        return list(FLD_FLIP_INDICES[:num_landmarks])
    return [int(i) for i in utils.create_keypoint_hflip_indices(dataset_names)]


def garment_records(
    dataset_dicts: List[Dict],
    class_slots: List[List[int]],
    num_landmarks: int,
    min_box_size: float,
    dataset_label: str = "dataset",
) -> List[Dict]:
    """One record per trainable garment (an annotation of an image dict).

    Skipped, with a logged count: boxes smaller than ``min_box_size`` pixels and garments with
    no labelled landmark (all truncated). A clothing type outside the dataset raises ValueError.
    """
    records = []
    skipped = {"degenerate box": 0, "all landmarks truncated or unlabelled": 0}
    for image in dataset_dicts:
        for index, annotation in enumerate(image.get("annotations", [])):
            where = f"{image['file_name']} (annotation {index})"
            target = garment_targets(annotation, class_slots, num_landmarks, where)
            x1, y1, x2, y2 = target["box"]
            if x2 - x1 < min_box_size or y2 - y1 < min_box_size:
                skipped["degenerate box"] += 1
                continue
            if not target["labelled"].any():
                skipped["all landmarks truncated or unlabelled"] += 1
                continue
            records.append(
                {
                    "file_name": image["file_name"],
                    "image_id": image.get("image_id"),
                    "height": image.get("height"),
                    "width": image.get("width"),
                    "annotation_index": index,
                    **target,
                }
            )
    for reason, count in skipped.items():
        if count:
            logger.warning(f"DFA {dataset_label}: skipped {count} garments ({reason})")
    logger.info(f"DFA {dataset_label}: {len(records)} garments")
    return records


class _ImageCache:
    """Optional in-memory cache of decoded images (small datasets)."""

    def __init__(self, image_format: str, enabled: bool):
        self.image_format = image_format
        self.enabled = enabled
        self._images: Dict[str, np.ndarray] = {}

    def read(self, record: Dict) -> np.ndarray:
        name = record["file_name"]
        if self.enabled and name in self._images:
            return self._images[name]
        # read_image's BGR channel flip is a strided view: make it contiguous once, not per crop.
        image = np.ascontiguousarray(read_image(name, format=self.image_format))
        if record.get("height") is not None and record.get("width") is not None:
            utils.check_image_size(record, image)
        if self.enabled:
            self._images[name] = image
        return image


class DFACropMapper:
    """Garment record -> crop dict for :class:`dfa.DFA` training (or centre computation).

    Output: ``image`` (C, S, S) uint8 crop (``crop_mode`` "stretch" or "pad", see
    :func:`dfa.landmarks.crop_box`), ``landmarks`` (L, 2) float32 landmark-frame units,
    ``labelled`` (L,) bool, ``visibility`` (L,) int64 (-1 = undefined slot), ``category`` int.
    Training-time augmentation: box jitter, then horizontal flip (slots swapped).
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        crop_size: int,
        box_expand: float,
        image_format: str,
        flip_indices: List[int],
        crop_mode: str = "stretch",
        random_flip: bool = False,
        box_jitter: float = 0.0,
        cache_images: bool = False,
    ):
        self.is_train = is_train
        self.crop_size = crop_size
        self.crop_mode = crop_mode
        self.box_expand = box_expand
        self.flip_indices = np.asarray(flip_indices, dtype=np.int64)
        self.random_flip = random_flip and is_train
        self.box_jitter = box_jitter if is_train else 0.0
        self.cache = _ImageCache(image_format, cache_images)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        d = cfg.MODEL.DFA
        names = list(cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST)
        return {
            "is_train": is_train,
            "crop_size": d.CROP_SIZE,
            "box_expand": d.BOX_EXPAND,
            "image_format": cfg.INPUT.FORMAT,
            "flip_indices": flip_indices_of(names, d.NUM_LANDMARKS),
            "crop_mode": d.CROP_MODE,
            "random_flip": d.RANDOM_FLIP,
            "box_jitter": d.BOX_JITTER,
            "cache_images": d.CACHE_IMAGES,
        }

    def _jitter(self, box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        j = self.box_jitter
        cx = (x1 + x2) / 2 + np.random.uniform(-j, j) * w
        cy = (y1 + y2) / 2 + np.random.uniform(-j, j) * h
        w, h = w * np.exp(np.random.uniform(-j, j)), h * np.exp(np.random.uniform(-j, j))
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])

    def __call__(self, record: Dict) -> Dict:
        image = self.cache.read(record)
        box = np.asarray(record["box"], dtype=np.float64)
        if self.box_jitter > 0:
            box = self._jitter(box)
        crop = crop_box(image, box, self.crop_size, self.box_expand, self.crop_mode)
        landmarks = normalize_landmarks(
            torch.as_tensor(record["points"], dtype=torch.float64),
            landmark_frame(torch.as_tensor(box, dtype=torch.float64), self.crop_mode),
        ).float()
        labelled = torch.as_tensor(record["labelled"], dtype=torch.bool)
        visibility = torch.as_tensor(record["visibility"], dtype=torch.int64)
        if self.random_flip and np.random.rand() < 0.5:
            crop = crop[:, ::-1]
            perm = torch.as_tensor(self.flip_indices)
            landmarks = landmarks[perm] * torch.tensor([-1.0, 1.0])
            labelled, visibility = labelled[perm], visibility[perm]
        landmarks = torch.where(labelled.unsqueeze(-1), landmarks, torch.zeros_like(landmarks))
        return {
            "image": torch.as_tensor(np.ascontiguousarray(crop.transpose(2, 0, 1))),
            "landmarks": landmarks,
            "labelled": labelled,
            "visibility": visibility,
            "category": record["category"],
            "file_name": record["file_name"],
        }


class DFAImageMapper:
    """Image dict -> evaluation input: ``boxes`` (G, 4) XYXY (every annotation, in order),
    ``crops`` (G, C, S, S) uint8, ``classes`` (G,) ground-truth clothing types (they select the
    cascade with per-type cascades: the GT-box protocol), plus ``file_name``, ``image_id``,
    ``height``, ``width``.

    Boxes smaller than 1 pixel are grown to 1 pixel about their centre (counted, logged): the
    evaluator needs one row per annotation.
    """

    @configurable
    def __init__(
        self, *, crop_size: int, box_expand: float, image_format: str, crop_mode: str = "stretch"
    ):
        self.crop_size = crop_size
        self.box_expand = box_expand
        self.crop_mode = crop_mode
        self.image_format = image_format
        self.num_degenerate = 0

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DFA
        return {
            "crop_size": d.CROP_SIZE,
            "box_expand": d.BOX_EXPAND,
            "image_format": cfg.INPUT.FORMAT,
            "crop_mode": d.CROP_MODE,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        record = copy.copy(dataset_dict)
        image = np.ascontiguousarray(read_image(record["file_name"], format=self.image_format))
        utils.check_image_size(record, image)
        boxes, classes = [], []
        for annotation in record.get("annotations", []):
            classes.append(int(annotation["category_id"]))
            box = BoxMode.convert(
                list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS
            )
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                self.num_degenerate += 1
                logger.warning(
                    f"{record['file_name']}: degenerate box {box} grown to 1 px for DFA "
                    f"({self.num_degenerate} so far)"
                )
            boxes.append(box)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        crops = [crop_box(image, b, self.crop_size, self.box_expand, self.crop_mode) for b in boxes]
        channels = image.shape[2] if image.ndim == 3 else 1
        crops = (
            np.stack(crops)
            if crops
            else np.zeros((0, self.crop_size, self.crop_size, channels), np.uint8)
        )
        return {
            "file_name": record["file_name"],
            "image_id": record.get("image_id"),
            "height": record.get("height", image.shape[0]),
            "width": record.get("width", image.shape[1]),
            "boxes": torch.as_tensor(boxes, dtype=torch.float32),
            "classes": torch.as_tensor(classes, dtype=torch.int64),
            "crops": torch.as_tensor(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))),
        }


def load_train_garments(cfg, dataset_names: Optional[List[str]] = None) -> List[Dict]:
    """Garment records of cfg.DATASETS.TRAIN (or ``dataset_names``), see :func:`garment_records`."""
    names = list(dataset_names or cfg.DATASETS.TRAIN)
    dicts = get_detection_dataset_dicts(names, filter_empty=False)
    d = cfg.MODEL.DFA
    return garment_records(
        dicts, class_slots_of(names), d.NUM_LANDMARKS, d.MIN_BOX_SIZE, "+".join(names)
    )


def build_dfa_train_loader(cfg, garments: Optional[List[Dict]] = None):
    """Infinite shuffled loader of augmented garment crops, SOLVER.IMS_PER_BATCH per batch."""
    garments = garments if garments is not None else load_train_garments(cfg)
    return build_detection_train_loader(
        garments,
        mapper=DFACropMapper(cfg, is_train=True),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_dfa_garment_loader(cfg, garments: List[Dict], batch_size: int):
    """One ordered pass over garments, un-augmented (cluster centres, routing statistics)."""
    return build_detection_test_loader(
        garments,
        mapper=DFACropMapper(cfg, is_train=False),
        batch_size=batch_size,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_dfa_test_loader(cfg, dataset_name: str, batch_size: int = 1):
    """One pass over the images of ``dataset_name`` in dataset order (for FLDEvaluator)."""
    return build_detection_test_loader(
        cfg, dataset_name, mapper=DFAImageMapper(cfg), batch_size=batch_size
    )
