"""Loss terms of Eq. 3 and the auxiliary-weight schedule of Eq. 4."""

import torch
import torch.nn.functional as F

__all__ = ["aux_loss_weight", "position_loss", "visibility_loss", "label_loss"]


def aux_loss_weight(iteration: int, base: float, t1: int, t2: int) -> float:
    """Eq. 4 as read in DESIGN.md §4: ``base`` for t < t1, linear decay to 0 on [t1, t2), 0 after.

    ``t1 == t2`` is a step from ``base`` to 0 at t1.
    """
    if t2 < t1:
        raise ValueError(f"auxiliary weight schedule needs t1 <= t2, got t1={t1}, t2={t2}")
    if iteration < t1:
        return float(base)
    if iteration >= t2:
        return 0.0
    return float(base) * (t2 - iteration) / (t2 - t1)


def position_loss(pred: torch.Tensor, gt: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Euclidean loss on landmark positions (box units), batch mean of the per-garment sum.

    pred, gt (N, L, 2); labelled (N, L) bool. Truncated and undefined landmarks (labelled False)
    contribute nothing (Appendix B.1), including no gradient.
    """
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    squared = ((pred - gt) ** 2).sum(dim=-1)
    return torch.where(labelled, squared, torch.zeros_like(squared)).sum() / pred.shape[0]


def visibility_loss(logits: torch.Tensor, visibility: torch.Tensor) -> torch.Tensor:
    """Multinomial logistic loss, logits (N, L, 3), visibility (N, L) in {0,1,2}, -1 = ignore.

    Mean over the landmarks that are defined for their garment.
    """
    valid = visibility >= 0
    if not valid.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid], visibility[valid])


def label_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Euclidean loss between predicted and target pseudo-labels (N, K), batch mean of the sum."""
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    return ((pred - target) ** 2).sum() / pred.shape[0]
