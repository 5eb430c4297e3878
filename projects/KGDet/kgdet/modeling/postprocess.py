"""KGDet post-processing, written for tracing: one function for eager inference and export.

Paper §3.5 / docs/DESIGN.md §7, for one image: final stage only; per level the top-k cells by
max class score, the score threshold over (cell, class) pairs, class-wise NMS, the per-image cap,
keypoint scores masked to the predicted class's slots. Every size comes from the input tensors:
under ``torch.jit.trace`` shapes are 0-dim tensors, so a traced graph (TorchScript or ONNX) works
for images of any height and width. :meth:`kgdet.modeling.KGDet.forward_inference` and
:func:`kgdet.export.export_inference` both call :func:`postprocess_single_image`.
"""

from typing import Dict, List, Tuple, Union
import torch
from torch import Tensor
from torchvision.ops import nms

from detectron2.layers.wrappers import shapes_to_tensor
from detectron2.structures import Boxes, Instances

__all__ = ["postprocess_single_image"]

Size = Union[int, Tensor]


def _as_limit(value: Size, like: Tensor) -> Union[float, Tensor]:
    """A size usable as a clamp bound of ``like``: a tensor of its dtype under tracing."""
    if isinstance(value, Tensor):
        return value.to(like.dtype)
    return float(value)


def _count_at_most(count: Size, limit: int) -> Size:
    """min(count, limit), traceable when ``count`` is a traced size."""
    if isinstance(count, Tensor):
        return torch.clamp(count, max=limit)
    return min(count, limit)


def _gather_rows(levels: List[Tensor], img: int, cells: Tensor) -> Tensor:
    """Rows of image ``img``'s per-level (N, D, H_l, W_l) maps at global cell indices (cells
    level by level, row-major inside a level) -> (S, D) in the order of ``cells``."""
    if len(levels) == 1:
        return levels[0][img].flatten(1)[:, cells].t()
    return torch.cat([x[img].flatten(1) for x in levels], dim=1)[:, cells].t()


def _candidates(
    logits: List[Tensor], img: int, topk: int, score_thresh: float
) -> Tuple[Tensor, Tensor, Tensor]:
    """Per level the top-k cells by max class score, then the (cell, class) pairs above the
    threshold; global cell indices, classes and scores of the pairs of image ``img``."""
    cells, classes, scores = [], [], []
    start: Size = 0
    for x in logits:
        cls_scores = x[img].flatten(1).t().sigmoid()  # (HW, C)
        num_cells, num_classes = cls_scores.shape
        top = cls_scores.max(dim=1).values.topk(_count_at_most(num_cells, topk)).indices
        selected = cls_scores[top]
        pair = (selected > score_thresh).flatten().nonzero().squeeze(1)
        row = torch.div(pair, num_classes, rounding_mode="floor")
        cells.append(top[row] + start)
        classes.append(pair - row * num_classes)
        scores.append(selected.flatten()[pair])
        start = start + num_cells
    return torch.cat(cells), torch.cat(classes), torch.cat(scores)


def _clip_boxes(boxes: Tensor, height: Size, width: Size) -> Tensor:
    """``Boxes.clip`` without its data-dependent check: x in [0, W], y in [0, H]."""
    w, h = _as_limit(width, boxes), _as_limit(height, boxes)
    x1 = boxes[:, 0].clamp(min=0, max=w)
    y1 = boxes[:, 1].clamp(min=0, max=h)
    x2 = boxes[:, 2].clamp(min=0, max=w)
    y2 = boxes[:, 3].clamp(min=0, max=h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def _batched_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_thresh: float) -> Tensor:
    """Class-wise NMS as one ``torchvision.ops.nms`` on class-shifted boxes (torchvision's
    ``batched_nms`` "coordinate trick", which it also uses when tracing); exports to ONNX's
    NonMaxSuppression. The shift is taken over the boxes and 0, so no detection is not an error
    (the boxes are clipped to the image, x, y >= 0, so the shift is unchanged otherwise)."""
    max_coordinate = torch.cat((boxes.flatten(), boxes.new_zeros(1))).max()
    shifted = boxes + (classes.to(boxes) * (max_coordinate + 1))[:, None]
    return nms(shifted, scores, iou_thresh)


def postprocess_single_image(
    model: torch.nn.Module,
    final: Dict[str, List[Tensor]],
    points: Tensor,
    strides: Tensor,
    image_size: Tuple[Size, Size],
    img: int = 0,
    keypoint_visibility: bool = True,
) -> Instances:
    """Detections of image ``img`` from the final stage's dense outputs (see the module doc).

    Args:
        model: the :class:`~kgdet.modeling.KGDet` whose thresholds, caps and keypoint mask apply.
        final: the head's final-stage outputs ("cls", "box", "kp", optionally "vis"), each a list
            over levels of (N, D, H_l, W_l).
        points, strides: (R, 2) reference points (x, y) and (R,) strides of the cells, in input
            pixels (:class:`~kgdet.modeling.assigner.CellGrid`).
        image_size: (H, W) of the unpadded input (ints, or 0-dim tensors under tracing).
        img: the image of the batch.
        keypoint_visibility: also return ``pred_keypoint_visibility`` when the head predicts it.

    Returns:
        Instances in input pixels: ``pred_boxes`` (D, 4) XYXY clipped to the image, ``scores``
        (D,), ``pred_classes`` (D,) and, with keypoints, ``pred_keypoints`` (D, K, 3) as (x, y,
        score): the detection score inside the predicted class's slots, else 0 (hidden by
        Detectron2's Visualizer, ignored by OKS); with keypoint selection also
        ``pred_keypoint_visibility`` (D, K) in [0, 1], 0 outside the class's slots.
    """
    height, width = image_size
    cells, classes, scores = _candidates(
        final["cls"], img, model.test_topk_candidates, model.test_score_thresh
    )
    box_cells = _gather_rows(final["box"], img, cells)
    boxes = points[cells].repeat(1, 2) + strides[cells][:, None] * box_cells
    boxes = _clip_boxes(boxes, height, width)
    keep = _batched_nms(boxes, scores, classes, model.test_nms_thresh)
    keep = keep[: model.max_detections_per_image]
    cells, classes, scores = cells[keep], classes[keep], scores[keep]
    fields = {"pred_boxes": Boxes(boxes[keep]), "scores": scores, "pred_classes": classes}
    if final["kp"] is not None:
        kp_cells = _gather_rows(final["kp"], img, cells)
        offsets_xy = kp_cells.reshape(-1, model.num_keypoints, 2).flip(-1)  # yx-interleaved
        xy = points[cells][:, None, :] + strides[cells][:, None, None] * offsets_xy
        x = xy[..., 0].clamp(min=0, max=_as_limit(width, xy))
        y = xy[..., 1].clamp(min=0, max=_as_limit(height, xy))
        mask = model.class_keypoint_mask.to(scores.dtype)[classes]
        kp_scores = scores[:, None] * mask
        fields["pred_keypoints"] = torch.stack((x, y, kp_scores), dim=-1)
        if keypoint_visibility and final.get("vis") is not None:
            vis = _gather_rows(final["vis"], img, cells).sigmoid()
            fields["pred_keypoint_visibility"] = vis * mask.to(vis.dtype)
    size = image_size
    if isinstance(height, Tensor):  # traced: keep the size an output of the graph
        size = shapes_to_tensor([height, width], scores.device)
    return Instances(size, **fields)
