"""The DeepFashion2-size simulation (json layout, counts, detections) and the scale benchmark."""

import importlib.util
import json
import numpy as np
import os
from pathlib import Path
import cv2
import pytest

from detectron2.data import DatasetCatalog

from kgdet.benchmark.deepfashion2_scale import main as benchmark_main
from kgdet.benchmark.simulate_deepfashion2 import (
    DF2_SPLITS,
    DF2_TRAIN_CLASS_COUNTS,
    load_garment_summary,
    simulated_detections,
    split_counts,
    write_simulated_split,
)
from kgdet.data import register_deepfashion2_instances
from kgdet.data.deepfashion2_meta import DF2_KEYPOINT_SLOT_RANGES
from kgdet.data.register import DEEPFASHION2_SCHEMA
from kgdet.data.validation import check_annotation_file

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    root = tmp_path_factory.mktemp("df2sim")
    json_file = str(root / "val.json")
    spec = write_simulated_split(json_file, "validation", 300, seed=3, image_root=str(root / "img"))
    with open(json_file) as f:
        return json_file, str(root / "img"), spec, json.load(f)


def test_split_counts():
    assert split_counts("train") == DF2_SPLITS["train"]
    assert (DF2_SPLITS["train"].num_images, DF2_SPLITS["train"].num_garments) == (191961, 312186)
    assert sum(DF2_TRAIN_CLASS_COUNTS) == 312186
    small = split_counts("validation", 1000)
    assert small.num_images == 1000
    assert small.num_garments == round(1000 * 52490 / 32153)
    with pytest.raises(ValueError, match="unknown DeepFashion2 split"):
        split_counts("test")


def test_simulated_json_passes_the_checks_and_registers(simulated):
    json_file, image_root, spec, data = simulated
    check = check_annotation_file(json_file, DEEPFASHION2_SCHEMA)  # raises on a bad file
    assert not check.messages()
    register_deepfashion2_instances("df2_scale_test_val", json_file, image_root)
    try:
        dicts = DatasetCatalog.get("df2_scale_test_val")
    finally:
        DatasetCatalog.remove("df2_scale_test_val")
    assert len(dicts) == spec.num_images == 300
    assert sum(len(d["annotations"]) for d in dicts) == spec.num_garments


