"""Evaluation hand-offs: result files checked before pycocotools, TEST.KEYPOINT_OKS_SIGMAS used."""

import json
import logging
import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

import kgdet
from kgdet.data import register_deepfashion2_instances, register_fld_instances
from kgdet.data.deepfashion2_meta import DF2_CLASS_NAMES, DF2_KEYPOINT_OKS_SIGMAS
from kgdet.evaluation import (
    ResultsFileError,
    build_kgdet_evaluator,
    check_oks_sigmas_config,
    evaluate_official_results,
)

K = 294


def _gt(tmp_path):
    kps = [0.0] * (3 * K)
    kps[0:6] = [10, 10, 2, 20, 12, 2]
    data = {
        "images": [dict(id=1, file_name="000001.jpg", width=64, height=48)],
        "annotations": [
            dict(
                id=1,
                image_id=1,
                category_id=1,
                bbox=[5, 5, 30, 30],
                area=900,
                iscrowd=0,
                num_keypoints=2,
                keypoints=kps,
            )
        ],
        "categories": [
            {"id": i + 1, "name": n, "keypoints": [str(j) for j in range(1, K + 1)]}
            for i, n in enumerate(DF2_CLASS_NAMES)
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return str(path), kps


def _result(kps, **edit):
    r = {
        "image_id": 1,
        "category_id": 1,
        "score": 0.9,
        "bbox": [5, 5, 30, 30],
        "keypoints": list(kps),
    }
    r.update(edit)
    return r


def test_valid_results_score_100(tmp_path):
    gt, kps = _gt(tmp_path)
    out = evaluate_official_results(
        gt, {"bbox": [_result(kps)], "keypoints": [_result(kps)]}, DF2_KEYPOINT_OKS_SIGMAS
    )
    assert out["bbox"]["AP"] == pytest.approx(100) and out["keypoints"]["AP"] == pytest.approx(100)


@pytest.mark.parametrize(
    "task, edit, match",
    [
        ("bbox", {"image_id": "000001"}, r"record 1, field 'image_id': got '000001'; \(str\)"),
        ("bbox", {"image_id": 7}, r"record 1, field 'image_id'"),
        ("bbox", {"category_id": 14}, r"record 1, field 'category_id': got 14"),
        ("bbox", {"bbox": [5, 5, float("nan"), 3]}, r"record 1, field 'bbox'"),
        ("bbox", {"score": float("inf")}, r"record 1, field 'score'"),
        (
            "keypoints",
            {"keypoints": [1.0] * 51},
            r"record 1, field 'keypoints': got 51 values; expected 3 x 294",
        ),
        ("keypoints", {"keypoints": [float("nan")] * 882}, r"record 1, field 'keypoints'"),
    ],
)
def test_bad_result_records_name_file_record_and_field(tmp_path, task, edit, match):
    gt, kps = _gt(tmp_path)
    path = tmp_path / "results.json"
    path.write_text(json.dumps([_result(kps), _result(kps, **edit)]))
    with pytest.raises(ResultsFileError, match=match) as info:
        evaluate_official_results(gt, {task: str(path)}, DF2_KEYPOINT_OKS_SIGMAS)
    assert str(info.value).startswith(str(path))


@pytest.fixture
def df2_dataset(tmp_path):
    gt, _ = _gt(tmp_path)
    name = "test_eval_inputs_df2"
    register_deepfashion2_instances(name, gt, str(tmp_path))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(tmp_path, name, sigmas):
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    cfg.DATASETS.TEST = (name,)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.TEST.KEYPOINT_OKS_SIGMAS = list(sigmas)
    return cfg


def test_user_oks_sigmas_are_used_and_stated(tmp_path, df2_dataset, caplog):
    with caplog.at_level(logging.WARNING):
        ev = build_kgdet_evaluator(_cfg(tmp_path, df2_dataset, [0.05] * K), df2_dataset)
    assert ev._kpt_oks_sigmas == tuple([0.05] * K)
    assert "uses the 294 OKS sigmas of TEST.KEYPOINT_OKS_SIGMAS" in caplog.text
    official = build_kgdet_evaluator(_cfg(tmp_path, df2_dataset, []), df2_dataset)
    assert official._kpt_oks_sigmas == tuple(DF2_KEYPOINT_OKS_SIGMAS)


def test_wrong_number_of_oks_sigmas_fails_before_any_run(tmp_path, df2_dataset):
    cfg = _cfg(tmp_path, df2_dataset, [0.026] * 17)
    with pytest.raises(ValueError, match="has 17 values but dataset .* has 294 keypoints"):
        check_oks_sigmas_config(cfg)
    with pytest.raises(ValueError, match="has 17 values"):
        build_kgdet_evaluator(cfg, df2_dataset)


def test_oks_sigmas_without_keypoint_ap_are_reported_unused(tmp_path, caplog):
    name = "test_eval_inputs_fld"
    register_fld_instances(name, str(tmp_path / "none.json"), str(tmp_path))
    try:
        with caplog.at_level(logging.WARNING):
            check_oks_sigmas_config(_cfg(tmp_path, name, [0.05] * 8))
        assert "gets no keypoint AP" in caplog.text and "unused" in caplog.text
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_model_without_keypoints_gets_box_ap_only(tmp_path):
    """Detectron2's RetinaNet on the same data (configs/retinanet_synth.yaml) is scored on boxes
    only, not on keypoints it does not predict."""
    from kgdet import get_kgdet_cfg

    cfg = get_kgdet_cfg("configs/retinanet_synth.yaml", ["OUTPUT_DIR", str(tmp_path)])
    evaluator = build_kgdet_evaluator(cfg, "kgdet_synth_val", str(tmp_path))
    assert tuple(evaluator._tasks) == ("bbox",)
    cfg = get_kgdet_cfg("configs/kgdet_synth.yaml", ["OUTPUT_DIR", str(tmp_path)])
    assert "keypoints" in build_kgdet_evaluator(cfg, "kgdet_synth_val", str(tmp_path))._tasks
