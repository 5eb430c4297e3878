"""KGDet inference written for tracing: the whole detector, post-processing included, as one graph.

``export_inference`` computes what :meth:`kgdet.modeling.KGDet.forward_inference` computes for
one image (paper §3.5 / docs/DESIGN.md "Inference": final stage only; per level the top-k cells by
max class score, the score threshold over (cell, class) pairs, class-wise NMS, the per-image cap,
keypoint scores masked to the predicted class's slots), but with operations whose sizes come from
the input tensor: under ``torch.jit.trace`` every shape is a 0-dim tensor, so the traced graph
(TorchScript or ONNX) works for images of any height and width, not just the one it was traced
with. The outputs follow Detectron2's export convention (``detectron2.export.TracingAdapter``):
``[{"instances": Instances}]`` with ``pred_boxes``, ``scores``, ``pred_classes`` and
``pred_keypoints``, which the adapter flattens to a tuple of tensors.
"""

from typing import Dict, List, Sequence, Tuple, Union
import torch
from torch import Tensor
from torchvision.ops import nms

from detectron2.layers.wrappers import shapes_to_tensor
from detectron2.structures import Boxes, Instances

__all__ = ["export_inference", "postprocess_single_image", "cell_points"]

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


def cell_points(
    features: Sequence[Tensor], strides: Sequence[int], offset: float
) -> Tuple[Tensor, Tensor]:
    """Reference points and strides of every cell of the fed levels, level by level.

    The same values as :class:`kgdet.modeling.assigner.CellGrid` (((j + offset)·s, (i + offset)·s)
    in input pixels), computed from the traced feature shapes.

    Returns:
        points (R, 2) as (x, y) in input pixels and strides (R,) as float.
    """
    points, cell_strides = [], []
    for x, s in zip(features, strides):
        h, w = x.shape[-2:]
        ys = (torch.arange(h, device=x.device, dtype=torch.float32) + offset) * s
        xs = (torch.arange(w, device=x.device, dtype=torch.float32) + offset) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        level_points = torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1)
        points.append(level_points)
        cell_strides.append(torch.ones_like(level_points[:, 0]) * float(s))
    return torch.cat(points), torch.cat(cell_strides)


def _rows(levels: List[Tensor]) -> Tensor:
    """Per-level (1, D, H, W) maps of one image -> (R, D), cells level by level, row-major."""
    return torch.cat([x[0].flatten(1) for x in levels], dim=1).t()


def _candidates(
    logits: List[Tensor], topk: int, score_thresh: float
) -> Tuple[Tensor, Tensor, Tensor]:
    """Per level the top-k cells by max class score, then the (cell, class) pairs above the
    threshold; global cell indices, classes and scores of the pairs (one image)."""
    cells, classes, scores = [], [], []
    start: Size = 0
    for x in logits:
        cls_scores = x[0].flatten(1).t().sigmoid()  # (HW, C)
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
) -> Instances:
    """Detections of image 0 from the final stage's dense outputs (see the module doc).

    Args:
        model: the :class:`~kgdet.modeling.KGDet` whose thresholds, caps and keypoint mask apply.
        final: the head's final-stage outputs ("cls", "box", "kp"), each a list over levels of
            (1, D, H_l, W_l).
        points, strides: from :func:`cell_points`.
        image_size: (H, W) of the unpadded input (ints, or 0-dim tensors under tracing).

    Returns:
        Instances in input pixels: ``pred_boxes`` (D, 4) XYXY, ``scores`` (D,),
        ``pred_classes`` (D,) and, with keypoints, ``pred_keypoints`` (D, K, 3) as (x, y, score).
    """
    height, width = image_size
    cells, classes, scores = _candidates(
        final["cls"], model.test_topk_candidates, model.test_score_thresh
    )
    box_cells = _rows(final["box"])[cells]
    boxes = points[cells].repeat(1, 2) + strides[cells][:, None] * box_cells
    boxes = _clip_boxes(boxes, height, width)
    keep = _batched_nms(boxes, scores, classes, model.test_nms_thresh)
    keep = keep[: model.max_detections_per_image]
    cells, classes, scores = cells[keep], classes[keep], scores[keep]
    fields = {"pred_boxes": Boxes(boxes[keep]), "scores": scores, "pred_classes": classes}
    if final["kp"] is not None:
        kp_cells = _rows(final["kp"])[cells]
        offsets_xy = kp_cells.reshape(-1, model.num_keypoints, 2).flip(-1)
        xy = points[cells][:, None, :] + strides[cells][:, None, None] * offsets_xy
        x = xy[..., 0].clamp(min=0, max=_as_limit(width, xy))
        y = xy[..., 1].clamp(min=0, max=_as_limit(height, xy))
        mask = model.class_keypoint_mask.to(scores.dtype)[classes]
        kp_scores = scores[:, None] * mask
        fields["pred_keypoints"] = torch.stack((x, y, kp_scores), dim=-1)
    size = image_size
    if isinstance(height, Tensor):  # traced: keep the size an output of the graph
        size = shapes_to_tensor([height, width], scores.device)
    return Instances(size, **fields)


def export_inference(model: torch.nn.Module, batched_inputs: List[Dict[str, Tensor]]) -> List[Dict]:
    """KGDet inference of one image as a traceable function (``TracingAdapter``'s
    ``inference_func``).

    Args:
        model: a :class:`~kgdet.modeling.KGDet` in eval mode.
        batched_inputs: ``[{"image": (3, H, W) float tensor}]`` in ``cfg.INPUT.FORMAT``, already
            resized (as ``DefaultPredictor`` feeds the model).

    Returns:
        ``[{"instances": Instances}]`` in the coordinates of the given image (no rescaling to an
        original size: the predictor does that, as ``detector_postprocess``).

    Raises:
        ValueError: for more than one image, or a model whose final stage has no classifier.
    """
    if len(batched_inputs) != 1:
        raise ValueError(f"export_inference takes one image, got {len(batched_inputs)}")
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    final = model.head(features)[-1]
    if final["cls"] is None:
        raise ValueError("the final stage has no classifier; cannot run inference")
    points, strides = cell_points(features, model.level_strides, model.grid_offset)
    instances = postprocess_single_image(model, final, points, strides, images.image_sizes[0])
    return [{"instances": instances}]
