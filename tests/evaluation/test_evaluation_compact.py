"""Compact DeepFashion2 evaluation (faster-coco-eval on float32 arrays) vs stock pycocotools.

A generated DeepFashion2-layout set (a few dozen images, some garments without any labelled
landmark) and detections with misclassified, duplicated, truncated (clipped at the image border)
and false-positive entries go through ``DeepFashion2Evaluator`` twice: the compact path
(``use_fast_impl=True``) and the reference path (stock pycocotools on Detectron2's COCO json
results). Every AP field must agree, for both ground-truth variants and both keypoint-area
definitions; the result files must be identical; a 2-process launch must agree too.
"""

import json
import numpy as np
import os
import pickle
import uuid
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import launch
from detectron2.structures import Boxes, Instances

from kgdet.data import register_deepfashion2_instances
from kgdet.data.deepfashion2_meta import DF2_CLASS_KEYPOINT_SLOTS, DF2_CLASS_NAMES
from kgdet.evaluation import DeepFashion2Evaluator

K = 294
TOL = 1e-4


def _ground_truth(num_images: int, seed: int = 0) -> dict:
    """DeepFashion2-layout COCO json: 1-3 garments per image, landmarks in the class block with
    a visibility mix, ~15 % of the garments without any labelled landmark."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num_images):
        w, h = int(rng.integers(200, 600)), int(rng.integers(200, 600))
        images.append({"id": i + 1, "file_name": f"{i + 1:06d}.jpg", "width": w, "height": h})
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(0, 13))
            x0, y0 = rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.6)
            bw, bh = rng.uniform(12, w - x0), rng.uniform(12, h - y0)
            kp = np.zeros((K, 3))
            if rng.random() > 0.15:
                s = np.asarray(DF2_CLASS_KEYPOINT_SLOTS[c])
                kp[s, 0] = rng.uniform(x0, x0 + bw, len(s)).round()
                kp[s, 1] = rng.uniform(y0, y0 + bh, len(s)).round()
                kp[s, 2] = rng.choice([0, 1, 2], len(s), p=[0.2, 0.3, 0.5])
                kp[kp[:, 2] == 0, :2] = 0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": c + 1,
                    "bbox": [float(x0), float(y0), float(bw), float(bh)],
                    "area": float(bw * bh),
                    "iscrowd": 0,
                    "num_keypoints": int((kp[:, 2] > 0).sum()),
                    "keypoints": kp.flatten().tolist(),
                }
            )
    categories = [
        {"id": i + 1, "name": n, "keypoints": [str(j) for j in range(1, K + 1)], "skeleton": []}
        for i, n in enumerate(DF2_CLASS_NAMES)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _predictions(gt: dict, seed: int = 1):
    """(inputs, Instances) per image, keypoints in model coordinates (GT + 0.5 + noise) on all
    294 slots, score 0 outside the predicted class's block (like the model)."""
    rng = np.random.default_rng(seed)
    by_image = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    out = []
    for img in gt["images"]:
        w, h = img["width"], img["height"]
        boxes, scores, classes, kps = [], [], [], []
        for a in by_image.get(img["id"], []):
            x, y, bw, bh = a["bbox"]
            for _ in range(int(rng.integers(1, 3))):  # duplicates
                box = np.array([x, y, x + bw, y + bh]) + rng.normal(0, 0.05, 4) * np.tile(
                    [bw, bh], 2
                )
                box = np.clip(box, 0, [w, h, w, h])  # truncated at the image border
                c = a["category_id"] - 1
                if rng.random() < 0.15:
                    c = int(rng.integers(0, 13))  # misclassified (mostly)
                g = np.asarray(a["keypoints"]).reshape(-1, 3)
                kp = np.zeros((K, 3))
                kp[:, 0] = rng.uniform(box[0], box[2] + 1, K)
                kp[:, 1] = rng.uniform(box[1], box[3] + 1, K)
                lab = g[:, 2] > 0
                kp[lab, :2] = g[lab, :2] + 0.5 + rng.normal(0, 0.04, (lab.sum(), 2)) * [bw, bh]
                kp[DF2_CLASS_KEYPOINT_SLOTS[c], 2] = rng.uniform(0, 1)
                boxes.append(box)
                scores.append(rng.uniform(0.05, 1))
                classes.append(c)
                kps.append(kp)
        for _ in range(int(rng.integers(0, 4))):  # false positives, some with equal scores
            x, y = rng.uniform(0, w * 0.7), rng.uniform(0, h * 0.7)
            box = np.array([x, y, x + rng.uniform(5, w * 0.3), y + rng.uniform(5, h * 0.3)])
            c = int(rng.integers(0, 13))
            kp = np.zeros((K, 3))
            kp[:, 0] = rng.uniform(box[0], box[2], K)
            kp[:, 1] = rng.uniform(box[1], box[3], K)
            kp[DF2_CLASS_KEYPOINT_SLOTS[c], 2] = 0.5
            boxes.append(box)
            scores.append(0.5 if rng.random() < 0.3 else rng.uniform(0, 1))
            classes.append(c)
            kps.append(kp)
        inst = Instances(
            (h, w),
            pred_boxes=Boxes(torch.tensor(np.asarray(boxes), dtype=torch.float32).reshape(-1, 4)),
            scores=torch.tensor(scores, dtype=torch.float32),
            pred_classes=torch.tensor(classes, dtype=torch.int64),
            pred_keypoints=torch.tensor(np.asarray(kps), dtype=torch.float32).reshape(-1, K, 3),
        )
        out.append(({"image_id": img["id"], "height": h, "width": w}, inst))
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compact_eval")
    gt = _ground_truth(60)
    path = folder / "val.json"
    path.write_text(json.dumps(gt))
    name = f"test_compact_eval_{uuid.uuid4().hex[:8]}"
    register_deepfashion2_instances(name, str(path), str(folder))
    yield name, gt, str(path), _predictions(gt)
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _run(evaluator, predictions):
    evaluator.reset()
    for inputs, inst in predictions:
        evaluator.process([inputs], [{"instances": inst}])
    return evaluator.evaluate()


