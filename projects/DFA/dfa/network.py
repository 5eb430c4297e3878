"""One DFA network (a cascade stage or a stage-3 branch): crop -> positions, visibility, labels.

Appendix B.1: a VGG-16 whose 1000-way classifier is replaced by a 16-way position regressor and
eight 3-way visibility classifiers; DFA adds a K-way pseudo-label regressor (§3). Stages 2 and 3
also see the previous stage's landmarks (DESIGN.md §5): as extra input channels (Gaussian
heatmaps, zero-initialised filters in the first conv) and/or as 16 extra inputs of the first
fully connected layer (zero-initialised weights), so ImageNet weights load unchanged.
"""

import logging
from typing import Dict, List, Optional
import torch
from torch import nn
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers

__all__ = ["StageNetwork", "build_stage_network", "load_vgg16_imagenet", "warm_start_from"]

logger = logging.getLogger(__name__)


def _small_cnn(in_channels: int, channels: List[int]) -> nn.Sequential:
    """Conv3x3(stride 2)-BN-ReLU blocks, each halving the resolution (strided convolutions
    rather than max-pooling: several times faster on CPU for the same output size)."""
    layers: List[nn.Module] = []
    for out_channels in channels:
        layers += [
            nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        in_channels = out_channels
    return nn.Sequential(*layers)


def _vgg16_trunk(in_channels: int) -> nn.Sequential:
    """torchvision's VGG-16 ``features`` (configuration "D"), first conv widened if needed."""
    features = make_layers(vgg_cfgs["D"], batch_norm=False)
    if in_channels != 3:
        old = features[0]
        features[0] = nn.Conv2d(in_channels, old.out_channels, 3, padding=1)
    return features


class StageNetwork(nn.Module):
    """CNN regressor of one cascade stage (or stage-3 branch).

    forward(images (N, C, S, S), prev_coords (N, 2L) or None) -> dict with
    ``positions`` (N, L, 2) box units (absolute for stage 1, offsets for stages 2-3),
    ``visibility`` (N, L, 3) logits, ``labels`` (N, K) pseudo-label logits.
    """

    def __init__(
        self,
        *,
        trunk: nn.Module,
        pool_size: int,
        trunk_channels: int,
        num_coord_inputs: int,
        fc_dim: int,
        dropout: float,
        num_landmarks: int,
        num_clusters: int,
        predicts_offsets: bool,
    ):
        super().__init__()
        self.trunk = trunk
        self.pool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.num_coord_inputs = num_coord_inputs
        self.num_landmarks = num_landmarks
        in_features = trunk_channels * pool_size * pool_size + num_coord_inputs
        self.fc6 = nn.Linear(in_features, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.position_head = nn.Linear(fc_dim, 2 * num_landmarks)
        self.visibility_head = nn.Linear(fc_dim, 3 * num_landmarks)
        self.label_head = nn.Linear(fc_dim, num_clusters)
        for head in (self.visibility_head, self.label_head):
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
        # Refiners start as the identity (l_k = l_{k-1}); stage 1 starts near the box centre.
        nn.init.normal_(self.position_head.weight, std=0.0 if predicts_offsets else 0.001)
        nn.init.zeros_(self.position_head.bias)

    def forward(self, images: torch.Tensor, prev_coords: Optional[torch.Tensor] = None):
        x = self.pool(self.trunk(images)).flatten(1)
        if self.num_coord_inputs:
            if prev_coords is None or prev_coords.shape[1] != self.num_coord_inputs:
                raise ValueError(
                    f"this stage network expects {self.num_coord_inputs} previous-landmark "
                    f"coordinates, got {None if prev_coords is None else prev_coords.shape}"
                )
            x = torch.cat([x, prev_coords], dim=1)
        x = self.dropout(torch.relu(self.fc6(x)))
        x = self.dropout(torch.relu(self.fc7(x)))
        n, num = x.shape[0], self.num_landmarks
        return {
            "positions": self.position_head(x).view(n, num, 2),
            "visibility": self.visibility_head(x).view(n, num, 3),
            "labels": self.label_head(x),
        }


def build_stage_network(
    backbone: str,
    *,
    in_channels: int,
    num_coord_inputs: int,
    fc_dim: int,
    dropout: float,
    num_landmarks: int,
    num_clusters: int,
    predicts_offsets: bool,
    small_cnn_channels: Optional[List[int]] = None,
) -> StageNetwork:
    """A :class:`StageNetwork` with a "VGG16" or "SmallCNN" trunk."""
    if backbone == "VGG16":
        trunk, channels, pool = _vgg16_trunk(in_channels), 512, 7
    elif backbone == "SmallCNN":
        if not small_cnn_channels:
            raise ValueError("MODEL.DFA.SMALL_CNN_CHANNELS must list at least one block width")
        trunk, channels, pool = _small_cnn(in_channels, list(small_cnn_channels)), None, 4
        channels = small_cnn_channels[-1]
    else:
        raise ValueError(f"MODEL.DFA.BACKBONE must be 'VGG16' or 'SmallCNN', got {backbone!r}")
    if backbone == "VGG16" and in_channels != 3:
        nn.init.zeros_(trunk[0].weight[:, 3:])
    return StageNetwork(
        trunk=trunk,
        pool_size=pool,
        trunk_channels=channels,
        num_coord_inputs=num_coord_inputs,
        fc_dim=fc_dim,
        dropout=dropout,
        num_landmarks=num_landmarks,
        num_clusters=num_clusters,
        predicts_offsets=predicts_offsets,
    )


def load_vgg16_imagenet(network: StageNetwork, state_dict: Dict[str, torch.Tensor]) -> None:
    """Copy torchvision VGG-16 ImageNet weights into a VGG16 :class:`StageNetwork`.

    ``features.*`` -> trunk, ``classifier.0`` -> fc6, ``classifier.3`` -> fc7. Extra input
    channels (heatmaps) and extra fc6 inputs (coordinates) keep their zero initialisation.
    """
    trunk_state = {
        k[len("features.") :]: v for k, v in state_dict.items() if k.startswith("features.")
    }
    if not trunk_state or "classifier.0.weight" not in state_dict:
        raise ValueError("not a torchvision VGG-16 state dict (missing features.* / classifier.0)")
    with torch.no_grad():
        for name, value in trunk_state.items():
            target = network.trunk.state_dict()[name]
            if name == "0.weight" and target.shape[1] != value.shape[1]:
                target[:, : value.shape[1]].copy_(value)
                target[:, value.shape[1] :].zero_()
            else:
                target.copy_(value)
        fc6_w = state_dict["classifier.0.weight"]
        network.fc6.weight[:, : fc6_w.shape[1]].copy_(fc6_w)
        network.fc6.weight[:, fc6_w.shape[1] :].zero_()
        network.fc6.bias.copy_(state_dict["classifier.0.bias"])
        network.fc7.weight.copy_(state_dict["classifier.3.weight"])
        network.fc7.bias.copy_(state_dict["classifier.3.bias"])


def _copy_leading(target: torch.Tensor, source: torch.Tensor) -> None:
    """Copy ``source`` into the leading block of ``target`` (dim 1 may be wider); zero the rest."""
    if target.shape == source.shape:
        target.copy_(source)
        return
    if (
        target.dim() < 2
        or target.shape[0] != source.shape[0]
        or target.shape[2:] != source.shape[2:]
    ):
        raise ValueError(f"cannot warm-start {tuple(target.shape)} from {tuple(source.shape)}")
    target.zero_()
    target[:, : source.shape[1]].copy_(source)


def warm_start_from(network: StageNetwork, previous: StageNetwork) -> None:
    """Initialise a refiner from the previous stage's network (MODEL.DFA.INIT_FROM_PREVIOUS_STAGE).

    Trunk, fc6/fc7 and the visibility head are copied; the extra input channels (heatmaps) and
    fc6 inputs (coordinates) get zero weights, so the refiner starts with exactly the previous
    stage's features. The position head stays zero (offsets: the refiner starts as the
    identity) and the pseudo-label head stays random (another clustering space).
    """
    source = previous.state_dict()
    with torch.no_grad():
        for name, value in network.state_dict().items():
            if name.startswith(("position_head.", "label_head.")) or name not in source:
                continue
            _copy_leading(value, source[name])
