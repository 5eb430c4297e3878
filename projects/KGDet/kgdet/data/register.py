"""Register DeepFashion2 / FLD COCO-style json files as Detectron2 datasets.

Both follow ``detectron2.data.datasets.register_coco_instances`` (lazy loader in
``DatasetCatalog``, ``json_file`` / ``image_root`` in ``MetadataCatalog``) but add the dataset's
keypoint metadata and their own ``evaluator_type``. ``register_coco_instances`` cannot be called
directly: it sets ``evaluator_type="coco"`` itself and drops FLD's extra annotation keys.
"""

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Union
import pycocotools.mask as mask_util

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .deepfashion2_meta import (
    DF2_CLASS_KEYPOINT_SLOTS,
    DF2_CLASS_NAMES,
    DF2_NUM_KEYPOINTS,
    DF2_RAW_CATEGORY_NAMES,
    get_deepfashion2_metadata,
)
from .fld_meta import (
    FLD_CLASS_KEYPOINT_SLOTS,
    FLD_CLASS_NAMES,
    FLD_NUM_KEYPOINTS,
    get_fld_metadata,
)
from .validation import AnnotationSchema, check_annotation_file, has_valid_polygon, load_json_file

__all__ = [
    "register_deepfashion2_instances",
    "register_fld_instances",
    "load_deepfashion2_json",
    "load_fld_json",
    "coco_json_to_dataset_dicts",
    "DEEPFASHION2_SCHEMA",
    "FLD_SCHEMA",
    "FLD_EXTRA_ANNOTATION_KEYS",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Per-annotation keys of our FLD json kept in the dataset dicts (the team's FLD contract).
FLD_EXTRA_ANNOTATION_KEYS = ["fld_visibility", "variation_type"]

DEEPFASHION2_SCHEMA = AnnotationSchema(
    "DeepFashion2",
    tuple(DF2_CLASS_NAMES),
    tuple((n,) for n in DF2_RAW_CATEGORY_NAMES),
    DF2_NUM_KEYPOINTS,
    tuple(tuple(s) for s in DF2_CLASS_KEYPOINT_SLOTS),
)
FLD_SCHEMA = AnnotationSchema(
    "FLD",
    tuple(FLD_CLASS_NAMES),
    (),
    FLD_NUM_KEYPOINTS,
    tuple(tuple(s) for s in FLD_CLASS_KEYPOINT_SLOTS),
)


def coco_json_to_dataset_dicts(
    data: Dict[str, Any],
    image_root: str,
    json_file: str = "",
    extra_annotation_keys: Sequence[str] = (),
) -> List[Dict[str, Any]]:
    """Detectron2 dataset dicts of a checked COCO-style dict, as ``load_coco_json`` makes them
    (images by id, ``file_name`` joined to ``image_root``, ``bbox_mode`` XYWH_ABS, +0.5 on
    integer keypoint coordinates, compressed RLE), with two differences: class indices follow
    the official ids (category id c -> c - 1, whatever subset ``categories`` lists), and a
    garment without a valid segmentation polygon is kept without ``segmentation`` (KGDet uses
    no masks; ``load_coco_json`` drops it from training though evaluation keeps it).
    """
    keys = ["iscrowd", "bbox", "keypoints", "category_id"] + list(extra_annotation_keys)
    per_image: Dict[int, List[Dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data.get("annotations", []):
        per_image[ann["image_id"]].append(ann)
    dicts = []
    for img in sorted(data["images"], key=lambda i: i["id"]):
        objs = []
        for ann in per_image[img["id"]]:
            if ann.get("ignore", 0) != 0:
                raise ValueError(f"{json_file}: annotation {ann['id']}: 'ignore' is not supported")
            obj = {key: ann[key] for key in keys if key in ann}
            segm = ann.get("segmentation")
            if isinstance(segm, dict):
                if isinstance(segm.get("counts"), list):
                    segm = mask_util.frPyObjects(segm, *segm["size"])
                obj["segmentation"] = segm
            elif segm and has_valid_polygon(segm):
                obj["segmentation"] = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
            if obj.get("keypoints"):
                obj["keypoints"] = [
                    v + 0.5 if i % 3 != 2 else v for i, v in enumerate(obj["keypoints"])
                ]
            obj["bbox_mode"] = BoxMode.XYWH_ABS
            obj["category_id"] = ann["category_id"] - 1
            objs.append(obj)
        dicts.append(
            {
                "file_name": os.path.join(image_root, img["file_name"]),
                "height": img["height"],
                "width": img["width"],
                "image_id": img["id"],
                "annotations": objs,
            }
        )
    return dicts


def _load_checked_json(
    json_file: PathLike,
    image_root: PathLike,
    schema: AnnotationSchema,
    extra_annotation_keys: Sequence[str] = (),
) -> List[Dict[str, Any]]:
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    data = load_json_file(json_file)
    check_annotation_file(json_file, schema, data=data)
    dicts = coco_json_to_dataset_dicts(data, image_root, json_file, extra_annotation_keys)
    logger.info(f"Loaded {len(dicts)} images in COCO format from {json_file}")
    return dicts


def load_deepfashion2_json(
    json_file: PathLike, image_root: PathLike, dataset_name: Optional[str] = None
) -> List[Dict[str, Any]]:
    """Load a DeepFashion2 COCO-style json (official converter format or another tool's) into
    dataset dicts, after :func:`kgdet.data.validation.check_coco_annotations` (missing
    ``area`` / ``iscrowd`` / ``num_keypoints`` are filled and logged; subset or raw-name category
    lists are accepted when the ids are official; problems raise ``AnnotationFileError`` naming
    the file, record and field). Every annotation must carry all 294 keypoint slots (882
    values). ``dataset_name`` is accepted for ``load_coco_json`` compatibility; the metadata is
    the official one set at registration.
    """
    return _load_checked_json(json_file, image_root, DEEPFASHION2_SCHEMA)


def load_fld_json(
    json_file: PathLike, image_root: PathLike, dataset_name: Optional[str] = None
) -> List[Dict[str, Any]]:
    """Load an FLD COCO-style json written by ``datasets/prepare_fld.py`` (checked as
    :func:`load_deepfashion2_json`, 3 classes, 8 keypoint slots).

    Keeps ``fld_visibility`` (8 raw FLD codes; 0 = FLD's padding in slots the clothes type does
    not have, see ``class_keypoint_slots``) and
    ``variation_type`` (raw FLD code 1..5) on each annotation, and copies ``variation_type`` to
    the image dict (FLD has one garment per image).
    """
    dataset_dicts = _load_checked_json(
        json_file, image_root, FLD_SCHEMA, extra_annotation_keys=FLD_EXTRA_ANNOTATION_KEYS
    )
    for record in dataset_dicts:
        variation_types = {
            a["variation_type"] for a in record["annotations"] if "variation_type" in a
        }
        if len(variation_types) == 1:
            record["variation_type"] = variation_types.pop()
    return dataset_dicts


def register_deepfashion2_instances(name: str, json_file: PathLike, image_root: PathLike) -> None:
    """Register a DeepFashion2 COCO-style json + image folder under ``name``.

    Metadata: see :func:`kgdet.data.deepfashion2_meta.get_deepfashion2_metadata`, plus
    ``json_file`` and ``image_root``.
    """
    _check_args(name, json_file, image_root)
    DatasetCatalog.register(name, lambda: load_deepfashion2_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=os.fspath(json_file),
        image_root=os.fspath(image_root),
        **get_deepfashion2_metadata(),
    )


def register_fld_instances(name: str, json_file: PathLike, image_root: PathLike) -> None:
    """Register an FLD COCO-style json (from ``datasets/prepare_fld.py``) + image root.

    ``image_root`` is the FLD folder that holds ``img/`` (the json's file names are FLD's
    relative names such as ``img/img_00000001.jpg``). Metadata: see
    :func:`kgdet.data.fld_meta.get_fld_metadata`, plus ``json_file`` and ``image_root``.
    """
    _check_args(name, json_file, image_root)
    DatasetCatalog.register(name, lambda: load_fld_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=os.fspath(json_file), image_root=os.fspath(image_root), **get_fld_metadata()
    )


def _check_args(name: str, json_file: PathLike, image_root: PathLike) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"dataset name must be a non-empty str, got {name!r}")
    for arg, value in (("json_file", json_file), ("image_root", image_root)):
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{arg} must be a str or path-like, got {type(value).__name__}")
