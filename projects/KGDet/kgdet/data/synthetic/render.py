"""Rendering of one synthetic outfit image: people, garments, occluders, textures, lighting.

An image shows one person wearing one outfit — a top above a bottom, a one-piece dress, or a
single garment — and sometimes a garment of a second person at the side, partly outside the
frame, as in DeepFashion2's street and shop photos (1.7 garments per image, garment size
√(wh)/√(WH) of median about 0.47). Garments are drawn over the person's skin (head, neck, arms,
legs); a top is worn over or tucked into its bottom (so the two overlap at the waist); hair,
bags and an arm held in front occlude some landmarks; textures, creases, shading and a global
lighting change vary the appearance.

Coordinates: keypoints and boxes are continuous pixel coordinates (Detectron2's convention:
pixel ``i`` covers ``[i, i + 1)``, so its centre is ``i + 0.5``); OpenCV rasterises integer
coordinates at pixel centres, hence the ``- 0.5`` when polygons are drawn.

Visibility of a labelled keypoint of garment g (COCO code / raw FLD code):
- truncated (outside the image): v = 0 with coordinates (0, 0) / FLD 2;
- occluded (the pixel under it belongs to a garment, body part or object drawn after g):
  v = 1 / FLD 1;
- visible otherwise: v = 2 / FLD 0.
Slots not defined for g's class are (0, 0, 0); in ``fld_visibility`` they are 0 as in FLD's
padded ``0 0 0`` triplets (use the clothes type, not v, to find them).
"""

import colorsys
import math
import numpy as np
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple
import cv2

from .layouts import SHAPE_BUILDERS, SHAPE_ROLES, KeypointLayout, mirror_vertices, resolve_keypoint

__all__ = ["render_synthetic_image", "GARMENT_COUNT_PROBS"]

# Garments per image (DeepFashion2-like: mostly one or two).
GARMENT_COUNT_PROBS = {1: 0.3, 2: 0.57, 3: 0.13}
# A single-garment image shows a top, a bottom or a one-piece garment with these odds.
SINGLE_ROLE_PROBS = {"top": 0.4, "bottom": 0.3, "one_piece": 0.3}
# Two garments: mostly a top over a bottom; otherwise a dress beside a second person's garment.
TWO_PIECE_PROB = 0.85
# Log-uniform size of the person's main garment: its √(wh) in units of the image's √(WH).
MAIN_GARMENT_SIZE = (0.32, 1.15)
SECOND_PERSON_SCALE = (0.45, 0.8)  # a second person's garment, relative to the main person
MIN_VISIBLE_FRACTION = 0.4  # an occluded garment keeps at least this share of its pixels
MIN_IN_IMAGE_FRACTION = 0.5  # a garment keeps at least this share of its area inside the image
MIN_BOX_SIDE = 8.0
LAYOUT_TRIES = 8
# Occluders drawn over the garments, with their probabilities.
HAIR_PROB = 0.6
FRONT_ARM_PROB = 0.6
BAG_PROB = 0.6
FOREARM_IN_FRONT_PROB = 0.7  # per short-sleeved arm


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


def _skin(rng: np.random.Generator) -> np.ndarray:
    """A skin tone (BGR float32)."""
    r, g, b = colorsys.hsv_to_rgb(
        rng.uniform(0.03, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95)
    )
    return np.array([b, g, r], np.float32) * 255


def _plain(color: np.ndarray, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    grain = rng.standard_normal((h, w, 1), dtype=np.float32) * 3
    return np.broadcast_to(color, (h, w, 3)) + grain


def _stroke(points, width: float) -> np.ndarray:
    """Polygon of a thick polyline (a limb or a strap): the two offset sides of ``points``."""
    pts = np.asarray(points, np.float64)
    left, right = [], []
    for i in range(len(pts)):
        a, b = pts[max(i - 1, 0)], pts[min(i + 1, len(pts) - 1)]
        d = b - a
        n = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-6) * width / 2
        left.append(pts[i] + n)
        right.append(pts[i] - n)
    return np.array(left + right[::-1])


def _ellipse(center, rx: float, ry: float, n: int = 16) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([center[0] + rx * np.cos(t), center[1] + ry * np.sin(t)], 1)


