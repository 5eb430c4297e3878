"""Stage-by-stage DFA training on a tiny FLD-format dataset: files per stage, resume, refusal to
start a stage without the previous one, per-stage FLDEvaluator results."""

import numpy as np
import os
import cv2
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from builders import tiny_dfa_cfg as tiny_cfg
from dfa import DFAPredictor, refine_detections
from dfa.evaluation import evaluate_dfa, format_stage_table
from dfa.landmarks import FLD_CLASS_SLOTS
from dfa.training import (
    StaleStageError,
    centres_path,
    check_stage_chain,
    check_training_config,
    final_checkpoint_path,
    prepare_stage,
    require_stage_artifacts,
    train_all_stages,
)

NAMES = ("dfa_test_tiny_train", "dfa_test_tiny_val")


def _tiny_fld_dicts(root, num_images, seed):
    rng = np.random.default_rng(seed)
    dicts = []
    for index in range(num_images):
        image = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
        annotations = []
        for g in range(2):
            x1, y1 = rng.uniform(0, 20), rng.uniform(0, 20)
            w, h = rng.uniform(20, 40), rng.uniform(20, 40)
            image[int(y1) : int(y1 + h), int(x1 + w * 0.2) : int(x1 + w * 0.8)] = 200
            category = int(rng.integers(0, 3))
            fld_vis = rng.choice([0, 0, 0, 1, 2], size=8).tolist()
            fld_vis[FLD_CLASS_SLOTS[category][0]] = 0  # at least one visible landmark
            kps = []
            for slot in range(8):
                labelled = slot in FLD_CLASS_SLOTS[category] and fld_vis[slot] != 2
                v = (2 if fld_vis[slot] == 0 else 1) if labelled else 0
                kps += [x1 + rng.uniform(0, w), y1 + rng.uniform(0, h), v] if v else [0, 0, 0]
            annotations.append(
                {
                    "bbox": [x1, y1, w, h],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": category,
                    "keypoints": kps,
                    "fld_visibility": fld_vis,
                    "variation_type": 1 + g,
                }
            )
        path = os.path.join(root, f"{seed}_{index}.jpg")
        cv2.imwrite(path, image)
        dicts.append(
            {
                "file_name": path,
                "image_id": index,
                "height": 64,
                "width": 64,
                "annotations": annotations,
            }
        )
    return dicts


@pytest.fixture
def tiny_fld(tmp_path):
    for name, count, seed in ((NAMES[0], 12, 1), (NAMES[1], 4, 2)):
        dicts = _tiny_fld_dicts(str(tmp_path), count, seed)
        DatasetCatalog.register(name, lambda d=dicts: d)
        MetadataCatalog.get(name).set(
            thing_classes=["Upper", "Lower", "Whole"],
            keypoint_names=[f"kp{i}_{s}" for i in range(4) for s in ("left", "right")],
            keypoint_flip_map=[(f"kp{i}_left", f"kp{i}_right") for i in range(4)],
            class_keypoint_slots=FLD_CLASS_SLOTS,
            evaluator_type="fld",
        )
    yield tmp_path
    for name in NAMES:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _cfg(output_dir):
    cfg = tiny_cfg()
    cfg.DATASETS.TRAIN = (NAMES[0],)
    cfg.DATASETS.TEST = (NAMES[1],)
    cfg.MODEL.DFA.NUM_CLUSTERS = 3
    cfg.MODEL.DFA.INIT_FROM_PREVIOUS_STAGE = True
    cfg.MODEL.DFA.ROUTING_THRESHOLD_QUANTILE = 0.5
    cfg.MODEL.DFA.OPTIMIZER = "ADAM"
    cfg.SOLVER.IMS_PER_BATCH = 8
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


def test_stage2_refuses_to_start_without_stage1_artefacts(tiny_fld):
    cfg = _cfg(tiny_fld / "out")
    with pytest.raises(FileNotFoundError, match="stage1/model_final.pth.*stage1/centres.pth"):
        require_stage_artifacts(cfg.OUTPUT_DIR, 2)
    with pytest.raises(FileNotFoundError, match="stage-1 artefacts missing"):
        prepare_stage(cfg, 3 - 1)
    require_stage_artifacts(cfg.OUTPUT_DIR, 1)  # stage 1 needs nothing


