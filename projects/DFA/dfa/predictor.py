"""DFA on one image and its garment boxes, and the KGDet -> DFA pipeline."""

import numpy as np
from typing import Dict, List, Optional
import torch

from detectron2.modeling import build_model
from detectron2.structures import Instances

from kgdet.checkpoint import KGDetCheckpointer
from kgdet.data.fld_meta import FLD_CLASS_NAMES
from kgdet.data.image_io import as_uint8_image

from .boxes import check_boxes_xyxy
from .landmarks import FLD_CLASS_SLOTS

__all__ = ["DFAPredictor", "refine_detections"]


class DFAPredictor:
    """Run a trained DFA cascade (cfg.MODEL.WEIGHTS, e.g. OUTPUT_DIR/model_final.pth).

    ``predictor(image, boxes, classes=None)``: image (H, W, 3) uint8 in cfg.INPUT.FORMAT (gray,
    4-channel and 16-bit arrays are converted, float arrays refused with one line:
    :func:`kgdet.data.image_io.as_uint8_image`), boxes (G, 4) XYXY in its pixels -> dict with
    ``aligned_keypoints`` (G, L, 2) pixels, ``aligned_keypoints_per_stage``,
    ``landmark_visibility`` (G, L, 3) probabilities (visible, occluded, truncated) and, with
    stage 3, ``routing``.

    ``classes`` (G,) select the cascade of each box with per-type cascades
    (MODEL.DFA.PER_TYPE_CASCADES) and are ignored otherwise. They are **contiguous class
    indices** 0..C-1, the detector's ``pred_classes``: for FLD, ``clothes_type - 1`` of
    ``list_landmarks.txt`` (0 upper body, 1 lower body, 2 whole body), **not** FLD's 1-based
    ``clothes_type`` itself; the names ``"upper"``, ``"lower"``, ``"whole"`` (any case) are
    accepted too. An index without a cascade is refused (ValueError naming the box). Boxes must be
    finite with x1 < x2 and y1 < y2 (ValueError naming the box's index otherwise); boxes under
    1 px are grown about their centre, boxes partly or wholly outside the image are cropped with
    zero padding, and G = 0 gives empty outputs.
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if cfg.MODEL.WEIGHTS:
            KGDetCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, boxes, classes=None) -> Dict[str, torch.Tensor]:
        image = as_uint8_image(image, self.cfg.INPUT.FORMAT, "DFAPredictor image")
        boxes = torch.as_tensor(check_boxes_xyxy(boxes, "boxes"), dtype=torch.float32)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        inputs = {
            "image": tensor,
            "boxes": boxes,
            "height": image.shape[0],
            "width": image.shape[1],
        }
        if classes is not None:
            inputs["classes"] = self._class_indices(classes)
        return self.model([inputs])[0]

    def _class_indices(self, classes) -> torch.Tensor:
        """(G,) long tensor of contiguous class indices; names mapped, unknown ones refused."""
        if isinstance(classes, torch.Tensor):
            classes = classes.reshape(-1).tolist()
        elif isinstance(classes, (str, int, np.integer)):
            classes = [classes]
        names = [n.lower() for n in FLD_CLASS_NAMES]
        valid = sorted(getattr(self.model, "_cascade_of", {}))
        expected = (
            f"expected contiguous class indices {valid[0]}..{valid[-1]} (FLD clothes_type - 1: "
            f"0 upper, 1 lower, 2 whole body) or the names {FLD_CLASS_NAMES}"
            if valid
            else ""
        )
        out = []
        for i, c in enumerate(np.asarray(classes, dtype=object).reshape(-1).tolist()):
            if isinstance(c, str) and c.strip().lower() in names:
                out.append(names.index(c.strip().lower()))
                continue
            if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
                if not (self.model.per_type and valid) or int(c) in valid:
                    out.append(int(c))
                    continue
            raise ValueError(f"DFAPredictor: classes[{i}] = {c!r}; {expected}")
        return torch.as_tensor(out, dtype=torch.long)


def refine_detections(
    predictor: DFAPredictor,
    image: np.ndarray,
    instances: Instances,
    class_slots: Optional[List[List[int]]] = None,
) -> Instances:
    """KGDet -> DFA: replace the detections' keypoints by DFA's landmarks on their boxes.

    Returns a copy of ``instances`` (``pred_boxes``, ``scores``, ``pred_classes``) whose
    ``pred_keypoints`` (N, L, 3) hold DFA's last-stage landmarks, third column = the detection
    score inside the predicted class's slots and 0 outside (the project's output contract).
    With per-type cascades each box is aligned by the cascade of its predicted class.
    """
    class_slots = class_slots or FLD_CLASS_SLOTS
    instances = instances.to("cpu")
    out = predictor(image, instances.pred_boxes.tensor, instances.pred_classes)
    points = out["aligned_keypoints"].cpu()
    scores = torch.zeros(points.shape[:2])
    for i, (cls, score) in enumerate(zip(instances.pred_classes.tolist(), instances.scores)):
        scores[i, class_slots[cls]] = score
    refined = Instances(instances.image_size, **instances.get_fields())
    refined.pred_keypoints = torch.cat([points, scores.unsqueeze(-1)], dim=-1)
    return refined