@dataclass
class _Element:
    """One drawn element: a garment (with its annotation data) or a body part / object."""

    kind: str  # "garment", "skin", "hair", "object"
    poly: np.ndarray  # pixel polygon
    category: int = -1
    vertices: Optional["OrderedDict[str, Tuple[float, float]]"] = None
    abs_rotation: float = 0.0
    color: Optional[np.ndarray] = field(default=None, repr=False)


def _garment_choices(layout: KeypointLayout) -> Dict[str, List[Tuple[int, str]]]:
    """(category, shape) pairs of the layout by outfit role."""
    choices: Dict[str, List[Tuple[int, str]]] = {"top": [], "bottom": [], "one_piece": []}
    for category, shapes in enumerate(layout.class_shapes):
        for shape in shapes:
            choices[SHAPE_ROLES[shape]].append((category, shape))
    return choices


def _pick(rng: np.random.Generator, options: List[Tuple[int, str]]) -> Tuple[int, str]:
    return options[int(rng.integers(len(options)))]


def _canonical_garment(rng: np.random.Generator, shape: str):
    """A shape's outline in torso units, randomly mirrored, with per-vertex jitter."""
    vertices = SHAPE_BUILDERS[shape](rng)
    if rng.random() < 0.5:
        vertices = mirror_vertices(vertices)
    names = list(vertices)
    pts = np.array([vertices[n] for n in names], dtype=np.float64)
    pts += rng.normal(0, 0.012, pts.shape)
    return names, pts


def _person(rng: np.random.Generator, garments: List[Tuple[int, str]]):
    """One person's outfit in torso units: garment outlines (drawing order) and skin parts.

    Returns (garments as (category, shape, names, points), skin polygons drawn below them, skin
    polygons drawn over them (forearms held in front)).
    The collar (or, for a bottom alone, the waist) is at y = 0, the body centred on x = 0.
    """
    placed, skin, front = [], [], []
    roles = [SHAPE_ROLES[shape] for _, shape in garments]
    y = 0.0
    upper = None
    for (category, shape), role in zip(garments, roles):
        names, pts = _canonical_garment(rng, shape)
        if role == "bottom" and upper is not None:
            y_top_hem = upper[:, 1].max()
            pts[:, 1] += y_top_hem - rng.uniform(0.15, 0.35)  # the waist under the top's hem
        placed.append((category, shape, names, pts))
        if role != "bottom":
            upper = pts
        y = max(y, pts[:, 1].max())
    # Skin below the garments: head and neck above a collar, forearms out of the cuffs, legs
    # below the lowest hem.
    for category, shape, names, pts in placed:
        v = dict(zip(names, pts))
        if "center_collar" in v:
            neck_w = abs(v["right_collar"][0] - v["left_collar"][0]) * rng.uniform(0.6, 0.9)
            head_y = -rng.uniform(0.2, 0.26)
            skin.append(_stroke([(0, 0.05), (0, head_y)], neck_w))
            skin.append(_ellipse((rng.normal(0, 0.02), head_y), 0.12, 0.16))
            for side in ("left", "right"):
                outer, inner = v[f"{side}_sleeve_outer"], v[f"{side}_sleeve_inner"]
                cuff = (outer + inner) / 2
                inward = inner - outer
                down = (
                    np.array([-inward[1], inward[0]])
                    if side == "left"
                    else np.array([inward[1], -inward[0]])
                )
                down = down / max(np.hypot(*down), 1e-6)
                if down[1] < 0:
                    down = -down
                width = np.hypot(*inward) * 0.8
                if "elbow_outer" in v:  # the hand out of a long sleeve
                    skin.append(_stroke([cuff - 0.02 * down, cuff + 0.12 * down], width))
                elif rng.random() < FOREARM_IN_FRONT_PROB:  # a hand on the hip, over the garment
                    sign = 1 if side == "right" else -1
                    hip = (sign * rng.uniform(0.2, 0.4), cuff[1] + rng.uniform(0.3, 0.5))
                    front.append(_stroke([cuff + 0.03 * down, hip], width))
                else:
                    length = rng.uniform(0.45, 0.6)
                    skin.append(_stroke([cuff - 0.02 * down, cuff + length * down], width))
        if SHAPE_ROLES[shape] != "top" and pts[:, 1].max() >= y - 1e-6:
            openings = []
            if "left_hem_inner" in v:
                for side in ("left", "right"):
                    openings.append(
                        (
                            (v[f"{side}_hem_outer"] + v[f"{side}_hem_inner"]) / 2,
                            abs(v[f"{side}_hem_outer"][0] - v[f"{side}_hem_inner"][0]),
                        )
                    )
            else:
                for side in ("left", "right"):
                    hem = v[f"{side}_hem"]
                    openings.append((np.array([hem[0] * 0.45, hem[1]]), 0.15))
            length = 0.15 if "left_knee_outer" in v else rng.uniform(0.6, 1.0)
            for top, width in openings:
                skin.append(
                    _stroke([top - (0, 0.05), top + (rng.normal(0, 0.03), length)], width * 0.75)
                )
    return placed, skin, front


