"""FLDEvaluator NE / PDL against hand-computed values (docs/DESIGN.md §16.5), both input kinds."""

import copy
import json
import numpy as np
import uuid
from pathlib import Path
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from kgdet.data.fld_meta import get_fld_metadata
from kgdet.evaluation import FLDEvaluator, match_detections_to_garments

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "evaluation" / "fld_fixture.json"
FLD_TO_COCO_V = {0: 2, 1: 1, 2: 0, -1: 0}

# Box-normalised errors of the fixture (prediction = GT + offsets), per slot and garment:
#   A Upper 200x100: s0 .1, s1 .1, s2 (occluded) .25, s3 .05, s6 0, s7 (truncated) .495
#   B Lower 100x200: s4 .2, s5 .05, s6 .1, s7 (occluded) .3
#   C Whole 224x224: s0 0, s1 .05, s2 .1, s3 .2, s4 0, s5 (occluded) .5, s6 .05, s7 .15
# Visible-only NE_k: s0 (.1+0)/2=.05, s1 (.1+.05)/2=.075, s2 .1, s3 (.05+.2)/2=.125,
#   s4 (.2+0)/2=.1, s5 .05, s6 (0+.1+.05)/3=.05, s7 .15  -> NE = .7/8
NE_K_VISIBLE = [0.05, 0.075, 0.1, 0.125, 0.1, 0.05, 0.05, 0.15]
# PDL@15 (224*e <= 15, i.e. e <= .067):
#   s0 1/2, s1 1/2, s2 0/1, s3 1/2, s4 1/2, s5 1/1, s6 2/3, s7 0/1
PDL15_K_VISIBLE = [50.0, 50.0, 0.0, 50.0, 50.0, 100.0, 200.0 / 3, 0.0]
# PDL@5 (e <= .0223): only the zero errors: s0 1/2, s4 1/2, s6 1/3
PDL5_K_VISIBLE = [50.0, 0.0, 0.0, 0.0, 50.0, 0.0, 100.0 / 3, 0.0]


@pytest.fixture
def fld_dataset():
    """Register the fixture as an FLD-format dataset (dicts, FLD metadata); yield name, doc."""
    doc = json.loads(FIXTURE.read_text())
    name = f"test_fld_eval_{uuid.uuid4().hex[:8]}"
    records = []
    for r in doc["records"]:
        kps = []
        for (x, y), v in zip(r["gt_xy"], r["fld_visibility"]):
            cv = FLD_TO_COCO_V[v]
            kps += [float(x), float(y), cv] if cv else [0.0, 0.0, 0]
        records.append(
            {
                "file_name": f"img_{r['image_id']}.jpg",
                "image_id": r["image_id"],
                "width": r["width"],
                "height": r["height"],
                "variation_type": r["variation_type"],
                "annotations": [
                    {
                        "bbox": r["bbox"],
                        "bbox_mode": BoxMode.XYWH_ABS,
                        "category_id": r["category_id"],
                        "keypoints": kps,
                        "iscrowd": 0,
                        "fld_visibility": r["fld_visibility"],
                        "variation_type": r["variation_type"],
                    }
                ],
            }
        )
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(**get_fld_metadata())
    yield name, doc
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _prediction(r, exact=False):
    gt = np.asarray(r["gt_xy"], dtype=np.float64)
    return gt if exact else gt + np.asarray(r["offsets"], dtype=np.float64)


def _inputs(r):
    return [{"image_id": r["image_id"], "height": r["height"], "width": r["width"]}]


def _evaluate_aligned(name, doc, **kwargs):
    ev = FLDEvaluator(name, distributed=False, **kwargs)
    ev.reset()
    for r in doc["records"]:
        pred = torch.as_tensor(_prediction(r))[None]
        stages = [torch.as_tensor(_prediction(r, exact=True))[None], pred.clone()]
        ev.process(_inputs(r), [{"aligned_keypoints": pred, "aligned_keypoints_per_stage": stages}])
    return ev.evaluate()


