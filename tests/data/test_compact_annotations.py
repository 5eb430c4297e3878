"""kgdet.data.compact*: columnar DeepFashion2 annotations, their cache and lazy dataset dicts."""

import json
import logging
import multiprocessing as mp
import numpy as np
import os
import pickle
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import get_detection_dataset_dicts
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

import kgdet
from df2_layout_json import write_df2_layout_json
from kgdet.data import (
    CompactDatasetDicts,
    KGDetDatasetMapper,
    OutsideClassBlockError,
    build_kgdet_train_loader,
    get_kgdet_dataset_dicts,
    load_compact_annotations,
    load_deepfashion2_json,
    register_deepfashion2_instances,
)
from kgdet.data.compact_cache import _read_header, cache_file_for, default_cache_dir
from kgdet.data.deepfashion2_meta import (
    DF2_CLASS_KEYPOINT_SLOTS,
    DF2_CLASS_NAMES,
    DF2_KEYPOINT_SLOT_RANGES,
    get_deepfashion2_metadata,
)
from kgdet.data.register import DEEPFASHION2_SCHEMA, coco_json_to_dataset_dicts
from kgdet.data.validation import AnnotationFileError, load_json_file


def _old_dicts(json_file, image_root):
    """The previous representation: every record as Python lists (without polygons)."""
    dicts = coco_json_to_dataset_dicts(load_json_file(json_file), image_root, json_file)
    for record in dicts:
        for a in record["annotations"]:
            a.pop("segmentation", None)
    return dicts


@pytest.fixture
def generated(tmp_path):
    path = str(tmp_path / "df2.json")
    write_df2_layout_json(path, 40, seed=3, garments_per_image=(0, 1, 2, 3), first_image_id=7)
    return path


def test_lazy_dicts_equal_the_previous_dicts_on_the_demo_set(df2_demo_dir):
    json_file = str(df2_demo_dir / "annotations.json")
    ours = load_deepfashion2_json(json_file, "/img")
    assert isinstance(ours, CompactDatasetDicts) and len(ours) == 32
    assert list(ours) == _old_dicts(json_file, "/img")


def test_lazy_dicts_equal_the_previous_dicts_on_a_generated_json(generated):
    ours = load_deepfashion2_json(generated, "/img")
    old = _old_dicts(generated, "/img")
    assert ours == old
    assert ours[-1] == old[-1] and ours[3:6] == old[3:6]
    assert sum(len(r["annotations"]) == 0 for r in ours) > 0  # images without garments kept


def test_columns_hold_the_class_block_only(generated):
    compact = load_compact_annotations(generated)
    data = json.load(open(generated))
    by_id = {a["id"]: a for a in data["annotations"]}
    assert compact.num_annotations == len(by_id)
    assert len(compact.keypoints) < 40 * compact.num_annotations  # not 294 rows each
    for a in range(compact.num_annotations):
        ann = by_id[int(compact.annotation_ids[a])]
        start, end = DF2_KEYPOINT_SLOT_RANGES[ann["category_id"] - 1]
        full = np.asarray(ann["keypoints"], dtype=np.float32).reshape(-1, 3)
        np.testing.assert_array_equal(compact.class_keypoints(a), full[start:end])
        np.testing.assert_array_equal(compact.global_keypoints(a), full)
        assert compact.num_labelled[a] == (full[:, 2] > 0).sum()
        assert list(compact.bboxes[a]) == ann["bbox"]
        assert compact.file_name(compact.annotation_image_index[a]) == f"{ann['image_id']:06d}.jpg"
    assert compact.num_labelled_outside.sum() == 0
    assert list(compact.image_ids) == sorted(i["id"] for i in data["images"])


def test_unsorted_json_gives_sorted_images_grouped_annotations(tmp_path, generated):
    data = json.load(open(generated))
    data["images"].reverse()
    data["annotations"].reverse()
    data = {"categories": data["categories"], "annotations": data["annotations"],
            "images": data["images"]}  # fmt: skip
    path = tmp_path / "shuffled.json"
    path.write_text(json.dumps(data))
    assert load_deepfashion2_json(str(path), "/img") == _old_dicts(str(path), "/img")


def test_outside_block_landmarks_raise_naming_json_annotation_and_slots(tmp_path):
    path = str(tmp_path / "outside.json")
    write_df2_layout_json(path, 10, seed=1, outside_block=[2, 5])
    with pytest.raises(OutsideClassBlockError) as info:
        load_compact_annotations(path)
    text = str(info.value)
    assert path in text and "2 garment(s)" in text
    assert "annotation id 2 " in text and "annotation id 5 " in text and "slot(s) [" in text
    counted = load_compact_annotations(path, outside_block="count")
    assert counted.num_labelled_outside.sum() == 2
    assert sorted(counted.outside_block_slots) == [2, 5]
    with pytest.raises(OutsideClassBlockError):
        load_deepfashion2_json(path, "/img")


