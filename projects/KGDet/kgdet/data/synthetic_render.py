"""Rendering of one synthetic garment image: textures, placement, occlusion and annotations.

Coordinates: keypoints and boxes are continuous pixel coordinates (Detectron2's convention:
pixel ``i`` covers ``[i, i + 1)``, so its centre is ``i + 0.5``); OpenCV rasterises integer
coordinates at pixel centres, hence the ``- 0.5`` when polygons are drawn.

Visibility of a labelled keypoint of garment g (COCO code / raw FLD code):
- truncated (outside the image): v = 0 with coordinates (0, 0) / FLD 2;
- occluded (the pixel under it belongs to a garment or distractor drawn after g): v = 1 / FLD 1;
- visible otherwise: v = 2 / FLD 0.
Slots not defined for g's class are (0, 0, 0); in ``fld_visibility`` they are 0 as in FLD's
padded ``0 0 0`` triplets (DATASETS.md §2.2: use the clothes type, not v, to find them).
"""

import colorsys
import math
import numpy as np
from collections import OrderedDict
from typing import Dict, List, Tuple
import cv2

from .synthetic_layouts import SHAPE_BUILDERS, KeypointLayout, mirror_vertices, resolve_keypoint

__all__ = ["render_synthetic_image", "GARMENT_COUNT_PROBS"]

# Number of garments attempted per image (mean 2.6; placements that hide too much of an earlier
# garment are retried, then skipped, so the realised mean is a bit lower).
GARMENT_COUNT_PROBS = {1: 0.1, 2: 0.35, 3: 0.35, 4: 0.2}
# Garment scale: one torso length in units of the image's long side (log-uniform).
TORSO_RANGE = (0.11, 0.36)
MIN_VISIBLE_FRACTION = 0.4  # an occluded garment keeps at least this share of its pixels
MIN_IN_IMAGE_FRACTION = 0.5  # a garment keeps at least this share of its area inside the image
MIN_BOX_SIDE = 8.0
PLACEMENT_TRIES = 12
NEAR_ANCHOR_PROB = 0.85


