"""KGDetDatasetMapper and the test loader: unreadable or EXIF-rotated images skipped and counted."""

import itertools
import json
import logging
import numpy as np
from pathlib import Path
import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from builders import load_script
from kgdet import add_kgdet_config
from kgdet.data import KGDetDatasetMapper, build_kgdet_test_loader, register_deepfashion2_instances
from kgdet.data.deepfashion2_meta import DF2_CLASS_NAMES
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
W, H = 64, 48


def _dataset(tmp_path, name):
    """Three images: good, truncated, EXIF orientation 3; one garment each."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, kind in enumerate(("good", "truncated", "rotated"), start=1):
        path = tmp_path / f"{i:06d}.jpg"
        kw = {}
        if kind == "rotated":
            exif = Image.Exif()
            exif[0x0112] = 3
            kw["exif"] = exif
        pixels = rng.integers(0, 255, (H * 4, W * 4, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((W, H)).save(path, "JPEG", quality=95, **kw)
        if kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        images.append(dict(id=i, file_name=path.name, width=W, height=H))
        kps = [0.0] * 882
        kps[0:3] = [10.0, 10.0, 2.0]
        anns.append(
            dict(
                id=i,
                image_id=i,
                category_id=1,
                bbox=[5, 5, 30, 30],
                keypoints=kps,
                area=900,
                iscrowd=0,
                num_keypoints=1,
            )
        )
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(DF2_CLASS_NAMES)]
    json_file = tmp_path / "a.json"
    json_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    register_deepfashion2_instances(name, json_file, tmp_path)
    cfg = get_cfg()
    add_kgdet_config(cfg)
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = (name,)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (H,), 100
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = H, 100
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


@pytest.fixture
def dataset(tmp_path):
    name = "test_unreadable_images"
    cfg = _dataset(tmp_path, name)
    yield name, cfg
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_mapper_skips_and_counts_naming_the_file(dataset, caplog):
    name, cfg = dataset
    mapper = KGDetDatasetMapper(cfg, is_train=True)
    records = DatasetCatalog.get(name)
    with caplog.at_level(logging.WARNING):
        out = [mapper(r) for r in records]
    assert out[0] is not None and out[0]["image"].shape[1:] == (H, W)
    assert out[1] is None and out[2] is None and mapper.num_skipped == 2
    assert "000002.jpg: unreadable image" in caplog.text
    assert "000003.jpg: EXIF orientation 3 (rotate 180)" in caplog.text
    assert "2 image(s) skipped so far" in caplog.text


def test_training_loader_keeps_going_on_good_images(dataset):
    name, cfg = dataset
    cfg.SOLVER.IMS_PER_BATCH = 2
    train_net = load_script(REPO_ROOT / "train_net.py", "train_net")
    loader = train_net.Trainer.build_train_loader(cfg)
    batches = list(itertools.islice(loader, 3))
    files = {d["file_name"].split("/")[-1] for b in batches for d in b}
    assert files == {"000001.jpg"}


def test_test_loader_maps_each_image_once_and_counts_skipped(dataset, caplog):
    name, cfg = dataset
    loader = build_kgdet_test_loader(cfg, name, KGDetDatasetMapper(cfg, is_train=False))
    assert len(loader) == 3
    with caplog.at_level(logging.WARNING):
        batches = list(loader)
    assert [[d["image_id"] for d in b] for b in batches] == [[1]]
    assert [p.split("/")[-1] for p in loader.skipped] == ["000002.jpg", "000003.jpg"]
    assert "2 image(s) could not be used and were left out of inference" in caplog.text
