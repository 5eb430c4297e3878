"""Garment shapes and keypoint layouts of the synthetic garment generator.

A *shape* is a parametric garment silhouette: a builder that, given a random generator, returns
its outline as an ordered dict ``vertex name -> (x, y)`` in a canonical frame (units of one torso
length, x to the image right, y down, garment centred on x = 0). Names starting with ``left_`` /
``right_`` come in mirror pairs; by the convention used throughout, ``left`` is the **image-left**
side of an upright garment (smaller x), so a horizontal image flip maps every ``left_*`` point to
its ``right_*`` partner, which is exactly what the layouts' flip maps say.

A *layout* (``KeypointLayout``) turns shapes into dataset classes and keypoint slots:

- ``DF2_LIKE_LAYOUT``: 7 classes (tops and dresses with short or long sleeves, shorts, trousers,
  a flared skirt) with disjoint, contiguous class blocks of their own lengths whose keypoints are
  the outline vertices themselves (as in DeepFashion2, where landmarks trace the garment
  contour; K = 108), and DeepFashion2's official OKS sigma for each landmark kind;
- ``FLD_LAYOUT``: the FLD layout (Liu et al., ECCV 2016, Sec. 3) — 3 clothing types and 8 shared
  slots (L/R collar, L/R sleeve, L/R waistline, L/R hem); a slot is a vertex or the midpoint of
  several vertices (e.g. the sleeve landmark is the middle of the cuff).
"""

import math
import numpy as np
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple, Union

from ..deepfashion2_meta import DF2_KEYPOINT_OKS_SIGMAS, DF2_KEYPOINT_SLOT_RANGES
from ..fld_meta import FLD_CLASS_KEYPOINT_SLOTS, FLD_CLASS_NAMES, FLD_KEYPOINT_NAMES

__all__ = [
    "KeypointLayout",
    "SHAPE_BUILDERS",
    "SHAPE_ROLES",
    "DF2_SIGMA_SOURCES",
    "landmark_kind",
    "df2_sigma",
    "DF2_LIKE_LAYOUT",
    "FLD_LAYOUT",
    "LAYOUTS",
    "get_layout",
    "mirror_vertices",
]

Vertices = "OrderedDict[str, Tuple[float, float]]"
# A keypoint source: one vertex name, or a tuple of vertex names whose mean is the keypoint.
KeypointSource = Union[str, Tuple[str, ...]]


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _mirror_name(name: str) -> str:
    if name.startswith("left_"):
        return "right_" + name[len("left_") :]
    if name.startswith("right_"):
        return "left_" + name[len("right_") :]
    return name


def mirror_vertices(vertices: Vertices) -> Vertices:
    """Mirror a canonical outline about x = 0 and swap left/right names (keeps the convention)."""
    mirrored = OrderedDict()
    for name in vertices:
        x, y = vertices[_mirror_name(name)]
        mirrored[name] = (-x, y)
    return mirrored


def _direction(angle_deg: float, side: int) -> np.ndarray:
    """Unit vector ``angle_deg`` from straight down, opening outwards on ``side`` (+1 / -1)."""
    a = math.radians(angle_deg)
    return np.array([side * math.sin(a), math.cos(a)])


def _inward(angle_deg: float, side: int) -> np.ndarray:
    """Unit normal of :func:`_direction` pointing towards the body."""
    a = math.radians(angle_deg)
    return np.array([-side * math.cos(a), math.sin(a)])


def _sleeve(rng: np.random.Generator, shoulder, long_sleeves: bool, side: int, prefix: str):
    """Sleeve vertices from the shoulder outwards and back, in contour order.

    Short sleeves: cuff outer, cuff inner. Long sleeves: outer elbow, cuff outer, cuff inner,
    inner elbow (the arm may bend at the elbow). ``side`` is +1 for the image-right sleeve.
    """
    shoulder = np.asarray(shoulder)
    if not long_sleeves:
        angle = _u(rng, 25.0, 60.0)
        outer = shoulder + _u(rng, 0.20, 0.30) * _direction(angle, side)
        inner = outer + _u(rng, 0.13, 0.18) * _inward(angle, side)
        return [(f"{prefix}_sleeve_outer", tuple(outer)), (f"{prefix}_sleeve_inner", tuple(inner))]
    upper, bend = _u(rng, 10.0, 35.0), _u(rng, -10.0, 20.0)
    elbow_outer = shoulder + _u(rng, 0.30, 0.38) * _direction(upper, side)
    cuff_outer = elbow_outer + _u(rng, 0.28, 0.36) * _direction(upper + bend, side)
    cuff_inner = cuff_outer + _u(rng, 0.08, 0.11) * _inward(upper + bend, side)
    elbow_inner = elbow_outer + _u(rng, 0.11, 0.14) * _inward(upper + bend / 2, side)
    return [
        (f"{prefix}_elbow_outer", tuple(elbow_outer)),
        (f"{prefix}_sleeve_outer", tuple(cuff_outer)),
        (f"{prefix}_sleeve_inner", tuple(cuff_inner)),
        (f"{prefix}_elbow_inner", tuple(elbow_inner)),
    ]


