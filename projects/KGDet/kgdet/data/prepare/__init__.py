"""Offline preparation of the released data sets: converters of the raw DeepFashion2 and FLD
annotations to COCO-style jsons (:mod:`.convert_deepfashion2`, :mod:`.convert_fld`) and the
checks and report they share (:mod:`.conversion`). Used by ``datasets/prepare_*.py``."""
