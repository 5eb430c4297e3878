"""Built-in DeepFashion2 / FLD registration: lazy, reads $DETECTRON2_DATASETS at load time."""

import json
import os
import shutil
from pathlib import Path
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

import kgdet  # noqa: F401  (registers the built-in datasets)
from kgdet.data import register_fld_instances
from kgdet.data.deepfashion2_meta import DF2_CLASS_NAMES
from kgdet.data.prepare.convert_fld import convert_fld

FLD_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fld"


@pytest.fixture
def restore_paths():
    """Built-in metadata paths follow the loaded root; put them back after the test."""
    names = ["deepfashion2_val", "deepfashion2_test", "fld_val", "deepfashion2_demo"]
    saved = {
        n: {k: MetadataCatalog.get(n).get(k) for k in ("json_file", "image_root")} for n in names
    }
    yield
    for name, paths in saved.items():
        for key, value in paths.items():
            if value is not None:
                vars(MetadataCatalog.get(name))[key] = value


def test_registration_is_lazy_and_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    for name in ("deepfashion2_train", "deepfashion2_val", "fld_train", "kgdet_synth_train"):
        assert name in DatasetCatalog
    with pytest.raises(FileNotFoundError, match="val-coco_style.json.*DETECTRON2_DATASETS"):
        DatasetCatalog.get("deepfashion2_val")
    with pytest.raises(FileNotFoundError, match="fld_train.json"):
        DatasetCatalog.get("fld_train")
    with pytest.raises(FileNotFoundError, match="deepfashion2/test/image"):
        DatasetCatalog.get("deepfashion2_test")
    assert not (tmp_path / "nowhere").exists()


def test_deepfashion2_val_from_env_root(df2_demo_dir, tmp_path, monkeypatch, restore_paths):
    val = tmp_path / "deepfashion2" / "validation"
    (val / "image").mkdir(parents=True)
    for image in sorted((df2_demo_dir / "image").glob("*.jpg")):
        (val / "image" / image.name).symlink_to(image)
    (val / "val-coco_style.json").symlink_to(df2_demo_dir / "annotations.json")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))

    records = DatasetCatalog.get("deepfashion2_val")
    assert len(records) == 32
    assert sum(len(r["annotations"]) for r in records) == 55
    assert all(r["file_name"].startswith(str(val / "image")) for r in records)
    assert all(os.path.exists(r["file_name"]) for r in records)
    assert all(len(a["keypoints"]) == 882 for r in records for a in r["annotations"])
    meta = MetadataCatalog.get("deepfashion2_val")
    assert meta.json_file == str(val / "val-coco_style.json")
    assert meta.image_root == str(val / "image")
    assert meta.thing_classes == DF2_CLASS_NAMES
    assert meta.thing_dataset_id_to_contiguous_id == {i: i - 1 for i in range(1, 14)}


def test_deepfashion2_demo_read_in_place_from_env(
    df2_demo_dir, tmp_path, monkeypatch, restore_paths
):
    monkeypatch.setenv("KGDET_DF2_DEMO", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="annotations.json.*KGDET_DF2_DEMO"):
        DatasetCatalog.get("deepfashion2_demo")

    monkeypatch.setenv("KGDET_DF2_DEMO", str(df2_demo_dir))
    records = DatasetCatalog.get("deepfashion2_demo")
    assert len(records) == 32
    assert sum(len(r["annotations"]) for r in records) == 55
    assert all(r["file_name"].startswith(str(df2_demo_dir / "image")) for r in records)
    meta = MetadataCatalog.get("deepfashion2_demo")
    assert meta.evaluator_type == "deepfashion2"
    assert len(meta.keypoint_names) == 294
    assert meta.json_file == str(df2_demo_dir / "annotations.json")


def test_deepfashion2_test_image_list(df2_demo_dir, tmp_path, monkeypatch, restore_paths):
    image_dir = tmp_path / "deepfashion2" / "test" / "image"
    image_dir.mkdir(parents=True)
    names = sorted(p.name for p in (df2_demo_dir / "image").glob("*.jpg"))[:3]
    for name in names:
        (image_dir / name).symlink_to(df2_demo_dir / "image" / name)
    (image_dir / "README.txt").write_text("not an image")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))

    records = DatasetCatalog.get("deepfashion2_test")
    assert [r["image_id"] for r in records] == [int(n[:-4]) for n in names]
    assert all("annotations" not in r for r in records)
    assert not hasattr(MetadataCatalog.get("deepfashion2_test"), "json_file")


def test_fld_val_keeps_fld_visibility_and_variation_type(tmp_path, monkeypatch, restore_paths):
    fld_root = tmp_path / "fld"
    shutil.copytree(FLD_FIXTURES, fld_root)
    convert_fld(
        str(fld_root), "val", str(fld_root / "annotations" / "fld_val.json"), progress=False
    )
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))

    records = DatasetCatalog.get("fld_val")
    assert [r["image_id"] for r in records] == [1, 2, 3]
    upper = records[0]["annotations"][0]
    assert upper["category_id"] == 0
    assert upper["fld_visibility"] == [0, 0, 1, 2, 0, 0, 0, 0]
    assert upper["variation_type"] == records[0]["variation_type"] == 1
    assert [r["variation_type"] for r in records] == [1, 4, 2]
    assert MetadataCatalog.get("fld_val").image_root == str(fld_root)
    assert os.path.exists(records[0]["file_name"])

    # The public function registers the same json under any name.
    name = "test_builtin_fld_custom"
    register_fld_instances(name, str(fld_root / "annotations" / "fld_val.json"), str(fld_root))
    try:
        assert DatasetCatalog.get(name)[1]["annotations"][0]["fld_visibility"] == [0] * 6 + [1, 2]
        assert MetadataCatalog.get(name).evaluator_type == "fld"
        with open(fld_root / "annotations" / "fld_val.json") as f:
            assert len(json.load(f)["annotations"]) == 3
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
