"""Built-in datasets at fixed paths under ``$DETECTRON2_DATASETS`` (default ``./datasets``).

Registered when ``kgdet`` is imported; nothing touches the disk until ``DatasetCatalog.get``.
Layout (see ``datasets/README.md``):

* ``deepfashion2_train``: ``deepfashion2/train/{image/, train-coco_style.json}``
* ``deepfashion2_val``:   ``deepfashion2/validation/{image/, val-coco_style.json}``
* ``deepfashion2_test``:  ``deepfashion2/test/image/`` (image list only; image id = file number)
* ``fld_{train,val,test}``: ``fld/`` (the released ``img/`` folder) and
  ``fld/annotations/fld_{split}.json`` written by ``datasets/prepare_fld.py``
* ``deepfashion2_demo``: a DeepFashion2-format folder ``{image/, annotations.json}`` (e.g. a
  small subset for fitting tests) whose path is read from ``$KGDET_DF2_DEMO`` at load time;
* the synthetic sets of :mod:`kgdet.data.synthetic`.

Unlike Detectron2's own ``builtin.py`` the dataset root is read when a dataset is *loaded*, so
``DETECTRON2_DATASETS`` may be set after ``import kgdet`` (the metadata's ``json_file`` /
``image_root`` are then updated to the files actually loaded).
"""

import logging
import os
from typing import Any, Callable, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .deepfashion2_meta import get_deepfashion2_metadata
from .fld_meta import get_fld_metadata
from .register import load_deepfashion2_json, load_fld_json
from .synthetic import register_synthetic_datasets

__all__ = [
    "register_all_deepfashion2",
    "register_all_fld",
    "register_deepfashion2_demo",
    "register_all_builtin_datasets",
    "load_deepfashion2_image_list",
]

logger = logging.getLogger(__name__)

# name -> (image root, json file), relative to the datasets root.
_DEEPFASHION2_SPLITS = {
    "deepfashion2_train": ("deepfashion2/train/image", "deepfashion2/train/train-coco_style.json"),
    "deepfashion2_val": (
        "deepfashion2/validation/image",
        "deepfashion2/validation/val-coco_style.json",
    ),
}
_DEEPFASHION2_TEST = ("deepfashion2_test", "deepfashion2/test/image")
_FLD_SPLITS = {
    f"fld_{s}": ("fld", f"fld/annotations/fld_{s}.json") for s in ("train", "val", "test")
}
_DEEPFASHION2_DEMO = ("deepfashion2_demo", "image", "annotations.json")
DF2_DEMO_ENV = "KGDET_DF2_DEMO"
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _datasets_root() -> str:
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _df2_demo_root() -> str:
    return os.path.expanduser(os.getenv(DF2_DEMO_ENV, os.path.join(_datasets_root(), "df2_demo")))


def _follow_loaded_paths(name: str, **paths: str) -> None:
    """Point ``json_file`` / ``image_root`` metadata at the paths actually loaded.

    Deliberately bypasses ``Metadata``'s re-set assertion for these two path keys only: they
    follow ``DETECTRON2_DATASETS`` at load time (all other keys are fixed constants).
    """
    meta = MetadataCatalog.get(name)
    for key, value in paths.items():
        if meta.get(key) != value:
            logger.info(f"Dataset '{name}': {key} resolved to {value}")
            vars(meta)[key] = value