def test_missing_fields_are_filled_and_logged(tmp_path, caplog):
    path = str(tmp_path / "nofields.json")
    write_df2_layout_json(path, 6, drop_fields=("area", "num_keypoints", "iscrowd"))
    with caplog.at_level(logging.WARNING):
        compact = load_compact_annotations(path)
    assert "'area' missing in" in caplog.text and "'num_keypoints' missing in" in caplog.text
    np.testing.assert_array_equal(compact.areas, compact.bboxes[:, 2] * compact.bboxes[:, 3])
    np.testing.assert_array_equal(compact.json_num_keypoints, compact.num_labelled)
    assert compact.iscrowd.sum() == 0


def test_invalid_json_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "cut.json"
    text = json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}]})
    path.write_text(text[:-10])
    with pytest.raises(AnnotationFileError, match="cut.json: not valid JSON"):
        load_compact_annotations(str(path))


def test_changed_json_invalidates_the_cache(tmp_path):
    path = str(tmp_path / "a.json")
    write_df2_layout_json(path, 8, seed=0)
    first = load_compact_annotations(path)
    assert first.cache_file and os.path.exists(first.cache_file)
    assert load_compact_annotations(path).num_images == 8  # from the cache
    write_df2_layout_json(path, 9, seed=0)
    second = load_compact_annotations(path)
    assert second.num_images == 9 and second.cache_file == first.cache_file
    # Same size and content length, other values, mtime kept: the content hash differs.
    data = json.load(open(path))
    data["images"][0]["width"] = 999 if data["images"][0]["width"] != 999 else 998
    st = os.stat(path)
    with open(path, "w") as f:
        json.dump(data, f)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_compact_annotations(path).image_widths[0] in (998, 999)


@pytest.mark.parametrize("damage", ["truncate", "flip", "header"])
def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    path = str(tmp_path / "a.json")
    write_df2_layout_json(path, 8, seed=2)
    good = load_compact_annotations(path)
    expected = np.array(good.keypoints)
    cache = good.cache_file
    del good
    size = os.path.getsize(cache)
    with open(cache, "r+b") as f:
        if damage == "truncate":
            f.truncate(size - 100)
        elif damage == "flip":  # one byte of the keypoints column
            header = _read_header(cache)
            at = header["data_start"] + header["columns"]["keypoints"]["offset"] + 5
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ 0xFF]))
        else:
            f.seek(20)
            f.write(b"\x00\x00\x00")
    with caplog.at_level(logging.WARNING):
        rebuilt = load_compact_annotations(path)
    assert "is not usable and is rebuilt" in caplog.text
    np.testing.assert_array_equal(rebuilt.keypoints, expected)
    assert load_compact_annotations(path).num_images == 8


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KGDET_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == str(tmp_path / "c" / "annotations")
    path = str(tmp_path / "a.json")
    write_df2_layout_json(path, 3)
    compact = load_compact_annotations(path)
    assert compact.cache_file == cache_file_for(
        path, DEEPFASHION2_SCHEMA, DF2_CLASS_KEYPOINT_SLOTS, default_cache_dir()
    )
    assert load_compact_annotations(path, use_cache=False).cache_file is None


def _load_in_child(json_file, cache_root, queue):
    os.environ["KGDET_CACHE"] = cache_root
    compact = load_compact_annotations(json_file)
    queue.put(
        (compact.cache_file, os.stat(compact.cache_file).st_ino, float(compact.keypoints.sum()))
    )


@pytest.mark.slow
def test_two_processes_share_one_cache_file(tmp_path):
    path = str(tmp_path / "a.json")
    write_df2_layout_json(path, 30, seed=5)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_load_in_child, args=(path, str(tmp_path / "cache"), queue))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1]  # same file (same inode), same values
    assert len(os.listdir(tmp_path / "cache" / "annotations")) == 2  # the cache + its lock


def test_lazy_dicts_pickle_as_a_path_and_map_again(generated):
    dicts = load_deepfashion2_json(generated, "/img")
    blob = pickle.dumps(dicts)
    assert len(blob) < 4096  # the cache path, not the arrays
    assert pickle.loads(blob) == dicts
    in_memory = CompactDatasetDicts(load_compact_annotations(generated, use_cache=False), "/img")
    assert pickle.loads(pickle.dumps(in_memory)) == dicts


