"""Synthetic garment datasets: the embedded default data.

One deterministic generator parameterised by a keypoint layout (``synthetic_layouts``) renders
DeepFashion2-like outfits — one to three textured garments worn on a person, a top above a
bottom or a one-piece dress, with skin, hair, bags and arms that occlude them — whose outlines
follow their keypoints (``synthetic_render``). Two layouts are registered:

- ``kgdet_synth_train`` / ``kgdet_synth_val``: DF2-like, 7 classes with disjoint contiguous
  keypoint blocks of their own lengths (K = 108) and DeepFashion2's official OKS sigmas per
  landmark kind, ``evaluator_type="deepfashion2"``;
- ``dfa_synth_train`` / ``dfa_synth_val``: the FLD layout (3 classes, 8 shared slots, visible /
  occluded / truncated), ``evaluator_type="fld"``; annotations carry ``fld_visibility`` and
  ``variation_type`` as FLD's annotation files do;
- ``dfa_synth_train_large``: ``dfa_synth_train``'s layout, split and seed with 4x the images
  (2400). Every image is drawn from (seed, index) alone, so its first 600 images are exactly
  ``dfa_synth_train``'s. ``configs/dfa_synth.yaml`` trains on it: with the 600 images DFA's stage
  3 fitted its training garments without lowering the validation error
  (``projects/DFA/DESIGN.md`` §11).

Datasets are generated on first ``DatasetCatalog.get`` into
``$KGDET_SYNTH_CACHE/<name>_<hash>/`` (default root ``~/.cache/kgdet/synthetic``), where the hash
covers the generator version, layout and parameters, so a changed generator never reuses stale
files. Output is built in a temporary directory and renamed into place, so concurrent processes
never see partial output. Default sizes (overridable by env vars ``KGDET_SYNTH_NUM_TRAIN``,
``KGDET_SYNTH_NUM_VAL``, ``KGDET_SYNTH_IMAGE_SIZE``; ``KGDET_SYNTH_NUM_TRAIN`` sets every train
set's count, ``dfa_synth_train_large``'s included) take a few seconds to generate.

OKS sigmas: each synthetic landmark gets DeepFashion2's official sigma of the corresponding
landmark of the DeepFashion2 class it imitates (``synthetic_layouts.DF2_SIGMA_SOURCES``), fixed
by that correspondence and not tuned to any result.
"""

import hashlib
import json
import logging
import numpy as np
import os
import shutil
import tempfile
import time
from typing import Dict, List, Optional, Union
import cv2

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .layouts import DF2_LIKE_LAYOUT, FLD_LAYOUT, LAYOUTS, KeypointLayout, get_layout
from .render import render_synthetic_image

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

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 3  # bump whenever the rendered data changes
DEFAULT_IMAGE_SIZE = 320  # long side in pixels
DATASET_JSON = "dataset.json"

# name -> (layout, split, seed, default image count); train and val use different seeds.
SYNTHETIC_DATASETS = {
    "kgdet_synth_train": ("df2_like", "train", 1001, 600),
    "kgdet_synth_val": ("df2_like", "val", 2002, 100),
    "dfa_synth_train": ("fld", "train", 3003, 600),
    "dfa_synth_val": ("fld", "val", 4004, 100),
    # dfa_synth_train's seed: the same first 600 images, then 1800 more (module docstring)
    "dfa_synth_train_large": ("fld", "train", 3003, 2400),
}
_COUNT_ENV = {"train": "KGDET_SYNTH_NUM_TRAIN", "val": "KGDET_SYNTH_NUM_VAL"}


def synthetic_metadata(layout: Union[str, KeypointLayout]) -> Dict:
    """Detectron2 ``MetadataCatalog`` fields of a dataset drawn with ``layout``."""
    return get_layout(layout).metadata()


def _env_int(var: str, default: int) -> int:
    value = os.environ.get(var)
    if value is None or value == "":
        return default
    try:
        parsed = int(value)
    except ValueError:
        raise ValueError(f"environment variable {var}={value!r}: expected a positive integer")
    if parsed <= 0:
        raise ValueError(f"environment variable {var}={value!r}: expected a positive integer")
    return parsed


def default_cache_root() -> str:
    return os.environ.get("KGDET_SYNTH_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "kgdet", "synthetic"
    )