def _register_lazy_json(
    name: str,
    image_rel: str,
    json_rel: str,
    root: Optional[str],
    load_fn: Callable[[str, str, str], List[Dict[str, Any]]],
    metadata: Dict[str, Any],
    root_fn: Callable[[], str] = _datasets_root,
    root_name: str = "$DETECTRON2_DATASETS",
) -> None:
    if name in DatasetCatalog:
        return

    def load() -> List[Dict[str, Any]]:
        base = root if root is not None else root_fn()
        json_file, image_root = os.path.join(base, json_rel), os.path.join(base, image_rel)
        if not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"Dataset '{name}': annotation file {json_file} not found. Expected "
                f"<root>/{json_rel} with images in <root>/{image_rel}, where the root is "
                f"{root_name} (now {base!r}); see datasets/README.md."
            )
        _follow_loaded_paths(name, json_file=json_file, image_root=image_root)
        return load_fn(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    base = root if root is not None else root_fn()
    MetadataCatalog.get(name).set(
        json_file=os.path.join(base, json_rel), image_root=os.path.join(base, image_rel), **metadata
    )


def load_deepfashion2_image_list(image_dir: str) -> List[Dict[str, Any]]:
    """Dataset dicts for an unannotated DeepFashion2 image folder (the test split).

    ``image_id`` is the integer value of the 6-digit file name (000001.jpg -> 1), as the official
    submission format requires. No image is opened: the mapper fills ``height``/``width``.
    """
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(
            f"DeepFashion2 image folder {image_dir} not found (expected "
            "$DETECTRON2_DATASETS/deepfashion2/test/image/; see datasets/README.md)"
        )
    names = sorted(os.listdir(image_dir))
    images = [n for n in names if n.lower().endswith(_IMAGE_EXTENSIONS)]
    if len(images) < len(names):
        logger.info(f"{image_dir}: ignored {len(names) - len(images)} non-image entries")
    if not images:
        raise FileNotFoundError(f"{image_dir}: no images ({', '.join(_IMAGE_EXTENSIONS)}) found")
    records = []
    for file_name in images:
        stem = os.path.splitext(file_name)[0]
        if not stem.isdigit():
            raise ValueError(
                f"{os.path.join(image_dir, file_name)}: file name must be a number such as "
                "000001.jpg (the image id of DeepFashion2 submissions is read from it)"
            )
        records.append({"file_name": os.path.join(image_dir, file_name), "image_id": int(stem)})
    records.sort(key=lambda r: r["image_id"])
    return records


def _register_deepfashion2_test(root: Optional[str]) -> None:
    name, image_rel = _DEEPFASHION2_TEST
    if name in DatasetCatalog:
        return

    def load() -> List[Dict[str, Any]]:
        image_root = os.path.join(root if root is not None else _datasets_root(), image_rel)
        records = load_deepfashion2_image_list(image_root)
        _follow_loaded_paths(name, image_root=image_root)
        return records

    DatasetCatalog.register(name, load)
    base = root if root is not None else _datasets_root()
    # No json_file: the test annotations are not public (submission only).
    MetadataCatalog.get(name).set(
        image_root=os.path.join(base, image_rel), **get_deepfashion2_metadata()
    )


def register_all_deepfashion2(root: Optional[str] = None) -> None:
    """Register ``deepfashion2_{train,val,test}``; ``root=None`` reads $DETECTRON2_DATASETS
    when the data is loaded."""
    for name, (image_rel, json_rel) in _DEEPFASHION2_SPLITS.items():
        _register_lazy_json(
            name, image_rel, json_rel, root, load_deepfashion2_json, get_deepfashion2_metadata()
        )
    _register_deepfashion2_test(root)


def register_deepfashion2_demo(root: Optional[str] = None) -> None:
    """Register ``deepfashion2_demo`` (DeepFashion2 metadata and evaluator) from a folder with
    ``annotations.json`` and ``image/``; ``root=None`` reads ``$KGDET_DF2_DEMO`` at load time
    (default ``<$DETECTRON2_DATASETS>/df2_demo``). Nothing is copied."""
    name, image_rel, json_rel = _DEEPFASHION2_DEMO
    _register_lazy_json(
        name,
        image_rel,
        json_rel,
        root,
        load_deepfashion2_json,
        get_deepfashion2_metadata(),
        root_fn=_df2_demo_root,
        root_name=f"${DF2_DEMO_ENV}",
    )


def register_all_fld(root: Optional[str] = None) -> None:
    """Register ``fld_{train,val,test}``; ``root=None`` reads $DETECTRON2_DATASETS at load."""
    for name, (image_rel, json_rel) in _FLD_SPLITS.items():
        _register_lazy_json(name, image_rel, json_rel, root, load_fld_json, get_fld_metadata())


def register_all_builtin_datasets() -> None:
    """DeepFashion2, FLD and the synthetic datasets (idempotent)."""
    register_all_deepfashion2()
    register_deepfashion2_demo()
    register_all_fld()
    register_synthetic_datasets()


if __name__.endswith(".builtin"):
    # Registered on import, like detectron2.data.datasets.builtin.
    register_all_builtin_datasets()
