"""Pseudo-labels (Eq. 1, Table 1), k-means cluster centres and auto-routing (Eq. 2).

Cluster spaces (DESIGN.md §2), all in pixels of a ``scale`` x ``scale`` crop (paper: 224):

- stage 1, landmark configuration: the 8 ground-truth landmarks l (box units) x scale;
- stage 2, landmark offset: dl2 = l1_hat - l, x scale;
- stage 3, contextual offset: lin(dl3 (x) dl3) with dl3 = l2_hat - l (x scale), passed through a
  signed square root so its entries are pixels again (as in bilinear pooling) and T keeps the
  same meaning in all three stages.

Landmarks without a trusted position (truncated, or not defined for the clothing type) enter
every space as 0: the box centre for configurations, "no error" for offsets.
"""

import logging
import numpy as np
from typing import Tuple
import torch
from sklearn.cluster import KMeans

__all__ = [
    "configuration_space",
    "offset_space",
    "context_space",
    "cluster_space",
    "pseudo_labels",
    "fit_kmeans",
    "offset_magnitudes",
    "cluster_error_magnitudes",
    "expected_error",
    "routing_labels",
    "route",
    "routing_threshold_from_training",
    "routing_shares",
    "check_routing_split",
]

logger = logging.getLogger(__name__)


def configuration_space(gt: torch.Tensor, labelled: torch.Tensor, scale: float) -> torch.Tensor:
    """Stage 1: gt (N, L, 2) box units, labelled (N, L) bool -> (N, 2L)."""
    return (gt * labelled.unsqueeze(-1) * scale).flatten(1)


def offset_space(
    prev: torch.Tensor, gt: torch.Tensor, labelled: torch.Tensor, scale: float
) -> torch.Tensor:
    """Stage 2: dl = prev - gt on labelled landmarks (0 elsewhere) -> (N, 2L)."""
    return ((prev - gt) * labelled.unsqueeze(-1) * scale).flatten(1)


def context_space(
    prev: torch.Tensor, gt: torch.Tensor, labelled: torch.Tensor, scale: float
) -> torch.Tensor:
    """Stage 3: signed sqrt of lin(dl (x) dl), dl as in :func:`offset_space` -> (N, 4L^2)."""
    offsets = offset_space(prev, gt, labelled, scale)
    outer = offsets.unsqueeze(2) * offsets.unsqueeze(1)  # (N, 2L, 2L)
    # lin(): stack the columns (the matrix is symmetric, so the order is immaterial).
    outer = outer.transpose(1, 2).flatten(1)
    return outer.sign() * outer.abs().sqrt()


def cluster_space(
    stage: int, gt: torch.Tensor, labelled: torch.Tensor, prev: torch.Tensor, scale: float
) -> torch.Tensor:
    """The clustering space of ``stage`` (1, 2 or 3); ``prev`` is ignored for stage 1."""
    if stage == 1:
        return configuration_space(gt, labelled, scale)
    if stage == 2:
        return offset_space(prev, gt, labelled, scale)
    if stage == 3:
        return context_space(prev, gt, labelled, scale)
    raise ValueError(f"DFA has stages 1, 2 and 3; got stage {stage}")


def pseudo_labels(features: torch.Tensor, centres: torch.Tensor, temperature: float):
    """Eq. 1, normalised: f(k) = exp(-||x - C_k|| / T) / sum_j exp(-||x - C_j|| / T).

    features (N, D), centres (K, D) -> (N, K), rows summing to 1. Normalised (DESIGN.md §3) so
    that T = 1 gives the paper's "hard label" and G(f) is a weighted mean of cluster errors.
    """
    if temperature <= 0:
        raise ValueError(f"pseudo-label temperature must be > 0, got {temperature}")
    distances = torch.cdist(features.float(), centres.float())
    return torch.softmax(-distances / temperature, dim=1)


def fit_kmeans(
    features: torch.Tensor, num_clusters: int, n_init: int = 4, seed: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """k-means (scikit-learn) on (N, D) -> centres (K, D) float32, assignments (N,) int64."""
    n = features.shape[0]
    if n < num_clusters:
        raise ValueError(
            f"k-means needs at least MODEL.DFA.NUM_CLUSTERS = {num_clusters} training garments, "
            f"got {n}"
        )
    data = features.detach().cpu().double().numpy()
    kmeans = KMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed).fit(data)
    centres = torch.from_numpy(kmeans.cluster_centers_.astype(np.float32))
    return centres, torch.from_numpy(kmeans.labels_.astype(np.int64))


def offset_magnitudes(prev: torch.Tensor, gt: torch.Tensor, labelled: torch.Tensor):
    """Per-garment error ||l_hat - l||_2 over its labelled landmarks, box units: (N,)."""
    return ((prev - gt) * labelled.unsqueeze(-1)).flatten(1).norm(dim=1)


