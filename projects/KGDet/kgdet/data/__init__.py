"""Datasets (DeepFashion2, FLD, synthetic garments) and the keypoint-aware mapper.

Importing this package registers the built-in datasets (lazily; see :mod:`kgdet.data.builtin`).
"""

from . import deepfashion2_meta, fld_meta
from .build import build_kgdet_test_loader, build_kgdet_train_loader
from .compact_dicts import CompactDatasetDicts, get_kgdet_dataset_dicts
from .builtin import register_all_deepfashion2, register_all_fld  # registers on import
from .compact import CompactAnnotations, OutsideClassBlockError, load_compact_annotations
from .dataset_mapper import KGDetDatasetMapper
from .register import (
    load_deepfashion2_json,
    load_fld_json,
    register_deepfashion2_instances,
    register_fld_instances,
)
from .synthetic import register_synthetic_datasets

__all__ = [
    "CompactAnnotations",
    "OutsideClassBlockError",
    "load_compact_annotations",
    "KGDetDatasetMapper",
    "build_kgdet_test_loader",
    "build_kgdet_train_loader",
    "CompactDatasetDicts",
    "get_kgdet_dataset_dicts",
    "register_deepfashion2_instances",
    "register_fld_instances",
    "register_all_deepfashion2",
    "register_all_fld",
    "register_synthetic_datasets",
    "load_deepfashion2_json",
    "load_fld_json",
]
