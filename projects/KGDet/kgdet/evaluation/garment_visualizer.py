"""Drawing garments (boxes, class names, class-specific keypoints) for the demo and the viewer.

Detectron2's ``Visualizer`` draws every keypoint slot whose score exceeds 0.05 in one style.
Garments have K global slots of which only the garment class's own slots mean anything
(``class_keypoint_slots``). ``GarmentVisualizer`` therefore draws, per garment, only its class's
slots, and draws each keypoint as what it is:

- ground truth: filled dots for visible points (v = 2), hollow rings for occluded ones (v = 1),
  nothing for unlabelled ones (v = 0);
- predictions of a model with a per-keypoint confidence (the keypoint-selection variant,
  ``MODEL.KGDET.AGG "selection"``, predicts whether each keypoint is in view:
  ``pred_keypoint_visibility``): filled if it is >= the keypoint threshold, hollow below;
- predictions of every other model: the third keypoint column is only the detection's score
  (there is no per-keypoint confidence), so every keypoint of a drawn garment is filled.

Class-wise NMS (the model's output, also what the evaluation scores) may keep one cell's box
once per class. For the picture only, boxes that coincide (IoU >= ``merge_iou``) are drawn once,
with the labels of all their classes ("shirt 41% | skirt 35%") and the keypoints of the
best-scoring one, so labels never stack on top of each other.
"""

import numpy as np
from typing import List, NamedTuple, Optional, Sequence

from detectron2.utils.visualizer import Visualizer, random_color

import matplotlib as mpl

__all__ = ["KeypointMark", "garment_keypoint_marks", "merge_coinciding_boxes", "GarmentVisualizer"]


class KeypointMark(NamedTuple):
    """One keypoint to draw: position, slot, and filled or hollow (see the module docstring)."""

    instance: int
    slot: int
    x: float
    y: float
    filled: bool


def garment_keypoint_marks(
    keypoints: np.ndarray,
    classes: Sequence[int],
    class_slots: Sequence[Sequence[int]],
    *,
    kind: str,
    keypoint_threshold: float = 0.5,
    confidence: Optional[np.ndarray] = None,
) -> List[KeypointMark]:
    """Which keypoints to draw and how.

    Args:
        keypoints: (N, K, 3) x, y and score (``kind="prediction"``: a slot with score 0 is not
            drawn) or COCO visibility (``kind="ground_truth"``).
        classes: N contiguous class indices.
        class_slots: per class, the global slots that exist for it (metadata).
        kind: "prediction" or "ground_truth".
        keypoint_threshold: predictions whose ``confidence`` is at least this are drawn filled,
            others hollow. Unused without ``confidence``.
        confidence: optional (N, K) per-keypoint confidence in [0, 1] of a prediction (the
            selection variant's visibility). Without it every predicted keypoint is filled.
    """
    if kind not in ("prediction", "ground_truth"):
        raise ValueError(f"kind must be 'prediction' or 'ground_truth', got '{kind}'")
    marks = []
    for i, cls in enumerate(classes):
        for slot in class_slots[int(cls)]:
            x, y, s = (float(v) for v in keypoints[i, slot])
            if s <= 0:
                continue
            if kind == "ground_truth":
                filled = s >= 2
            elif confidence is not None:
                filled = float(confidence[i, slot]) >= keypoint_threshold
            else:
                filled = True
            marks.append(KeypointMark(i, int(slot), x, y, filled))
    return marks


