"""Register DeepFashion2 / FLD COCO-style json files as Detectron2 datasets.

Both follow ``detectron2.data.datasets.register_coco_instances`` (lazy loader in
``DatasetCatalog``, ``json_file`` / ``image_root`` in ``MetadataCatalog``) but add the dataset's
keypoint metadata and their own ``evaluator_type``. ``register_coco_instances`` cannot be called
directly: it sets ``evaluator_type="coco"`` itself and drops FLD's extra annotation keys.
"""

import logging
import os
from typing import Any, Dict, List, Optional, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .deepfashion2_meta import DF2_NUM_KEYPOINTS, get_deepfashion2_metadata
from .fld_meta import FLD_NUM_KEYPOINTS, get_fld_metadata

__all__ = [
    "register_deepfashion2_instances",
    "register_fld_instances",
    "load_deepfashion2_json",
    "load_fld_json",
    "FLD_EXTRA_ANNOTATION_KEYS",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Per-annotation keys of our FLD json kept in the dataset dicts (the team's FLD contract).
FLD_EXTRA_ANNOTATION_KEYS = ["fld_visibility", "variation_type"]


def _check_keypoint_length(
    dataset_dicts: List[Dict[str, Any]], num_keypoints: int, json_file: PathLike
) -> None:
    """Fail early, naming the file, if an annotation's keypoints are not 3 * K long."""
    for record in dataset_dicts:
        for anno in record["annotations"]:
            kps = anno.get("keypoints")
            if kps is not None and len(kps) != 3 * num_keypoints:
                raise ValueError(
                    f"{json_file}: an annotation of image {record['image_id']} has "
                    f"{len(kps)} keypoint values; expected {3 * num_keypoints} "
                    f"(3 x {num_keypoints} global slots)"
                )


def load_deepfashion2_json(
    json_file: PathLike, image_root: PathLike, dataset_name: Optional[str] = None
) -> List[Dict[str, Any]]:
    """Load a DeepFashion2 COCO-style json (official converter format) into dataset dicts.

    Every annotation must carry all 294 keypoint slots (882 values).
    """
    dataset_dicts = load_coco_json(os.fspath(json_file), os.fspath(image_root), dataset_name)
    _check_keypoint_length(dataset_dicts, DF2_NUM_KEYPOINTS, json_file)
    return dataset_dicts


def load_fld_json(
    json_file: PathLike, image_root: PathLike, dataset_name: Optional[str] = None
) -> List[Dict[str, Any]]:
    """Load an FLD COCO-style json written by ``datasets/prepare_fld.py``.

    Keeps ``fld_visibility`` (8 raw FLD codes; 0 = FLD's padding in slots the clothes type does
    not have, see ``class_keypoint_slots``) and
    ``variation_type`` (raw FLD code 1..5) on each annotation, and copies ``variation_type`` to
    the image dict (FLD has one garment per image).
    """
    dataset_dicts = load_coco_json(
        os.fspath(json_file),
        os.fspath(image_root),
        dataset_name,
        extra_annotation_keys=FLD_EXTRA_ANNOTATION_KEYS,
    )
    _check_keypoint_length(dataset_dicts, FLD_NUM_KEYPOINTS, json_file)
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