def _color(rng: np.random.Generator) -> np.ndarray:
    """A random BGR colour (float32), uniform hue, moderate-to-full saturation and value."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.15, 1.0), rng.uniform(0.2, 1.0))
    return np.array([b, g, r], np.float32) * 255


def _texture(rng: np.random.Generator, h: int, w: int, muted: bool = False) -> np.ndarray:
    """A random texture (float32 HxWx3): plain, noise, stripes, checks, dots or gradient.

    Rendered at half resolution and upsampled bilinearly (4x cheaper; softens the edges a bit).
    """
    full_h, full_w = h, w
    h, w = (h + 1) // 2, (w + 1) // 2
    c1, c2 = _color(rng), _color(rng)
    if muted:  # backgrounds: lower contrast between the two colours
        c2 = 0.6 * c1 + 0.4 * c2
    kind = rng.choice(["plain", "noise", "stripes", "checks", "dots", "gradient"])
    yy = np.arange(h, dtype=np.float32)[:, None] * 2  # full-resolution pixel units
    xx = np.arange(w, dtype=np.float32)[None, :] * 2
    if kind == "plain":
        t = np.zeros((h, w), np.float32)
    elif kind == "noise":
        small = rng.random((max(2, h // 4), max(2, w // 4))).astype(np.float32)
        t = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    elif kind == "stripes":
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(5, 20)
        t = np.floor((xx * math.cos(angle) + yy * math.sin(angle)) / period) % 2
    elif kind == "checks":
        period = rng.uniform(6, 22)
        t = (np.floor(xx / period) + np.floor(yy / period)) % 2
    elif kind == "dots":
        period = rng.uniform(7, 18)
        d = np.hypot(xx % period - period / 2, yy % period - period / 2)
        t = (d < period * rng.uniform(0.15, 0.35)).astype(np.float32)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    grain = rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(2, 8)
    texture = (c1 + grain) + t[..., None].astype(np.float32) * (c2 - c1)
    return cv2.resize(texture, (full_w, full_h), interpolation=cv2.INTER_LINEAR)


def _paint(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, shade: bool) -> float:
    """Fill ``mask`` with a fresh texture (made only for the mask's bounding box).

    Returns the mean colour painted (used to pick a darker seam colour).
    """
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    texture = _texture(rng, y1 - y0, x1 - x0)
    if shade:  # vertical lighting gradient
        light = np.linspace(rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.1), y1 - y0, dtype=np.float32)
        texture *= light[:, None, None]
    crop = mask[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1][crop] = texture[crop]
    return texture[crop].mean(0)


def _next(poly: np.ndarray) -> np.ndarray:
    """Polygon vertices shifted by one (vertex i -> i + 1, wrapping)."""
    return np.concatenate([poly[1:], poly[:1]])


def _polygon_mask(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    pts = np.round((poly - 0.5) * 16).astype(np.int32)  # continuous -> OpenCV, 4 fractional bits
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _draw_lines(canvas, lines, color, thickness) -> None:
    for a, b in lines:
        pa = tuple(int(round((c - 0.5) * 16)) for c in a)
        pb = tuple(int(round((c - 0.5) * 16)) for c in b)
        cv2.line(canvas, pa, pb, color.tolist(), thickness, cv2.LINE_AA, shift=4)


def _sample_garment(rng: np.random.Generator, layout: KeypointLayout, h: int, w: int, center):
    """Sample class, shape, proportions and pose of a garment centred (box centre) at ``center``.

    Returns (class, shape name, pixel outline as ordered dict, absolute rotation in degrees).
    """
    category = int(rng.integers(len(layout.thing_classes)))
    shape = layout.class_shapes[category][int(rng.integers(len(layout.class_shapes[category])))]
    vertices = SHAPE_BUILDERS[shape](rng)
    if rng.random() < 0.5:
        vertices = mirror_vertices(vertices)
    names = list(vertices)
    pts = np.array([vertices[n] for n in names], dtype=np.float64)
    pts += rng.normal(0, 0.012, pts.shape)  # per-vertex proportion jitter
    torso = max(h, w) * math.exp(rng.uniform(*np.log(TORSO_RANGE)))
    rotation = float(np.clip(rng.normal(0, 8), -20, 20))
    stretch = np.array([rng.uniform(0.85, 1.15), 1.0])
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    rot = np.array([[c, -s], [s, c]])
    pts = (pts - (pts.min(0) + pts.max(0)) / 2) * stretch * torso
    pts = pts @ rot.T
    pts += center
    return category, shape, OrderedDict(zip(names, map(tuple, pts))), abs(rotation)


def _variation_type(abs_rotation: float, num_truncated: int) -> int:
    """FLD variation type (DATASETS.md §2.4) from the pose and the number of cut-off landmarks.

    5 large zoom-in (> 3 truncated), 4 medium zoom-in (> 1 truncated), else by rotation:
    1 normal (< 6 deg and nothing truncated), 2 medium pose (< 12 deg), 3 large pose.
    """
    if num_truncated > 3:
        return 5
    if num_truncated > 1:
        return 4
    if abs_rotation < 6 and num_truncated == 0:
        return 1
    return 2 if abs_rotation < 12 else 3


def _garment_details(vertices) -> List[Tuple[tuple, tuple]]:
    """Seam lines drawn inside a garment (neckline, waistband, cuffs): cues real clothes have."""
    lines = []
    if "center_collar" in vertices:
        lines += [(vertices["left_collar"], vertices["center_collar"])]
        lines += [(vertices["center_collar"], vertices["right_collar"])]
    for side in ("left", "right"):
        if f"{side}_sleeve_outer" in vertices:
            lines.append((vertices[f"{side}_shoulder"], vertices[f"{side}_armpit"]))
    if "center_waist" in vertices:
        a, b = np.array(vertices["left_waist"]), np.array(vertices["right_waist"])
        down = np.array(vertices["left_hip"]) - a
        lines.append(
            (tuple(a + 0.3 * down), tuple(b + 0.3 * (np.array(vertices["right_hip"]) - b)))
        )
    if "left_waist" in vertices and "left_armpit" in vertices:  # dress waist seam
        lines.append((vertices["left_waist"], vertices["right_waist"]))
    return lines


def _annotation(layout, category, vertices, order_map, draw_index, abs_rotation, h, w) -> Dict:
    kps = np.zeros((layout.num_keypoints, 3), np.float64)
    fld_vis = [0] * layout.num_keypoints
    num_truncated = 0
    for slot, source in layout.class_keypoint_sources[category].items():
        x, y = (round(float(c), 3) for c in resolve_keypoint(vertices, source))
        if not (0 <= x < w and 0 <= y < h):
            num_truncated += 1
            fld_vis[slot] = 2
            continue
        occluded = order_map[int(y), int(x)] > draw_index
        kps[slot] = (x, y, 1 if occluded else 2)
        fld_vis[slot] = 1 if occluded else 0
    poly = np.array(list(vertices.values()))
    x0, y0 = np.clip(poly.min(0), 0, [w, h])
    x1, y1 = np.clip(poly.max(0), 0, [w, h])
    ann = {
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "category_id": int(category),
        "keypoints": [float(v) for v in kps.reshape(-1)],
        "num_keypoints": int((kps[:, 2] > 0).sum()),
        "iscrowd": 0,
    }
    if layout.fld_format:
        ann["fld_visibility"] = fld_vis
        ann["variation_type"] = _variation_type(abs_rotation, num_truncated)
    return ann


def _distractor(rng: np.random.Generator, h: int, w: int, center) -> np.ndarray:
    """A non-garment occluder (bag, hand, sign...): a random blob polygon around ``center``."""
    n = int(rng.integers(5, 12))
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radius = max(h, w) * rng.uniform(0.04, 0.13)
    r = radius * rng.uniform(0.6, 1.0, n)
    aspect = rng.uniform(0.5, 1.5)
    return np.stack([center[0] + r * np.cos(angles) * aspect, center[1] + r * np.sin(angles)], 1)


def _placement_center(rng: np.random.Generator, h: int, w: int, anchors: List[np.ndarray]):
    """Where the next element goes: near an already placed garment (to create overlaps) with
    probability ``NEAR_ANCHOR_PROB``, else anywhere away from the borders."""
    if anchors and rng.random() < NEAR_ANCHOR_PROB:
        poly = anchors[int(rng.integers(len(anchors)))]
        lo, hi = poly.min(0), poly.max(0)
        return (lo + hi) / 2 + rng.uniform(-0.5, 0.5, 2) * (hi - lo)
    return rng.uniform(0.12, 0.88, 2) * np.array([w, h])


def _garment_ok(poly: np.ndarray, mask: np.ndarray, h: int, w: int) -> bool:
    """Enough of the garment inside the image, and a box that is not degenerate."""
    nxt = _next(poly)
    poly_area = 0.5 * abs(float((poly[:, 0] * nxt[:, 1] - nxt[:, 0] * poly[:, 1]).sum()))
    x0, y0 = np.clip(poly.min(0), 0, [w, h])
    x1, y1 = np.clip(poly.max(0), 0, [w, h])
    in_image = mask.sum() >= MIN_IN_IMAGE_FRACTION * poly_area
    return bool(in_image and min(x1 - x0, y1 - y0) >= MIN_BOX_SIDE)


def render_synthetic_image(
    rng: np.random.Generator, layout: KeypointLayout, image_size: int
) -> Tuple[np.ndarray, List[Dict]]:
    """Render one image (uint8 BGR, long side ``image_size``) and its annotation dicts.

    Garments and distractors are drawn in a random order; each later element occludes earlier
    ones, but never leaves an earlier garment with less than ``MIN_VISIBLE_FRACTION`` of its
    pixels (placements are retried, then the element is skipped).
    """
    long_side, short_side = image_size, int(round(image_size * rng.uniform(0.7, 1.0)))
    h, w = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    canvas = _texture(rng, h, w, muted=True)
    order_map = np.full((h, w), -1, np.int32)  # draw index of the top-most element per pixel
    visible = np.zeros(0, np.int64)  # pixels on top, per draw index
    full_area: Dict[int, int] = {}  # garment draw index -> in-image pixel count when drawn
    garments = []  # (draw index, category, vertices, abs rotation)
    anchors: List[np.ndarray] = []  # outlines of placed garments

    counts, probs = zip(*GARMENT_COUNT_PROBS.items())
    num_garments = int(rng.choice(counts, p=probs))
    num_distractors = int(rng.choice([0, 1, 2, 3], p=[0.1, 0.3, 0.35, 0.25]))
    kinds = ["garment"] * num_garments + ["distractor"] * num_distractors
    rng.shuffle(kinds)
    for draw_index, kind in enumerate(kinds):
        visible = np.append(visible, 0)
        for _ in range(PLACEMENT_TRIES):
            if kind == "distractor" and anchors and rng.random() < 0.85:
                # a hand / bag held over a garment: centred near one of its outline vertices
                outline = anchors[int(rng.integers(len(anchors)))]
                center = outline[int(rng.integers(len(outline)))] + rng.normal(0, 4, 2)
            else:
                center = _placement_center(rng, h, w, anchors)
            if kind == "garment":
                category, shape, vertices, abs_rot = _sample_garment(rng, layout, h, w, center)
                poly = np.array(list(vertices.values()))
            else:
                poly = _distractor(rng, h, w, center)
            mask = _polygon_mask(poly, h, w)
            if not mask.any() or (kind == "garment" and not _garment_ok(poly, mask, h, w)):
                continue
            hidden = np.bincount(order_map[mask] + 1, minlength=draw_index + 1)[1:]
            if all(
                visible[g] - hidden[g] >= MIN_VISIBLE_FRACTION * area
                for g, area in full_area.items()
            ):
                break
        else:
            continue  # could not place it without hiding too much: skip
        visible[: len(hidden)] -= hidden
        visible[draw_index] = int(mask.sum())
        order_map[mask] = draw_index
        if kind == "garment":
            mean_color = _paint(rng, canvas, mask, shade=True)
            seam = (mean_color * rng.uniform(0.3, 0.7)).astype(np.float32)
            _draw_lines(canvas, _garment_details(vertices), seam, 1)
            if rng.random() < 0.7:
                _draw_lines(canvas, list(zip(poly, _next(poly))), seam, 1)
            full_area[draw_index] = int(mask.sum())
            garments.append((draw_index, category, vertices, abs_rot))
            anchors.append(poly)
        else:
            _paint(rng, canvas, mask, shade=False)

    image = np.clip(canvas, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    annotations = [
        _annotation(layout, cat, verts, order_map, idx, rot, h, w)
        for idx, cat, verts, rot in garments
    ]
    return image, annotations