def _top_like(rng: np.random.Generator, long_sleeves: bool, length: float, dress: bool) -> Vertices:
    """Upper-body outline (tops and dresses): collar, shoulders, sleeves, sides, hem.

    Contour order: collar L, C, R; right side downwards; hem R, C, L; left side upwards. Tops
    have one side point (``side``), dresses a waist and a hip point; long sleeves add the two
    elbow points. Left and right sleeves get independent angles (pose asymmetry).
    """
    body = _u(rng, 0.30, 0.40)  # half-width at the armpit
    shoulder_x = body * _u(rng, 1.0, 1.12)
    neck = _u(rng, 0.08, 0.13)
    drop = _u(rng, 0.03, 0.08)
    armpit_y = _u(rng, 0.22, 0.30)
    if dress:
        waist_y, waist_x = _u(rng, 0.42, 0.52), body * _u(rng, 0.72, 0.88)
        hip_y, hip_x = _u(rng, 0.68, 0.80), body * _u(rng, 0.95, 1.15)
        hem_x = _u(rng, 0.42, 0.68)
        sides = [("waist", waist_x, waist_y), ("hip", hip_x, hip_y)]
    else:
        sides = [("side", body * _u(rng, 0.88, 1.0), _u(rng, 0.55, 0.65))]
        hem_x = body * _u(rng, 0.95, 1.10)

    def side_points(side: int, prefix: str) -> List[Tuple[str, Tuple[float, float]]]:
        shoulder = (side * shoulder_x, drop)
        points = [(f"{prefix}_shoulder", shoulder)]
        points += _sleeve(rng, shoulder, long_sleeves, side, prefix)
        points.append((f"{prefix}_armpit", (side * body, armpit_y)))
        points += [(f"{prefix}_{name}", (side * x, y)) for name, x, y in sides]
        return points

    v = OrderedDict()
    v["left_collar"] = (-neck, 0.0)
    v["center_collar"] = (0.0, _u(rng, 0.05, 0.14))
    v["right_collar"] = (neck, 0.0)
    v.update(side_points(1, "right"))
    v["right_hem"] = (hem_x, length)
    v["center_hem"] = (0.0, length * _u(rng, 0.98, 1.03))
    v["left_hem"] = (-hem_x, length)
    v.update(reversed(side_points(-1, "left")))
    return v


def short_sleeve_top(rng: np.random.Generator) -> Vertices:
    return _top_like(rng, long_sleeves=False, length=_u(rng, 0.9, 1.1), dress=False)


def long_sleeve_top(rng: np.random.Generator) -> Vertices:
    return _top_like(rng, long_sleeves=True, length=_u(rng, 0.9, 1.1), dress=False)


def long_sleeve_dress(rng: np.random.Generator) -> Vertices:
    return _top_like(rng, long_sleeves=True, length=_u(rng, 1.55, 2.0), dress=True)


def short_sleeve_dress(rng: np.random.Generator) -> Vertices:
    return _top_like(rng, long_sleeves=False, length=_u(rng, 1.55, 2.0), dress=True)


