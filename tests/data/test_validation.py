"""kgdet.data.validation and the loaders: annotation jsons checked once, before any long run."""

import copy
import json
import logging
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from kgdet.data import load_deepfashion2_json, load_fld_json, register_deepfashion2_instances
from kgdet.data.deepfashion2_meta import DF2_CLASS_NAMES, DF2_RAW_CATEGORY_NAMES
from kgdet.data.register import DEEPFASHION2_SCHEMA, FLD_SCHEMA
from kgdet.data.validation import AnnotationFileError, check_coco_annotations
from kgdet.evaluation import DeepFashion2Evaluator

K = 294


def _keypoints(cat, n_visible=3):
    kps = [0.0] * (3 * K)
    start = {1: 0, 8: 25 + 33 + 31 + 39 + 15 + 15 + 10}[cat]
    for j in range(n_visible):
        kps[3 * (start + j) : 3 * (start + j) + 3] = [10.0 + j, 12.0, 2.0]
    return kps


def _df2_json(categories=None):
    """Two images, three garments, official category records for ids 1..13 by default."""
    cats = categories or [
        {"id": i + 1, "name": n, "supercategory": "clothes"} for i, n in enumerate(DF2_CLASS_NAMES)
    ]
    anns = [
        dict(id=1, image_id=1, category_id=1, bbox=[5, 6, 20, 30], keypoints=_keypoints(1, 3)),
        dict(id=2, image_id=1, category_id=8, bbox=[30, 5, 10, 40], keypoints=_keypoints(8, 2)),
        dict(id=3, image_id=2, category_id=1, bbox=[1, 2, 3, 4], keypoints=_keypoints(1, 1)),
    ]
    for a in anns:
        a.update(area=a["bbox"][2] * a["bbox"][3], iscrowd=0)
        a["num_keypoints"] = sum(1 for v in a["keypoints"][2::3] if v > 0)
        a["segmentation"] = [[5, 6, 25, 6, 25, 36]]
    images = [
        dict(id=1, file_name="000001.jpg", width=64, height=48),
        dict(id=2, file_name="000002.jpg", width=64, height=48),
    ]
    return {"images": images, "annotations": anns, "categories": cats}


