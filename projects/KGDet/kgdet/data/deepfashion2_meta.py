"""DeepFashion2 constants: classes, the 294 global keypoint slots, flip pairs and OKS sigmas.

Sources (docs/DESIGN.md §8.1–8.2, §15):

* 13 classes in official order; names as the official converter writes them (``category_id`` 1..13).
* Class ``c`` owns the contiguous block ``DF2_KEYPOINT_SLOT_RANGES[c]`` (0-based, half-open) of the
  294 global slots; keypoint names are the strings "1".."294" as in the official COCO-style files.
* Flip pairs: KGDet's per-class mirror pairs (docs/DESIGN.md §8.2; 131 pairs, 32 self-mirrored
  slots). No pair crosses a class block, so one global permutation serves every class.
* OKS sigmas: the literal 294-value array of the DeepFashion2 evaluator, unchanged (their
  category-3 ordering is not mirror-symmetric; do not "fix" the flip map from them).
"""

from typing import Any, Dict, List, Sequence, Tuple

__all__ = [
    "DF2_CLASS_NAMES",
    "DF2_RAW_CATEGORY_NAMES",
    "DF2_NUM_KEYPOINTS_PER_CLASS",
    "DF2_NUM_KEYPOINTS",
    "DF2_KEYPOINT_SLOT_RANGES",
    "DF2_CLASS_KEYPOINT_SLOTS",
    "DF2_KEYPOINT_NAMES",
    "DF2_FLIP_PAIRS_LOCAL",
    "DF2_FLIP_PAIRS",
    "DF2_SELF_MIRRORED_SLOTS",
    "DF2_KEYPOINT_FLIP_MAP",
    "DF2_KEYPOINT_OKS_SIGMAS",
    "get_deepfashion2_metadata",
]

# Names as written by the official converter (and in every official COCO-style file); these are
# what ``load_coco_json`` puts into ``thing_classes``, so metadata must use exactly these.
DF2_CLASS_NAMES: List[str] = [
    "short_sleeved_shirt",
    "long_sleeved_shirt",
    "short_sleeved_outwear",
    "long_sleeved_outwear",
    "vest",
    "sling",
    "shorts",
    "trousers",
    "skirt",
    "short_sleeved_dress",
    "long_sleeved_dress",
    "vest_dress",
    "sling_dress",
]

# ``category_name`` strings of the raw per-image annotations (DF2 README wording), used only to
# cross-check raw records against their ``category_id`` (switchablenorms/DeepFashion2 #62).
DF2_RAW_CATEGORY_NAMES: List[str] = [
    "short sleeve top",
    "long sleeve top",
    "short sleeve outwear",
    "long sleeve outwear",
    "vest",
    "sling",
    "shorts",
    "trousers",
    "skirt",
    "short sleeve dress",
    "long sleeve dress",
    "vest dress",
    "sling dress",
]

DF2_NUM_KEYPOINTS_PER_CLASS: Tuple[int, ...] = (25, 33, 31, 39, 15, 15, 10, 14, 8, 29, 37, 19, 19)
DF2_NUM_KEYPOINTS: int = sum(DF2_NUM_KEYPOINTS_PER_CLASS)  # 294


def _slot_ranges(counts: Sequence[int]) -> List[Tuple[int, int]]:
    ranges, start = [], 0
    for n in counts:
        ranges.append((start, start + n))
        start += n
    return ranges


# Contiguous class order (0-based); [start, end) into the 294 global slots.
DF2_KEYPOINT_SLOT_RANGES: List[Tuple[int, int]] = _slot_ranges(DF2_NUM_KEYPOINTS_PER_CLASS)
DF2_CLASS_KEYPOINT_SLOTS: List[List[int]] = [list(range(s, e)) for s, e in DF2_KEYPOINT_SLOT_RANGES]
DF2_KEYPOINT_NAMES: List[str] = [str(i) for i in range(1, DF2_NUM_KEYPOINTS + 1)]

