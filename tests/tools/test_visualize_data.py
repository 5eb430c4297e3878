"""Dataset viewer on a tiny synthetic dataset registered as dicts."""

import numpy as np
import uuid
from pathlib import Path
import cv2
import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import kgdet
from builders import load_script

REPO_ROOT = Path(__file__).resolve().parents[2]


def _tool():
    path = REPO_ROOT / "tools" / "visualize_data.py"
    return load_script(path, "kgdet_visualize_data")


@pytest.fixture
def tiny_dataset(tmp_path):
    """2 readable images and 1 missing one; 2 classes, 4 keypoint slots (2 per class)."""
    name = f"test_visualize_{uuid.uuid4().hex[:8]}"
    records = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        if i < 2:
            img = np.full((64, 96, 3), 50, np.uint8)
            cv2.rectangle(img, (10, 10), (60, 50), (0, 200, 0), -1)
            cv2.imwrite(str(path), img)
        records.append(
            {
                "file_name": str(path),
                "image_id": i,
                "height": 64,
                "width": 96,
                "annotations": [
                    {
                        "bbox": [10, 10, 50, 40],
                        "bbox_mode": BoxMode.XYWH_ABS,
                        "category_id": 0,
                        # slot 0 visible, slot 1 occluded; slots 2, 3 belong to class 1
                        "keypoints": [12.0, 12.0, 2, 58.0, 48.0, 1, 0.0, 0.0, 0, 0.0, 0.0, 0],
                        "iscrowd": 0,
                    }
                ],
            }
        )
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        thing_classes=["top", "skirt"],
        keypoint_names=["top_left", "top_right", "skirt_left", "skirt_right"],
        keypoint_flip_map=[("top_left", "top_right"), ("skirt_left", "skirt_right")],
        class_keypoint_slots=[[0, 1], [2, 3]],
        evaluator_type="deepfashion2",
    )
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    cfg.MODEL.KGDET.NUM_CLASSES = 2
    cfg.MODEL.KGDET.NUM_KEYPOINTS = 4
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.INPUT.FORMAT = "RGB"
    cfg_file = tmp_path / "viz.yaml"
    cfg_file.write_text(cfg.dump())
    yield name, cfg_file
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.parametrize("source", ["dataloader", "annotation"])
def test_visualize_data_draws_ground_truth(tiny_dataset, tmp_path, source):
    name, cfg_file = tiny_dataset
    out = tmp_path / f"vis_{source}"
    argv = ["--config-file", str(cfg_file), "--output", str(out), "--dataset", name,
            "--source", source, "--num-images", "0"]  # fmt: skip
    assert _tool().main(argv) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["img0.jpg", "img1.jpg"]  # img2 is missing: skipped, counted
    drawn = cv2.imread(str(out / "img0.jpg"))
    raw = cv2.imread(str(tmp_path / "img0.png"))
    assert drawn.shape == raw.shape
    assert np.abs(drawn.astype(int) - raw.astype(int)).mean() > 1.0
