"""datasets/prepare_deepfashion2.py: official converter semantics, bad inputs, atomic output."""

import json
import os
import shutil
from pathlib import Path
import pytest

from builders import load_script
from kgdet.data import load_deepfashion2_json
from kgdet.data.deepfashion2_meta import (
    DF2_CLASS_NAMES,
    DF2_KEYPOINT_SLOT_RANGES,
    DF2_RAW_CATEGORY_NAMES,
)
from kgdet.data.prepare import convert_deepfashion2 as conv
from kgdet.data.prepare.convert_deepfashion2 import convert_deepfashion2

TESTS_DIR = Path(__file__).resolve().parents[1]
RAW = TESTS_DIR / "fixtures" / "deepfashion2_raw"
SCRIPT = TESTS_DIR.parent / "datasets" / "prepare_deepfashion2.py"


def _copy_subset(tmp_path, stems):
    annos, images = tmp_path / "annos", tmp_path / "image"
    annos.mkdir()
    images.mkdir()
    for stem in stems:
        shutil.copy(RAW / "annos" / f"{stem}.json", annos)
        shutil.copy(RAW / "image" / f"{stem}.jpg", images)
    return annos, images


def _expected_annotation(item):
    """The official converter's fields, computed independently from one raw item."""
    x1, y1, x2, y2 = item["bounding_box"]
    start = DF2_KEYPOINT_SLOT_RANGES[item["category_id"] - 1][0]
    keypoints = [0.0] * 882
    for j, v in enumerate(item["landmarks"]):
        keypoints[3 * start + j] = float(v)
    return {
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": (x2 - x1) * (y2 - y1),
        "category_id": item["category_id"],
        "iscrowd": 0,
        "keypoints": keypoints,
        "num_keypoints": sum(1 for v in item["landmarks"][2::3] if v > 0),
        "segmentation": item["segmentation"],
        "style": item["style"],
    }