def test_train_all_stages_resume_and_evaluate_per_stage(tiny_fld):
    cfg = _cfg(tiny_fld / "out")
    model = train_all_stages(cfg)
    for stage in (1, 2, 3):
        assert os.path.isfile(final_checkpoint_path(cfg.OUTPUT_DIR, stage))
        info = torch.load(centres_path(cfg.OUTPUT_DIR, stage))
        assert info["stage"] == stage and info["cascades"][0]["centres"].shape[0] == 3
    assert torch.load(centres_path(cfg.OUTPUT_DIR, 2))["cascades"][0]["cluster_error"].shape == (3,)
    stage3 = torch.load(centres_path(cfg.OUTPUT_DIR, 3))["cascades"][0]
    assert "routing_threshold" in stage3
    assert 0.05 <= stage3["train_easy_fraction"] <= 0.95
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    assert model.stage_trained.all() and model.cascades[0].centres_ready.all()

    # Re-running skips the finished stages (their checkpoints are not rewritten).
    stamp = os.path.getmtime(final_checkpoint_path(cfg.OUTPUT_DIR, 2))
    train_all_stages(cfg, stages=[2, 3])
    assert os.path.getmtime(final_checkpoint_path(cfg.OUTPUT_DIR, 2)) == stamp

    model.eval()
    results = evaluate_dfa(cfg, model, NAMES[1])
    assert {"fld", "fld_s1", "fld_s2", "fld_s3"} <= set(results)
    assert results["fld"]["NE"] == pytest.approx(results["fld_s3"]["NE"])
    assert results["fld_s3"]["NE_long"] <= results["fld_s3"]["NE"] + 1e-9
    assert results["routing"]["N"] == 8  # 4 images x 2 garments
    assert results["routing"]["branch1"] + results["routing"]["branch2"] == pytest.approx(100.0)
    table = format_stage_table(results, NAMES[1])
    rows = [line for line in table.splitlines() if line.startswith(("| 1 |", "| 2 |", "| 3 |"))]
    assert len(rows) == 6  # 3 stages x (main table, variation-type table)
    assert "NE (long side)" in table and "NE (box axes)" in table
    assert "Stage-3 auto-routing" in table

    # The predictor loads the complete cascade and runs it on an image and arbitrary boxes.
    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    predictor = DFAPredictor(cfg)
    assert predictor.model.stage_trained.all()
    image = cv2.imread(DatasetCatalog.get(NAMES[1])[0]["file_name"])
    out = predictor(image, [[5, 5, 40, 50], [10, 20, 60, 60]])
    assert out["aligned_keypoints"].shape == (2, 8, 2)
    assert len(out["aligned_keypoints_per_stage"]) == 3
    # KGDet -> DFA: detections get DFA's landmarks, scored inside their class's slots.
    det = Instances((64, 64))
    det.pred_boxes = Boxes(torch.tensor([[5.0, 5.0, 40.0, 50.0], [10.0, 20.0, 60.0, 60.0]]))
    det.scores = torch.tensor([0.9, 0.4])
    det.pred_classes = torch.tensor([1, 2])
    refined = refine_detections(predictor, image, det)
    assert refined.pred_keypoints.shape == (2, 8, 3)
    assert torch.allclose(refined.pred_keypoints[:, :, :2], out["aligned_keypoints"])
    assert refined.pred_keypoints[0, :, 2].tolist() == pytest.approx(
        [0, 0, 0, 0, 0.9, 0.9, 0.9, 0.9]
    )
    assert refined.pred_keypoints[1, :, 2].tolist() == pytest.approx([0.4] * 8)


