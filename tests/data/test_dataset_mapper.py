"""KGDetDatasetMapper: keypoints with visibility through flip/resize, slot masks, filtering."""

import logging
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from kgdet import add_kgdet_config
from kgdet.data import KGDetDatasetMapper, register_deepfashion2_instances
from kgdet.data.deepfashion2_meta import get_deepfashion2_metadata
from kgdet.data.fld_meta import get_fld_metadata
from PIL import Image

W, H = 64, 48


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "image.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def df2_meta_name():
    name = "test_mapper_df2_meta"
    MetadataCatalog.get(name).set(**get_deepfashion2_metadata())
    yield name
    MetadataCatalog.remove(name)


@pytest.fixture
def fld_meta_name():
    name = "test_mapper_fld_meta"
    MetadataCatalog.get(name).set(**get_fld_metadata())
    yield name
    MetadataCatalog.remove(name)


def _cfg(dataset_name, num_keypoints=294, num_classes=13):
    cfg = get_cfg()
    add_kgdet_config(cfg)
    cfg.DATASETS.TRAIN = (dataset_name,)
    cfg.DATASETS.TEST = (dataset_name,)
    cfg.MODEL.KGDET.NUM_KEYPOINTS = num_keypoints
    cfg.MODEL.KGDET.NUM_CLASSES = num_classes
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def _flip_perm(meta_name):
    meta = MetadataCatalog.get(meta_name)
    index = {n: i for i, n in enumerate(meta.keypoint_names)}
    perm = np.arange(len(index))
    for a, b in meta.keypoint_flip_map:
        perm[index[a]], perm[index[b]] = index[b], index[a]
    return perm


def _keypoints(num_keypoints, points):
    """Flat 3K list with {slot: (x, y, v)} filled in."""
    kps = np.zeros((num_keypoints, 3))
    for slot, xyv in points.items():
        kps[slot] = xyv
    return kps.reshape(-1).tolist()


def _annotation(bbox, category_id, keypoints):
    return {
        "bbox": bbox,
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": category_id,
        "iscrowd": 0,
        "keypoints": keypoints,
    }


def _assert_mirrored(before, after, perm, width):
    """after[perm[k]] == (width - x_k, y_k, v_k) for labelled k; unlabelled slots are zero."""
    before, after = np.asarray(before).reshape(-1, 3), np.asarray(after)
    expected = np.zeros_like(before)
    labelled = before[:, 2] > 0
    expected[perm[labelled]] = np.stack(
        [width - before[labelled, 0], before[labelled, 1], before[labelled, 2]], axis=1
    )
    np.testing.assert_allclose(after, expected, atol=1e-4)


def test_forced_flip_moves_keypoints_to_mirrored_slots_at_mirrored_x(image_file, df2_meta_name):
    # Class 0 (short sleeved shirt): local 7 <-> 25 (slots 6 <-> 24), 2 <-> 6 (1 <-> 5),
    # local 1 (slot 0) self-mirrored; v = 1 (occluded) must stay 1.
    points = {6: (12.5, 10.5, 2), 24: (30.5, 20.5, 2), 0: (20.5, 6.5, 1), 1: (15.0, 8.0, 1)}
    kps = _keypoints(294, points)
    record = {
        "file_name": image_file,
        "height": H,
        "width": W,
        "image_id": 1,
        "annotations": [_annotation([10, 5, 30, 30], 0, kps)],
    }
    mapper = KGDetDatasetMapper(
        _cfg(df2_meta_name), is_train=True, augmentations=[T.RandomFlip(prob=1.0)]
    )
    instances = mapper(record)["instances"]
    out = instances.gt_keypoints.tensor[0].numpy()
    perm = _flip_perm(df2_meta_name)
    assert (perm[6], perm[1], perm[0]) == (24, 5, 0)
    np.testing.assert_allclose(out[24], [W - 12.5, 10.5, 2])
    np.testing.assert_allclose(out[6], [W - 30.5, 20.5, 2])
    np.testing.assert_allclose(out[5], [W - 15.0, 8.0, 1])
    np.testing.assert_allclose(out[0], [W - 20.5, 6.5, 1])
    _assert_mirrored(kps, out, perm, W)
    np.testing.assert_allclose(instances.gt_boxes.tensor[0].numpy(), [W - 40, 5, W - 10, 35])
    defined = instances.gt_keypoint_defined
    assert defined.dtype == torch.bool and defined.shape == (1, 294)
    assert defined[0].nonzero().flatten().tolist() == list(range(25))