def test_valid_records_follow_the_official_converter(tmp_path):
    annos, images = _copy_subset(tmp_path, ["000001", "000002"])
    out = tmp_path / "out" / "val-coco_style.json"
    summary = convert_deepfashion2(annos, images, out, progress=False)
    assert (summary.num_images, summary.num_annotations, summary.num_errors) == (2, 4, 0)
    data = json.loads(out.read_text())
    assert list(data) == ["info", "licenses", "images", "annotations", "categories"]
    assert [c["name"] for c in data["categories"]] == DF2_CLASS_NAMES
    assert all(c["keypoints"] == [str(i) for i in range(1, 295)] for c in data["categories"])
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in data["images"]] == [
        (1, "000001.jpg", 120, 160),
        (2, "000002.jpg", 120, 160),
    ]
    anns = data["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3, 4]
    assert [a["image_id"] for a in anns] == [1, 1, 2, 2]
    expected = []
    for stem in ("000001", "000002"):
        raw = json.loads((annos / f"{stem}.json").read_text())
        for key in ("item1", "item2"):
            expected.append((raw["pair_id"], raw["source"], raw[key]))
    for ann, (pair_id, source, item) in zip(anns, expected):
        assert {k: ann[k] for k in _expected_annotation(item)} == _expected_annotation(item)
        assert ann["pair_id"] == pair_id and ann["source"] == source
        assert ann["scale"] == item["scale"] and ann["viewpoint"] == item["viewpoint"]
        assert all(isinstance(v, float) for v in ann["keypoints"])
    # The skirt (image 2, item1) has no labelled landmark: kept, num_keypoints 0.
    assert anns[2]["category_id"] == 9 and anns[2]["num_keypoints"] == 0
    assert summary.report == str(tmp_path / "out" / "val-coco_style.report.txt")
    assert "0 error(s)" in Path(summary.report).read_text()

    # Loads as a Detectron2 dataset (load_coco_json adds 0.5 to keypoint coordinates).
    records = load_deepfashion2_json(out, images)
    assert len(records) == 2 and len(records[0]["annotations"]) == 2
    first = records[0]["annotations"][0]["keypoints"]
    assert first[:3] == [anns[0]["keypoints"][0] + 0.5, anns[0]["keypoints"][1] + 0.5, 2.0]


def test_reproduces_the_demo_annotations(df2_demo_dir, tmp_path):
    """Raw files rebuilt from the 32-image demo json convert back to the same annotations."""
    demo = json.loads((df2_demo_dir / "annotations.json").read_text())
    annos, images = tmp_path / "annos", tmp_path / "image"
    annos.mkdir()
    images.mkdir()
    by_image = {}
    for ann in demo["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image in demo["images"]:
        raw = {"source": "shop"}
        for k, ann in enumerate(by_image.get(image["id"], []), start=1):
            start, end = DF2_KEYPOINT_SLOT_RANGES[ann["category_id"] - 1]
            x, y, w, h = ann["bbox"]
            raw["pair_id"] = ann["pair_id"]
            raw[f"item{k}"] = {
                "category_id": ann["category_id"],
                "category_name": DF2_RAW_CATEGORY_NAMES[ann["category_id"] - 1],
                "bounding_box": [x, y, x + w, y + h],
                "landmarks": [int(v) for v in ann["keypoints"][3 * start : 3 * end]],
                "segmentation": ann["segmentation"],
                "style": ann["style"],
            }
        stem = image["file_name"][:-4]
        (annos / f"{stem}.json").write_text(json.dumps(raw))
        (images / image["file_name"]).symlink_to(df2_demo_dir / "image" / image["file_name"])

    out = tmp_path / "demo.json"
    summary = convert_deepfashion2(annos, images, out, progress=False)
    assert (summary.num_errors, summary.num_warnings) == (0, 0)
    ours = json.loads(out.read_text())
    keys = ("image_id", "category_id", "bbox", "area", "iscrowd", "keypoints", "num_keypoints")
    keys += ("segmentation", "pair_id", "style")
    demo_anns = sorted(demo["annotations"], key=lambda a: (a["image_id"], a["id"]))
    assert [{k: a[k] for k in keys} for a in ours["annotations"]] == [
        {k: a[k] for k in keys} for a in demo_anns
    ]
    image_keys = ("id", "file_name", "width", "height")
    assert [{k: i[k] for k in image_keys} for i in ours["images"]] == sorted(
        ({k: i[k] for k in image_keys} for i in demo["images"]), key=lambda i: i["id"]
    )
    assert ours["categories"] == demo["categories"]


def test_every_bad_input_is_reported_counted_and_skipped(tmp_path):
    out = tmp_path / "all.json"
    summary = convert_deepfashion2(RAW / "annos", RAW / "image", out, progress=False)
    data = json.loads(out.read_text())
    # 000001, 000002 valid; 000010 kept with a category_name warning; everything else skipped.
    assert [i["id"] for i in data["images"]] == [1, 2, 10]
    assert len(data["annotations"]) == summary.num_annotations == 5
    assert (summary.num_errors, summary.num_warnings) == (8, 2)

    report = Path(summary.report)
    assert report == tmp_path / "all.report.txt"
    rows = [line.split("\t") for line in report.read_text().splitlines() if not line[0] == "#"]
    found = {(level, kind, Path(file).name, field) for level, kind, file, field, _, _ in rows}
    assert found == {
        ("ERROR", "malformed_json", "000003.json", "(file)"),
        ("ERROR", "keypoint_length", "000004.json", "item1.landmarks"),
        ("ERROR", "category_id", "000005.json", "item1.category_id"),
        ("ERROR", "box_size", "000006.json", "item1.bounding_box"),
        ("ERROR", "missing_image", "000007.json", "image"),
        ("ERROR", "image_size", "000008.json", "item1.bounding_box"),
        ("ERROR", "exif_orientation", "000009.jpg", "EXIF Orientation"),
        ("ERROR", "keypoint_visibility", "000011.json", "item1.landmarks"),
        ("WARNING", "category_name", "000010.json", "item1.category_name"),
        ("WARNING", "unannotated_image", "000012.jpg", "(file)"),
    }
    messages = {r[1] + ":" + Path(r[2]).name: r[4] for r in rows}
    assert "expected 3 x 25 = 75" in messages["keypoint_length:000004.json"]
    assert "expected an integer category id in 1..13" in messages["category_id:000005.json"]
    assert "expected x2 > x1" in messages["box_size:000006.json"]
    assert "000007.jpg not found" in messages["missing_image:000007.json"]
    assert "40x30" in messages["image_size:000008.json"]
    assert "EXIF orientation 6" in messages["exif_orientation:000009.jpg"]
    assert "ERROR keypoint_length: 1" in report.read_text()


def test_broken_top_level_input_is_a_clear_error_and_writes_nothing(tmp_path):
    out = tmp_path / "out.json"
    with pytest.raises(FileNotFoundError, match="annotation folder .*missing"):
        convert_deepfashion2(tmp_path / "missing", RAW / "image", out, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .json files"):
        convert_deepfashion2(tmp_path / "empty", RAW / "image", out, progress=False)
    with pytest.raises(NotADirectoryError, match="image folder"):
        convert_deepfashion2(RAW / "annos", RAW / "annos" / "000001.json", out, progress=False)
    assert list(tmp_path.iterdir()) == [tmp_path / "empty"]


def test_failure_midway_leaves_previous_output_untouched(tmp_path, monkeypatch):
    annos, images = _copy_subset(tmp_path, ["000001", "000002"])
    out = tmp_path / "out" / "x.json"
    out.parent.mkdir()
    out.write_text("previous")
    real, calls = conv._convert_file, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(conv, "_convert_file", flaky)
    with pytest.raises(KeyboardInterrupt):
        convert_deepfashion2(annos, images, out, progress=False)
    assert os.listdir(out.parent) == ["x.json"] and out.read_text() == "previous"


def test_script_command_line(tmp_path, capsys):
    script = load_script(SCRIPT, "prepare_deepfashion2")
    assert "#56" in script.__doc__ and "#62" in script.__doc__ and "#83" in script.__doc__
    annos, images = _copy_subset(tmp_path, ["000001"])
    out = tmp_path / "cli.json"
    argv = ["--annos-dir", str(annos), "--image-dir", str(images), "--output", str(out)]
    assert script.main(argv + ["--no-progress"]) == 0
    assert len(json.loads(out.read_text())["annotations"]) == 2
    assert script.main(["--annos-dir", str(tmp_path / "nope")] + argv[2:]) == 1
    assert "error: annotation folder" in capsys.readouterr().err
