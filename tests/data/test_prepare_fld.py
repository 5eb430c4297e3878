"""datasets/prepare_fld.py on hand-written fixtures in FLD's raw list formats."""

import json
import shutil
from pathlib import Path
import pytest

from builders import load_script
from kgdet.data import load_fld_json
from kgdet.data.prepare.convert_fld import convert_fld

TESTS_DIR = Path(__file__).resolve().parents[1]
FLD = TESTS_DIR / "fixtures" / "fld"
SCRIPT = TESTS_DIR.parent / "datasets" / "prepare_fld.py"


@pytest.fixture
def fld_copy(tmp_path):
    root = tmp_path / "fld"
    shutil.copytree(FLD, root)
    return root


def _report_rows(path):
    rows = [line.split("\t") for line in Path(path).read_text().splitlines() if line[0] != "#"]
    return {(level, kind, Path(file).name, field) for level, kind, file, field, _, _ in rows}


def _edit_line(path, lineno, new_text):
    lines = path.read_text().splitlines()
    lines[lineno - 1] = new_text
    path.write_text("\n".join(lines) + "\n")


def test_val_split_conversion(tmp_path):
    out = tmp_path / "annotations" / "fld_val.json"
    summary = convert_fld(FLD, "val", out, progress=False)
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["categories"]] == ["Upper", "Lower", "Whole"]
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in data["images"]] == [
        (1, "img/img_00000001.jpg", 100, 150),
        (2, "img/img_00000002.jpg", 100, 150),
        (3, "img/img_00000003.jpg", 100, 150),
    ]
    assert [i["variation_type"] for i in data["images"]] == [1, 4, 2]
    upper, lower, whole = data["annotations"]
    # Upper: raw triplets -> slots 0,1,2,3,6,7; FLD v 0 -> 2, 1 -> 1, 2 (truncated) -> 0.
    assert upper["category_id"] == 1 and upper["bbox"] == [10, 8, 80, 92]
    assert upper["area"] == 80 * 92 and upper["iscrowd"] == 0
    assert upper["keypoints"] == [
        30, 12, 2, 70, 12, 2, 12, 40, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20, 95, 2, 80, 96, 2,
    ]  # fmt: skip
    assert upper["fld_visibility"] == [0, 0, 1, 2, 0, 0, 0, 0]
    assert upper["num_keypoints"] == 5 and upper["variation_type"] == 1
    # Lower: raw triplets -> slots 4, 5, 6, 7.
    assert lower["category_id"] == 2
    assert lower["keypoints"] == [0] * 12 + [25, 45, 2, 75, 45, 2, 20, 140, 1, 0, 0, 0]
    assert lower["fld_visibility"] == [0, 0, 0, 0, 0, 0, 1, 2]
    # Whole: identity layout.
    assert whole["category_id"] == 3 and whole["fld_visibility"] == [0, 0, 0, 1, 0, 0, 2, 0]
    assert whole["num_keypoints"] == 7
    assert [a["id"] for a in data["annotations"]] == [1, 2, 3]
    assert summary.report == str(tmp_path / "annotations" / "fld_val.report.txt")

    records = load_fld_json(out, FLD)
    assert records[0]["annotations"][0]["keypoints"][:3] == [30.5, 12.5, 2]
    assert records[1]["variation_type"] == 4


def test_every_bad_input_is_reported_counted_and_skipped(tmp_path):
    summary = convert_fld(FLD, "val", tmp_path / "fld_val.json", progress=False)
    assert (summary.num_inputs, summary.num_images, summary.num_errors) == (11, 3, 8)
    assert _report_rows(summary.report) == {
        ("ERROR", "category_id", "list_landmarks.txt:8", "clothes_type"),
        ("ERROR", "keypoint_length", "list_landmarks.txt:9", "landmarks"),
        ("ERROR", "box_size", "list_bbox.txt:10", "x_1 y_1 x_2 y_2"),
        ("ERROR", "missing_image", "img_00000009.jpg", "(file)"),
        ("ERROR", "image_size", "img_00000010.jpg", "width/height"),
        ("ERROR", "keypoint_visibility", "list_landmarks.txt:13", "landmark_visibility_2"),
        ("ERROR", "variation_type", "list_landmarks.txt:14", "variation_type"),
        ("ERROR", "missing_record", "list_landmarks.txt", "img/img_00000013.jpg"),
    }
    text = Path(summary.report).read_text()
    assert "got 4; expected 1 (upper), 2 (lower) or 3 (full body)" in text
    assert "got 15 values; expected 3 x 8 = 24 for clothes_type 3" in text
    assert "lies outside this 40x30 image" in text


