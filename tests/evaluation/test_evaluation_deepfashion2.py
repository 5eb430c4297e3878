"""DeepFashion2 evaluation through ``Trainer.build_evaluator`` vs plain pycocotools.

The 32-image DeepFashion2 demo set (read in place from ../shared) is registered as a DF2 dataset;
``Instances`` built from its ground truth with known perturbations (jitter, misses, wrong
classes, false positives) go through the evaluator ``train_net.Trainer.build_evaluator`` picks.
Box AP and keypoint AP must equal stock pycocotools ``COCOeval`` with the official 294 sigmas on
the same predictions written in the official submission format (docs/DESIGN.md §15.3).
"""

import contextlib
import copy
import io
import json
import logging
import numpy as np
import uuid
from pathlib import Path
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

import kgdet
from builders import df2_demo_path, df2_examples_path, load_script, require_df2_demo
from kgdet.data import register_deepfashion2_instances
from kgdet.data.deepfashion2_meta import DF2_KEYPOINT_OKS_SIGMAS, get_deepfashion2_metadata
from kgdet.evaluation import (
    DeepFashion2Evaluator,
    build_kgdet_evaluator,
    evaluate_official_results,
    load_results_json,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = df2_demo_path()
EXAMPLES = df2_examples_path()
BOX_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
KP_KEYS = ("AP", "AP50", "AP75", "APm", "APl")


def _trainer():
    module = load_script(REPO_ROOT / "train_net.py", "train_net")
    return module.Trainer


@pytest.fixture(scope="module")
def demo_dataset():
    require_df2_demo()
    name = f"test_df2_eval_{uuid.uuid4().hex[:8]}"
    register_deepfashion2_instances(name, DEMO / "annotations.json", DEMO / "image")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(tmp_path, **test_keys):
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    for k, v in test_keys.items():
        setattr(cfg.TEST, k, v)
    return cfg


def _instances(records, slots, perturb: bool, seed: int = 0):
    """Per image: Instances from the GT dicts (perfect, or jittered / missed / wrong class /
    with false positives). Keypoints fill all 294 slots like the model does."""
    rng = np.random.default_rng(seed)
    out = []
    for rec in records:
        h, w = rec["height"], rec["width"]
        boxes, scores, classes, kps = [], [], [], []
        for anno in rec["annotations"]:
            if perturb and rng.random() < 0.15:
                continue  # a miss
            box = np.array(BoxMode.convert(anno["bbox"], anno["bbox_mode"], BoxMode.XYXY_ABS))
            gt_kp = np.asarray(anno["keypoints"], dtype=np.float64).reshape(-1, 3)
            cls = anno["category_id"]
            kp = np.zeros((gt_kp.shape[0], 3))
            kp[:, 0] = rng.uniform(box[0], box[2], gt_kp.shape[0])
            kp[:, 1] = rng.uniform(box[1], box[3], gt_kp.shape[0])
            labelled = gt_kp[:, 2] > 0
            kp[labelled, :2] = gt_kp[labelled, :2]
            if perturb:
                size = np.array([box[2] - box[0], box[3] - box[1]])
                box = box + rng.normal(0, 0.04, 4) * np.tile(size, 2)
                kp[labelled, :2] += rng.normal(0, 0.03, (labelled.sum(), 2)) * size
                if rng.random() < 0.15:
                    cls = int(rng.integers(0, 13))  # a (probably) wrong class
            kp[slots[cls], 2] = 1.0
            boxes.append(box)
            classes.append(cls)
            kps.append(kp)
            scores.append(rng.uniform(0.3, 1.0) if perturb else 0.9)
        if perturb:
            for _ in range(int(rng.integers(0, 3))):  # false positives
                x, y = rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.6)
                boxes.append(np.array([x, y, x + w * 0.3, y + h * 0.3]))
                classes.append(int(rng.integers(0, 13)))
                kp = np.zeros((294, 3))
                kp[:, 0], kp[:, 1] = rng.uniform(x, x + w * 0.3, 294), rng.uniform(
                    y, y + h * 0.3, 294
                )
                kp[slots[classes[-1]], 2] = 1.0
                kps.append(kp)
                scores.append(rng.uniform(0.05, 0.9))
        inst = Instances(
            (h, w),
            pred_boxes=Boxes(torch.tensor(np.asarray(boxes), dtype=torch.float32).reshape(-1, 4)),
            scores=torch.tensor(scores, dtype=torch.float32),
            pred_classes=torch.tensor(classes, dtype=torch.int64),
            pred_keypoints=torch.tensor(np.asarray(kps), dtype=torch.float32).reshape(-1, 294, 3),
        )
        out.append(inst)
    return out


