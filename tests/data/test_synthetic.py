"""Synthetic outfit generator: statistics against DeepFashion2, layouts, sigmas, caching."""

import json
import numpy as np
import os
import threading
import cv2
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import kgdet.data.synthetic.datasets as synthetic
from kgdet.data.deepfashion2_meta import (
    DF2_CLASS_NAMES,
    DF2_KEYPOINT_OKS_SIGMAS,
    DF2_KEYPOINT_SLOT_RANGES,
)
from kgdet.data.fld_meta import FLD_CLASS_KEYPOINT_SLOTS, FLD_KEYPOINT_FLIP_MAP
from kgdet.data.synthetic import (
    DF2_LIKE_LAYOUT,
    FLD_LAYOUT,
    generate_synthetic_dataset,
    load_or_generate_synthetic_dataset,
    register_synthetic_dataset,
    register_synthetic_datasets,
)
from kgdet.data.synthetic.layouts import (
    DF2_SIGMA_SOURCES,
    SHAPE_BUILDERS,
    landmark_kind,
    mirror_vertices,
)

LAYOUTS = {"df2_like": DF2_LIKE_LAYOUT, "fld": FLD_LAYOUT}
STATS_IMAGES = 48
IMAGE_SIZE = 256


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One small set per layout (module-scoped: generation is the slow part)."""
    root = tmp_path_factory.mktemp("synth")
    return {
        name: generate_synthetic_dataset(layout, STATS_IMAGES, 11, IMAGE_SIZE, str(root / name))
        for name, layout in LAYOUTS.items()
    }


def _all_annotations(dicts):
    return [ann for record in dicts for ann in record["annotations"]]


def _defined_keypoints(layout, ann):
    kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
    assert kps.shape == (layout.num_keypoints, 3)
    return kps, layout.class_keypoint_slots[ann["category_id"]]


def _strip_root(dicts, root):
    out = json.loads(json.dumps(dicts, default=int))
    for record in out:
        record["file_name"] = os.path.relpath(record["file_name"], root)
    return out


def test_deterministic_and_seed_dependent(tmp_path):
    a = generate_synthetic_dataset("fld", 5, 3, 128, str(tmp_path / "a"))
    b = generate_synthetic_dataset("fld", 5, 3, 128, str(tmp_path / "b"))
    c = generate_synthetic_dataset("fld", 5, 4, 128, str(tmp_path / "c"))
    assert _strip_root(a, str(tmp_path / "a")) == _strip_root(b, str(tmp_path / "b"))
    for ra, rb in zip(a, b):
        with open(ra["file_name"], "rb") as fa, open(rb["file_name"], "rb") as fb:
            assert fa.read() == fb.read()
    assert _strip_root(a, str(tmp_path / "a")) != _strip_root(c, str(tmp_path / "c"))


def _box_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def outfit_statistics(tmp_path_factory):
    """Statistics of 300 generated DF2-like images at the default image size."""
    root = tmp_path_factory.mktemp("synth_stats")
    dicts = generate_synthetic_dataset("df2_like", 300, 5, 320, str(root / "df2"))
    counts = np.array([len(r["annotations"]) for r in dicts])
    rel_size, vis, ious = [], [], []
    for record in dicts:
        image_size = np.sqrt(record["width"] * record["height"])
        boxes = []
        for ann in record["annotations"]:
            x, y, w, h = ann["bbox"]
            rel_size.append(np.sqrt(w * h) / image_size)
            boxes.append((x, y, x + w, y + h))
            kps, slots = _defined_keypoints(DF2_LIKE_LAYOUT, ann)
            vis.append(kps[slots, 2])
        ious += [_box_iou(p, q) for i, p in enumerate(boxes) for q in boxes[i + 1 :]]
    return counts, np.array(rel_size), np.concatenate(vis), np.array(ious), dicts


def test_outfit_statistics_match_deepfashion2(outfit_statistics):
    """The 32 DeepFashion2 demo images: 1.72 garments per image, relative size sqrt(wh)/sqrt(WH)
    of median 0.47 (5th / 95th percentiles 0.21 / 0.89), median pairwise box IoU 0.13 and 29 %
    of labelled keypoints occluded; the generator aims at about 35 / 55 / 10 % images with
    1 / 2 / 3 garments."""
    counts, rel_size, vis, ious, dicts = outfit_statistics
    shares = [np.mean(counts == k) for k in (1, 2, 3)]
    assert counts.min() >= 1 and counts.max() <= 3
    assert 0.25 <= shares[0] <= 0.45 and 0.45 <= shares[1] <= 0.65 and 0.05 <= shares[2] <= 0.16
    assert 1.55 <= counts.mean() <= 1.9
    assert abs(np.median(rel_size) - 0.47) <= 0.05
    assert 0.15 <= np.percentile(rel_size, 5) <= 0.3 and 0.75 <= np.percentile(rel_size, 95) <= 0.95
    labelled = vis > 0
    assert 0.25 <= (vis == 1).sum() / labelled.sum() <= 0.30  # occluded share
    assert (vis == 0).mean() >= 0.02  # some keypoints truncated at the image borders
    assert 0.08 <= np.median(ious) <= 0.2  # garments of an outfit overlap at the waist
    assert len({a["category_id"] for a in _all_annotations(dicts)}) == len(
        DF2_LIKE_LAYOUT.thing_classes
    )


def test_outfits_put_tops_above_bottoms(outfit_statistics):
    """In a top + bottom outfit the top's box starts above the bottom's and they overlap."""
    *_, dicts = outfit_statistics
    roles = {0: "top", 1: "top", 2: "bottom", 3: "bottom", 4: "bottom"}
    checked = 0
    for record in dicts:
        anns = record["annotations"][-2:]  # the main person's garments are drawn last
        cats = [roles.get(a["category_id"]) for a in anns]
        if sorted(cats, key=str) != ["bottom", "top"]:
            continue
        top, bottom = sorted(anns, key=lambda a: roles[a["category_id"]] != "top")
        assert top["bbox"][1] < bottom["bbox"][1]
        checked += 1
    assert checked >= 50


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
def test_statistics_of_small_sets(generated, layout_name):
    layout, dicts = LAYOUTS[layout_name], generated[layout_name]
    assert len(dicts) == STATS_IMAGES
    vis = np.concatenate(
        [
            kps[slots, 2]
            for kps, slots in (_defined_keypoints(layout, a) for a in _all_annotations(dicts))
        ]
    )
    assert (vis == 1).sum() / (vis > 0).sum() >= 0.15  # occluded share of labelled keypoints
    sizes = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in _all_annotations(dicts)])
    assert sizes.max() / sizes.min() >= 3.0


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
def test_records_are_valid_detectron2_dicts(generated, layout_name):
    layout, dicts = LAYOUTS[layout_name], generated[layout_name]
    assert len({r["image_id"] for r in dicts}) == len(dicts)
    for record in dicts[:6]:
        image = cv2.imread(record["file_name"])
        assert image.shape[:2] == (record["height"], record["width"])
        assert max(image.shape[:2]) == IMAGE_SIZE
    for record in dicts:
        h, w = record["height"], record["width"]
        for ann in record["annotations"]:
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS and ann["iscrowd"] == 0
            x, y, bw, bh = ann["bbox"]
            assert bw > 0 and bh > 0 and x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
            assert 0 <= ann["category_id"] < len(layout.thing_classes)
            kps, slots = _defined_keypoints(layout, ann)
            undefined = np.setdiff1d(np.arange(layout.num_keypoints), slots)
            assert not kps[undefined].any()  # every keypoint lies in its class's slots
            assert set(np.unique(kps[:, 2])) <= {0, 1, 2}
            lab = kps[kps[:, 2] > 0]
            assert ((lab[:, 0] >= 0) & (lab[:, 0] < w) & (lab[:, 1] >= 0) & (lab[:, 1] < h)).all()
            # the garment's extent follows from its keypoints: labelled ones lie in its box
            assert (lab[:, 0] >= x - 1e-3).all() and (lab[:, 0] <= x + bw + 1e-3).all()
            assert (lab[:, 1] >= y - 1e-3).all() and (lab[:, 1] <= y + bh + 1e-3).all()
            assert not kps[kps[:, 2] == 0].any()  # truncated: (0, 0, 0)
            assert ann["num_keypoints"] == len(lab)


def test_df2_like_layout_blocks():
    layout = DF2_LIKE_LAYOUT
    assert len(layout.thing_classes) == 7 and layout.num_keypoints == 108
    slots = layout.class_keypoint_slots
    flat = [s for block in slots for s in block]
    assert flat == list(range(layout.num_keypoints))  # disjoint, contiguous, in class order
    for block in slots:
        assert block == list(range(block[0], block[-1] + 1))
    lengths = {c: len(b) for c, b in zip(layout.thing_classes, slots)}
    assert lengths == {
        "short_sleeve_top": 16,
        "long_sleeve_top": 20,
        "shorts": 10,
        "trousers": 14,
        "skirt": 8,
        "short_sleeve_dress": 18,
        "long_sleeve_dress": 22,
    }
    assert FLD_LAYOUT.class_keypoint_slots == FLD_CLASS_KEYPOINT_SLOTS


def test_flip_map_of_every_class_block():
    """Each class block is closed under the flip, pairs are mirror kinds of one class, and every
    unpaired slot is a centre landmark (collar / hem / waist centre, crotch)."""
    layout = DF2_LIKE_LAYOUT
    perm = layout.flip_indices
    names = layout.keypoint_names
    for cls, block in zip(layout.thing_classes, layout.class_keypoint_slots):
        for s in block:
            mirrored = perm[s]
            assert mirrored in block
            vertex, partner = names[s][len(cls) + 1 :], names[mirrored][len(cls) + 1 :]
            if mirrored == s:
                assert vertex.startswith("center_") or vertex == "crotch", names[s]
            else:
                assert landmark_kind(vertex) == landmark_kind(partner)
                assert {vertex.split("_")[0], partner.split("_")[0]} == {"left", "right"}


def test_sigma_table_is_deepfashion2s():
    """Every synthetic landmark's sigma is DeepFashion2's official value of the cited landmark of
    the imitated class; left and right mirror partners share one sigma."""
    layout = DF2_LIKE_LAYOUT
    sigmas = layout.keypoint_oks_sigmas
    assert len(sigmas) == layout.num_keypoints
    for cls, block in zip(layout.thing_classes, layout.class_keypoint_slots):
        category, numbers = DF2_SIGMA_SOURCES[cls]
        imitated = cls.replace("sleeve_", "sleeved_").replace("_top", "_shirt")
        assert DF2_CLASS_NAMES[category - 1] == imitated
        start, end = DF2_KEYPOINT_SLOT_RANGES[category - 1]
        for s in block:
            kind = landmark_kind(layout.keypoint_names[s][len(cls) + 1 :])
            assert 1 <= numbers[kind] <= end - start
            assert sigmas[s] == DF2_KEYPOINT_OKS_SIGMAS[start + numbers[kind] - 1]
    perm = layout.flip_indices
    assert all(sigmas[s] == sigmas[perm[s]] for s in range(layout.num_keypoints))
    assert 0.012 <= min(sigmas) and max(sigmas) <= 0.07


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
def test_flip_map_is_an_involution_within_class_blocks(layout_name):
    layout = LAYOUTS[layout_name]
    perm = layout.flip_indices
    assert [perm[p] for p in perm] == list(range(layout.num_keypoints))
    for block in layout.class_keypoint_slots:
        assert sorted(perm[s] for s in block) == block  # a class's slots map onto themselves
    names = layout.keypoint_names
    for a, b in layout.flip_pairs:
        assert "left_" in a and b == a.replace("left_", "right_")
    if layout is FLD_LAYOUT:
        assert [tuple(p) for p in FLD_KEYPOINT_FLIP_MAP] == layout.flip_pairs
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("shape", sorted(SHAPE_BUILDERS))
def test_left_points_are_image_left_of_right_points(shape):
    """Convention: "left" = smaller x for an upright garment, also after mirroring (which swaps
    the names), so an image flip maps left slots onto right slots."""
    for seed in range(40):
        vertices = SHAPE_BUILDERS[shape](np.random.default_rng(seed))
        for v in (vertices, mirror_vertices(vertices)):
            for name, (x, y) in v.items():
                if name.startswith("left_"):
                    assert x < v[name.replace("left_", "right_")][0], (shape, seed, name)


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
def test_left_right_order_in_rendered_images(generated, layout_name):
    layout = LAYOUTS[layout_name]
    index = {n: i for i, n in enumerate(layout.keypoint_names)}
    checked = 0
    for ann in _all_annotations(generated[layout_name]):
        kps = np.asarray(ann["keypoints"]).reshape(-1, 3)
        for a, b in layout.flip_pairs:
            if kps[index[a], 2] > 0 and kps[index[b], 2] > 0:
                assert kps[index[a], 0] < kps[index[b], 0]
                checked += 1
    assert checked > 50


def test_fld_extra_keys(generated):
    coco_of_fld = {0: 2, 1: 1, 2: 0}
    for ann in _all_annotations(generated["fld"]):
        kps, slots = _defined_keypoints(FLD_LAYOUT, ann)
        fld_vis = ann["fld_visibility"]
        assert len(fld_vis) == 8 and set(fld_vis) <= {0, 1, 2}
        for s in range(8):
            if s in slots:
                assert kps[s, 2] == coco_of_fld[fld_vis[s]]
            else:
                assert fld_vis[s] == 0  # FLD's "0 0 0" padding
        truncated = sum(fld_vis[s] == 2 for s in slots)
        assert ann["variation_type"] in (1, 2, 3, 4, 5)
        assert (ann["variation_type"] >= 4) == (truncated > 1)
    for ann in _all_annotations(generated["df2_like"]):
        assert "fld_visibility" not in ann


def test_builtin_registration_and_metadata(tmp_path, monkeypatch):
    register_synthetic_datasets()
    register_synthetic_datasets()  # idempotent
    expected = {
        "kgdet_synth_train": (DF2_LIKE_LAYOUT, "deepfashion2"),
        "kgdet_synth_val": (DF2_LIKE_LAYOUT, "deepfashion2"),
        "dfa_synth_train": (FLD_LAYOUT, "fld"),
        "dfa_synth_val": (FLD_LAYOUT, "fld"),
        "dfa_synth_train_large": (FLD_LAYOUT, "fld"),
    }
    for name, (layout, evaluator_type) in expected.items():
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == evaluator_type
        assert meta.thing_classes == list(layout.thing_classes)
        assert meta.keypoint_names == list(layout.keypoint_names)
        assert len(set(meta.keypoint_names)) == len(meta.keypoint_names)
        assert [tuple(p) for p in meta.keypoint_flip_map] == layout.flip_pairs
        assert meta.class_keypoint_slots == layout.class_keypoint_slots
        assert meta.keypoint_oks_sigmas == list(layout.keypoint_oks_sigmas)
    # train and val differ (different seeds)
    assert synthetic.SYNTHETIC_DATASETS["kgdet_synth_train"][2] != (
        synthetic.SYNTHETIC_DATASETS["kgdet_synth_val"][2]
    )

    monkeypatch.setenv("KGDET_SYNTH_CACHE", str(tmp_path))
    monkeypatch.setenv("KGDET_SYNTH_NUM_VAL", "3")
    monkeypatch.setenv("KGDET_SYNTH_IMAGE_SIZE", "128")
    dicts = DatasetCatalog.get("dfa_synth_val")
    assert len(dicts) == 3 and dicts[0]["file_name"].startswith(str(tmp_path))
    assert all("fld_visibility" in a for r in dicts for a in r["annotations"])
    assert [p.name.split("_")[:3] for p in tmp_path.iterdir()] == [["dfa", "synth", "val"]]
    monkeypatch.setenv("KGDET_SYNTH_NUM_VAL", "zero")
    with pytest.raises(ValueError, match="KGDET_SYNTH_NUM_VAL"):
        DatasetCatalog.get("dfa_synth_val")


def test_dfa_synth_train_large_extends_dfa_synth_train(tmp_path, monkeypatch):
    register_synthetic_datasets()
    small, large = (
        synthetic.SYNTHETIC_DATASETS[n] for n in ("dfa_synth_train", "dfa_synth_train_large")
    )
    assert large[:3] == small[:3] and large[3] == 4 * small[3]  # layout, split, seed; 4x images
    assert synthetic.SYNTHETIC_DATASETS["kgdet_synth_train"][3] == 600  # KGDet's sets unchanged
    monkeypatch.setenv("KGDET_SYNTH_CACHE", str(tmp_path))
    monkeypatch.setenv("KGDET_SYNTH_IMAGE_SIZE", "128")
    monkeypatch.setenv("KGDET_SYNTH_NUM_TRAIN", "2")
    first = DatasetCatalog.get("dfa_synth_train")
    monkeypatch.setenv("KGDET_SYNTH_NUM_TRAIN", "3")  # the variable sets the large set's count too
    extended = DatasetCatalog.get("dfa_synth_train_large")
    assert len(first) == 2 and len(extended) == 3
    for a, b in zip(first, extended):  # the same images (per-index seeds), in separate caches
        assert a["file_name"] != b["file_name"] and a["annotations"] == b["annotations"]
        assert np.array_equal(cv2.imread(a["file_name"]), cv2.imread(b["file_name"]))
    assert MetadataCatalog.get("dfa_synth_train_large").evaluator_type == "fld"


def test_custom_registration_and_cache_reuse(tmp_path, monkeypatch):
    name = "test_synthetic_custom_df2_like"
    register_synthetic_dataset(name, "df2_like", 3, 5, 128, cache_root=str(tmp_path))
    try:
        first = DatasetCatalog.get(name)
        assert MetadataCatalog.get(name).evaluator_type == "deepfashion2"

        def fail(*args, **kwargs):
            raise AssertionError("regenerated although cached")

        monkeypatch.setattr(synthetic, "render_synthetic_image", fail)
        assert DatasetCatalog.get(name) == first
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    real = synthetic.render_synthetic_image
    calls = []

    def flaky(rng, layout, image_size):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(rng, layout, image_size)

    monkeypatch.setattr(synthetic, "render_synthetic_image", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        generate_synthetic_dataset("fld", 5, 0, 128, str(tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []


def test_concurrent_generation_is_safe(tmp_path):
    results, errors = [], []

    def run():
        try:
            results.append(
                load_or_generate_synthetic_dataset("conc", "df2_like", 4, 9, 128, str(tmp_path))
            )
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0] == results[1]
    entries = list(tmp_path.iterdir())
    assert len(entries) == 1 and ".tmp-" not in entries[0].name
    assert len(list((entries[0] / "images").iterdir())) == 4


def test_bad_arguments(tmp_path):
    with pytest.raises(KeyError, match="unknown synthetic layout"):
        generate_synthetic_dataset("nope", 2, 0, 128, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="num_images"):
        generate_synthetic_dataset("fld", 0, 0, 128, str(tmp_path / "x"))
