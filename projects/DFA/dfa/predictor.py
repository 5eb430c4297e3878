"""DFA on one image and its garment boxes, and the KGDet -> DFA pipeline."""

import numpy as np
from typing import Dict, List, Optional
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import Instances

from .boxes import check_boxes_xyxy
from .landmarks import FLD_CLASS_SLOTS

__all__ = ["DFAPredictor", "refine_detections"]


class DFAPredictor:
    """Run a trained DFA cascade (cfg.MODEL.WEIGHTS, e.g. OUTPUT_DIR/model_final.pth).

    ``predictor(image, boxes)``: image (H, W, C) uint8 in cfg.INPUT.FORMAT, boxes (G, 4) XYXY in
    its pixels -> dict with ``aligned_keypoints`` (G, L, 2) pixels, ``aligned_keypoints_per_stage``,
    ``landmark_visibility`` (G, L, 3) probabilities (visible, occluded, truncated) and, with
    stage 3, ``routing``. ``classes`` (G,) clothing types select the cascade of each box with
    per-type cascades (MODEL.DFA.PER_TYPE_CASCADES) and are ignored otherwise. Boxes must be
    finite with x1 < x2 and y1 < y2 (ValueError naming the box's index otherwise); boxes under
    1 px are grown about their centre, boxes partly or wholly outside the image are cropped with
    zero padding, and G = 0 gives empty outputs.
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if cfg.MODEL.WEIGHTS:
            DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, boxes, classes=None) -> Dict[str, torch.Tensor]:
        if image.ndim != 3:
            raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
        boxes = torch.as_tensor(check_boxes_xyxy(boxes, "boxes"), dtype=torch.float32)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        inputs = {
            "image": tensor,
            "boxes": boxes,
            "height": image.shape[0],
            "width": image.shape[1],
        }
        if classes is not None:
            classes = classes.detach().cpu() if isinstance(classes, torch.Tensor) else classes
            inputs["classes"] = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
        return self.model([inputs])[0]


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
