"""FLD (DeepFashion Fashion Landmark Detection) constants: 3 classes, 8 shared landmark slots.

Sources: docs/DESIGN.md §8.5 and §16.

* Classes (``category_id`` = FLD ``clothes_type``): 1 Upper, 2 Lower, 3 Whole — KGDet's
  ``DeepFashionDataset`` order.
* Unified 8-slot layout: 0 left collar, 1 right collar, 2 left sleeve, 3 right sleeve,
  4 left waistline, 5 right waistline, 6 left hem, 7 right hem. Unlike DeepFashion2 the class
  subsets overlap (hem is shared by Upper and Lower), and one global flip permutation
  (0<->1, 2<->3, 4<->5, 6<->7) is valid for all classes.
* Raw FLD visibility: 0 visible, 1 invisible/occluded, 2 truncated (the reverse of COCO's order);
  mapped to COCO v as 0 -> 2, 1 -> 1, 2 -> 0.
* No official OKS sigmas exist for FLD, so the metadata has no ``keypoint_oks_sigmas``.
"""

from typing import Any, Dict, List, Tuple

__all__ = [
    "FLD_CLASS_NAMES",
    "FLD_KEYPOINT_NAMES",
    "FLD_NUM_KEYPOINTS",
    "FLD_KEYPOINT_FLIP_MAP",
    "FLD_FLIP_INDICES",
    "FLD_CLASS_KEYPOINT_SLOTS",
    "FLD_VARIATION_TYPES",
    "FLD_VISIBILITY_TO_COCO",
    "FLD_VISIBILITY_PADDING",
    "get_fld_metadata",
]

FLD_CLASS_NAMES: List[str] = ["Upper", "Lower", "Whole"]

FLD_KEYPOINT_NAMES: List[str] = [
    "left_collar",
    "right_collar",
    "left_sleeve",
    "right_sleeve",
    "left_waistline",
    "right_waistline",
    "left_hem",
    "right_hem",
]
FLD_NUM_KEYPOINTS: int = len(FLD_KEYPOINT_NAMES)

FLD_KEYPOINT_FLIP_MAP: List[Tuple[str, str]] = [
    ("left_collar", "right_collar"),
    ("left_sleeve", "right_sleeve"),
    ("left_waistline", "right_waistline"),
    ("left_hem", "right_hem"),
]
# Slot permutation of a horizontal flip: slot i of the flipped image is slot FLD_FLIP_INDICES[i].
_FLD_MIRROR = dict(FLD_KEYPOINT_FLIP_MAP + [(b, a) for a, b in FLD_KEYPOINT_FLIP_MAP])
FLD_FLIP_INDICES: List[int] = [FLD_KEYPOINT_NAMES.index(_FLD_MIRROR[n]) for n in FLD_KEYPOINT_NAMES]

# Per contiguous class: the global slots that exist, in the order of FLD's raw landmark triplets
# (raw triplet k of clothes type t goes to slot FLD_CLASS_KEYPOINT_SLOTS[t - 1][k - 1]).
FLD_CLASS_KEYPOINT_SLOTS: List[List[int]] = [
    [0, 1, 2, 3, 6, 7],  # Upper: collars, sleeves, hems
    [4, 5, 6, 7],  # Lower: waistlines, hems
    [0, 1, 2, 3, 4, 5, 6, 7],  # Whole: all eight
]

# FLD ``variation_type`` codes (kept raw, 1..5) and their subset names (docs/DESIGN.md §16.2).
FLD_VARIATION_TYPES: Dict[int, str] = {
    1: "normal_pose",
    2: "medium_pose",
    3: "large_pose",
    4: "medium_zoom_in",
    5: "large_zoom_in",
}

# Raw FLD visibility code -> COCO visibility (2 visible, 1 occluded, 0 not labelled).
FLD_VISIBILITY_TO_COCO: Dict[int, int] = {0: 2, 1: 1, 2: 0}
# ``fld_visibility`` value of slots that do not exist for the garment's clothes type: FLD's own
# padding ("0 0 0" triplets), so that raw codes stay in {0, 1, 2}. It reads
# as "visible", so always select slots with ``class_keypoint_slots`` first (docs/DESIGN.md §16.1).
FLD_VISIBILITY_PADDING: int = 0


def get_fld_metadata() -> Dict[str, Any]:
    """Metadata of every FLD-format dataset (shared by KGDet and DFA).

    Keys: ``thing_classes``, ``thing_dataset_id_to_contiguous_id`` ({1: 0, 2: 1, 3: 2}),
    ``keypoint_names`` (8), ``keypoint_flip_map`` (4 pairs), ``class_keypoint_slots``,
    ``variation_types`` ({code: name}), ``evaluator_type`` ("fld"). No OKS sigmas.
    """
    return {
        "thing_classes": list(FLD_CLASS_NAMES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(FLD_CLASS_NAMES))},
        "keypoint_names": list(FLD_KEYPOINT_NAMES),
        "keypoint_flip_map": list(FLD_KEYPOINT_FLIP_MAP),
        "class_keypoint_slots": [list(s) for s in FLD_CLASS_KEYPOINT_SLOTS],
        "variation_types": dict(FLD_VARIATION_TYPES),
        "evaluator_type": "fld",
    }