def test_aligned_outputs_match_hand_computed(fld_dataset, tmp_path):
    name, doc = fld_dataset
    res = _evaluate_aligned(name, doc, output_dir=str(tmp_path))
    fld = res["fld"]
    names = MetadataCatalog.get(name).keypoint_names
    assert fld["N"] == 3 and fld["miss_rate"] == 0.0
    assert fld["NE"] == pytest.approx(0.7 / 8)
    assert fld["NE6"] == pytest.approx((0.05 + 0.075 + 0.1 + 0.125 + 0.05 + 0.15) / 6)
    for k, landmark in enumerate(names):
        assert fld[f"NE/{landmark}"] == pytest.approx(NE_K_VISIBLE[k]), landmark
        assert fld[f"PDL@15/{landmark}"] == pytest.approx(PDL15_K_VISIBLE[k]), landmark
    assert fld["PDL@15"] == pytest.approx(np.mean(PDL15_K_VISIBLE))
    assert fld["PDL@5"] == pytest.approx(np.mean(PDL5_K_VISIBLE))
    assert fld["PDL@40"] == pytest.approx((100 + 100 + 100 + 50 + 50 + 100 + 100 + 100) / 8)
    # Per clothing type: the type's own slots over its garments only.
    assert fld["type=Upper/NE"] == pytest.approx((0.1 + 0.1 + 0.05 + 0.0) / 4)
    assert fld["type=Lower/NE"] == pytest.approx((0.2 + 0.05 + 0.1) / 3)
    assert fld["type=Whole/NE"] == pytest.approx(0.55 / 7)
    # Per variation type: normal pose = A and C, medium pose = B.
    assert fld["variation=normal_pose/NE"] == pytest.approx(
        np.mean([0.05, 0.075, 0.1, 0.125, 0.0, 0.025, 0.15])
    )
    assert fld["variation=medium_pose/NE"] == pytest.approx(0.35 / 3)
    # Pixel PDL at 40 px: visible pixel errors A 20,10,10,0 | B 20,10,20 | C 0,11.2,22.4,44.8,0,
    # 11.2,33.6 -> only C's s3 (44.8 px) fails: slot s3 50 %, all others 100 %.
    assert fld["PDL_px@40"] == pytest.approx(np.mean([100, 100, 100, 50, 100, 100, 100, 100]))
    # Per stage: stage 1 was exact, stage 2 = final.
    assert res["fld_s1"]["NE"] == pytest.approx(0.0) and res["fld_s1"]["PDL@5"] == 100.0
    assert res["fld_s2"]["NE"] == pytest.approx(fld["NE"])
    assert (tmp_path / "fld_metrics.json").exists()


def test_visible_and_occluded_variant(fld_dataset):
    name, doc = fld_dataset
    fld = _evaluate_aligned(name, doc, visible_only=False)["fld"]
    # Occluded points join: s2 (.25 + .1)/2, s5 (.05 + .5)/2, s7 (.3 + .15)/2; truncated never.
    ne_k = [0.05, 0.075, 0.175, 0.125, 0.1, 0.275, 0.05, 0.225]
    assert fld["NE"] == pytest.approx(np.mean(ne_k))


def test_detector_outputs_top1_and_iou50(fld_dataset):
    name, doc = fld_dataset
    meta = MetadataCatalog.get(name)
    ev = FLDEvaluator(name, distributed=False)
    ev.reset()
    for r in doc["records"]:
        x, y, w, h = r["bbox"]
        gt_box = [x, y, x + w, y + h]
        pred = np.zeros((8, 3))
        pred[:, :2] = _prediction(r)
        pred[:, 2] = 0.9
        if r["image_id"] == 1:
            # Top-1 = the good detection; a lower-scored one elsewhere is ignored.
            boxes = [gt_box, [0, 0, 50, 50]]
            kps = [pred, np.full((8, 3), 5.0)]
            scores, classes = [0.9, 0.4], [0, 2]  # the class of a detection does not matter
        elif r["image_id"] == 2:
            # IoU < 0.5 with the GT box: used by the top-1 protocol, a miss at IoU 0.5.
            boxes = [[60, 100, 160, 300]]
            kps, scores, classes = [pred], [0.8], [1]
        else:
            boxes, kps, scores, classes = [], [], [], []  # no detection: a miss
        inst = Instances(
            (r["height"], r["width"]),
            pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
            scores=torch.tensor(scores, dtype=torch.float32),
            pred_classes=torch.tensor(classes, dtype=torch.int64),
            pred_keypoints=torch.tensor(np.asarray(kps), dtype=torch.float32).reshape(-1, 8, 3),
        )
        ev.process(_inputs(r), [{"instances": inst}])
    fld = ev.evaluate()["fld"]
    assert len(meta.keypoint_names) == 8
    # Primary: A and B matched, C missed -> NE over A, B: s0 .1, s1 .1, s3 .05, s4 .2, s5 .05,
    # s6 (0 + .1)/2; s2 and s7 only counted in C -> left out.
    assert fld["miss_rate"] == pytest.approx(100 / 3)
    assert fld["NE"] == pytest.approx((0.1 + 0.1 + 0.05 + 0.2 + 0.05 + 0.05) / 6)
    # PDL@15 counts C's landmarks as not detected: s3 1/2, s5 1/1, s6 1/3, others 0.
    assert fld["PDL@15"] == pytest.approx((50 + 100 + 100 / 3) / 8)
    # IoU >= 0.5: only A matched.
    assert fld["iou50/miss_rate"] == pytest.approx(200 / 3)
    assert fld["iou50/NE"] == pytest.approx((0.1 + 0.1 + 0.05 + 0.0) / 4)


