"""KGDet loss terms (docs/DESIGN.md §6), thin wrappers over fvcore's focal and smooth-L1 losses.

Shape shorthand: V = valid cells of the batch, P = positive cells of the batch, C = classes,
K = keypoint slots. Every function returns an un-normalised **sum**; the caller divides by the
number of positives and applies the stage weight.
"""

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_jit, smooth_l1_loss
from torch import Tensor

__all__ = [
    "classification_loss",
    "box_loss",
    "keypoint_weights",
    "keypoint_loss",
    "visibility_loss",
    "KP_NORMS",
]

# Keypoint-loss normalisation per positive: the smooth-L1 weights of its labelled coordinates
# sum to 4 (KGDet, the scale of a 4-number box) or to 1 (RepPoints-Kp baselines).
KP_NORMS = {"per_instance_x4": 4.0, "per_instance": 1.0}


def classification_loss(
    logits: Tensor, labels: Tensor, num_classes: int, alpha: float, gamma: float
) -> Tensor:
    """Sigmoid focal loss summed over cells and classes, in float32 (or float64).

    Args:
        logits: (V, C), any float dtype.
        labels: (V,) in [0, C]; C = background (all-zero target row).
    """
    # float32 whatever autocast made of the logits: the sum runs over every valid cell and
    # class, far beyond float16's largest value (65504) on a full-size batch.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    targets = F.one_hot(labels, num_classes=num_classes + 1)[:, :num_classes].to(logits.dtype)
    return sigmoid_focal_loss_jit(logits, targets, alpha=alpha, gamma=gamma, reduction="sum")


def box_loss(pred_boxes: Tensor, gt_boxes: Tensor, norm: Tensor, beta: float) -> Tensor:
    """Smooth-L1 on boxes divided by ``norm`` (4·s per cell), summed over the 4 coordinates.

    Args:
        pred_boxes, gt_boxes: (P, 4) XYXY input pixels.
        norm: (P,) = point_base_scale · stride of each positive's level.
    """
    n = norm[:, None]
    return smooth_l1_loss(pred_boxes / n, gt_boxes / n, beta=beta, reduction="sum")


def keypoint_weights(visibility: Tensor, total: float) -> Tensor:
    """Per-coordinate weights (P, K): ``total / (2·n)`` on each of the n labelled slots (v > 0).

    Slots with v = 0 and positives without any labelled slot get weight 0; the 2·n coordinates
    of a positive with n ≥ 1 labelled slots sum to ``total`` (4 for KGDet).
    """
    labelled = (visibility > 0).to(torch.float32)
    count = labelled.sum(dim=1, keepdim=True)
    return labelled * (total / (2.0 * count.clamp(min=1.0)))


def keypoint_loss(
    pred_xy: Tensor, gt_keypoints: Tensor, norm: Tensor, beta: float, total: float
) -> Tensor:
    """Weighted smooth-L1 on keypoint coordinates divided by ``norm`` (4·s per cell).

    Args:
        pred_xy: (P, K, 2) predicted (x, y) in input pixels.
        gt_keypoints: (P, K, 3) GT (x, y, v); only slots with v > 0 are supervised (coordinates
            of v = 0 slots are never read into the loss: they are multiplied by weight 0 after
            being replaced by the prediction, so NaN/garbage there cannot leak).
        norm: (P,) = point_base_scale · stride.
        total: weight sum per positive (see :func:`keypoint_weights`).
    """
    weights = keypoint_weights(gt_keypoints[..., 2], total).to(pred_xy.dtype)  # (P, K)
    labelled = gt_keypoints[..., 2:3] > 0
    target = torch.where(labelled, gt_keypoints[..., :2].to(pred_xy.dtype), pred_xy.detach())
    n = norm[:, None, None]
    per_coord = smooth_l1_loss(pred_xy / n, target / n, beta=beta, reduction="none")
    return (per_coord * weights[..., None]).sum()


def visibility_loss(logits: Tensor, visibility: Tensor) -> Tensor:
    """Keypoint-selection visibility BCE (docs/DESIGN.md §3.4), mean over K, summed over positives.

    Args:
        logits: (P, K) visibility logits.
        visibility: (P, K) GT v; target 1 where v > 0 (visible or occluded), else 0.
    """
    target = (visibility > 0).to(logits.dtype)
    per_slot = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return per_slot.mean(dim=1).sum()