def test_forced_flip_on_demo_image(df2_demo_dir):
    name = "test_mapper_df2_demo"
    register_deepfashion2_instances(
        name, str(df2_demo_dir / "annotations.json"), str(df2_demo_dir / "image")
    )
    try:
        record = next(r for r in DatasetCatalog.get(name) if len(r["annotations"]) == 2)
        mapper = KGDetDatasetMapper(_cfg(name), is_train=True, augmentations=[T.RandomFlip(1.0)])
        instances = mapper(dict(record))["instances"]
        perm = _flip_perm(name)
        assert len(instances) == 2
        for i, anno in enumerate(record["annotations"]):
            _assert_mirrored(
                anno["keypoints"], instances.gt_keypoints.tensor[i], perm, record["width"]
            )
            start, end = MetadataCatalog.get(name).keypoint_slot_ranges[anno["category_id"]]
            labelled = instances.gt_keypoints.tensor[i, :, 2] > 0
            assert labelled.any() and labelled.nonzero().min() >= start
            assert labelled.nonzero().max() < end
            assert instances.gt_keypoint_defined[i].nonzero().flatten().tolist() == list(
                range(start, end)
            )
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_resize_keeps_visibility_and_unlabelled_garments(image_file, df2_meta_name):
    kps_shirt = _keypoints(294, {3: (10.5, 12.5, 1), 4: (20.5, 14.5, 2)})
    kps_trousers = _keypoints(294, {})  # class 7 garment without any labelled keypoint
    record = {
        "file_name": image_file,
        "height": H,
        "width": W,
        "image_id": 2,
        "annotations": [
            _annotation([4, 4, 30, 30], 0, kps_shirt),
            _annotation([30, 10, 20, 30], 7, kps_trousers),
        ],
    }
    mapper = KGDetDatasetMapper(
        _cfg(df2_meta_name), is_train=True, augmentations=[T.Resize((2 * H, 2 * W))]
    )
    out = mapper(record)
    assert out["image"].shape == (3, 2 * H, 2 * W)
    instances = out["instances"]
    assert len(instances) == 2, "garment without labelled keypoints must be kept"
    kps = instances.gt_keypoints.tensor
    np.testing.assert_allclose(kps[0, 3].numpy(), [21.0, 25.0, 1])
    np.testing.assert_allclose(kps[0, 4].numpy(), [41.0, 29.0, 2])
    assert (kps[1] == 0).all()
    assert instances.gt_classes.tolist() == [0, 7]
    assert instances.gt_keypoint_defined[1].nonzero().flatten().tolist() == list(range(168, 182))


def test_degenerate_boxes_dropped_with_logged_count(image_file, df2_meta_name, caplog):
    kps = _keypoints(294, {0: (10.5, 10.5, 2)})
    record = {
        "file_name": image_file,
        "height": H,
        "width": W,
        "image_id": 3,
        "annotations": [
            _annotation([4, 4, 30, 30], 0, kps),
            _annotation([40, 10, 0, 20], 0, kps),  # zero width
        ],
    }
    mapper = KGDetDatasetMapper(_cfg(df2_meta_name), is_train=True, augmentations=[])
    with caplog.at_level(logging.WARNING, logger="kgdet.data.dataset_mapper"):
        instances = mapper(record)["instances"]
    assert len(instances) == 1
    assert mapper.num_degenerate_dropped == 1
    assert "dropped 1 degenerate box" in caplog.text


def test_fld_layout_flip_and_defined_slots(image_file, fld_meta_name):
    # Lower garment (class 1): waistlines 4/5 and hems 6/7; flip swaps left and right.
    kps = _keypoints(8, {4: (20.5, 10.5, 2), 5: (40.5, 10.5, 1), 6: (18.5, 40.5, 2)})
    record = {
        "file_name": image_file,
        "height": H,
        "width": W,
        "image_id": 4,
        "annotations": [_annotation([15, 5, 30, 40], 1, kps)],
    }
    mapper = KGDetDatasetMapper(
        _cfg(fld_meta_name, num_keypoints=8, num_classes=3),
        is_train=True,
        augmentations=[T.RandomFlip(prob=1.0)],
    )
    instances = mapper(record)["instances"]
    _assert_mirrored(kps, instances.gt_keypoints.tensor[0], _flip_perm(fld_meta_name), W)
    assert instances.gt_keypoint_defined.tolist() == [[False] * 4 + [True] * 4]


def test_from_config_checks_and_defaults(df2_meta_name, image_file):
    cfg = _cfg(df2_meta_name)
    assert not cfg.MODEL.KEYPOINT_ON
    mapper = KGDetDatasetMapper(cfg, is_train=True)
    assert mapper.use_keypoint
    assert np.array_equal(mapper.keypoint_hflip_indices, _flip_perm(df2_meta_name))
    assert any(isinstance(a, T.RandomFlip) for a in mapper.augmentations.augs)

    with pytest.raises(ValueError, match="294 keypoint_names.*NUM_KEYPOINTS is 8"):
        KGDetDatasetMapper(_cfg(df2_meta_name, num_keypoints=8), is_train=True)

    # Inference: annotations are dropped, no instances.
    record = {"file_name": image_file, "height": H, "width": W, "image_id": 5, "annotations": []}
    out = KGDetDatasetMapper(cfg, is_train=False)(record)
    assert "instances" not in out and "annotations" not in out