def test_matching_with_several_garments():
    gt = torch.tensor([[0, 0, 10, 10], [20, 0, 30, 10]], dtype=torch.float32)
    det = torch.tensor([[0, 0, 10, 10], [21, 0, 30, 10], [50, 50, 60, 60], [0, 0, 9, 10]])
    scores = torch.tensor([0.5, 0.6, 0.99, 0.7])
    # Detection 2 overlaps nothing (not assigned); garment 0 takes its best-scored overlap (3).
    assert match_detections_to_garments(det, scores, gt) == [3, 1]
    assert match_detections_to_garments(det[:0], scores[:0], gt) == [-1, -1]


def test_bad_inputs(fld_dataset):
    name, doc = fld_dataset
    ev = FLDEvaluator(name, distributed=False)
    r = doc["records"][0]
    with pytest.raises(ValueError, match=r"aligned_keypoints.*expected \(1, 8, 2\)"):
        ev.process(_inputs(r), [{"aligned_keypoints": torch.zeros(2, 8, 2)}])
    bad = Instances((10, 10), pred_boxes=Boxes(torch.zeros(1, 4)), scores=torch.ones(1))
    bad.pred_classes = torch.zeros(1, dtype=torch.int64)
    bad.pred_keypoints = torch.zeros(1, 294, 3)
    with pytest.raises(ValueError, match=r"image_id 1: pred_keypoints .*\(N, 8, 3\)"):
        ev.process(_inputs(r), [{"instances": bad}])
    with pytest.raises(ValueError, match="image_id 99 is not in dataset"):
        ev.process([{"image_id": 99}], [{"aligned_keypoints": torch.zeros(1, 8, 2)}])

    # An FLD record of unknown clothing type is named in the error.
    bad_name = name + "_badtype"
    record = copy.deepcopy(DatasetCatalog.get(name)[0])
    record["annotations"][0]["category_id"] = 5
    DatasetCatalog.register(bad_name, lambda: [record])
    MetadataCatalog.get(bad_name).set(**get_fld_metadata())
    try:
        with pytest.raises(ValueError, match=r"image_id 1: unknown clothing type category_id=5"):
            FLDEvaluator(bad_name, distributed=False)
    finally:
        DatasetCatalog.remove(bad_name)
        MetadataCatalog.remove(bad_name)


def test_build_kgdet_evaluator_for_fld(fld_dataset, tmp_path):
    """ "fld" datasets get box AP + FLDEvaluator; the box evaluator runs first and must not shift
    the keypoints the FLD evaluator reads (Detectron2's export subtracts 0.5 in place)."""
    from detectron2.config import get_cfg

    import kgdet
    from kgdet.evaluation import build_kgdet_evaluator

    name, doc = fld_dataset
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    evaluator = build_kgdet_evaluator(cfg, name)  # dict dataset: COCO json written to output
    evaluator.reset()
    for r in doc["records"]:
        x, y, w, h = r["bbox"]
        pred = np.zeros((1, 8, 3))
        pred[0, :, :2] = _prediction(r)
        inst = Instances(
            (r["height"], r["width"]),
            pred_boxes=Boxes(torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)),
            scores=torch.tensor([0.9]),
            pred_classes=torch.tensor([r["category_id"]]),
            pred_keypoints=torch.tensor(pred, dtype=torch.float32),
        )
        evaluator.process(_inputs(r), [{"instances": inst}])
    res = evaluator.evaluate()
    assert res["bbox"]["AP"] == pytest.approx(100.0)
    assert res["fld"]["NE"] == pytest.approx(0.7 / 8)
    assert evaluator._evaluators[1]._visible_only is True

    cfg.TEST.FLD_VISIBLE_ONLY = False
    assert build_kgdet_evaluator(cfg, name)._evaluators[1]._visible_only is False