def _to_pixels(
    pts: np.ndarray, scale: float, rot: np.ndarray, origin: np.ndarray, center: np.ndarray
):
    return ((pts - origin) * scale) @ rot.T + center


def _variation_type(abs_rotation: float, num_truncated: int) -> int:
    """FLD variation type (Liu et al., ECCV 2016, Sec. 3) from the pose and the cut-off landmarks.

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


def _occluders(rng: np.random.Generator, placed) -> List[Tuple[str, np.ndarray]]:
    """Hair over a shoulder, an arm held in front, a bag with its strap (torso units)."""
    out = []
    upper = [
        dict(zip(names, pts)) for _, shape, names, pts in placed if SHAPE_ROLES[shape] != "bottom"
    ]
    v = upper[0] if upper else None
    side = 1 if rng.random() < 0.5 else -1
    if v is not None and rng.random() < HAIR_PROB:
        end = (side * rng.uniform(0.1, 0.3), rng.uniform(0.15, 0.45))
        out.append(
            (
                "hair",
                _stroke([(side * 0.05, -0.3), (side * 0.1, -0.05), end], rng.uniform(0.14, 0.24)),
            )
        )
    if v is not None and rng.random() < FRONT_ARM_PROB:
        shoulder = v[f"{'right' if side > 0 else 'left'}_shoulder"]
        elbow = (side * rng.uniform(0.25, 0.4), rng.uniform(0.45, 0.6))
        hand = (-side * rng.uniform(0.0, 0.25), rng.uniform(0.6, 0.95))
        out.append(("skin", _stroke([shoulder, elbow, hand], rng.uniform(0.1, 0.14))))
    if rng.random() < BAG_PROB:
        all_pts = np.concatenate([pts for _, _, _, pts in placed])
        lo, hi = all_pts.min(0), all_pts.max(0)
        c = np.array(
            [
                side * rng.uniform(0.25, 0.55) * (hi[0] - lo[0]),
                rng.uniform(0.3, 0.6) * (hi[1] - lo[1]) + lo[1],
            ]
        )
        bw, bh = rng.uniform(0.3, 0.55), rng.uniform(0.25, 0.45)
        a = math.radians(rng.normal(0, 10))
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        corners = np.array([[-bw, -bh], [bw, -bh], [bw, bh], [-bw, bh]]) / 2 @ rot.T + c
        if v is not None:
            strap_top = v[f"{'left' if side > 0 else 'right'}_shoulder"]
            out.append(
                ("object", _stroke([strap_top, corners[0] if side < 0 else corners[1]], 0.035))
            )
        out.append(("object", corners))
    return out


def _sample_scene(rng: np.random.Generator, layout: KeypointLayout, h: int, w: int, safe: bool):
    """Elements of one image in drawing order (pixel polygons), before any rasterisation."""
    choices = _garment_choices(layout)
    counts, probs = zip(*GARMENT_COUNT_PROBS.items())
    num = 1 if safe else int(rng.choice(counts, p=probs))
    second = None
    if num == 1:
        roles, rprobs = zip(*SINGLE_ROLE_PROBS.items())
        main = [_pick(rng, choices[str(rng.choice(roles, p=rprobs))])]
    elif num == 2 and rng.random() >= TWO_PIECE_PROB:
        main = [_pick(rng, choices["one_piece"])]
        second = _pick(rng, choices[str(rng.choice(["top", "bottom", "one_piece"]))])
    else:
        main = [_pick(rng, choices["top"]), _pick(rng, choices["bottom"])]
        if num == 3:
            second = _pick(rng, choices[str(rng.choice(["top", "bottom", "one_piece"]))])
    placed, skin, front = _person(rng, main)
    if len(placed) == 2 and rng.random() >= 0.45:  # worn over the bottom, not tucked in
        placed = placed[::-1]
    hidden = [] if safe else [("skin", poly) for poly in front] + _occluders(rng, placed)

    # Framing: size of the main garment, position and tilt of the person.
    first = placed[-1] if SHAPE_ROLES[placed[-1][1]] != "bottom" else placed[0]
    extent = first[3].max(0) - first[3].min(0)
    size = 0.5 if safe else math.exp(rng.uniform(*np.log(MAIN_GARMENT_SIZE)))
    stretch = np.array([rng.uniform(0.85, 1.15), 1.0])
    scale = size * math.sqrt(h * w) / math.sqrt(extent[0] * stretch[0] * extent[1])
    all_pts = np.concatenate([pts for _, _, _, pts in placed])
    lo, hi = all_pts.min(0), all_pts.max(0)
    origin = (lo + hi) / 2
    height = (hi[1] - lo[1]) * scale
    if safe:
        center = np.array([w / 2, h / 2])
    else:
        cx = w * rng.uniform(0.35, 0.65)
        cy = rng.uniform(*sorted((height / 2, h - height / 2)))
        if rng.random() < 0.2:  # zoomed or cut off at a border
            cy += rng.normal(0, 0.15) * h
        center = np.array([cx, cy])
    angle = 0.0 if safe else float(np.clip(rng.normal(0, 4), -10, 10))
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * stretch[None, :]

    def px(pts):
        return _to_pixels(np.asarray(pts, np.float64), scale, rot, origin, center)

    elements: List[_Element] = []
    if second is not None:
        s_placed, s_skin, _ = _person(rng, [second])
        s_scale = scale * rng.uniform(*SECOND_PERSON_SCALE)
        s_pts = s_placed[0][3]
        s_origin = (s_pts.min(0) + s_pts.max(0)) / 2
        s_side = 1 if rng.random() < 0.5 else -1
        s_center = np.array(
            [w * (0.5 + s_side * rng.uniform(0.25, 0.45)), h * rng.uniform(0.35, 0.65)]
        )
        s_rot = np.eye(2)
        for poly in s_skin:
            elements.append(_Element("skin", _to_pixels(poly, s_scale, s_rot, s_origin, s_center)))
        category, shape, names, pts = s_placed[0]
        poly = _to_pixels(pts, s_scale, s_rot, s_origin, s_center)
        elements.append(
            _Element("garment", poly, category, OrderedDict(zip(names, map(tuple, poly))), 0.0)
        )
    for poly in skin:
        elements.append(_Element("skin", px(poly)))
    for category, shape, names, pts in placed:
        poly = px(pts)
        elements.append(
            _Element(
                "garment", poly, category, OrderedDict(zip(names, map(tuple, poly))), abs(angle)
            )
        )
    for kind, poly in hidden:
        elements.append(_Element(kind, px(poly)))
    return elements


def _rasterise(elements: List[_Element], h: int, w: int):
    """Masks and the top-most draw index per pixel; None if a garment breaks the rules."""
    order_map = np.full((h, w), -1, np.int32)
    masks = []
    for index, element in enumerate(elements):
        mask = _polygon_mask(element.poly, h, w)
        masks.append(mask)
        order_map[mask] = index
    for index, element in enumerate(elements):
        if element.kind != "garment":
            continue
        poly, mask = element.poly, masks[index]
        nxt = _next(poly)
        area = 0.5 * abs(float((poly[:, 0] * nxt[:, 1] - nxt[:, 0] * poly[:, 1]).sum()))
        x0, y0 = np.clip(poly.min(0), 0, [w, h])
        x1, y1 = np.clip(poly.max(0), 0, [w, h])
        in_image = int(mask.sum())
        if in_image < MIN_IN_IMAGE_FRACTION * area or min(x1 - x0, y1 - y0) < MIN_BOX_SIDE:
            return None
        if (order_map[mask] == index).sum() < MIN_VISIBLE_FRACTION * in_image:
            return None
    return masks, order_map


def _creases(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, color) -> None:
    """A few soft fold lines inside a garment."""
    ys, xs = np.nonzero(mask)
    layer = canvas.copy()
    for _ in range(int(rng.integers(0, 4))):
        i = rng.integers(len(xs), size=3)
        pts = np.stack([xs[i], ys[i]], 1).astype(np.int32)
        pts = pts[np.argsort(pts[:, 1])]
        cv2.polylines(layer, [pts], False, color.tolist(), int(rng.integers(1, 3)), cv2.LINE_AA)
    canvas[mask] = 0.5 * canvas[mask] + 0.5 * layer[mask]


def _lighting(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Global exposure, contrast, gamma and colour cast."""
    image = image * rng.uniform(0.75, 1.2) + rng.uniform(-20, 20)
    image = image * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    image = np.clip(image, 0, 255) / 255.0
    return (image ** rng.uniform(0.8, 1.25)) * 255.0