def test_simulated_json_layout(simulated):
    _, image_root, spec, data = simulated
    assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
    assert [c["id"] for c in data["categories"]] == list(range(1, 14))
    assert len(data["images"]) == spec.num_images
    assert len(data["annotations"]) == spec.num_garments
    assert [a["id"] for a in data["annotations"]] == list(range(1, spec.num_garments + 1))
    per_image = np.bincount([a["image_id"] for a in data["annotations"]])[1:]
    assert per_image.min() >= 1 and per_image.max() <= 5
    sizes = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
    labelled = []
    for a in data["annotations"]:
        c = a["category_id"] - 1
        start, end = DF2_KEYPOINT_SLOT_RANGES[c]
        kp = np.asarray(a["keypoints"]).reshape(294, 3)
        assert not kp[:start].any() and not kp[end:].any()
        assert set(np.unique(kp[start:end, 2])) <= {0.0, 1.0, 2.0}
        assert a["num_keypoints"] == int((kp[:, 2] > 0).sum())
        assert len(a["segmentation"]) == 1 and len(a["segmentation"][0]) >= 12
        x, y, w, h = a["bbox"]
        assert a["area"] == w * h and w > 0 and h > 0
        width, height = sizes[a["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
        labelled += list(kp[start:end, 2])
    visible, occluded = np.mean(np.equal(labelled, 2)), np.mean(np.equal(labelled, 1))
    assert 0.5 < visible < 0.7 and 0.15 < occluded < 0.35
    first = data["images"][0]
    image = cv2.imread(os.path.join(image_root, first["file_name"]))
    assert image.shape[:2] == (first["height"], first["width"])


def test_class_frequencies_follow_the_training_split(tmp_path):
    spec = write_simulated_split(str(tmp_path / "t.json"), "train", 2000)
    summary = load_garment_summary(str(tmp_path / "t.json"))
    counts = np.bincount(summary.classes, minlength=13)
    expected = np.asarray(DF2_TRAIN_CLASS_COUNTS) / 312186 * spec.num_garments
    assert counts.sum() == spec.num_garments
    assert np.all(np.abs(counts - expected) < 1)


def test_simulated_detections(simulated):
    json_file, _, _, data = simulated
    summary = load_garment_summary(json_file)
    wrong = dup = 0
    for i in range(len(summary.image_ids)):
        det = simulated_detections(summary, i, max_per_image=100)
        assert det["boxes"].shape == (100, 4) and det["keypoints"].shape == (100, 294, 3)
        assert np.all(np.diff(det["scores"]) <= 0)
        assert np.all(det["boxes"][:, 2:] > det["boxes"][:, :2])
        for d in range(0, 100, 17):
            start, end = DF2_KEYPOINT_SLOT_RANGES[det["classes"][d]]
            kp_scores = det["keypoints"][d, :, 2]
            assert np.all(kp_scores[start:end] == det["scores"][d])
            assert not kp_scores[:start].any() and not kp_scores[end:].any()
        g0, g1 = summary.first_garment[i], summary.first_garment[i + 1]
        confident = det["classes"][det["scores"] >= 0.5]
        wrong += len(set(confident) - set(summary.classes[g0:g1]))
        dup += int((det["scores"] > 0.3).sum()) > g1 - g0
    assert wrong > 0 and dup > 0  # some misclassified, some duplicated
    capped = simulated_detections(summary, int(np.argmax(np.diff(summary.first_garment))), 2)
    assert capped["scores"].shape == (2,)
    again = simulated_detections(summary, 7)
    assert np.array_equal(again["keypoints"], simulated_detections(summary, 7)["keypoints"])


def test_missing_garment_summary_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="garment summary"):
        load_garment_summary(str(tmp_path / "none.json"))


def test_benchmark_runs_every_step(tmp_path, capsys):
    out = tmp_path / "figures.json"
    argv = ["--train-images", "20", "--val-images", "12", "--eval-sizes", "12"]
    argv += ["--detections", "10", "--work-dir", str(tmp_path / "work"), "--json", str(out)]
    argv += ["--config-file", str(REPO_ROOT / "configs" / "kgdet_R50.yaml")]
    argv += ["--train-net", str(REPO_ROOT / "train_net.py"), "--fork"]
    assert benchmark_main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    steps = [(r["step"], r["variant"]) for r in report["rows"]]
    for step in [
        ("register train", "new"),
        ("register train x2 processes", "new"),
        ("register validation", "new"),
        ("register train", "stock"),
        ("register validation", "stock"),
        ("register + first train batch", "new"),
        ("evaluate 12 x 10", "new"),
        ("evaluate 12 x 10", "reference"),
    ]:
        assert step in steps
        assert step[0] in printed
    assert steps.count(("register train", "new")) == 2  # first and cached
    rows = {(r["step"], r["variant"]): r for r in report["rows"]}
    assert rows[("register train", "new")]["images"] == 20
    assert rows[("register + first train batch", "new")]["batch_size"] == 8
    assert rows[("register + first train batch", "new")]["loader"] == "train_net.Trainer"
    assert all(r["peak_rss_mb"] > 0 and r["seconds"] >= 0 for r in report["rows"])
    ratios = report["ratios"]["evaluate 12 x 10"]
    assert ratios["ap_max_abs_diff"] <= 1e-4
    assert "pss_sum_over_one" in report["ratios"]["register train x2 processes"]
    assert "ap_max_abs_diff" in printed


def test_simulate_tool(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "simulate_tool", REPO_ROOT / "tools" / "simulate_deepfashion2.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "v.json"
    assert tool.main(["--split", "validation", "--scale", "0.001", "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["images"]) == round(0.001 * 32153)
    assert "32 images" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tool.main(["--scale", "2", "--output", str(out)])