# Compact flip table (docs/DESIGN.md §8.2), class-local 1-based indices. For each class:
# explicit pairs, runs (a, b, n) meaning a+i <-> b-i for i = 0..n, and the self-mirrored points
# (listed so the table can be checked to cover every landmark of the class exactly once).
_UPPER_5 = {"pairs": [(2, 6), (3, 5)], "runs": [(7, 15, 3)], "fixed": [1, 4, 11]}
_DRESS_12 = {"pairs": [(2, 6), (3, 5)], "runs": [(7, 19, 5)], "fixed": [1, 4, 13]}
_FLIP_TABLE: List[Dict[str, list]] = [
    {"pairs": [(2, 6), (3, 5)], "runs": [(7, 25, 8)], "fixed": [1, 4, 16]},
    {"pairs": [(2, 6), (3, 5)], "runs": [(7, 33, 12)], "fixed": [1, 4, 20]},
    # Class 3 (front-opening): 4/6 are the neck-shoulder points, 2/26 the tops of the opening.
    {
        "pairs": [(2, 26), (3, 5), (4, 6), (16, 29), (27, 30), (28, 31)],
        "runs": [(7, 25, 8)],
        "fixed": [1],
    },
    {
        "pairs": [(2, 6), (3, 5), (4, 34), (20, 37), (35, 38), (36, 39)],
        "runs": [(7, 33, 12)],
        "fixed": [1],
    },
    _UPPER_5,
    _UPPER_5,
    {"pairs": [(1, 3)], "runs": [(4, 10, 2)], "fixed": [2, 7]},
    {"pairs": [(1, 3)], "runs": [(4, 14, 4)], "fixed": [2, 9]},
    {"pairs": [(1, 3), (4, 8), (5, 7)], "runs": [], "fixed": [2, 6]},
    {"pairs": [(2, 6), (3, 5)], "runs": [(7, 29, 10)], "fixed": [1, 4, 18]},
    {"pairs": [(2, 6), (3, 5)], "runs": [(7, 37, 14)], "fixed": [1, 4, 22]},
    _DRESS_12,
    _DRESS_12,
]


def _expand_flip_table() -> Tuple[List[List[Tuple[int, int]]], List[int]]:
    """Expand the compact table; returns (local 1-based pairs per class, global fixed slots)."""
    local_pairs, fixed_slots = [], []
    for c, entry in enumerate(_FLIP_TABLE):
        pairs = list(entry["pairs"])
        for a, b, n in entry["runs"]:
            pairs += [(a + i, b - i) for i in range(n + 1)]
        used = [p for pair in pairs for p in pair] + list(entry["fixed"])
        n_c = DF2_NUM_KEYPOINTS_PER_CLASS[c]
        if sorted(used) != list(range(1, n_c + 1)):
            raise ValueError(
                f"DF2 flip table of class {c + 1} does not cover 1..{n_c} exactly once"
            )
        local_pairs.append(sorted(pairs))
        start = DF2_KEYPOINT_SLOT_RANGES[c][0]
        fixed_slots += [start + j - 1 for j in entry["fixed"]]
    return local_pairs, sorted(fixed_slots)


DF2_FLIP_PAIRS_LOCAL, DF2_SELF_MIRRORED_SLOTS = _expand_flip_table()
# 131 pairs of global 0-based slots.
DF2_FLIP_PAIRS: List[Tuple[int, int]] = [
    (DF2_KEYPOINT_SLOT_RANGES[c][0] + a - 1, DF2_KEYPOINT_SLOT_RANGES[c][0] + b - 1)
    for c, pairs in enumerate(DF2_FLIP_PAIRS_LOCAL)
    for a, b in pairs
]
# Detectron2's ``keypoint_flip_map``: pairs of keypoint names.
DF2_KEYPOINT_FLIP_MAP: List[Tuple[str, str]] = [
    (DF2_KEYPOINT_NAMES[a], DF2_KEYPOINT_NAMES[b]) for a, b in DF2_FLIP_PAIRS
]