def test_retrained_stage1_makes_later_stages_stale(tiny_fld):
    cfg = _cfg(tiny_fld / "out")
    train_all_stages(cfg)
    train_all_stages(cfg)  # consistent files: resuming skips every stage
    # Retrain stage 1 only (as tools/train_dfa.py --restart --stages 1), then resume.
    train_all_stages(cfg, stages=[1], resume=False)
    stage1 = final_checkpoint_path(cfg.OUTPUT_DIR, 1)
    stage2_centres = centres_path(cfg.OUTPUT_DIR, 2)
    with pytest.raises(StaleStageError) as error:
        train_all_stages(cfg)
    assert stage2_centres in str(error.value) and stage1 in str(error.value)
    with pytest.raises(StaleStageError):
        check_stage_chain(cfg.OUTPUT_DIR, 3)
    # Retraining from stage 2 on makes the chain consistent again.
    train_all_stages(cfg, stages=[2, 3], resume=False)
    check_stage_chain(cfg.OUTPUT_DIR, 3)


def test_degenerate_routing_refuses_stage3(tiny_fld):
    cfg = _cfg(tiny_fld / "out")
    cfg.MODEL.DFA.ROUTING_THRESHOLD_QUANTILE = -1.0
    cfg.MODEL.DFA.ROUTING_CALIBRATE = False
    cfg.MODEL.DFA.ROUTING_THRESHOLD = 100.0  # every garment easy
    train_all_stages(cfg, stages=[1, 2])
    with pytest.raises(ValueError, match="100.0% of 24 training garments to branch 1"):
        train_all_stages(cfg, stages=[3])
    assert not os.path.isfile(final_checkpoint_path(cfg.OUTPUT_DIR, 3))
    cfg.MODEL.DFA.ROUTING_ALLOW_DEGENERATE = True
    train_all_stages(cfg, stages=[3])


def test_vgg16_without_imagenet_weights_is_refused(caplog):
    cfg = tiny_cfg(**{"MODEL.DFA.BACKBONE": "VGG16"})
    with pytest.raises(ValueError, match="PRETRAINED_VGG16 is empty.*ALLOW_RANDOM_INIT_VGG16"):
        check_training_config(cfg)
    cfg.MODEL.DFA.ALLOW_RANDOM_INIT_VGG16 = True
    with caplog.at_level("WARNING"):
        check_training_config(cfg)
    assert "random weights" in caplog.text
    check_training_config(tiny_cfg())  # SmallCNN: nothing to load


def test_per_type_cascades_train_evaluate_and_refine_by_class(tiny_fld):
    cfg = _cfg(tiny_fld / "out")
    cfg.MODEL.DFA.PER_TYPE_CASCADES = True
    cfg.MODEL.DFA.NUM_CLUSTERS = 2
    model = train_all_stages(cfg)
    info = torch.load(centres_path(cfg.OUTPUT_DIR, 3))
    assert len(info["cascades"]) == 3
    # each type's cascade clusters only its own garments, in its own space (4 L_c^2 dims)
    sizes = [part["num_garments"] for part in info["cascades"]]
    types = [a["category_id"] for d in DatasetCatalog.get(NAMES[0]) for a in d["annotations"]]
    assert sizes == [types.count(c) for c in range(3)]
    assert [tuple(part["centres"].shape) for part in info["cascades"]] == [
        (2, 144),
        (2, 64),
        (2, 256),
    ]
    model.eval()
    results = evaluate_dfa(cfg, model, NAMES[1])
    assert {"fld_s1", "fld_s2", "fld_s3"} <= set(results)
    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    predictor = DFAPredictor(cfg)
    image = cv2.imread(DatasetCatalog.get(NAMES[1])[0]["file_name"])
    det = Instances((64, 64))
    det.pred_boxes = Boxes(torch.tensor([[5.0, 5.0, 40.0, 50.0], [5.0, 5.0, 40.0, 50.0]]))
    det.scores = torch.tensor([0.9, 0.8])
    det.pred_classes = torch.tensor([1, 2])
    refined = refine_detections(predictor, image, det)
    # same box, different detected classes -> different cascades
    lower, whole = refined.pred_keypoints[0, :, :2], refined.pred_keypoints[1, :, :2]
    assert torch.allclose(lower[:4], torch.tensor([22.5, 27.5]).expand(4, 2))  # not predicted
    assert not torch.allclose(lower[4:], whole[4:])
