"""Checks across records and fields (kgdet.data.consistency): the same verdict from the column
function, registration, tools/check_dataset.py and the evaluator."""

import copy
import importlib.util
import json
import logging
import numpy as np
from pathlib import Path
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from kgdet.data import register_deepfashion2_instances
from kgdet.data.consistency import (
    check_annotation_consistency,
    check_coco_consistency,
    count_labelled_keypoints,
)
from kgdet.data.deepfashion2_meta import DF2_CLASS_KEYPOINT_SLOTS
from kgdet.data.validation import AnnotationFileError
from kgdet.evaluation import DeepFashion2Evaluator

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "check_dataset.py"
K = 294


def _kps(category_id, labelled=3, offset=0):
    """882 values; ``labelled`` landmarks from the category's first slot (+ offset)."""
    kps = [0] * (3 * K)
    start = DF2_CLASS_KEYPOINT_SLOTS[category_id - 1][0] - offset
    for s in range(start, start + labelled):
        kps[3 * s : 3 * s + 3] = [10 + s % 20, 12 + s % 15, 2]
    return kps


def _data():
    images = [dict(id=i, file_name=f"{i:06d}.jpg", width=64, height=48) for i in (1, 2, 3)]
    anns = [
        dict(id=10, image_id=1, category_id=1, bbox=[2, 3, 30, 20], keypoints=_kps(1)),
        dict(id=11, image_id=2, category_id=2, bbox=[5, 5, 20, 30], keypoints=_kps(2)),
        dict(id=12, image_id=3, category_id=8, bbox=[1, 1, 40, 40], keypoints=_kps(8)),
    ]
    cats = [
        {"id": c, "name": n}
        for c, n in ((1, "short_sleeved_shirt"), (2, "long_sleeved_shirt"), (8, "trousers"))
    ]
    return {"images": images, "annotations": anns, "categories": cats}


def _listed_twice(data):
    data["images"].append(dict(id=4, file_name="000001.jpg", width=64, height=48))
    data["annotations"][1]["image_id"] = 4
    return data


def _zero_width(data):
    data["annotations"][2]["bbox"][2] = 0
    return data


def _outside_block(data):
    data["annotations"][1]["keypoints"] = _kps(2, labelled=4, offset=25)  # slots 0..3
    return data


def _box_only(data):
    for a in data["annotations"]:
        a["keypoints"] = [0] * (3 * K)
    return data


def _empty_keypoints(data):
    for a in data["annotations"]:
        a["keypoints"] = []
    return data


BROKEN = [
    (_listed_twice, "file_name_listed_twice", ["'000001.jpg': image ids 1, 4"]),
    (_zero_width, "zero_size_box", ["annotation id 12 (image 3): bbox [1, 1, 0, 40]"]),
    (_outside_block, "keypoints_outside_class", ["annotation id 11 (category 2)", "4 of 4"]),
]


def test_columns_give_counts_and_examples():
    inside, outside = count_labelled_keypoints(
        np.array([[2, 0, 1, 0], [0, 1, 0, 2], [0, 0, 0, 0]]), [1, 2, 3], [[0, 1], [2, 3], [3]]
    )
    assert inside.tolist() == [1, 1, 0] and outside.tolist() == [1, 1, 0]
    report = check_annotation_consistency(
        ["a.jpg", "b.jpg", "a.jpg"],
        [1, 2, 3],
        [1, 2, 3],
        [7, 8, 9],
        [1, 2, 3],
        np.array([[0, 0, 5, 5], [0, 0, 0, 5], [1, 1, 2, 0]]),
        inside,
        outside,
        source="cols",
    )
    kinds = {f.kind: f for f in report.findings}
    assert kinds["file_name_listed_twice"].count == 1
    assert "'a.jpg': image ids 1, 3" in kinds["file_name_listed_twice"].message
    assert kinds["zero_size_box"].count == 2 and "annotation id 8" in kinds["zero_size_box"].message
    assert kinds["keypoints_outside_class"].count == 2
    with pytest.raises(AnnotationFileError, match="cols: 5 problem"):
        report.raise_if_errors()


def test_clean_set_has_no_finding():
    report = check_coco_consistency(_data(), "clean.json", DF2_CLASS_KEYPOINT_SLOTS)
    assert report.findings == [] and report.num_labelled_keypoints == 9


@pytest.mark.parametrize("edit, kind, quoted", BROKEN, ids=[b[1] for b in BROKEN])
def test_registration_and_checker_refuse_alike(tmp_path, capsys, edit, kind, quoted):
    json_file = tmp_path / "a.json"
    json_file.write_text(json.dumps(edit(_data())))
    name = f"consistency_{kind}"
    register_deepfashion2_instances(name, json_file, tmp_path)
    try:
        with pytest.raises(AnnotationFileError) as err:
            DatasetCatalog.get(name)
        with pytest.raises(AnnotationFileError):
            DeepFashion2Evaluator(name, output_dir=str(tmp_path / "eval"))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert kind in str(err.value) and str(json_file) in str(err.value)
    assert all(q in str(err.value) for q in quoted)
    spec = importlib.util.spec_from_file_location("check_dataset", SCRIPT)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    argv = ["--json", str(json_file), "--image-root", str(tmp_path), "--kind", "deepfashion2"]
    assert tool.main(argv + ["--no-progress", "--report", str(tmp_path / "r.txt")]) == 1
    out = capsys.readouterr().out
    assert f"ERROR {kind}" in out and all(q in out for q in quoted)


def _perfect_outputs(records):
    outputs = []
    for r in records:
        inst = Instances((r["height"], r["width"]))
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in r["annotations"])]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.full((len(boxes),), 0.9)
        inst.pred_classes = torch.tensor([a["category_id"] for a in r["annotations"]])
        inst.pred_keypoints = torch.zeros(len(boxes), K, 3)
        outputs.append({"instances": inst})
    return outputs


@pytest.mark.parametrize("edit", [_box_only, _empty_keypoints])
def test_box_only_set_warns_and_reports_keypoint_ap_not_computed(tmp_path, caplog, edit):
    json_file = tmp_path / "boxes.json"
    json_file.write_text(json.dumps(edit(_data())))
    name = f"consistency_box_only_{edit.__name__}"
    register_deepfashion2_instances(name, json_file, tmp_path)
    try:
        with caplog.at_level(logging.WARNING):
            records = copy.deepcopy(DatasetCatalog.get(name))
            evaluator = DeepFashion2Evaluator(name, output_dir=str(tmp_path / "eval"))
            evaluator.reset()
            for r, out in zip(records, _perfect_outputs(records)):
                evaluator.process([{"image_id": r["image_id"]}], [out])
            results = evaluator.evaluate()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert len(records) == 3 and all(
        len(a["keypoints"]) == 3 * K for r in records for a in r["annotations"]
    )
    assert set(results) == {"bbox"} and results["bbox"]["AP"] == pytest.approx(100.0)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # Registration, the loader and the evaluator all check the file; the warning is logged once.
    assert sum("none of the 3 annotations has a labelled landmark" in m for m in warned) == 1
    assert sum("keypoint AP (keypoints_vis_occ) not computed" in m for m in warned) == 1