# The official DeepFashion2 OKS sigmas (``cocoeval.py`` ``computeOks``), global slot order,
# one comment line per class. docs/DESIGN.md §15.3.
# fmt: off
DF2_KEYPOINT_OKS_SIGMAS: List[float] = [
    # 1
    0.012, 0.0158, 0.0169, 0.0165, 0.0169, 0.0158, 0.0298, 0.0329, 0.0321, 0.0323, 0.034, 0.0388,
    0.0452, 0.0574, 0.0492, 0.0352, 0.0492, 0.0574, 0.0452, 0.0388, 0.034, 0.0323, 0.0321, 0.0329,
    0.0298,
    # 2
    0.0194, 0.017, 0.0185, 0.0193, 0.0185, 0.017, 0.0286, 0.0471, 0.0547, 0.0526, 0.043, 0.0392,
    0.0513, 0.0566, 0.0509, 0.0564, 0.0542, 0.0604, 0.0599, 0.052, 0.0599, 0.0604, 0.0542, 0.0564,
    0.0509, 0.0566, 0.0513, 0.0392, 0.043, 0.0526, 0.0547, 0.0471, 0.0286,
    # 3
    0.0074, 0.0085, 0.0165, 0.0248, 0.0165, 0.0085, 0.0156, 0.0231, 0.0296, 0.0137, 0.0195, 0.025,
    0.0347, 0.038, 0.0257, 0.037, 0.0257, 0.038, 0.0347, 0.025, 0.0195, 0.0137, 0.0296, 0.0231,
    0.0156, 0.0248, 0.0469, 0.0632, 0.037, 0.0469, 0.0632,
    # 4
    0.0137, 0.0153, 0.0243, 0.0377, 0.0243, 0.0153, 0.0203, 0.0366, 0.0467, 0.0433, 0.0393,
    0.0329, 0.0418, 0.0477, 0.0399, 0.0331, 0.042, 0.0492, 0.0436, 0.0478, 0.0436, 0.0492, 0.042,
    0.0331, 0.0399, 0.0477, 0.0418, 0.0329, 0.0393, 0.0433, 0.0467, 0.0366, 0.0203, 0.0377,
    0.0645, 0.0573, 0.0478, 0.0645, 0.0573,
    # 5
    0.0352, 0.0158, 0.021, 0.0214, 0.021, 0.0158, 0.0196, 0.05, 0.0489, 0.0404, 0.0401, 0.0404,
    0.0489, 0.05, 0.0196,
    # 6
    0.0276, 0.0548, 0.0283, 0.0204, 0.0283, 0.0548, 0.0369, 0.0726, 0.0677, 0.064, 0.0251, 0.064,
    0.0677, 0.0726, 0.0369,
    # 7
    0.0308, 0.0216, 0.0308, 0.0506, 0.0494, 0.0463, 0.0477, 0.0463, 0.0494, 0.0506,
    # 8
    0.0275, 0.0202, 0.0275, 0.0651, 0.0451, 0.035, 0.028, 0.0392, 0.0362, 0.0392, 0.028, 0.035,
    0.0451, 0.0651,
    # 9
    0.0253, 0.0195, 0.0253, 0.0513, 0.0543, 0.0415, 0.0543, 0.0513,
    # 10
    0.0153, 0.023, 0.0167, 0.0145, 0.0167, 0.023, 0.0332, 0.0391, 0.0391, 0.0396, 0.044, 0.0452,
    0.0498, 0.0514, 0.0585, 0.0655, 0.0635, 0.0602, 0.0635, 0.0655, 0.0585, 0.0514, 0.0498,
    0.0452, 0.044, 0.0396, 0.0391, 0.0391, 0.0332,
    # 11
    0.0121, 0.0134, 0.0158, 0.0162, 0.0158, 0.0134, 0.0246, 0.0406, 0.047, 0.0404, 0.0463, 0.0466,
    0.0435, 0.0499, 0.0455, 0.044, 0.0411, 0.049, 0.0576, 0.0685, 0.0618, 0.0483, 0.0618, 0.0685,
    0.0576, 0.049, 0.0411, 0.044, 0.0486, 0.0499, 0.0435, 0.0466, 0.0463, 0.0404, 0.047, 0.0406,
    0.0246,
    # 12
    0.0116, 0.0167, 0.016, 0.018, 0.016, 0.0167, 0.0196, 0.0385, 0.0421, 0.0497, 0.0562, 0.0528,
    0.0428, 0.0528, 0.0562, 0.0497, 0.0421, 0.0385, 0.0196,
    # 13
    0.0244, 0.0297, 0.0244, 0.0208, 0.0244, 0.0297, 0.0173, 0.0616, 0.0659, 0.0712, 0.0707,
    0.0685, 0.0339, 0.0685, 0.0707, 0.0712, 0.0659, 0.0616, 0.0173,
]
# fmt: on


def get_deepfashion2_metadata() -> Dict[str, Any]:
    """Metadata of every DeepFashion2 dataset (shared by the loaders, evaluators and tools).

    Keys: ``thing_classes`` (list, JSON id order, identical to what ``load_coco_json`` sets),
    ``thing_dataset_id_to_contiguous_id`` ({1: 0, ..., 13: 12}), ``keypoint_names`` (294 str),
    ``keypoint_flip_map`` (131 name pairs), ``keypoint_oks_sigmas`` (294 floats),
    ``class_keypoint_slots`` (13 lists of global slots), ``keypoint_slot_ranges`` (13 half-open
    (start, end)), ``evaluator_type`` ("deepfashion2"). Fresh copies on every call.

    Key names and ``evaluator_type`` follow the project's metadata contract
    (which suggests ``class_keypoint_slices`` and ``evaluator_type="coco"``).
    """
    return {
        "thing_classes": list(DF2_CLASS_NAMES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(DF2_CLASS_NAMES))},
        "keypoint_names": list(DF2_KEYPOINT_NAMES),
        "keypoint_flip_map": list(DF2_KEYPOINT_FLIP_MAP),
        "keypoint_oks_sigmas": list(DF2_KEYPOINT_OKS_SIGMAS),
        "class_keypoint_slots": [list(s) for s in DF2_CLASS_KEYPOINT_SLOTS],
        "keypoint_slot_ranges": list(DF2_KEYPOINT_SLOT_RANGES),
        "evaluator_type": "deepfashion2",
    }