def _official_results(records, instances):
    """The same predictions as official submission records (float32 like the evaluator sees,
    keypoints minus Detectron2's +0.5, category ids 1..13, keypoint records without bbox)."""
    bbox, keys = [], []
    for rec, inst in zip(records, instances):
        xywh_boxes = BoxMode.convert(
            inst.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS
        ).tolist()
        for xywh, score, cls, kp in zip(
            xywh_boxes,
            inst.scores.tolist(),
            inst.pred_classes.tolist(),
            inst.pred_keypoints.clone(),
        ):
            common = {"image_id": rec["image_id"], "category_id": cls + 1, "score": score}
            bbox.append({**common, "bbox": xywh})
            kp[:, :2] -= 0.5
            kp[:, 2] = 1.0
            keys.append({**common, "keypoints": kp.flatten().tolist()})
    return bbox, keys


def _pycocotools(gt: COCO, results, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds = sorted(gt.getImgIds())
        if iou_type == "keypoints":
            ev.params.kpt_oks_sigmas = np.asarray(DF2_KEYPOINT_OKS_SIGMAS)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _run(evaluator, records, instances):
    evaluator.reset()
    for rec, inst in zip(records, instances):
        evaluator.process(
            [{"image_id": rec["image_id"], "height": rec["height"], "width": rec["width"]}],
            [{"instances": inst}],
        )
    return evaluator.evaluate()


def _assert_equal_stats(res, stats, keys):
    for i, key in enumerate(keys):
        expected = stats[i] * 100 if stats[i] >= 0 else float("nan")
        assert res[key] == pytest.approx(expected, abs=1e-9, nan_ok=True), key


def test_trainer_evaluator_matches_pycocotools(demo_dataset, tmp_path):
    name = demo_dataset
    records = DatasetCatalog.get(name)
    slots = MetadataCatalog.get(name).class_keypoint_slots
    evaluator = _trainer().build_evaluator(_cfg(tmp_path), name)
    assert isinstance(evaluator, DeepFashion2Evaluator)

    perfect = _run(evaluator, records, _instances(records, slots, perturb=False))
    assert perfect["bbox"]["AP"] == pytest.approx(100.0)
    assert perfect["keypoints_vis_occ"]["AP"] == pytest.approx(100.0)

    instances = _instances(records, slots, perturb=True)
    bbox, keys = _official_results(records, instances)
    res = _run(evaluator, records, instances)
    gt = COCO(str(DEMO / "annotations.json"))
    _assert_equal_stats(res["bbox"], _pycocotools(gt, bbox, "bbox"), BOX_KEYS)
    _assert_equal_stats(res["keypoints_vis_occ"], _pycocotools(gt, keys, "keypoints"), KP_KEYS)
    assert 20 < res["bbox"]["AP"] < 95 and 10 < res["keypoints_vis_occ"]["AP"] < 95
    # The library driver on the official files agrees too.
    official = evaluate_official_results(
        str(DEMO / "annotations.json"), {"bbox": bbox, "keypoints": keys}, DF2_KEYPOINT_OKS_SIGMAS
    )
    assert official["keypoints"]["AP"] == pytest.approx(res["keypoints_vis_occ"]["AP"])
    assert (tmp_path / "inference" / name / "coco_instances_results.json").exists()


def _add_small_box_false_positive(instances, records, slots):
    """Per image one confident false positive with a small box (< 32² px) whose keypoints
    spread over the whole image: "small" by its box, "large" by its keypoint extent."""
    out = []
    for rec, inst in zip(records, instances):
        h, w = rec["height"], rec["width"]
        cls = rec["annotations"][0]["category_id"]
        kp = torch.zeros(1, 294, 3)
        kp[0, :, 0] = torch.linspace(1, w - 1, 294)
        kp[0, :, 1] = torch.linspace(1, h - 1, 294)
        kp[0, slots[cls], 2] = 1.0
        fp = Instances(
            (h, w),
            pred_boxes=Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0]])),
            scores=torch.tensor([0.99]),
            pred_classes=torch.tensor([cls]),
            pred_keypoints=kp,
        )
        out.append(Instances.cat([inst, fp]))
    return out