def cluster_error_magnitudes(
    assignments: torch.Tensor, magnitudes: torch.Tensor, num_clusters: int
) -> torch.Tensor:
    """e(C_k): mean error magnitude of the training garments in cluster k -> (K,).

    An empty cluster (possible only with degenerate data) gets the overall mean.
    """
    sums = torch.zeros(num_clusters).index_add_(0, assignments, magnitudes.float())
    counts = torch.bincount(assignments, minlength=num_clusters).float()
    overall = magnitudes.float().mean() if magnitudes.numel() else torch.tensor(0.0)
    return torch.where(counts > 0, sums / counts.clamp(min=1), overall)


def expected_error(labels: torch.Tensor, cluster_error: torch.Tensor) -> torch.Tensor:
    """G(f) = sum_k e(C_k) f(k): labels (N, K), cluster_error (K,) -> (N,)."""
    return labels @ cluster_error.to(labels)


def routing_labels(
    logits: torch.Tensor, label_temperature: float, routing_temperature: float
) -> torch.Tensor:
    """The stage-2 pseudo-label f2 that G(f2) is computed from (DESIGN.md §6), (N, K) -> (N, K).

    ``logits`` are the stage-2 network's pseudo-label outputs, trained so that softmax(logits)
    matches Eq. 1 at ``label_temperature`` T, i.e. logits ~ -d / T + const. The routing label
    re-tempers them to ``routing_temperature`` T_r (same distance units as T):
    softmax(logits * T / T_r) ~ exp(-d / T_r) / sum exp(-d / T_r). ``routing_temperature``
    0 gives the hard label (one-hot on the most likely cluster); T_r = T the soft label itself.
    """
    if routing_temperature < 0 or label_temperature <= 0:
        raise ValueError(
            f"routing temperature must be >= 0 and label temperature > 0, got "
            f"{routing_temperature} and {label_temperature}"
        )
    if routing_temperature == 0:
        hard = torch.zeros_like(logits)
        return hard.scatter_(1, logits.argmax(dim=1, keepdim=True), 1.0)
    return torch.softmax(logits * (label_temperature / routing_temperature), dim=1)


def route(labels: torch.Tensor, cluster_error: torch.Tensor, threshold: float) -> torch.Tensor:
    """Eq. 2: r = 1[G(f2) < eps]; True -> branch 1 ("easy"), False -> branch 2 ("hard")."""
    return expected_error(labels, cluster_error) < threshold


def routing_threshold_from_training(
    g: torch.Tensor,
    errors: torch.Tensor,
    threshold: float,
    calibrate: bool = False,
    quantile: float = -1.0,
) -> Tuple[float, str]:
    """eps of Eq. 2 from the training garments (DESIGN.md §6).

    Args:
        g: (N,) G(f2) of the training garments; errors: (N,) their true stage-1 error norms.
        threshold: the configured eps (paper: 0.3, normalised landmark units).
        calibrate: eps = the quantile of ``g`` at the share of garments with ``errors`` below
            ``threshold`` (so G routes as many garments to branch 1 as eps would on the true
            error, whatever G's range).
        quantile: in (0, 1): eps = this quantile of ``g`` (overrides the others).

    Returns:
        (eps, a short description of how it was chosen, for the log).
    """
    if 0 < quantile < 1:
        return float(torch.quantile(g.float(), quantile)), f"quantile {quantile:g} of G"
    if calibrate:
        share = float((errors < threshold).float().mean())
        eps = float(torch.quantile(g.float(), share))
        return eps, (
            f"calibrated: {100 * share:.1f}% of the training garments have a true stage-1 "
            f"error < {threshold:g}, eps = that quantile of G"
        )
    return float(threshold), "fixed"


def routing_shares(routing: torch.Tensor) -> Tuple[float, float]:
    """Shares (fractions) of garments routed to branch 1 ("easy") and branch 2 ("hard")."""
    if routing.numel() == 0:
        return 0.0, 0.0
    easy = float(routing.float().mean())
    return easy, 1.0 - easy


def check_routing_split(
    routing: torch.Tensor, min_share: float, allow_degenerate: bool, where: str = ""
) -> Tuple[float, float]:
    """Refuse a training-set routing in which a branch gets less than ``min_share`` of garments.

    A degenerate split leaves one stage-3 branch (almost) untrained, defeating the auto-routing
    of §3; ``allow_degenerate`` turns the error into a warning. Returns (easy, hard) shares.
    Raises ValueError naming ``where`` and the config keys that change the split.
    """
    easy, hard = routing_shares(routing)
    if min(easy, hard) >= min_share:
        return easy, hard
    message = (
        f"{where}DFA auto-routing sends {100 * easy:.1f}% of {routing.numel()} training garments "
        f"to branch 1 and {100 * hard:.1f}% to branch 2; each branch needs at least "
        f"{100 * min_share:.0f}% (MODEL.DFA.ROUTING_MIN_SHARE). Lower MODEL.DFA."
        f"ROUTING_TEMPERATURE (0 = hard labels), change MODEL.DFA.ROUTING_THRESHOLD or set "
        f"MODEL.DFA.ROUTING_THRESHOLD_QUANTILE; MODEL.DFA.ROUTING_ALLOW_DEGENERATE True accepts it."
    )
    if not allow_degenerate:
        raise ValueError(message)
    logger.warning(message)
    return easy, hard