def test_train_and_test_splits(tmp_path):
    train = convert_fld(FLD, "train", tmp_path / "train.json", progress=False)
    test = convert_fld(FLD, "test", tmp_path / "test.json", progress=False)
    assert (train.num_images, train.num_errors, test.num_images, test.num_errors) == (1, 0, 1, 0)
    assert json.loads((tmp_path / "test.json").read_text())["images"][0]["id"] == 5


def test_unpadded_landmarks_and_header_variants(fld_copy, tmp_path):
    landmarks = fld_copy / "Anno" / "list_landmarks.txt"
    _edit_line(landmarks, 4, "img/img_00000002.jpg 2 4 0 25 45 0 75 45 1 20 140 2 0 0")
    header = "image_name clothes_type variation_type " + " ".join(f"c{k}" for k in range(24))
    _edit_line(landmarks, 2, header)
    summary = convert_fld(fld_copy, "val", tmp_path / "a.json", progress=False)
    reference = convert_fld(FLD, "val", tmp_path / "b.json", progress=False)
    a = json.loads((tmp_path / "a.json").read_text())["annotations"]
    b = json.loads((tmp_path / "b.json").read_text())["annotations"]
    assert a == b and summary.num_errors == reference.num_errors
    assert ("WARNING", "header", "list_landmarks.txt", "line 2") in _report_rows(summary.report)


def test_duplicate_record_is_reported(fld_copy, tmp_path):
    bbox = fld_copy / "Anno" / "list_bbox.txt"
    _edit_line(bbox, 4, "img/img_00000001.jpg 15 40 85 145")  # line for image 2 names image 1
    summary = convert_fld(fld_copy, "val", tmp_path / "x.json", progress=False)
    rows = _report_rows(summary.report)
    assert ("ERROR", "duplicate_record", "list_bbox.txt:4", "image_name") in rows
    assert ("ERROR", "missing_record", "list_bbox.txt", "img/img_00000002.jpg") in rows
    assert summary.num_images == 1  # only image 3 of the valid val images is left


@pytest.mark.parametrize(
    "file_name, lineno, text, match",
    [
        ("Anno/list_bbox.txt", 1, "thirteen", r"list_bbox.txt:1: got 'thirteen'; expected the num"),
        ("Anno/list_landmarks.txt", 2, "image_name clothes_type", r"header has 2 column names"),
        ("Eval/list_eval_partition.txt", 1, "14", r"declares 14 records but the file has 13"),
    ],
)
def test_broken_list_file_is_a_clear_error(fld_copy, tmp_path, file_name, lineno, text, match):
    _edit_line(fld_copy / file_name, lineno, text)
    out = tmp_path / "out" / "fld_val.json"
    with pytest.raises(ValueError, match=match):
        convert_fld(fld_copy, "val", out, progress=False)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_missing_list_file_and_script(fld_copy, tmp_path, capsys):
    script = load_script(SCRIPT, "prepare_fld")
    out = tmp_path / "fld_val.json"
    argv = ["--root", str(fld_copy), "--split", "val", "--output", str(out), "--no-progress"]
    assert script.main(argv) == 0 and out.exists()
    (fld_copy / "Eval" / "list_eval_partition.txt").unlink()
    out.unlink()
    assert script.main(argv) == 1
    assert "list_eval_partition.txt not found" in capsys.readouterr().err
    assert not out.exists()
