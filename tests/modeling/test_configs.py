"""Every config in configs/ (except the DFA ones) builds and trains one CPU step."""

from pathlib import Path
import cv2
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, Keypoints
from detectron2.utils.events import EventStorage

from kgdet import add_kgdet_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
KGDET_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("dfa_"))


def load_cfg(name: str):
    cfg = get_cfg()
    add_kgdet_config(cfg)
    cfg.merge_from_file(str(CONFIGS / name))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def sample(h: int, w: int, num_classes: int, num_keypoints: int, with_objects: bool):
    inst = Instances((h, w))
    boxes = torch.tensor([[2.0, 3.0, w - 4.0, h - 2.0]]) if with_objects else torch.zeros(0, 4)
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.full((len(boxes),), num_classes - 1, dtype=torch.long)
    kps = torch.rand(len(boxes), num_keypoints, 3) * torch.tensor([w, h, 0.0])
    kps[:, : max(num_keypoints // 4, 1), 2] = 2.0
    inst.gt_keypoints = Keypoints(kps)
    return {"image": torch.rand(3, h, w) * 255, "instances": inst, "height": h, "width": w}


def test_expected_configs_exist():
    expected = {
        "Base-KGDet.yaml",
        "kgdet_R50.yaml",
        "kgdet_R101.yaml",
        "kgdet_selection_R50.yaml",
        "kgdet_flip_R50.yaml",
        "reppoints_R50.yaml",
        "reppoints_kp_R50.yaml",
        "reppoints_kp_serial_R50.yaml",
        "kgdet_fld_R50.yaml",
        "kgdet_synth.yaml",
        "reppoints_synth.yaml",
        "kgdet_df2_demo.yaml",
    }
    assert expected <= set(KGDET_CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("name", KGDET_CONFIGS)
def test_config_builds_and_trains_one_step(name):
    torch.manual_seed(0)
    cfg = load_cfg(name)
    k = cfg.MODEL.KGDET
    assert len(k.CLS_STAGE_WEIGHTS) == len(k.BOX_STAGE_WEIGHTS) == len(k.KP_STAGE_WEIGHTS)
    assert len(k.CLS_STAGE_WEIGHTS) == k.NUM_STAGES
    assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    model = build_model(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{name}: {trainable:,} trainable parameters")
    # One small image; empty images and mixed batches are covered by test_meta_arch.py.
    batch = [sample(32, 32, k.NUM_CLASSES, k.NUM_KEYPOINTS, True)]
    model.train()
    with EventStorage():
        losses = model(batch)
    assert losses, name
    for term, value in losses.items():
        assert torch.isfinite(value), f"{name}: {term} = {value}"
    # Backward into the head and FPN (the ResNet's backward is Detectron2's own and is exercised
    # by test_meta_arch.py / test_train_net.py; skipping it here keeps this file fast).
    trained = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and not n.startswith("backbone.bottom_up.")
    ]
    sum(losses.values()).backward(inputs=trained)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    assert any(p.grad.abs().sum() > 0 for p in model.head.parameters())


@pytest.mark.slow
def test_untrained_kgdet_r50_detects_with_294_keypoints(df2_demo_dir):
    """SCORE_THRESH_TEST 0 on a demo image gives N > 0 detections with (N, 294, 3)
    keypoints whose scores are zero outside each detection's class block."""
    from detectron2.data import MetadataCatalog
    from detectron2.engine import DefaultPredictor

    cfg = load_cfg("kgdet_R50.yaml")
    cfg.MODEL.KGDET.SCORE_THRESH_TEST = 0.0
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 320, 480  # keep the CPU test short
    image_path = sorted((df2_demo_dir / "image").glob("*.jpg"))[0]
    image = cv2.imread(str(image_path))  # BGR, as DefaultPredictor expects
    instances = DefaultPredictor(cfg)(image)["instances"]
    n = len(instances)
    assert n > 0
    assert instances.pred_keypoints.shape == (n, 294, 3)
    slots = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).class_keypoint_slots
    for kps, cls, score in zip(instances.pred_keypoints, instances.pred_classes, instances.scores):
        inside = torch.zeros(294, dtype=torch.bool)
        inside[slots[int(cls)]] = True
        assert torch.all(kps[~inside, 2] == 0)
        assert torch.allclose(kps[inside, 2], score)
    h, w = image.shape[:2]
    assert torch.all(instances.pred_keypoints[..., 0] <= w)
    assert torch.all(instances.pred_keypoints[..., 1] <= h)