def merge_coinciding_boxes(
    boxes: np.ndarray, scores: Sequence[float], merge_iou: float = 0.95
) -> List[List[int]]:
    """Group detections whose boxes coincide, for drawing each box once.

    Args:
        boxes: (N, 4) XYXY boxes in image pixels.
        scores: N detection scores.
        merge_iou: boxes with IoU >= this with a group's first (best-scoring) box join it.

    Returns:
        Groups of detection indices, each sorted by decreasing score, groups ordered by their best
        score; every index appears exactly once.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    groups: List[List[int]] = []
    for i in order:
        for group in groups:
            j = group[0]
            w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            inter = max(w, 0.0) * max(h, 0.0)
            union = areas[i] + areas[j] - inter
            iou = inter / union if union > 0 else float(np.allclose(boxes[i], boxes[j]))
            if iou >= merge_iou:
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


class GarmentVisualizer(Visualizer):
    """A Detectron2 ``Visualizer`` that draws garments as described in the module docstring."""

    def draw_garments(
        self,
        boxes: Optional[np.ndarray],
        classes: Sequence[int],
        keypoints: Optional[np.ndarray],
        *,
        kind: str,
        scores: Optional[Sequence[float]] = None,
        keypoint_threshold: float = 0.5,
        keypoint_confidence: Optional[np.ndarray] = None,
        merge_iou: Optional[float] = None,
    ):
        """Draw N garments; returns the ``VisImage``.

        Args:
            boxes: (N, 4) XYXY in image pixels, or None.
            classes: N contiguous class indices (names from ``thing_classes``).
            keypoints: (N, K, 3) (see :func:`garment_keypoint_marks`), or None.
            scores: optional N detection scores, appended to the labels.
            keypoint_threshold, keypoint_confidence: see :func:`garment_keypoint_marks`.
            merge_iou: if given (and ``boxes`` and ``scores`` are), coinciding boxes are drawn
                once with merged labels (:func:`merge_coinciding_boxes`).
        """
        names = self.metadata.get("thing_classes", None)
        classes = [int(c) for c in classes]
        labels = [names[c] if names else str(c) for c in classes]
        if scores is not None:
            labels = [f"{lab} {float(s) * 100:.0f}%" for lab, s in zip(labels, scores)]
        keep = list(range(len(classes)))
        if merge_iou is not None and boxes is not None and scores is not None and len(classes):
            groups = merge_coinciding_boxes(boxes, scores, merge_iou)
            keep = [g[0] for g in groups]
            merged = {g[0]: " | ".join(labels[i] for i in g) for g in groups}
            labels = [merged.get(i, lab) for i, lab in enumerate(labels)]
        classes = [classes[i] for i in keep]
        labels = [labels[i] for i in keep]
        colors = [self._class_color(c) for c in classes]
        if boxes is not None and len(classes):
            boxes = np.asarray(boxes).reshape(-1, 4)[keep]
            self.overlay_instances(boxes=boxes, labels=labels, assigned_colors=colors)
        if keypoints is not None and len(classes):
            class_slots = self.metadata.get("class_keypoint_slots", None)
            if class_slots is None:
                raise ValueError(
                    "GarmentVisualizer: metadata has no 'class_keypoint_slots' (needed to draw "
                    "only each garment's own keypoints)."
                )
            confidence = None
            if keypoint_confidence is not None:
                confidence = np.asarray(keypoint_confidence)[keep]
            marks = garment_keypoint_marks(
                np.asarray(keypoints)[keep],
                classes,
                class_slots,
                kind=kind,
                keypoint_threshold=keypoint_threshold,
                confidence=confidence,
            )
            radius = max(self._default_font_size / 3.0, 2.0)
            for m in marks:
                self._draw_keypoint(m, colors[m.instance], radius)
        return self.output

    def draw_instance_predictions_garments(
        self, instances, keypoint_threshold: float = 0.5, merge_iou: Optional[float] = 0.95
    ):
        """Draw a model's ``Instances`` (pred_boxes, scores, pred_classes, pred_keypoints).

        Args:
            instances: a model's output; ``pred_keypoint_visibility`` (N, K), where present,
                decides filled (>= ``keypoint_threshold``) or hollow keypoints; without it all
                keypoints are filled.
            keypoint_threshold: threshold on ``pred_keypoint_visibility``.
            merge_iou: coinciding boxes are drawn once with merged labels (None: every box).
        """
        instances = instances.to("cpu")
        boxes = instances.pred_boxes.tensor.numpy() if instances.has("pred_boxes") else None
        kps = instances.pred_keypoints.numpy() if instances.has("pred_keypoints") else None
        scores = instances.scores.tolist() if instances.has("scores") else None
        confidence = (
            instances.pred_keypoint_visibility.numpy()
            if instances.has("pred_keypoint_visibility")
            else None
        )
        return self.draw_garments(
            boxes,
            instances.pred_classes.tolist(),
            kps,
            kind="prediction",
            scores=scores,
            keypoint_threshold=keypoint_threshold,
            keypoint_confidence=confidence,
            merge_iou=merge_iou,
        )

    def _class_color(self, cls: int) -> np.ndarray:
        rng_state = np.random.get_state()
        np.random.seed(cls * 7919 + 17)  # a fixed colour per class, stable across images
        color = random_color(rgb=True, maximum=1)
        np.random.set_state(rng_state)
        return color

    def _draw_keypoint(self, mark: KeypointMark, color, radius: float) -> None:
        edge = tuple(float(c) for c in color)
        circle = mpl.patches.Circle(
            (mark.x, mark.y),
            radius=radius,
            fill=mark.filled,
            facecolor=edge if mark.filled else "none",
            edgecolor="white" if mark.filled else edge,
            linewidth=max(radius / 3.0, 1.0),
            zorder=11,  # above the box labels (Visualizer draws text at zorder 10)
        )
        self.output.ax.add_patch(circle)