def _legwear(rng: np.random.Generator, length: float, knees: bool) -> Vertices:
    """Trousers / shorts: waistband, hips, two legs (trousers with knee points), the crotch."""
    waist = _u(rng, 0.26, 0.34)
    hip = waist * _u(rng, 1.02, 1.15)
    hip_y = _u(rng, 0.18, 0.28)
    crotch_y = _u(rng, 0.32, 0.42)
    waist_dip = _u(rng, 0.0, 0.04)
    v = OrderedDict()
    v["left_waist"] = (-waist, 0.0)
    v["center_waist"] = (0.0, waist_dip)
    v["right_waist"] = (waist, 0.0)
    v["right_hip"] = (hip, hip_y)
    legs = {}
    for side in (1, -1):
        spread = math.radians(_u(rng, -2, 10))  # leg opening angle from vertical
        leg_w = _u(rng, 0.17, 0.24) if knees else _u(rng, 0.22, 0.30)
        out_top = np.array([side * hip, hip_y])
        out_bottom = out_top + (length - hip_y) * np.array([side * math.sin(spread), 1.0])
        leg_w = min(leg_w, 0.8 * abs(out_bottom[0]))  # keep the two legs apart
        in_bottom = out_bottom - np.array([side * leg_w, 0.0])
        points = [("hem_outer", out_bottom), ("hem_inner", in_bottom)]
        if knees:  # half-way down the leg, the inner knee a leg width in
            t = _u(rng, 0.45, 0.55)
            knee_out = out_top + t * (out_bottom - out_top)
            knee_w = leg_w * _u(rng, 1.05, 1.25)
            knee_in = knee_out - np.array([side * min(knee_w, 0.85 * abs(knee_out[0])), 0.0])
            points = [("knee_outer", knee_out)] + points + [("knee_inner", knee_in)]
        legs[side] = [(name, tuple(p)) for name, p in points]
    v.update((f"right_{name}", p) for name, p in legs[1])
    v["crotch"] = (0.0, crotch_y)
    v.update((f"left_{name}", p) for name, p in reversed(legs[-1]))
    v["left_hip"] = (-hip, hip_y)
    return v


def trousers(rng: np.random.Generator) -> Vertices:
    return _legwear(rng, length=_u(rng, 1.35, 1.7), knees=True)


def shorts(rng: np.random.Generator) -> Vertices:
    return _legwear(rng, length=_u(rng, 0.55, 0.75), knees=False)


def skirt(rng: np.random.Generator) -> Vertices:
    """Skirt: waistband, hips and a flared hem."""
    waist = _u(rng, 0.24, 0.32)
    hip = waist * _u(rng, 1.05, 1.25)
    hip_y = _u(rng, 0.15, 0.25)
    length = _u(rng, 0.55, 1.0)
    hem = hip * _u(rng, 1.15, 1.7)
    v = OrderedDict()
    v["left_waist"] = (-waist, 0.0)
    v["center_waist"] = (0.0, _u(rng, 0.0, 0.03))
    v["right_waist"] = (waist, 0.0)
    v["right_hip"] = (hip, hip_y)
    v["right_hem"] = (hem, length)
    v["center_hem"] = (0.0, length * _u(rng, 1.0, 1.05))
    v["left_hem"] = (-hem, length)
    v["left_hip"] = (-hip, hip_y)
    return v


SHAPE_BUILDERS: Dict[str, Callable[[np.random.Generator], Vertices]] = {
    "short_sleeve_top": short_sleeve_top,
    "long_sleeve_top": long_sleeve_top,
    "short_sleeve_dress": short_sleeve_dress,
    "long_sleeve_dress": long_sleeve_dress,
    "trousers": trousers,
    "shorts": shorts,
    "skirt": skirt,
}
# Where a shape is worn in an outfit: "top" (upper body), "bottom" (from the waist down) or
# "one_piece" (a dress, from the collar down).
SHAPE_ROLES: Dict[str, str] = {
    "short_sleeve_top": "top",
    "long_sleeve_top": "top",
    "short_sleeve_dress": "one_piece",
    "long_sleeve_dress": "one_piece",
    "trousers": "bottom",
    "shorts": "bottom",
    "skirt": "bottom",
}

# OKS sigma of every synthetic landmark, taken from DeepFashion2's official 294 sigmas: each
# shape borrows the sigmas of the DeepFashion2 class it imitates, landmark kind by landmark kind.
# shape -> (DeepFashion2 category id 1..13, {landmark kind: 1-based landmark number in that
# category}); a vertex's kind is its name without the ``left_`` / ``right_`` prefix. Left and
# right landmarks of one kind have equal official sigmas, so the image-right one is cited.
DF2_SIGMA_SOURCES: Dict[str, Tuple[int, Dict[str, int]]] = {
    "short_sleeve_top": (
        1,
        {
            "center_collar": 1,
            "collar": 2,
            "shoulder": 7,
            "sleeve_outer": 9,
            "sleeve_inner": 10,
            "armpit": 11,
            "side": 13,
            "hem": 15,
            "center_hem": 16,
        },
    ),
    "long_sleeve_top": (
        2,
        {
            "center_collar": 1,
            "collar": 2,
            "shoulder": 7,
            "elbow_outer": 9,
            "sleeve_outer": 11,
            "sleeve_inner": 12,
            "elbow_inner": 14,
            "armpit": 16,
            "side": 17,
            "hem": 19,
            "center_hem": 20,
        },
    ),
    "shorts": (
        7,
        {
            "waist": 1,
            "center_waist": 2,
            "hip": 4,
            "hem_outer": 5,
            "hem_inner": 6,
            "crotch": 7,
        },
    ),
    "trousers": (
        8,
        {
            "waist": 1,
            "center_waist": 2,
            "hip": 4,
            "knee_outer": 5,
            "hem_outer": 6,
            "hem_inner": 7,
            "knee_inner": 8,
            "crotch": 9,
        },
    ),
    "skirt": (9, {"waist": 1, "center_waist": 2, "hip": 4, "hem": 5, "center_hem": 6}),
    "short_sleeve_dress": (
        10,
        {
            "center_collar": 1,
            "collar": 2,
            "shoulder": 7,
            "sleeve_outer": 9,
            "sleeve_inner": 10,
            "armpit": 11,
            "waist": 13,
            "hip": 15,
            "hem": 17,
            "center_hem": 18,
        },
    ),
    "long_sleeve_dress": (
        11,
        {
            "center_collar": 1,
            "collar": 2,
            "shoulder": 7,
            "elbow_outer": 9,
            "sleeve_outer": 11,
            "sleeve_inner": 12,
            "elbow_inner": 14,
            "armpit": 16,
            "waist": 18,
            "hip": 19,
            "hem": 21,
            "center_hem": 22,
        },
    ),
}


