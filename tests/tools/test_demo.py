"""Predictor demo on synthetic images only (no DeepFashion2 image is used)."""

import json
import numpy as np
from pathlib import Path
import cv2
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import kgdet
from builders import load_script
from kgdet.evaluation.garment_visualizer import (
    GarmentVisualizer,
    garment_keypoint_marks,
    merge_coinciding_boxes,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(REPO_ROOT / "configs" / "kgdet_synth.yaml")


def _demo():
    return load_script(REPO_ROOT / "demo.py", "kgdet_demo")


def _synthetic_image(path: Path, h=64, w=96):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    cv2.fillPoly(img, [np.array([[20, 10], [60, 12], [70, 55], [15, 50]], np.int32)], (40, 90, 220))
    assert cv2.imwrite(str(path), img)
    return img


def test_demo_writes_drawings_and_json(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    original = _synthetic_image(inputs / "garment.png")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (inputs / "notes.txt").write_text("not an image")

    # A checkpoint of the synthetic config (random weights, saved as Detectron2 does).
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE = "", "cpu"
    ckpt = tmp_path / "model_synth.pth"
    torch.save({"model": build_model(cfg).state_dict()}, str(ckpt))

    out = tmp_path / "out"
    demo = _demo()
    argv = [
        "--config-file", CONFIG,
        "--input", str(inputs),
        "--output", str(out),
        "--confidence-threshold", "0.0",
        "MODEL.DEVICE", "cpu",
        "MODEL.WEIGHTS", str(ckpt),
        "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "96",
    ]  # fmt: skip
    assert demo.main(argv) == 0

    drawn = cv2.imread(str(out / "garment.jpg"))
    assert drawn is not None and drawn.shape == original.shape
    assert np.abs(drawn.astype(int) - original.astype(int)).mean() > 1.0  # something was drawn
    report = json.loads((out / "predictions.json").read_text())
    assert [Path(s["file_name"]).name for s in report["skipped"]] == ["broken.jpg"]
    assert len(report["images"]) == 1
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    instances = report["images"][0]["instances"]
    assert instances, "an untrained model at threshold 0 still detects something"
    for inst in instances:
        slots = [k["slot"] for k in inst["keypoints"]]
        assert slots == list(meta.class_keypoint_slots[inst["category_id"]])
        assert inst["category_name"] == meta.thing_classes[inst["category_id"]]


def test_parse_args_overrides_anywhere():
    demo = _demo()
    args = demo.parse_args(
        [
            "--config-file",
            "c.yaml",
            "--input",
            "a.png",
            "b/",
            "MODEL.DEVICE",
            "cpu",
            "--output",
            "o",
        ]
    )
    assert args.input == ["a.png", "b/"] and args.opts == ["MODEL.DEVICE", "cpu"]
    args = demo.parse_args(
        ["--config-file", "c.yaml", "--input", "a.png", "--output", "o", "MODEL.WEIGHTS", "w.pth"]
    )
    assert args.input == ["a.png"] and args.opts == ["MODEL.WEIGHTS", "w.pth"]


def test_only_own_class_keypoints_are_drawn():
    """Slots outside the garment's class are never drawn; all are filled without a confidence."""
    slots = [[0, 1], [2, 3]]
    kps = np.zeros((2, 4, 3))
    kps[0, :, 2] = [0.9, 0.2, 0.9, 0.9]  # class 0: slots 2, 3 are not class 0's
    kps[1, :, 2] = [0.9, 0.9, 0.0, 0.7]  # class 1: slot 2 score 0 (not drawn)
    marks = garment_keypoint_marks(kps, [0, 1], slots, kind="prediction", keypoint_threshold=0.5)
    assert [(m.instance, m.slot, m.filled) for m in marks] == [
        (0, 0, True),
        (0, 1, True),  # the third column is the detection score, not a keypoint confidence
        (1, 3, True),
    ]
    visibility = np.array([[0.9, 0.2, 0.0, 0.0], [0.0, 0.0, 0.8, 0.4]])
    marks = garment_keypoint_marks(
        kps, [0, 1], slots, kind="prediction", keypoint_threshold=0.5, confidence=visibility
    )
    assert [(m.instance, m.slot, m.filled) for m in marks] == [
        (0, 0, True),
        (0, 1, False),  # predicted visibility 0.2 < 0.5: hollow
        (1, 3, False),
    ]
    gt = np.zeros((1, 4, 3))
    gt[0, :, 2] = [2, 1, 2, 0]
    marks = garment_keypoint_marks(gt, [1], slots, kind="ground_truth")
    assert [(m.slot, m.filled) for m in marks] == [(2, True)]

    meta = MetadataCatalog.get("kgdet_synth_val")
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    inst = Instances((40, 60), pred_boxes=Boxes(torch.tensor([[5.0, 5, 30, 30]])))
    inst.scores, inst.pred_classes = torch.tensor([0.8]), torch.tensor([0])
    inst.pred_keypoints = torch.zeros(1, len(meta.keypoint_names), 3)
    no_slots = Metadata(name="no_slots", thing_classes=list(meta.thing_classes))
    with pytest.raises(ValueError, match="class_keypoint_slots"):
        GarmentVisualizer(image, no_slots).draw_instance_predictions_garments(inst)
    drawn = GarmentVisualizer(image, meta).draw_instance_predictions_garments(inst).get_image()
    assert drawn.shape == image.shape and drawn.any()


def test_coinciding_boxes_are_grouped_best_first():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10.1], [20, 20, 30, 30], [0, 0, 10, 10]])
    scores = [0.3, 0.6, 0.5, 0.2]
    assert merge_coinciding_boxes(boxes, scores) == [[1, 0, 3], [2]]
    assert merge_coinciding_boxes(boxes, scores, merge_iou=1.01) == [[1], [2], [0], [3]]


def test_picture_draws_one_box_and_one_label_for_two_classes_of_a_cell():
    """Class-wise NMS keeps one cell for two classes: drawn once, with both labels."""
    meta = MetadataCatalog.get("kgdet_synth_val")
    names = meta.thing_classes
    inst = Instances((80, 120), pred_boxes=Boxes(torch.tensor([[10.0, 10, 70, 60]] * 2)))
    inst.scores, inst.pred_classes = torch.tensor([0.6, 0.4]), torch.tensor([0, 1])
    inst.pred_keypoints = torch.zeros(2, len(meta.keypoint_names), 3)
    vis = GarmentVisualizer(np.zeros((80, 120, 3), dtype=np.uint8), meta)
    texts = []
    original = vis.draw_text
    vis.draw_text = lambda text, *a, **k: texts.append(text) or original(text, *a, **k)
    vis.draw_instance_predictions_garments(inst)
    assert texts == [f"{names[0]} 60% | {names[1]} 40%"]


def test_demo_refuses_without_weights_and_names_missing_files(tmp_path, capsys):
    demo = _demo()
    image = tmp_path / "garment.png"
    _synthetic_image(image)
    base = ["--config-file", CONFIG, "--output", str(tmp_path / "out")]
    assert demo.main(base + ["--input", str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "MODEL.WEIGHTS is empty" in err and "output/kgdet_synth/model_final.pth" in err
    assert demo.main(base + ["--input", str(image), "MODEL.WEIGHTS", str(tmp_path / "no.pth")]) == 2
    assert "no.pth' not found" in capsys.readouterr().err
    assert demo.main(base + ["--input", str(tmp_path / "missing.png"), "--random-weights"]) == 2
    assert "--input '" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
