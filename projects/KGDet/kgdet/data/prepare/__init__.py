"""Offline preparation of the released data sets: converters of the raw DeepFashion2 and FLD
annotations to COCO-style jsons (:mod:`.convert_deepfashion2`, :mod:`.convert_fld`) and the
checks and report they share (:mod:`.conversion`). Used by ``datasets/prepare_*.py``."""

from .conversion import ConversionReport
from .convert_deepfashion2 import convert_deepfashion2
from .convert_fld import FLD_SPLITS, convert_fld

__all__ = ["ConversionReport", "convert_deepfashion2", "convert_fld", "FLD_SPLITS"]