def landmark_kind(vertex: str) -> str:
    """A vertex's landmark kind: its name without the ``left_`` / ``right_`` prefix."""
    for prefix in ("left_", "right_"):
        if vertex.startswith(prefix):
            return vertex[len(prefix) :]
    return vertex


def df2_sigma(shape: str, vertex: str) -> float:
    """DeepFashion2's official OKS sigma for ``vertex`` of ``shape`` (see DF2_SIGMA_SOURCES)."""
    category, numbers = DF2_SIGMA_SOURCES[shape]
    start = DF2_KEYPOINT_SLOT_RANGES[category - 1][0]
    return float(DF2_KEYPOINT_OKS_SIGMAS[start + numbers[landmark_kind(vertex)] - 1])


@dataclass(frozen=True)
class KeypointLayout:
    """How shapes become dataset classes and global keypoint slots.

    Attributes:
        name: layout id (enters the cache hash).
        thing_classes: C class names, contiguous order.
        class_shapes: per class, the shape names drawn for it (picked uniformly).
        keypoint_names: K unique global slot names.
        class_keypoint_sources: per class, ``{global slot: source}``; the source is a vertex
            name or a tuple of vertex names (their mean), valid for every shape of the class.
        keypoint_oks_sigmas: K OKS sigmas (DeepFashion2's official value of the corresponding
            landmark kind, see ``DF2_SIGMA_SOURCES``).
        evaluator_type: "deepfashion2" (COCO box + keypoint AP) or "fld" (box AP + NE/PDL).
        fld_format: annotations also carry ``fld_visibility`` and ``variation_type``.
    """

    name: str
    thing_classes: Tuple[str, ...]
    class_shapes: Tuple[Tuple[str, ...], ...]
    keypoint_names: Tuple[str, ...]
    class_keypoint_sources: Tuple[Dict[int, KeypointSource], ...]
    keypoint_oks_sigmas: Tuple[float, ...]
    evaluator_type: str
    fld_format: bool = False

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def class_keypoint_slots(self) -> List[List[int]]:
        return [sorted(sources) for sources in self.class_keypoint_sources]

    @property
    def flip_pairs(self) -> List[Tuple[str, str]]:
        """(left name, right name) pairs, matched by swapping the ``left``/``right`` word."""
        index = {n: i for i, n in enumerate(self.keypoint_names)}
        pairs = []
        for name in self.keypoint_names:
            if "left_" in name:
                partner = name.replace("left_", "right_")
                assert partner in index, f"{self.name}: {name} has no mirror {partner}"
                pairs.append((name, partner))
        return pairs

    @property
    def flip_indices(self) -> List[int]:
        """Global flip permutation (slot -> mirrored slot)."""
        index = {n: i for i, n in enumerate(self.keypoint_names)}
        perm = list(range(self.num_keypoints))
        for a, b in self.flip_pairs:
            perm[index[a]], perm[index[b]] = index[b], index[a]
        return perm

    def metadata(self) -> dict:
        """Detectron2 ``MetadataCatalog`` fields of a dataset drawn with this layout."""
        return dict(
            thing_classes=list(self.thing_classes),
            keypoint_names=list(self.keypoint_names),
            keypoint_flip_map=[tuple(p) for p in self.flip_pairs],
            class_keypoint_slots=self.class_keypoint_slots,
            keypoint_oks_sigmas=list(self.keypoint_oks_sigmas),
            evaluator_type=self.evaluator_type,
        )


