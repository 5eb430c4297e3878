"""Drawing garments (boxes, class names, class-specific keypoints) for the demo and the viewer.

Detectron2's ``Visualizer`` draws every keypoint slot whose score exceeds 0.05 in one style.
Garments have K global slots of which only the garment class's own slots mean anything
(``class_keypoint_slots``), and users want to tell confident/visible points from weak/occluded
ones. ``GarmentVisualizer`` therefore draws, per garment, only its class's slots:

- filled dots: predicted points with score >= the keypoint threshold, or visible GT (v = 2);
- hollow rings: predicted points below the threshold (but > 0), or occluded GT (v = 1);
- nothing: score 0 (slot outside the predicted class), unlabelled GT (v = 0).
"""

import numpy as np
from typing import List, NamedTuple, Optional, Sequence

from detectron2.utils.visualizer import Visualizer, random_color

import matplotlib as mpl

__all__ = ["KeypointMark", "garment_keypoint_marks", "GarmentVisualizer"]


class KeypointMark(NamedTuple):
    """One keypoint to draw: position, slot, and filled (confident/visible) or hollow."""

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
) -> List[KeypointMark]:
    """Which keypoints to draw and how.

    Args:
        keypoints: (N, K, 3) x, y and score (``kind="prediction"``) or COCO visibility
            (``kind="ground_truth"``).
        classes: N contiguous class indices.
        class_slots: per class, the global slots that exist for it (metadata).
        kind: "prediction" or "ground_truth".
        keypoint_threshold: predictions at or above it are drawn filled, others hollow.
    """
    if kind not in ("prediction", "ground_truth"):
        raise ValueError(f"kind must be 'prediction' or 'ground_truth', got '{kind}'")
    marks = []
    for i, cls in enumerate(classes):
        for slot in class_slots[int(cls)]:
            x, y, s = (float(v) for v in keypoints[i, slot])
            if kind == "prediction":
                if s <= 0:
                    continue
                filled = s >= keypoint_threshold
            else:
                if s <= 0:
                    continue
                filled = s >= 2
            marks.append(KeypointMark(i, int(slot), x, y, filled))
    return marks


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
    ):
        """Draw N garments; returns the ``VisImage``.

        Args:
            boxes: (N, 4) XYXY in image pixels, or None.
            classes: N contiguous class indices (names from ``thing_classes``).
            keypoints: (N, K, 3) (see :func:`garment_keypoint_marks`), or None.
            scores: optional N detection scores, appended to the labels.
        """
        names = self.metadata.get("thing_classes", None)
        classes = [int(c) for c in classes]
        labels = [names[c] if names else str(c) for c in classes]
        if scores is not None:
            labels = [f"{lab} {float(s) * 100:.0f}%" for lab, s in zip(labels, scores)]
        colors = [self._class_color(c) for c in classes]
        if boxes is not None and len(classes):
            self.overlay_instances(boxes=boxes, labels=labels, assigned_colors=colors)
        if keypoints is not None and len(classes):
            class_slots = self.metadata.get("class_keypoint_slots", None)
            if class_slots is None:
                raise ValueError(
                    "GarmentVisualizer: metadata has no 'class_keypoint_slots' (needed to draw "
                    "only each garment's own keypoints)."
                )
            marks = garment_keypoint_marks(
                np.asarray(keypoints),
                classes,
                class_slots,
                kind=kind,
                keypoint_threshold=keypoint_threshold,
            )
            radius = max(self._default_font_size / 3.0, 2.0)
            for m in marks:
                self._draw_keypoint(m, colors[m.instance], radius)
        return self.output

    def draw_instance_predictions_garments(self, instances, keypoint_threshold: float = 0.5):
        """Draw a model's ``Instances`` (pred_boxes, scores, pred_classes, pred_keypoints)."""
        instances = instances.to("cpu")
        boxes = instances.pred_boxes.tensor.numpy() if instances.has("pred_boxes") else None
        kps = instances.pred_keypoints.numpy() if instances.has("pred_keypoints") else None
        scores = instances.scores.tolist() if instances.has("scores") else None
        return self.draw_garments(
            boxes,
            instances.pred_classes.tolist(),
            kps,
            kind="prediction",
            scores=scores,
            keypoint_threshold=keypoint_threshold,
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
