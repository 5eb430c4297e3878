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
import math
from collections import OrderedDict
from typing import Dict, List, Tuple

import cv2
import numpy as np

from .synthetic_layouts import SHAPE_BUILDERS, KeypointLayout, mirror_vertices, resolve_keypoint

__all__ = ["render_synthetic_image", "GARMENT_COUNT_PROBS"]

# Number of garments attempted per image (mean 2.6; placements that hide too much of an earlier
# garment are retried, then skipped, so the realised mean is a bit lower).
GARMENT_COUNT_PROBS = {1: 0.1, 2: 0.35, 3: 0.35, 4: 0.2}
# Garment scale: one torso length in units of the image's long side (log-uniform).
TORSO_RANGE = (0.11, 0.36)
MIN_VISIBLE_FRACTION = 0.45  # an occluded garment keeps at least this share of its pixels
MIN_IN_IMAGE_FRACTION = 0.5  # a garment keeps at least this share of its area inside the image
MIN_BOX_SIDE = 8.0
PLACEMENT_TRIES = 12


def _color(rng: np.random.Generator) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(40, 256), rng.integers(50, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, muted: bool = False) -> np.ndarray:
    """A random texture (float32 HxWx3): plain, noise, stripes, checks, dots or gradient."""
    c1, c2 = _color(rng), _color(rng)
    if muted:  # backgrounds: lower contrast between the two colours
        c2 = 0.6 * c1 + 0.4 * c2
    kind = rng.choice(["plain", "noise", "stripes", "checks", "dots", "gradient"])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "plain":
        img = np.broadcast_to(c1, (h, w, 3)).copy()
    elif kind == "noise":
        small = rng.random((max(2, h // 8), max(2, w // 8), 1)).astype(np.float32)
        t = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
        img = c1 * (1 - t) + c2 * t
    elif kind == "stripes":
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(5, 20)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period
        t = (np.floor(phase) % 2)[..., None]
        img = c1 * (1 - t) + c2 * t
    elif kind == "checks":
        period = rng.uniform(6, 22)
        t = ((np.floor(xx / period) + np.floor(yy / period)) % 2)[..., None]
        img = c1 * (1 - t) + c2 * t
    elif kind == "dots":
        period = rng.uniform(7, 18)
        d = np.hypot(xx % period - period / 2, yy % period - period / 2)
        t = (d < period * rng.uniform(0.15, 0.35)).astype(np.float32)[..., None]
        img = c1 * (1 - t) + c2 * t
    else:
        angle = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = ((t - t.min()) / max(float(np.ptp(t)), 1.0))[..., None]
        img = c1 * (1 - t) + c2 * t
    grain = rng.normal(0, rng.uniform(2, 8), (h, w, 1)).astype(np.float32)
    return img + grain


def _fill(canvas: np.ndarray, mask: np.ndarray, texture: np.ndarray) -> None:
    canvas[mask] = texture[mask]


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


def _sample_garment(rng: np.random.Generator, layout: KeypointLayout, h: int, w: int):
    """Sample class, shape, proportions and pose; return (class, shape, pixel outline, pose)."""
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
    center = np.array([rng.uniform(0.03, 0.97) * w, rng.uniform(0.03, 0.97) * h])
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


def _garment_details(vertices, shape: str) -> List[Tuple[tuple, tuple]]:
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
        lines.append((tuple(a + 0.3 * down), tuple(b + 0.3 * (np.array(vertices["right_hip"]) - b))))
    if "left_waist" in vertices and "left_armpit" in vertices:  # dress waist seam
        lines.append((vertices["left_waist"], vertices["right_waist"]))
    return lines


def _annotation(layout, category, vertices, order_map, draw_index, abs_rotation, h, w) -> Dict:
    kps = np.zeros((layout.num_keypoints, 3), np.float64)
    fld_vis = [0] * layout.num_keypoints
    num_truncated = 0
    for slot, source in layout.class_keypoint_sources[category].items():
        x, y = resolve_keypoint(vertices, source)
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
        "keypoints": [round(float(v), 3) for v in kps.reshape(-1)],
        "num_keypoints": int((kps[:, 2] > 0).sum()),
        "iscrowd": 0,
    }
    if layout.fld_format:
        ann["fld_visibility"] = fld_vis
        ann["variation_type"] = _variation_type(abs_rotation, num_truncated)
    return ann


def _distractor(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A non-garment occluder (bag, hand, sign...): a random ellipse-like polygon."""
    n = int(rng.integers(5, 12))
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radius = max(h, w) * rng.uniform(0.03, 0.12)
    r = radius * rng.uniform(0.6, 1.0, n)
    aspect = rng.uniform(0.5, 1.5)
    center = rng.uniform([0, 0], [w, h])
    return np.stack([center[0] + r * np.cos(angles) * aspect, center[1] + r * np.sin(angles)], 1)


def render_synthetic_image(
    rng: np.random.Generator, layout: KeypointLayout, image_size: int
) -> Tuple[np.ndarray, List[Dict]]:
    """Render one image (uint8 BGR, long side ``image_size``) and its annotation dicts."""
    long_side, short_side = image_size, int(round(image_size * rng.uniform(0.7, 1.0)))
    h, w = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    canvas = _texture(rng, h, w, muted=True)
    order_map = np.full((h, w), -1, np.int32)  # draw index of the top-most element per pixel
    full_area: Dict[int, int] = {}  # garment draw index -> in-image pixel count when drawn
    garments = []  # (draw index, category, vertices, abs rotation)

    counts, probs = zip(*GARMENT_COUNT_PROBS.items())
    num_garments = int(rng.choice(counts, p=probs))
    num_distractors = int(rng.choice([0, 1, 2, 3], p=[0.3, 0.35, 0.25, 0.1]))
    kinds = ["garment"] * num_garments + ["distractor"] * num_distractors
    rng.shuffle(kinds)
    for draw_index, kind in enumerate(kinds):
        for _ in range(PLACEMENT_TRIES):
            if kind == "garment":
                category, shape, vertices, abs_rot = _sample_garment(rng, layout, h, w)
                poly = np.array(list(vertices.values()))
            else:
                poly = _distractor(rng, h, w)
            mask = _polygon_mask(poly, h, w)
            area = int(mask.sum())
            if kind == "garment":
                poly_area = 0.5 * abs(float(np.cross(poly, np.roll(poly, -1, 0)).sum()))
                x0, y0 = np.clip(poly.min(0), 0, [w, h])
                x1, y1 = np.clip(poly.max(0), 0, [w, h])
                if area < MIN_IN_IMAGE_FRACTION * poly_area or min(x1 - x0, y1 - y0) < MIN_BOX_SIDE:
                    continue
            hidden = np.bincount(order_map[mask] + 1, minlength=draw_index + 1)[1:]
            visible = np.bincount(order_map.ravel() + 1, minlength=draw_index + 1)[1:]
            if any(
                visible[g] - hidden[g] < MIN_VISIBLE_FRACTION * full_area[g] for g in full_area
            ):
                continue
            break
        else:
            continue  # could not place it without hiding too much: skip
        if kind == "garment":
            texture = _texture(rng, h, w)
            shading = np.linspace(rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.1), h, dtype=np.float32)
            _fill(canvas, mask, texture * shading[:, None, None])
            edge = (texture[mask].mean(0) * rng.uniform(0.3, 0.7)).astype(np.float32)
            _draw_lines(canvas, _garment_details(vertices, shape), edge, 1)
            if rng.random() < 0.7:
                closed = list(zip(poly, np.roll(poly, -1, 0)))
                _draw_lines(canvas, closed, edge, 1)
            full_area[draw_index] = area
            garments.append((draw_index, category, vertices, abs_rot))
        else:
            _fill(canvas, mask, _texture(rng, h, w))
        order_map[mask] = draw_index

    canvas += rng.normal(0, rng.uniform(1, 6), canvas.shape).astype(np.float32)
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    annotations = [
        _annotation(layout, cat, verts, order_map, idx, rot, h, w)
        for idx, cat, verts, rot in garments
    ]
    return image, annotations