def _params_hash(layout: KeypointLayout, num_images: int, seed: int, image_size: int) -> str:
    key = json.dumps(
        [GENERATOR_VERSION, layout.name, list(layout.keypoint_names), num_images, seed, image_size]
    )
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def _image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def generate_synthetic_dataset(
    layout: Union[str, KeypointLayout],
    num_images: int,
    seed: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    out_dir: Optional[str] = None,
) -> List[Dict]:
    """Render ``num_images`` images deterministically (given ``seed``) into ``out_dir``.

    Writes ``out_dir/images/NNNNNN.jpg`` and ``out_dir/dataset.json``; ``out_dir`` must not exist
    (it is created atomically: everything goes to a sibling temporary directory first, then one
    ``os.rename``). If another process created ``out_dir`` meanwhile, its content is used.

    Returns:
        Detectron2 dataset dicts (file_name absolute, bbox XYWH_ABS, 0-based category_id,
        keypoints flat 3K list in continuous pixel coordinates, COCO visibility).
    """
    layout = get_layout(layout)
    if num_images <= 0 or image_size < 64:
        raise ValueError(f"num_images={num_images} must be > 0 and image_size={image_size} >= 64")
    if out_dir is None:
        raise ValueError("out_dir is required (see load_or_generate_synthetic_dataset)")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(os.path.join(out_dir, DATASET_JSON)):
        return _load(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    os.chmod(tmp_dir, 0o755)  # mkdtemp makes it private; the cache may be shared
    start = time.perf_counter()
    try:
        os.makedirs(os.path.join(tmp_dir, "images"))
        records = []
        for index in range(num_images):
            image, annotations = render_synthetic_image(_image_rng(seed, index), layout, image_size)
            rel_path = os.path.join("images", f"{index:06d}.jpg")
            if not cv2.imwrite(
                os.path.join(tmp_dir, rel_path), image, [cv2.IMWRITE_JPEG_QUALITY, 92]
            ):
                raise OSError(f"could not write {os.path.join(tmp_dir, rel_path)}")
            records.append(
                {
                    "file_name": rel_path,
                    "height": int(image.shape[0]),
                    "width": int(image.shape[1]),
                    "image_id": index,
                    "annotations": annotations,
                }
            )
        payload = {
            "generator_version": GENERATOR_VERSION,
            "layout": layout.name,
            "num_images": num_images,
            "seed": seed,
            "image_size": image_size,
            "keypoint_names": list(layout.keypoint_names),
            "thing_classes": list(layout.thing_classes),
            "images": records,
        }
        with open(os.path.join(tmp_dir, DATASET_JSON), "w") as f:
            json.dump(payload, f)
        try:
            os.rename(tmp_dir, out_dir)
        except OSError:
            if not os.path.exists(os.path.join(out_dir, DATASET_JSON)):
                raise
            logger.info(f"{out_dir} was generated concurrently by another process; using it")
            shutil.rmtree(tmp_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info(
        f"Generated {num_images} synthetic '{layout.name}' images (seed {seed}) in "
        f"{time.perf_counter() - start:.1f}s into {out_dir}"
    )
    return _load(out_dir)


def _load(out_dir: str) -> List[Dict]:
    json_path = os.path.join(out_dir, DATASET_JSON)
    with open(json_path) as f:
        payload = json.load(f)
    records = payload["images"]
    for record in records:
        record["file_name"] = os.path.join(out_dir, record["file_name"])
        for ann in record["annotations"]:
            ann["bbox_mode"] = BoxMode.XYWH_ABS
    return records


def load_or_generate_synthetic_dataset(
    name: str,
    layout: Union[str, KeypointLayout],
    num_images: int,
    seed: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    cache_root: Optional[str] = None,
) -> List[Dict]:
    """Dataset dicts from the cache ``<cache_root>/<name>_<hash>/``, generating them if absent."""
    layout = get_layout(layout)
    root = cache_root or default_cache_root()
    out_dir = os.path.join(root, f"{name}_{_params_hash(layout, num_images, seed, image_size)}")
    if os.path.exists(os.path.join(out_dir, DATASET_JSON)):
        return _load(out_dir)
    return generate_synthetic_dataset(layout, num_images, seed, image_size, out_dir)


def register_synthetic_dataset(
    name: str,
    layout: Union[str, KeypointLayout],
    num_images: int,
    seed: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    cache_root: Optional[str] = None,
) -> None:
    """Register a synthetic dataset (lazy: generated on first ``DatasetCatalog.get``)."""
    layout = get_layout(layout)
    DatasetCatalog.register(
        name,
        lambda: load_or_generate_synthetic_dataset(
            name, layout, num_images, seed, image_size, cache_root
        ),
    )
    MetadataCatalog.get(name).set(**synthetic_metadata(layout))


def _builtin_loader(name: str):
    """Loader of a built-in synthetic set; sizes read from the environment at load time."""
    layout, split, seed, default_count = SYNTHETIC_DATASETS[name]

    def load() -> List[Dict]:
        num_images = _env_int(_COUNT_ENV[split], default_count)
        image_size = _env_int("KGDET_SYNTH_IMAGE_SIZE", DEFAULT_IMAGE_SIZE)
        return load_or_generate_synthetic_dataset(name, layout, num_images, seed, image_size)

    return load


def register_synthetic_datasets() -> None:
    """Register the built-in synthetic datasets (idempotent; generation is lazy)."""
    registered = set(DatasetCatalog.list())
    for name, (layout, _, _, _) in SYNTHETIC_DATASETS.items():
        if name in registered:
            continue
        DatasetCatalog.register(name, _builtin_loader(name))
        MetadataCatalog.get(name).set(**synthetic_metadata(layout))