def test_detectron2_bbox_in_keypoint_results_moves_only_size_buckets(demo_dataset, tmp_path):
    """Detectron2's export keeps the bbox in keypoint results; the official submission has
    none, so pycocotools sizes a detection by its keypoint extent. AP/AP50/AP75 are identical;
    AP_L differs when an unmatched detection is small by box but large by keypoints."""
    name = demo_dataset
    records = DatasetCatalog.get(name)
    slots = MetadataCatalog.get(name).class_keypoint_slots
    instances = _instances(records, slots, perturb=True, seed=1)
    instances = _add_small_box_false_positive(instances, records, slots)
    d2_style = DeepFashion2Evaluator(
        name, distributed=False, output_dir=str(tmp_path), official_keypoint_area=False
    )
    official = DeepFashion2Evaluator(name, distributed=False, output_dir=str(tmp_path))
    a = _run(d2_style, records, [copy.deepcopy(i) for i in instances])["keypoints_vis_occ"]
    b = _run(official, records, instances)["keypoints_vis_occ"]
    for key in ("AP", "AP50", "AP75"):
        assert a[key] == pytest.approx(b[key])
    assert a["APl"] > b["APl"] + 1.0  # the small-box false positives are ignored in AP_L


def test_visible_only_variant(demo_dataset, tmp_path):
    name = demo_dataset
    records = DatasetCatalog.get(name)
    slots = MetadataCatalog.get(name).class_keypoint_slots
    instances = _instances(records, slots, perturb=True, seed=2)
    _, keys = _official_results(records, instances)
    cfg = _cfg(tmp_path, KEYPOINT_GT_VARIANT="vis")
    res = _run(build_kgdet_evaluator(cfg, name), records, instances)
    assert "keypoints_vis" in res and "keypoints_vis_occ" not in res
    # The "vis" GT built independently: occluded points unlabelled, num_keypoints recounted.
    data = json.loads((DEMO / "annotations.json").read_text())
    for anno in data["annotations"]:
        kp = np.asarray(anno["keypoints"], dtype=np.float64).reshape(-1, 3)
        kp[kp[:, 2] != 2] = 0
        anno["keypoints"] = kp.flatten().tolist()
        anno["num_keypoints"] = int((kp[:, 2] > 0).sum())
    gt = COCO()
    gt.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    _assert_equal_stats(res["keypoints_vis"], _pycocotools(gt, keys, "keypoints"), KP_KEYS)


def test_zero_detections_give_nan_with_warning(demo_dataset, tmp_path, caplog):
    name = demo_dataset
    records = DatasetCatalog.get(name)
    empty = [
        Instances(
            (r["height"], r["width"]),
            pred_boxes=Boxes(torch.zeros(0, 4)),
            scores=torch.zeros(0),
            pred_classes=torch.zeros(0, dtype=torch.int64),
            pred_keypoints=torch.zeros(0, 294, 3),
        )
        for r in records
    ]
    with caplog.at_level(logging.WARNING):
        res = _run(build_kgdet_evaluator(_cfg(tmp_path), name), records, empty)
    assert np.isnan(res["bbox"]["AP"]) and np.isnan(res["keypoints_vis_occ"]["AP"])
    assert "No predictions from the model" in caplog.text