def _df2_like_layout() -> KeypointLayout:
    """One class per shape (7 classes, in DeepFashion2's category order); a class's keypoints are
    all of its outline vertices in contour order, one contiguous block per class (K = 108)."""
    classes = (
        "short_sleeve_top",
        "long_sleeve_top",
        "shorts",
        "trousers",
        "skirt",
        "short_sleeve_dress",
        "long_sleeve_dress",
    )
    probe = np.random.default_rng(0)
    names: List[str] = []
    sigmas: List[float] = []
    sources: List[Dict[int, KeypointSource]] = []
    for cls in classes:
        block = {}
        for vertex in SHAPE_BUILDERS[cls](probe):
            block[len(names)] = vertex
            names.append(f"{cls}_{vertex}")
            sigmas.append(df2_sigma(cls, vertex))
        sources.append(block)
    return KeypointLayout(
        name="df2_like_v2",
        thing_classes=classes,
        class_shapes=tuple((c,) for c in classes),
        keypoint_names=tuple(names),
        class_keypoint_sources=tuple(sources),
        keypoint_oks_sigmas=tuple(sigmas),
        evaluator_type="deepfashion2",
    )


def _fld_layout() -> KeypointLayout:
    """FLD: Upper {0,1,2,3,6,7}, Lower {4,5,6,7}, Whole all 8 (the FLD landmark definition).

    FLD has no OKS sigmas of its own; each slot gets the DeepFashion2 sigma of its landmark kind
    on the short-sleeve top (collar, cuff, hem) and on trousers (waist).
    """
    collar = {0: "left_collar", 1: "right_collar"}
    sleeve = {
        2: ("left_sleeve_outer", "left_sleeve_inner"),
        3: ("right_sleeve_outer", "right_sleeve_inner"),
    }
    upper = {**collar, **sleeve, 6: "left_hem", 7: "right_hem"}
    # Lower: trousers, shorts and skirts share one recipe; trouser "hem" = middle of the leg
    # opening.
    # Skirts have no *_hem_outer/inner vertices: the generator resolves "left_hem" as a fallback.
    lower = {
        4: "left_waist",
        5: "right_waist",
        6: ("left_hem_outer", "left_hem_inner"),
        7: ("right_hem_outer", "right_hem_inner"),
    }
    whole = {**collar, **sleeve, 4: "left_waist", 5: "right_waist", 6: "left_hem", 7: "right_hem"}
    top, legs = "short_sleeve_top", "trousers"
    sigmas = [df2_sigma(top, "collar")] * 2 + [df2_sigma(top, "sleeve_outer")] * 2
    sigmas += [df2_sigma(legs, "waist")] * 2 + [df2_sigma(top, "hem")] * 2
    return KeypointLayout(
        name="fld_v2",
        thing_classes=tuple(FLD_CLASS_NAMES),  # KGDet's DeepFashionDataset order
        class_shapes=(
            ("short_sleeve_top", "long_sleeve_top"),
            ("trousers", "shorts", "skirt"),
            ("short_sleeve_dress", "long_sleeve_dress"),
        ),
        keypoint_names=tuple(FLD_KEYPOINT_NAMES),
        class_keypoint_sources=(upper, lower, whole),
        keypoint_oks_sigmas=tuple(sigmas),
        evaluator_type="fld",
        fld_format=True,
    )


DF2_LIKE_LAYOUT = _df2_like_layout()
FLD_LAYOUT = _fld_layout()
assert FLD_LAYOUT.class_keypoint_slots == FLD_CLASS_KEYPOINT_SLOTS, "FLD slots out of sync"
LAYOUTS: Dict[str, KeypointLayout] = {"df2_like": DF2_LIKE_LAYOUT, "fld": FLD_LAYOUT}


def get_layout(layout: Union[str, KeypointLayout]) -> KeypointLayout:
    if isinstance(layout, KeypointLayout):
        return layout
    if layout not in LAYOUTS:
        raise KeyError(f"unknown synthetic layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[layout]


def resolve_keypoint(vertices: Vertices, source: KeypointSource) -> Tuple[float, float]:
    """Position of a keypoint source on an outline (mean of the named vertices)."""
    names: Sequence[str] = (source,) if isinstance(source, str) else source
    if not all(n in vertices for n in names):
        # Skirt-style lower garments: the leg-opening pair collapses to the hem corner.
        fallback = names[0].replace("_outer", "").replace("_inner", "")
        if fallback not in vertices:
            raise KeyError(f"keypoint source {source!r} not in outline {list(vertices)}")
        names = (fallback,)
    pts = np.array([vertices[n] for n in names], dtype=np.float64)
    return tuple(pts.mean(axis=0))
