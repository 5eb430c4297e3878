"""One DFA cascade: its stage networks and their k-means / routing state (§3).

The shared setting has one cascade for every clothing type (all 8 slots); with
``MODEL.DFA.PER_TYPE_CASCADES`` there is one per type (the authors' setup: upper, lower and full
body, 6 / 4 / 8 landmarks = 12 / 8 / 16 position outputs), each regressing only its own slots
(DESIGN.md §10). The meta-architecture (:class:`dfa.DFA`) runs them.
"""

from typing import Dict, List, Optional
import torch
from torch import nn

from .network import StageNetwork, build_stage_network

__all__ = ["DFACascade", "build_cascades", "space_dim"]


def space_dim(stage: int, num_landmarks: int) -> int:
    """Dimension of ``stage``'s pseudo-label space for ``num_landmarks`` landmarks (Table 1)."""
    return 4 * num_landmarks**2 if stage == 3 else 2 * num_landmarks


class DFACascade(nn.Module):
    """The networks and cluster state of one cascade.

    Attributes:
        networks: "stage1", "stage2", "stage3_easy", "stage3_hard" (those of ``num_stages``).
        slots: the landmark slots (of the dataset's L) it predicts, in order.
        categories: the clothing types (contiguous ids) whose garments it handles.
        centres_{k}: (K, D_k) k-means centres of stage k; ``cluster_error_2`` (K,) e(C_k);
        ``routing_threshold`` eps; ``centres_ready`` (3,) bool: all buffers, so checkpoints are
        self-contained.
    """

    def __init__(
        self,
        networks: Dict[str, StageNetwork],
        slots: List[int],
        categories: List[int],
        num_stages: int,
        num_clusters: int,
        routing_threshold: float,
    ):
        super().__init__()
        self.networks = nn.ModuleDict(networks)
        self.slots = list(slots)
        self.categories = list(categories)
        for stage in range(1, num_stages + 1):
            dim = space_dim(stage, len(self.slots))
            self.register_buffer(f"centres_{stage}", torch.zeros(num_clusters, dim))
        self.register_buffer("cluster_error_2", torch.zeros(num_clusters))
        self.register_buffer("routing_threshold", torch.tensor(float(routing_threshold)))
        self.register_buffer("centres_ready", torch.zeros(3, dtype=torch.bool))

    @property
    def num_landmarks(self) -> int:
        return len(self.slots)

    def set_centres(
        self,
        stage: int,
        centres: torch.Tensor,
        cluster_error: Optional[torch.Tensor] = None,
        threshold: Optional[float] = None,
    ) -> None:
        """Install the k-means centres of ``stage`` (and, for stage 2, e(C_k); for 3, eps)."""
        buffer = getattr(self, f"centres_{stage}")
        if tuple(centres.shape) != tuple(buffer.shape):
            raise ValueError(
                f"stage-{stage} centres must have shape {tuple(buffer.shape)}, "
                f"got {tuple(centres.shape)}"
            )
        buffer.copy_(centres)
        if cluster_error is not None:
            self.cluster_error_2.copy_(cluster_error)
        if threshold is not None:
            self.routing_threshold.fill_(float(threshold))
        self.centres_ready[stage - 1] = True


def build_cascades(cfg, class_slots: List[List[int]]) -> List[DFACascade]:
    """The cascades of ``cfg``: one over all MODEL.DFA.NUM_LANDMARKS slots, or one per clothing
    type (``class_slots[c]`` = the slots defined for type c) with PER_TYPE_CASCADES."""
    d = cfg.MODEL.DFA
    prev_input = list(d.PREV_INPUT)
    if d.PER_TYPE_CASCADES:
        if len(class_slots) != d.NUM_CLASSES:
            raise ValueError(
                f"MODEL.DFA.PER_TYPE_CASCADES: {len(class_slots)} clothing types have landmark "
                f"slots, expected MODEL.DFA.NUM_CLASSES = {d.NUM_CLASSES}"
            )
        groups = [(sorted(slots), [c]) for c, slots in enumerate(class_slots)]
    else:
        groups = [(list(range(d.NUM_LANDMARKS)), list(range(d.NUM_CLASSES)))]
    cascades = []
    for slots, categories in groups:
        if not slots or not all(0 <= s < d.NUM_LANDMARKS for s in slots):
            raise ValueError(
                f"clothing type(s) {categories}: landmark slots {slots} must be a non-empty "
                f"subset of 0..{d.NUM_LANDMARKS - 1}"
            )
        num = len(slots)
        networks = {}
        for stage, name in [(1, "stage1"), (2, "stage2"), (3, "stage3_easy"), (3, "stage3_hard")]:
            if stage > d.NUM_STAGES:
                continue
            refiner = stage > 1
            networks[name] = build_stage_network(
                d.BACKBONE,
                in_channels=3 + (num if refiner and "heatmap" in prev_input else 0),
                num_coord_inputs=2 * num if refiner and "coords" in prev_input else 0,
                fc_dim=d.FC_DIM,
                dropout=d.DROPOUT,
                num_landmarks=num,
                num_clusters=d.NUM_CLUSTERS,
                predicts_offsets=refiner,
                small_cnn_channels=list(d.SMALL_CNN_CHANNELS),
            )
        cascades.append(
            DFACascade(
                networks, slots, categories, d.NUM_STAGES, d.NUM_CLUSTERS, d.ROUTING_THRESHOLD
            )
        )
    return cascades