def render_synthetic_image(
    rng: np.random.Generator, layout: KeypointLayout, image_size: int
) -> Tuple[np.ndarray, List[Dict]]:
    """Render one image (uint8 BGR, long side ``image_size``) and its annotation dicts.

    Every garment keeps at least ``MIN_IN_IMAGE_FRACTION`` of its area inside the image and at
    least ``MIN_VISIBLE_FRACTION`` of those pixels unoccluded (scenes that break this are drawn
    again, at most ``LAYOUT_TRIES`` times, then a single centred garment is drawn).

    Returns:
        (image HxWx3 uint8 BGR, annotations: Detectron2 dicts with ``bbox`` XYWH in pixels,
        0-based ``category_id``, flat ``keypoints`` (K x 3, COCO visibility), ``num_keypoints``,
        ``iscrowd``; FLD layouts add ``fld_visibility`` and ``variation_type``).
    """
    long_side, short_side = image_size, int(round(image_size * rng.uniform(0.7, 1.0)))
    h, w = (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)
    for attempt in range(LAYOUT_TRIES + 1):
        elements = _sample_scene(rng, layout, h, w, safe=attempt == LAYOUT_TRIES)
        raster = _rasterise(elements, h, w)
        if raster is not None:
            break
    assert raster is not None, "a single centred garment always fits"
    masks, order_map = raster

    canvas = _texture(rng, h, w, muted=True)
    if rng.random() < 0.5:  # a wall and a floor
        split = int(h * rng.uniform(0.55, 0.9))
        canvas[split:] = _texture(rng, h - split, w, muted=True)
    skin, hair = _skin(rng), _color(rng) * 0.3
    for element, mask in zip(elements, masks):
        if not mask.any():
            continue
        if element.kind == "garment":
            mean_color = _paint(rng, canvas, mask, shade=True)
            seam = (mean_color * rng.uniform(0.3, 0.7)).astype(np.float32)
            _creases(rng, canvas, mask, seam)
            _draw_lines(canvas, _garment_details(element.vertices), seam, 1)
            if rng.random() < 0.7:
                _draw_lines(canvas, list(zip(element.poly, _next(element.poly))), seam, 1)
        elif element.kind == "object":
            _paint(rng, canvas, mask, shade=False)
        else:
            color = skin if element.kind == "skin" else hair
            ys, xs = np.nonzero(mask)
            canvas[ys, xs] = color + rng.standard_normal((len(ys), 1)).astype(np.float32) * 3
    image = np.clip(_lighting(rng, canvas), 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    annotations = [
        _annotation(layout, e.category, e.vertices, order_map, idx, e.abs_rotation, h, w)
        for idx, e in enumerate(elements)
        if e.kind == "garment"
    ]
    return image, annotations