def _assert_close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for task in a:
        assert a[task].keys() == b[task].keys(), task
        for key in a[task]:
            assert a[task][key] == pytest.approx(b[task][key], abs=TOL, nan_ok=True), (task, key)


@pytest.mark.parametrize(
    "variant, keypoint_area", [("vis_occ", True), ("vis", True), ("vis_occ", False)]
)
def test_compact_path_equals_pycocotools(generated, tmp_path, variant, keypoint_area):
    name, _, _, predictions = generated
    kwargs = dict(
        distributed=False,
        keypoint_gt_variant=variant,
        official_keypoint_area=keypoint_area,
    )
    fast = DeepFashion2Evaluator(
        name, output_dir=str(tmp_path / "fast"), use_fast_impl=True, **kwargs
    )
    reference = DeepFashion2Evaluator(
        name, output_dir=str(tmp_path / "ref"), use_fast_impl=False, **kwargs
    )
    a, b = _run(fast, predictions), _run(reference, predictions)
    _assert_close(a, b)
    key = f"keypoints_{variant}"
    assert 10 < a["bbox"]["AP"] < 95 and 5 < a[key]["AP"] < 95
    fast.images_per_chunk = 7  # chunked evaluation: the same numbers
    _assert_close(_run(fast, predictions), b)


def test_result_files_identical_to_detectron2(generated, tmp_path):
    name, _, _, predictions = generated
    outs = {}
    for fast in (True, False):
        out = tmp_path / ("fast" if fast else "ref")
        ev = DeepFashion2Evaluator(
            name, distributed=False, output_dir=str(out), use_fast_impl=fast, write_submission=True
        )
        ev.result_chunk_size = 9  # several pieces per file
        _run(ev, predictions)
        outs[fast] = out
        assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary file left
    for file in (
        "coco_instances_results.json",
        "deepfashion2_bbox_results.json",
        "deepfashion2_keypoints_results.json",
    ):
        assert (outs[True] / file).read_text() == (outs[False] / file).read_text(), file
    records = json.loads((outs[True] / "coco_instances_results.json").read_text())
    assert len(records) == sum(len(inst) for _, inst in predictions)
    assert len(records[0]["keypoints"]) == 3 * K


def test_failure_leaves_no_result_file(generated, tmp_path, monkeypatch):
    name, _, _, predictions = generated
    ev = DeepFashion2Evaluator(name, distributed=False, output_dir=str(tmp_path))
    from kgdet.evaluation import result_files

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(result_files, "detectron2_records", broken)
    monkeypatch.setattr(
        "kgdet.evaluation.deepfashion2_evaluation.detectron2_records", broken, raising=True
    )
    with pytest.raises(OSError, match="disk full"):
        _run(ev, predictions[:3])
    assert os.listdir(tmp_path) == []


def _worker(json_path: str, share: int, out_path: str) -> None:
    """One process of a 2-process launch: evaluate every other image, rank 0 saves the result."""
    from detectron2.utils import comm

    name = "test_compact_eval_launch"
    register_deepfashion2_instances(name, json_path, os.path.dirname(json_path))
    gt = json.loads(open(json_path).read())
    predictions = _predictions(gt)[comm.get_rank() :: share]
    output_dir = os.path.join(os.path.dirname(out_path), "launch")
    ev = DeepFashion2Evaluator(name, output_dir=output_dir, write_submission=True)
    ev.result_chunk_size = 5
    result = _run(ev, predictions)
    if comm.is_main_process():
        with open(out_path, "wb") as f:
            pickle.dump(result, f)
    # Both ranks leave together, as after an evaluation during training: a rank that exits
    # while the other still holds its gloo connections can abort that process (SIGABRT).
    comm.synchronize()


@pytest.mark.slow
def test_two_process_launch_equals_single_process(tmp_path):
    gt = _ground_truth(20, seed=3)
    json_path = tmp_path / "val.json"
    json_path.write_text(json.dumps(gt))
    out_path = str(tmp_path / "result.pkl")
    launch(
        _worker,
        2,
        dist_url=f"file://{tmp_path / 'dist_init'}",
        args=(str(json_path), 2, out_path),
    )
    with open(out_path, "rb") as f:
        distributed = pickle.load(f)
    name = f"test_compact_eval_single_{uuid.uuid4().hex[:8]}"
    register_deepfashion2_instances(name, str(json_path), str(tmp_path))
    try:
        predictions = _predictions(gt)
        single = DeepFashion2Evaluator(name, distributed=False, output_dir=str(tmp_path / "one"))
        _assert_close(distributed, _run(single, predictions))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    # Records of rank 0's images first, then rank 1's (Detectron2's gather order).
    records = json.loads((tmp_path / "launch" / "coco_instances_results.json").read_text())
    order = [r["image_id"] for r in records]
    images = [inputs["image_id"] for inputs, inst in predictions for _ in range(len(inst))]
    assert order == [i for i in images if i % 2 == 1] + [i for i in images if i % 2 == 0]


def test_save_results_false_writes_only_the_submission(generated, tmp_path):
    name, _, _, predictions = generated
    ev = DeepFashion2Evaluator(
        name, distributed=False, output_dir=str(tmp_path), write_submission=True, save_results=False
    )
    res = _run(ev, predictions[:5])
    assert "bbox" in res
    assert sorted(os.listdir(tmp_path)) == [
        "deepfashion2_bbox_results.json",
        "deepfashion2_keypoints_results.json",
    ]
