"""DeepFashion2 and FLD metadata: slot layout, flip map, OKS sigmas, Detectron2 compatibility."""

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils

from kgdet.data import deepfashion2_meta as df2
from kgdet.data import fld_meta as fld


def _flip_permutation(names, flip_map):
    index = {n: i for i, n in enumerate(names)}
    perm = np.arange(len(names))
    for a, b in flip_map:
        perm[index[a]], perm[index[b]] = index[b], index[a]
    return perm


def test_classes_and_slot_ranges():
    assert len(df2.DF2_CLASS_NAMES) == 13
    assert df2.DF2_CLASS_NAMES[0] == "short_sleeved_shirt"
    assert df2.DF2_CLASS_NAMES[7] == "trousers"
    assert df2.DF2_CLASS_NAMES[12] == "sling_dress"
    assert df2.DF2_NUM_KEYPOINTS == 294
    assert df2.DF2_KEYPOINT_NAMES == [str(i) for i in range(1, 295)]
    # docs/DESIGN.md §8.1, 0-based half-open.
    assert df2.DF2_KEYPOINT_SLOT_RANGES == [
        (0, 25), (25, 58), (58, 89), (89, 128), (128, 143), (143, 158), (158, 168),
        (168, 182), (182, 190), (190, 219), (219, 256), (256, 275), (275, 294),
    ]  # fmt: skip
    flat = [s for slots in df2.DF2_CLASS_KEYPOINT_SLOTS for s in slots]
    assert flat == list(range(294))


def test_flip_map_is_involution_with_32_fixed_slots_inside_class_blocks():
    assert len(df2.DF2_KEYPOINT_FLIP_MAP) == 131
    perm = _flip_permutation(df2.DF2_KEYPOINT_NAMES, df2.DF2_KEYPOINT_FLIP_MAP)
    assert np.array_equal(perm[perm], np.arange(294)), "flip map is not an involution"
    fixed = np.flatnonzero(perm == np.arange(294))
    assert len(fixed) == 32
    assert fixed.tolist() == df2.DF2_SELF_MIRRORED_SLOTS
    block = np.zeros(294, dtype=int)
    for c, (start, end) in enumerate(df2.DF2_KEYPOINT_SLOT_RANGES):
        block[start:end] = c
    assert np.array_equal(block[perm], block), "a flip pair leaves its class block"
    # Every name appears in at most one pair.
    names = [n for pair in df2.DF2_KEYPOINT_FLIP_MAP for n in pair]
    assert len(names) == len(set(names)) == 262


def test_flip_pairs_spot_checks_against_spec():
    local = df2.DF2_FLIP_PAIRS_LOCAL
    # Class 3 (short sleeve outwear): 2<->26, 4<->6 (front opening), 16<->29.
    assert {(2, 26), (4, 6), (16, 29), (27, 30), (28, 31), (7, 25), (15, 17)} <= set(local[2])
    # Trousers: 1<->3, 4+i <-> 14-i for i = 0..4; 2 and 9 self-mirrored.
    assert local[7] == [(1, 3), (4, 14), (5, 13), (6, 12), (7, 11), (8, 10)]
    # Global indices: trousers start at slot 168, so local 4 <-> 14 is 171 <-> 181.
    assert (171, 181) in df2.DF2_FLIP_PAIRS
    assert 169 in df2.DF2_SELF_MIRRORED_SLOTS and 176 in df2.DF2_SELF_MIRRORED_SLOTS


def test_oks_sigmas_are_the_official_values():
    sigmas = np.asarray(df2.DF2_KEYPOINT_OKS_SIGMAS)
    assert sigmas.shape == (294,)
    assert sigmas.min() == pytest.approx(0.0074) and sigmas.max() == pytest.approx(0.0726)
    assert sigmas.mean() == pytest.approx(0.03918, abs=1e-5)
    assert sigmas[:3].tolist() == [0.012, 0.0158, 0.0169]
    assert sigmas[168:182].tolist() == [
        0.0275, 0.0202, 0.0275, 0.0651, 0.0451, 0.035, 0.028,
        0.0392, 0.0362, 0.0392, 0.028, 0.035, 0.0451, 0.0651,
    ]  # fmt: skip
    # Mirror points have equal sigmas, except the known exceptions (docs/DESIGN.md §8.2).
    unequal = [
        (c + 1, a, b)
        for c, pairs in enumerate(df2.DF2_FLIP_PAIRS_LOCAL)
        for a, b in pairs
        if sigmas[df2.DF2_KEYPOINT_SLOT_RANGES[c][0] + a - 1]
        != sigmas[df2.DF2_KEYPOINT_SLOT_RANGES[c][0] + b - 1]
    ]
    assert unequal == [(3, 2, 26), (3, 4, 6), (11, 15, 29)]


def test_metadata_dict_and_detectron2_hflip_indices():
    meta = df2.get_deepfashion2_metadata()
    assert meta["thing_classes"] == df2.DF2_CLASS_NAMES and isinstance(meta["thing_classes"], list)
    assert meta["thing_dataset_id_to_contiguous_id"] == {i: i - 1 for i in range(1, 14)}
    assert meta["evaluator_type"] == "deepfashion2"
    assert len(meta["keypoint_oks_sigmas"]) == len(meta["keypoint_names"]) == 294
    assert meta["keypoint_slot_ranges"] == df2.DF2_KEYPOINT_SLOT_RANGES
    assert meta is not df2.get_deepfashion2_metadata()  # fresh copies
    name = "test_df2_meta_hflip"
    MetadataCatalog.get(name).set(**meta)
    try:
        indices = utils.create_keypoint_hflip_indices([name])
        perm = _flip_permutation(meta["keypoint_names"], meta["keypoint_flip_map"])
        assert indices == perm.tolist()
    finally:
        MetadataCatalog.remove(name)


def test_fld_metadata():
    meta = fld.get_fld_metadata()
    assert meta["thing_classes"] == ["Upper", "Lower", "Whole"]
    assert meta["evaluator_type"] == "fld"
    assert "keypoint_oks_sigmas" not in meta
    assert len(meta["keypoint_names"]) == 8
    perm = _flip_permutation(meta["keypoint_names"], meta["keypoint_flip_map"])
    assert perm.tolist() == [1, 0, 3, 2, 5, 4, 7, 6]
    # The global flip permutation maps each class's slot set onto itself.
    for slots in meta["class_keypoint_slots"]:
        assert set(perm[slots].tolist()) == set(slots)
    assert meta["class_keypoint_slots"] == [[0, 1, 2, 3, 6, 7], [4, 5, 6, 7], list(range(8))]
    assert sorted(meta["variation_types"]) == [1, 2, 3, 4, 5]


def test_builtin_metadata_is_registered_on_import():
    import kgdet  # noqa: F401

    for name in ("deepfashion2_train", "deepfashion2_val", "deepfashion2_test"):
        assert name in DatasetCatalog
        meta = MetadataCatalog.get(name)
        assert len(meta.keypoint_names) == 294
        assert meta.evaluator_type == "deepfashion2"
    for name in ("fld_train", "fld_val", "fld_test"):
        assert MetadataCatalog.get(name).thing_classes == ["Upper", "Lower", "Whole"]