def _write(tmp_path, data, name="a.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_loader_equals_detectron2_load_coco_json_on_a_valid_file(tmp_path):
    path = _write(tmp_path, _df2_json())
    ours = load_deepfashion2_json(path, "/img")
    theirs = load_coco_json(path, "/img")
    for record in theirs:
        for a in record["annotations"]:
            a["category_id"] -= 1  # official id c -> class c - 1
            del a["segmentation"]  # KGDet uses no masks: the compact form has no polygons
    assert ours == theirs


@pytest.mark.parametrize("field", ["area", "num_keypoints", "iscrowd"])
def test_missing_fields_are_filled_with_the_deepfashion2_definition(tmp_path, field, caplog):
    data = _df2_json()
    expected = [a[field] for a in data["annotations"]]
    for a in data["annotations"]:
        del a[field]
    check = check_coco_annotations(data, "x.json", DEEPFASHION2_SCHEMA)
    assert [a[field] for a in data["annotations"]] == expected  # 600, 400, 12 / 3, 2, 1 / 0
    assert check.filled == {field: 3}
    assert any(f"'{field}' missing in 3 of 3" in m for m in check.messages())


def test_evaluator_fills_missing_fields_and_scores_perfect_predictions(tmp_path, caplog):
    data = _df2_json()
    for a in data["annotations"]:
        for key in ("area", "num_keypoints", "iscrowd"):
            del a[key]
    path = _write(tmp_path, data)
    name = "test_validation_eval_missing"
    register_deepfashion2_instances(name, path, str(tmp_path))
    try:
        with caplog.at_level(logging.WARNING):
            evaluator = DeepFashion2Evaluator(name, output_dir=str(tmp_path / "out"))
        anns = evaluator._coco_api.dataset["annotations"]
        assert [a["area"] for a in anns] == [600, 400, 12]
        assert [a["num_keypoints"] for a in anns] == [3, 2, 1]
        assert "'area' missing in 3 of 3 annotations" in caplog.text
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_subset_raw_name_and_shuffled_categories_follow_official_ids(tmp_path):
    base = _df2_json()
    subset = dict(base, categories=[c for c in base["categories"] if c["id"] in (1, 8)])
    raw = dict(
        base,
        categories=[dict(c, name=DF2_RAW_CATEGORY_NAMES[c["id"] - 1]) for c in base["categories"]],
    )
    shuffled = dict(base, categories=list(reversed(base["categories"])))
    for i, variant in enumerate((subset, raw, shuffled)):
        records = load_deepfashion2_json(_write(tmp_path, variant, f"{i}.json"), "/img")
        assert [a["category_id"] for r in records for a in r["annotations"]] == [0, 7, 0]
    check = check_coco_annotations(copy.deepcopy(subset), "s.json", DEEPFASHION2_SCHEMA)
    assert any("lists 2 of the 13 official" in m for m in check.messages())


def test_other_categories_are_one_error_naming_json_and_categories(tmp_path):
    data = _df2_json()
    data["categories"][2]["name"] = "jacket"
    data["categories"].append({"id": 14, "name": "hat"})
    path = _write(tmp_path, data, "bad_cats.json")
    with pytest.raises(AnnotationFileError) as info:
        load_deepfashion2_json(path, "/img")
    text = str(info.value)
    assert text.startswith(f"{path}: 1 problem(s)")  # one error for all differing categories
    assert "id 3 'jacket' (official: 'short_sleeved_outwear')" in text
    assert "id 14 'hat' (not an official id 1..13)" in text


def test_invalid_segmentation_keeps_box_class_and_keypoints(tmp_path):
    data = _df2_json()
    data["annotations"][1]["segmentation"] = [[1, 2, 3, 4]]  # 2 points
    data["annotations"][2]["segmentation"] = [[1, 2, 3, 4, 5]]  # odd length
    path = _write(tmp_path, data)
    ours = load_deepfashion2_json(path, "/img")
    assert [len(r["annotations"]) for r in ours] == [2, 1]  # nothing dropped
    assert ours[0]["annotations"][1]["bbox"] == [30, 5, 10, 40]
    assert "segmentation" not in ours[0]["annotations"][1]
    # Detectron2 would train on one garment fewer than evaluation scores.
    assert [len(r["annotations"]) for r in load_coco_json(path, "/img")] == [1, 0]
    check = check_coco_annotations(data, path, DEEPFASHION2_SCHEMA)
    assert check.without_valid_polygon == 2


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["annotations"][1].pop("bbox"), r"annotation 1 \(id 2\), field 'bbox'"),
        (
            lambda d: d["annotations"][0].update(keypoints=[0.0] * 51),
            r"got 51 values; expected 3 x 294",
        ),
        (
            lambda d: d["annotations"][2].update(image_id=7),
            r"annotation 2 \(id 3\), field 'image_id'",
        ),
        (lambda d: d["annotations"][2].update(id=1), r"id also used by annotation 0"),
        (lambda d: d["annotations"][0].update(category_id=5), r"field 'category_id': got 5"),
        (lambda d: d["annotations"][0]["bbox"].__setitem__(2, float("nan")), r"field 'bbox'"),
        (lambda d: d["images"][1].update(width=0), r"record 1 \(id 2\), field 'width'"),
    ],
)
def test_unusable_records_are_refused_naming_file_record_and_field(tmp_path, edit, match):
    data = _df2_json()
    data["categories"] = [c for c in data["categories"] if c["id"] in (1, 8)]
    edit(data)
    path = _write(tmp_path, data, "broken.json")
    with pytest.raises(AnnotationFileError, match=match) as info:
        load_deepfashion2_json(path, "/img")
    assert "broken.json" in str(info.value)


def test_colliding_image_ids_are_one_error_naming_the_layout(tmp_path):
    data = _df2_json()
    data["images"][1].update(id=1, file_name="b/000001.jpg")
    data["annotations"][2]["image_id"] = 1
    with pytest.raises(AnnotationFileError) as info:
        check_coco_annotations(data, "ids.json", DEEPFASHION2_SCHEMA)
    text = str(info.value)
    assert "1 image id(s) are used by more than one image" in text
    assert "000001.jpg and b/000001.jpg" in text and "numbered per folder" in text


def test_fld_schema_checks_three_classes_and_eight_slots(tmp_path):
    data = {
        "images": [dict(id=1, file_name="img/a.jpg", width=20, height=20)],
        "annotations": [
            dict(
                id=1,
                image_id=1,
                category_id=2,
                bbox=[1, 1, 5, 5],
                keypoints=[0.0] * 24,
                fld_visibility=[0] * 8,
                variation_type=3,
            )
        ],
        "categories": [{"id": 2, "name": "lower"}],
    }
    records = load_fld_json(_write(tmp_path, data), "/fld")
    assert records[0]["annotations"][0]["category_id"] == 1
    assert records[0]["variation_type"] == 3
    data["annotations"][0]["keypoints"] = [0.0] * 882
    with pytest.raises(AnnotationFileError, match="expected 3 x 8 = 24"):
        check_coco_annotations(data, "f.json", FLD_SCHEMA)
