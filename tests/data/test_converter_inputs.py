"""Both converters judge images as Detectron2 decodes them; DF2 retrieval fields cost nothing."""

import json
import numpy as np
import os
from pathlib import Path
import pytest

from kgdet.data.prepare.convert_deepfashion2 import convert_deepfashion2
from kgdet.data.prepare.convert_fld import convert_fld
from PIL import Image

W, H = 200, 300
BOX = [20, 30, 120, 150]


def _image(path, orientation=None, truncate=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(0)
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path, "JPEG", **kw)
    if truncate:
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])


def _item(cat=1, **extra):
    n = 25 if cat == 1 else 14
    x1, y1, x2, y2 = BOX
    item = {
        "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
        "scale": 2,
        "viewpoint": 2,
        "zoom_in": 1,
        "occlusion": 1,
        "style": 1,
        "landmarks": [v for k in range(n) for v in (30 + k, 40 + k, 2)],
        "bounding_box": list(BOX),
        "category_id": cat,
    }
    item.update(extra)
    return item


def _df2(tmp_path, records, images=None):
    annos, image_dir = tmp_path / "annos", tmp_path / "image"
    annos.mkdir(exist_ok=True)
    for stem, record in records.items():
        (annos / f"{stem}.json").write_text(json.dumps(record))
        _image(str(image_dir / f"{stem[-6:].zfill(6)}.jpg"), **(images or {}).get(stem, {}))
    return annos, image_dir


def _rows(report):
    return [line.split("\t") for line in Path(report).read_text().splitlines() if line[0] != "#"]


def test_df2_every_exif_orientation_and_truncation_reported_and_skipped(tmp_path):
    images = {
        "000002": {"orientation": 2},
        "000003": {"orientation": 3},
        "000004": {"orientation": 6},
        "000005": {"truncate": True},
    }
    records = {
        s: {"source": "user", "pair_id": 1, "item1": _item()}
        for s in ("000001", "000002", "000003", "000004", "000005", "000006")
    }
    images["000006"] = {"orientation": 1}
    annos, image_dir = _df2(tmp_path, records, images)
    summary = convert_deepfashion2(annos, image_dir, tmp_path / "out.json", progress=False)
    data = json.loads((tmp_path / "out.json").read_text())
    assert [i["file_name"] for i in data["images"]] == ["000001.jpg", "000006.jpg"]
    found = {(r[1], Path(r[2]).name) for r in _rows(summary.report) if r[0] == "ERROR"}
    assert found == {
        ("exif_orientation", "000002.jpg"),
        ("exif_orientation", "000003.jpg"),
        ("exif_orientation", "000004.jpg"),
        ("unreadable_image", "000005.jpg"),
    }
    assert summary.num_errors == 4
    # Header-only checking (--no-decode) is faster but lets the truncated image through.
    fast = convert_deepfashion2(
        annos, image_dir, tmp_path / "fast.json", progress=False, decode=False
    )
    names = [i["file_name"] for i in json.loads((tmp_path / "fast.json").read_text())["images"]]
    assert "000005.jpg" in names and fast.num_errors == 3


def test_df2_retrieval_fields_and_item_numbering_never_cost_a_garment(tmp_path):
    records = {
        "000001": {"source": "user", "pair_id": 1, "item1": _item(1), "item3": _item(8)},
        "000002": {"source": "shop", "pair_id": 2, "item10": _item(8), "item2": _item(1)},
        "000003": {"pair_id": 3, "item1": _item(1)},
        "000004": {"source": "user", "item1": _item(1), "item2": _item(8)},
        "000005": {"source": "user", "pair_id": "5", "item1": _item(1)},
        "000006": {"source": "user", "pair_id": None, "item1": _item(1, style="2")},
    }
    annos, image_dir = _df2(tmp_path, records)
    summary = convert_deepfashion2(annos, image_dir, tmp_path / "out.json", progress=False)
    data = json.loads((tmp_path / "out.json").read_text())
    assert summary.num_errors == 0 and len(data["images"]) == 6
    got = [
        (a["image_id"], a["category_id"], a.get("pair_id", "missing"), a.get("source"))
        for a in data["annotations"]
    ]
    assert got == [
        (1, 1, 1, "user"),
        (1, 8, 1, "user"),
        (2, 8, 2, "shop"),
        (2, 1, 2, "shop"),
        (3, 1, 3, None),
        (4, 1, "missing", "user"),
        (4, 8, "missing", "user"),
        (5, 1, 5, "user"),
        (6, 1, "missing", "user"),
    ]
    assert data["annotations"][-1]["style"] == 2
    warnings = {(r[1], Path(r[2]).name): r[4] for r in _rows(summary.report) if r[0] == "WARNING"}
    assert warnings[("pair_id", "000004.json")].startswith("missing")
    assert warnings[("source", "000003.json")].startswith("missing")
    assert "string '5'" in warnings[("pair_id", "000005.json")]
    assert ("item_numbers", "000001.json") in warnings and (
        "item_numbers",
        "000002.json",
    ) in warnings
    assert "WARNING pair_id: 3" in Path(summary.report).read_text()


