"""Small inputs and configs shared by the tests (imported as ``from builders import ...``).

Not a test module: ``tests/`` is on pytest's ``pythonpath`` (setup.cfg), so every test module can
import it wherever it lives under ``tests/``. Fixtures built on these are in ``conftest.py``.
"""

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import List, Optional
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances, Keypoints

from dfa import add_dfa_config
from kgdet import add_kgdet_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
FIXTURES = REPO_ROOT / "tests" / "fixtures"
DF2_DEMO_ENV = "KGDET_DF2_DEMO"
DEFAULT_DF2_DEMO_DIR = REPO_ROOT.parent / "shared" / "data" / "deepfashion2_demo"


def df2_demo_path() -> Path:
    """``$KGDET_DF2_DEMO`` if set, else ``../shared/data/deepfashion2_demo`` (may not exist)."""
    return Path(os.environ.get(DF2_DEMO_ENV) or DEFAULT_DF2_DEMO_DIR)


def df2_examples_path() -> Path:
    """The official example result files, ``deepfashion2_examples`` beside the demo folder."""
    return df2_demo_path().parent / "deepfashion2_examples"


def require_df2_demo() -> Path:
    """The demo folder, or skip the calling test with the variable to set."""
    path = df2_demo_path()
    if not (path / "annotations.json").exists():
        pytest.skip(
            f"DeepFashion2 demo data not found at {path}: set {DF2_DEMO_ENV} to the folder "
            "holding annotations.json and image/ (the 32-image demo subset)"
        )
    return path


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script that is not in a package (``train_net.py``, ``demo.py``, ``tools/*.py``,
    ``datasets/*.py``) from its file, as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The toy KGDet layout of the modelling tests: 3 classes, 6 keypoint slots, 2 per class.
NUM_CLASSES, NUM_KEYPOINTS = 3, 6


def tiny_kgdet_cfg(**kgdet):
    """KGDet structure (P5, 3 stages, columns 3/5/7) on a ResNet-18 with 64-channel FPN/head."""
    cfg = get_cfg()
    add_kgdet_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "Base-KGDet.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.KGDET.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.KGDET.NUM_KEYPOINTS = NUM_KEYPOINTS
    cfg.MODEL.KGDET.FEAT_CHANNELS = 64
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    for key, value in kgdet.items():
        setattr(cfg.MODEL.KGDET, key, value)
    return cfg


def make_kgdet_input(
    h: int,
    w: int,
    boxes: Optional[List[List[float]]] = None,
    classes: Optional[List[int]] = None,
    visible: bool = True,
    image: Optional[torch.Tensor] = None,
    num_keypoints: int = NUM_KEYPOINTS,
):
    """One mapped training sample: a random image and garments whose keypoints lie in their box
    (class c owns the c-th third of the slots; all of them labelled if ``visible``)."""
    inst = Instances((h, w))
    boxes = boxes or []
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes or [], dtype=torch.long)
    if boxes:
        b = inst.gt_boxes.tensor[:, None, :]
        rand = torch.rand(len(boxes), num_keypoints, 2)
        kps = torch.zeros(len(boxes), num_keypoints, 3)
        kps[..., :2] = b[..., :2] + rand * (b[..., 2:] - b[..., :2])
        per_class = num_keypoints // NUM_CLASSES
        if visible:
            for i, c in enumerate(inst.gt_classes.tolist()):
                kps[i, c * per_class : (c + 1) * per_class, 2] = 2.0
                kps[i, c * per_class, 2] = 1.0  # one occluded slot
        inst.gt_keypoints = Keypoints(kps)
    if image is None:
        image = torch.rand(3, h, w) * 255
    return {"image": image, "instances": inst, "height": h, "width": w}


# k-means centres per DFA stage-3 branch in the tiny DFA config.
DFA_NUM_CLUSTERS = 4


def tiny_dfa_cfg(**overrides):
    cfg = get_cfg()
    add_dfa_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "DFA"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATALOADER.NUM_WORKERS = 0
    d = cfg.MODEL.DFA
    d.BACKBONE = "SmallCNN"
    d.SMALL_CNN_CHANNELS = [8, 8]
    d.FC_DIM = 16
    d.DROPOUT = 0.0
    d.CROP_SIZE = 32
    d.NUM_CLUSTERS = DFA_NUM_CLUSTERS
    d.KMEANS_N_INIT = 1
    cfg.SOLVER.MAX_ITER = 100
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg
