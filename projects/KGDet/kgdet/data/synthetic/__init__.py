"""Built-in synthetic garments: DeepFashion2-like outfits and FLD-layout garments, generated on
first use and cached (:mod:`.datasets`), their keypoint layouts (:mod:`.layouts`) and the
renderer (:mod:`.render`)."""

from .datasets import (
    DF2_LIKE_LAYOUT,
    FLD_LAYOUT,
    LAYOUTS,
    SYNTHETIC_DATASETS,
    KeypointLayout,
    generate_synthetic_dataset,
    get_layout,
    load_or_generate_synthetic_dataset,
    register_synthetic_dataset,
    register_synthetic_datasets,
    synthetic_metadata,
)

__all__ = [
    "SYNTHETIC_DATASETS",
    "KeypointLayout",
    "DF2_LIKE_LAYOUT",
    "FLD_LAYOUT",
    "LAYOUTS",
    "get_layout",
    "synthetic_metadata",
    "generate_synthetic_dataset",
    "load_or_generate_synthetic_dataset",
    "register_synthetic_dataset",
    "register_synthetic_datasets",
]