def test_dict_dataset_without_json_file(demo_dataset, tmp_path):
    """A dataset registered as dicts is converted (box areas) without touching its dicts."""
    src = DatasetCatalog.get(demo_dataset)
    cached = copy.deepcopy(src)
    name = f"test_df2_dicts_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: cached)  # returns the same list on every call
    MetadataCatalog.get(name).set(**get_deepfashion2_metadata())
    try:
        snapshot = copy.deepcopy(cached)
        evaluator = build_kgdet_evaluator(_cfg(tmp_path), name)
        slots = MetadataCatalog.get(name).class_keypoint_slots
        res = _run(evaluator, cached, _instances(cached, slots, perturb=False))
        assert res["bbox"]["AP"] == pytest.approx(100.0)
        assert res["keypoints_vis_occ"]["AP"] == pytest.approx(100.0)
        assert cached == snapshot
        assert not hasattr(MetadataCatalog.get(name), "json_file")  # no stale global state
        converted = json.loads(
            (tmp_path / "inference" / name / f"{name}_coco_format.json").read_text()
        )
        anno = converted["annotations"][0]
        assert anno["area"] == pytest.approx(anno["bbox"][2] * anno["bbox"][3])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_submission_files_for_unannotated_split(demo_dataset, tmp_path):
    """deepfashion2_test-like split (images only): official files written, nothing evaluated."""
    src = DatasetCatalog.get(demo_dataset)
    images = [{k: r[k] for k in ("file_name", "image_id", "height", "width")} for r in src[:3]]
    name = f"test_df2_test_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: images)
    MetadataCatalog.get(name).set(**get_deepfashion2_metadata())
    try:
        cfg = _cfg(tmp_path, WRITE_SUBMISSION=True)
        slots = MetadataCatalog.get(name).class_keypoint_slots
        res = _run(build_kgdet_evaluator(cfg, name), src[:3], _instances(src[:3], slots, False))
        assert res == {}
        out = tmp_path / "inference" / name
        boxes = load_results_json(str(out / "deepfashion2_bbox_results.json"))
        keys = load_results_json(str(out / "deepfashion2_keypoints_results.json"))
        n = sum(len(r["annotations"]) for r in src[:3])
        assert len(boxes) == len(keys) == n
        example_file = EXAMPLES / "example_keys_results.json"
        if not example_file.exists():
            pytest.skip(
                f"{example_file} not found: the official example results, expected in "
                "deepfashion2_examples/ beside $KGDET_DF2_DEMO"
            )
        example = json.loads(example_file.read_text())[0]
        assert set(keys[0]) == set(example) and len(keys[0]["keypoints"]) == 3 * 294
        assert set(keys[0]["keypoints"][2::3]) == {1.0}
        assert {b["category_id"] for b in boxes} <= set(range(1, 14))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_bad_inputs(demo_dataset, tmp_path):
    name = demo_dataset
    records = DatasetCatalog.get(name)[:1]
    evaluator = DeepFashion2Evaluator(name, distributed=False, output_dir=str(tmp_path))
    bad = Instances(
        (records[0]["height"], records[0]["width"]),
        pred_boxes=Boxes(torch.zeros(1, 4)),
        scores=torch.ones(1),
        pred_classes=torch.zeros(1, dtype=torch.int64),
        pred_keypoints=torch.zeros(1, 17, 3),
    )
    with pytest.raises(ValueError, match=r"pred_keypoints has shape \(1, 17, 3\), expected"):
        evaluator.process([{"image_id": records[0]["image_id"]}], [{"instances": bad}])

    no_sigmas = f"test_df2_nosigma_{uuid.uuid4().hex[:8]}"
    meta = get_deepfashion2_metadata()
    meta.pop("keypoint_oks_sigmas")
    DatasetCatalog.register(no_sigmas, lambda: [])
    MetadataCatalog.get(no_sigmas).set(json_file=str(DEMO / "annotations.json"), **meta)
    try:
        with pytest.raises(ValueError, match=f"'{no_sigmas}' has no 'keypoint_oks_sigmas'"):
            build_kgdet_evaluator(_cfg(tmp_path), no_sigmas)
    finally:
        DatasetCatalog.remove(no_sigmas)
        MetadataCatalog.remove(no_sigmas)

    broken = tmp_path / "broken.json"
    broken.write_text("[{not json")
    with pytest.raises(ValueError, match="Cannot read results file .*broken.json"):
        load_results_json(str(broken))