def test_df2_invalid_polygon_keeps_the_garment(tmp_path):
    records = {
        "000001": {"source": "user", "pair_id": 1, "item1": _item(1, segmentation=[[1, 2, 3, 4]])}
    }
    annos, image_dir = _df2(tmp_path, records)
    summary = convert_deepfashion2(annos, image_dir, tmp_path / "out.json", progress=False)
    ann = json.loads((tmp_path / "out.json").read_text())["annotations"]
    assert len(ann) == 1 and ann[0]["segmentation"] == [] and summary.num_warnings == 1


def test_df2_file_names_giving_one_image_id_are_refused_up_front(tmp_path):
    records = {
        "000001": {"source": "user", "pair_id": 1, "item1": _item()},
        "1": {"source": "user", "pair_id": 1, "item1": _item()},
    }
    annos, image_dir = _df2(tmp_path, records)
    with pytest.raises(ValueError, match=r"000001.json and 1.json -> 1"):
        convert_deepfashion2(annos, image_dir, tmp_path / "out.json", progress=False)
    assert not (tmp_path / "out.json").exists()


def _fld(root, names, images=None):
    header = "image_name clothes_type variation_type " + " ".join(
        f"landmark_visibility_{k} landmark_location_x_{k} landmark_location_y_{k}"
        for k in range(1, 9)
    )
    lm = "1 1 " + " ".join(["0 40 40"] * 6 + ["0 0 0"] * 2)
    files = {
        "Anno/list_bbox.txt": ["image_name x_1 y_1 x_2 y_2"]
        + [f"{n} {' '.join(map(str, BOX))}" for n in names],
        "Anno/list_landmarks.txt": [header] + [f"{n} {lm}" for n in names],
        "Eval/list_eval_partition.txt": ["image_name evaluation_status"]
        + [f"{n} train" for n in names],
    }
    for rel, lines in files.items():
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        Path(root, rel).write_text(f"{len(names)}\n" + "\n".join(lines) + "\n")
    for n in names:
        _image(os.path.join(root, n), **(images or {}).get(n, {}))


def test_fld_exif_and_truncated_images_reported_and_skipped(tmp_path):
    names = ["img/img_00000001.jpg", "img/img_00000002.jpg", "img/img_00000003.jpg"]
    _fld(tmp_path, names, {names[1]: {"orientation": 3}, names[2]: {"truncate": True}})
    summary = convert_fld(tmp_path, "train", tmp_path / "fld.json", progress=False)
    data = json.loads((tmp_path / "fld.json").read_text())
    assert [i["file_name"] for i in data["images"]] == [names[0]]
    kinds = sorted(r[1] for r in _rows(summary.report) if r[0] == "ERROR")
    assert kinds == ["exif_orientation", "unreadable_image"]


def test_fld_colliding_image_ids_are_renumbered_with_one_warning(tmp_path, caplog):
    names = [
        "img/Blouse/img_00000001.jpg",
        "img/Dress/img_00000001.jpg",
        "img/Dress/img_00000002.jpg",
    ]
    _fld(tmp_path, names)
    summary = convert_fld(tmp_path, "train", tmp_path / "fld.json", progress=False)
    data = json.loads((tmp_path / "fld.json").read_text())
    assert [(i["id"], i["file_name"]) for i in data["images"]] == list(zip([1, 2, 3], names))
    assert [a["image_id"] for a in data["annotations"]] == [1, 2, 3]
    rows = [r for r in _rows(summary.report) if r[1] == "image_ids"]
    assert len(rows) == 1 and summary.num_errors == 0
    assert "img/Blouse/img_00000001.jpg and img/Dress/img_00000001.jpg" in rows[0][4]
    assert "numbered per folder" in caplog.text