@pytest.fixture
def two_registrations(generated):
    meta = get_deepfashion2_metadata()
    DatasetCatalog.register("compact_new", lambda: load_deepfashion2_json(generated, "/img"))
    DatasetCatalog.register("compact_old", lambda: _old_dicts(generated, "/img"))
    for name in ("compact_new", "compact_old"):
        MetadataCatalog.get(name).set(**meta)
    yield
    for name in ("compact_new", "compact_old"):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.mark.parametrize("filter_empty, min_keypoints", [(True, 0), (False, 0), (True, 30)])
def test_filters_match_detectron2(two_registrations, filter_empty, min_keypoints):
    ours = get_kgdet_dataset_dicts(["compact_new"], filter_empty, min_keypoints)
    theirs = get_detection_dataset_dicts(["compact_old"], filter_empty, min_keypoints)
    assert isinstance(ours, CompactDatasetDicts)
    assert ours == theirs
    both = get_kgdet_dataset_dicts(["compact_new", "compact_new"], filter_empty, min_keypoints)
    assert len(both) == 2 * len(theirs) and both[len(theirs)] == theirs[0]


def _losses(dataset, df2_demo_dir, iterations=3):
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    cfg.merge_from_file("configs/kgdet_synth.yaml")
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", "()",
            "MODEL.KGDET.NUM_CLASSES", "13", "MODEL.KGDET.NUM_KEYPOINTS", "294",
            "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.KGDET.FEAT_CHANNELS", "32",
            "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
            "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SEED", "3",
        ]
    )  # fmt: skip
    seed_all_rng(0)  # torch, numpy (augmentations) and random
    model = build_model(cfg)
    model.train()
    loader = iter(build_kgdet_train_loader(cfg, mapper=KGDetDatasetMapper(cfg, is_train=True)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    with EventStorage():
        for _ in range(iterations):
            loss_dict = model(next(loader))
            loss = sum(loss_dict.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append({k: v.item() for k, v in loss_dict.items()})
    return losses


def test_training_losses_are_identical_with_the_previous_loading(df2_demo_dir):
    json_file, image_root = str(df2_demo_dir / "annotations.json"), str(df2_demo_dir / "image")
    register_deepfashion2_instances("compact_train_new", json_file, image_root)
    DatasetCatalog.register("compact_train_old", lambda: _old_dicts(json_file, image_root))
    MetadataCatalog.get("compact_train_old").set(**get_deepfashion2_metadata())
    try:
        # The first training of a process differs in the last bits from later ones (CPU kernel
        # warm-up), whatever the data: compare two runs after a first one.
        _losses("compact_train_old", df2_demo_dir)
        new = _losses("compact_train_new", df2_demo_dir)
        old = _losses("compact_train_old", df2_demo_dir)
    finally:
        for name in ("compact_train_new", "compact_train_old"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    assert new == old
    assert all(np.isfinite(v) for step in new for v in step.values())


def test_streaming_reader_gives_what_json_load_gives(tmp_path, monkeypatch):
    from kgdet.data import json_stream

    data = {
        "info": {"description": "x"},
        "images": [
            {"id": 1, "file_name": "a}b{.jpg", "width": 4, "height": 4},
            {"id": 2, "file_name": 'ü"}.jpg', "width": 4, "height": 4, "extra": float("nan")},
        ],
        "annotations": [
            {"id": 1, "segmentation": {"size": [4, 4], "counts": "ab}"}, "big": 2**70},
            {"id": 2, "bbox": [1.5, 2e-3, 3, 4]},
        ]
        + [{"id": i, "keypoints": [0] * 882} for i in range(3, 3000)],
        "categories": [],
    }
    path = tmp_path / "tricky.json"
    path.write_text(json.dumps(data))
    expected = json.loads(path.read_text())
    for fast in (json_stream.orjson, None):
        monkeypatch.setattr(json_stream, "orjson", fast)
        monkeypatch.setattr(json_stream, "_CHUNK_CHARS", 1000)  # records across chunks
        got = {}
        for key, index, item in json_stream.iter_top_level(str(path)):
            if index is None:
                got[key] = item
            else:
                got.setdefault(key, []).append(item)
        assert json.dumps(got) == json.dumps(expected)


def test_json_without_images_loads_and_caches(tmp_path):
    path = tmp_path / "empty.json"
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(DF2_CLASS_NAMES)]
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    first = load_compact_annotations(str(path), cache_dir=str(tmp_path / "cache"))
    again = load_compact_annotations(str(path), cache_dir=str(tmp_path / "cache"))
    assert first.num_images == again.num_images == 0
    assert first.num_annotations == again.num_annotations == 0
