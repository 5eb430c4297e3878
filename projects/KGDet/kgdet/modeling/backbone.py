"""ResNet + GroupNorm FPN with P6/P7 from res5, computing only the levels the head uses.

docs/DESIGN.md §1: FPN on C3–C5, 256 channels, GN(32) on every FPN conv (no bias, no activation),
P6 = conv3×3/s2 on **C5**, P7 = conv3×3/s2 on P6 (no ReLU in between), both with GN.

The released KGDet model feeds only P5 to its head. P5 = output(lateral(C5)): no top-down input
reaches the top level, so P3, P4, P6 and P7 are wasted work there. ``KGDetFPN`` therefore computes
only the levels the head needs (``head_levels``): laterals from C5 down to the lowest needed
level, output convs only for needed levels, P6/P7 only if needed. In eval mode
``full_fpn_test=True`` computes every level (to reproduce Table 1's FLOPs). The parameters are
those of the full FPN either way (same names as Detectron2's ``FPN``), so checkpoints and
parameter counts do not depend on the mode.
"""

import logging
from typing import Dict, List, Optional, Sequence
import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import Tensor, nn

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

__all__ = ["LastLevelP6P7GN", "KGDetFPN", "build_kgdet_resnet_fpn_backbone"]

logger = logging.getLogger(__name__)


class LastLevelP6P7GN(nn.Module):
    """P6 = conv3×3/s2 (+norm) on ``in_feature`` (res5), P7 = conv3×3/s2 (+norm) on P6.

    Unlike Detectron2's ``LastLevelP6P7`` there is no ReLU between P6 and P7 and both convs carry
    the FPN's norm (the official mmdetection-v1 neck, docs/DESIGN.md §1).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "GN", in_feature="res5"):
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        use_bias = norm == ""
        self.p6 = Conv2d(
            in_channels, out_channels, 3, 2, 1, bias=use_bias, norm=get_norm(norm, out_channels)
        )
        self.p7 = Conv2d(
            out_channels, out_channels, 3, 2, 1, bias=use_bias, norm=get_norm(norm, out_channels)
        )
        for module in (self.p6, self.p7):
            weight_init.c2_xavier_fill(module)

    def forward(self, c5: Tensor) -> List[Tensor]:
        p6 = self.p6(c5)
        return [p6, self.p7(p6)]


class KGDetFPN(FPN):
    """Detectron2's ``FPN`` that computes only the output levels in ``head_levels``.

    Args:
        head_levels: output names (e.g. ``["p5"]``) the detector's head consumes. ``None`` means
            all levels (plain FPN behaviour).
        full_fpn_test: in eval mode compute (and return) every level anyway.
        Other arguments: as :class:`detectron2.modeling.FPN`.
    """

    def __init__(
        self,
        *args,
        head_levels: Optional[Sequence[str]] = None,
        full_fpn_test: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if self._fuse_type != "sum":
            raise ValueError(f"KGDetFPN supports FPN.FUSE_TYPE 'sum' only, got {self._fuse_type!r}")
        if head_levels is None:
            head_levels = list(self._out_features)
        unknown = [f for f in head_levels if f not in self._out_features]
        if unknown:
            raise ValueError(
                f"MODEL.KGDET.IN_FEATURES = {list(head_levels)} contains {unknown}, but the "
                f"backbone produces only {self._out_features}"
            )
        self.head_levels = list(head_levels)
        self.full_fpn_test = full_fpn_test
        # Names of the FPN outputs built from bottom-up features, high to low resolution.
        self._base_levels = self._out_features[: len(self.in_features)]

    def levels_to_compute(self) -> List[str]:
        """The output levels the current mode computes."""
        if not self.training and self.full_fpn_test:
            return list(self._out_features)
        return [f for f in self._out_features if f in self.head_levels]

    def inactive_parameters(self) -> List[nn.Parameter]:
        """Trainable parameters that the training-mode forward does not use.

        In P5-only mode these are the laterals/outputs of P3–P4 and the P6/P7 convs: the released
        model never uses them either (its neck computes them but returns P5 only), so they never
        influence an output. The meta-architecture gives them an exactly-zero gradient so that
        DistributedDataParallel (without ``find_unused_parameters``) accepts the model.
        """
        needed = [f for f in self._out_features if f in self.head_levels]
        used = set()
        base_needed = [f for f in self._base_levels if f in needed]
        if base_needed:
            lowest = self._base_levels.index(base_needed[0])
            for idx in range(len(self._base_levels) - lowest):  # top-down order
                used.update(id(p) for p in self.lateral_convs[idx].parameters())
                if self._base_levels[len(self._base_levels) - 1 - idx] in needed:
                    used.update(id(p) for p in self.output_convs[idx].parameters())
        if self.top_block is not None:
            extra = self._out_features[len(self._base_levels) :]
            if any(f in needed for f in extra):
                used.update(id(p) for p in self.top_block.p6.parameters())
            if len(extra) > 1 and extra[1] in needed:
                used.update(id(p) for p in self.top_block.p7.parameters())
        # Bottom-up (ResNet) parameters are always used.
        fpn_modules = [*self.lateral_convs, *self.output_convs]
        if self.top_block is not None:
            fpn_modules.append(self.top_block)
        return [
            p for m in fpn_modules for p in m.parameters() if p.requires_grad and id(p) not in used
        ]

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """Returns a dict with only the levels of :meth:`levels_to_compute`."""
        needed = set(self.levels_to_compute())
        bottom_up_features = self.bottom_up(x)
        results: Dict[str, Tensor] = {}
        base_needed = [f for f in self._base_levels if f in needed]
        if base_needed:
            lowest = self._base_levels.index(base_needed[0])
            prev_features = None
            for idx in range(len(self._base_levels) - lowest):  # top-down: C5, C4, ...
                name = self._base_levels[len(self._base_levels) - 1 - idx]
                lateral = self.lateral_convs[idx](bottom_up_features[self.in_features[-idx - 1]])
                if prev_features is not None:
                    lateral = lateral + F.interpolate(
                        prev_features, scale_factor=2.0, mode="nearest"
                    )
                prev_features = lateral
                if name in needed:
                    results[name] = self.output_convs[idx](prev_features)
        extra = self._out_features[len(self._base_levels) :]
        if self.top_block is not None and any(f in needed for f in extra):
            assert isinstance(self.top_block, LastLevelP6P7GN), type(self.top_block)
            p6 = self.top_block.p6(bottom_up_features[self.top_block.in_feature])
            if extra[0] in needed:
                results[extra[0]] = p6
            if len(extra) > 1 and extra[1] in needed:
                results[extra[1]] = self.top_block.p7(p6)
        # Keep Detectron2's order (high to low resolution).
        return {f: results[f] for f in self._out_features if f in results}


@BACKBONE_REGISTRY.register()
def build_kgdet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """ResNet (Detectron2's, FrozenBN by default) + GN FPN on res3–res5 + GN P6/P7 from res5.

    Reads ``MODEL.KGDET.IN_FEATURES`` (levels the head uses) and ``MODEL.KGDET.FULL_FPN_TEST``
    when the KGDet config keys exist; otherwise every level is computed. Without res5 in
    ``MODEL.RESNETS.OUT_FEATURES`` the ResNet stops at res4 and there is no P6/P7 (a head that
    reads only P3/P4, e.g. a P4 head on res3–res4).

    Raises:
        ValueError: ``MODEL.FPN.IN_FEATURES`` names a stage the ResNet does not output, or
            res5 is missing while the head reads P6/P7 (or every level).
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    in_features = cfg.MODEL.FPN.IN_FEATURES
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES = {list(in_features)} needs {missing}, but "
            f"MODEL.RESNETS.OUT_FEATURES = {list(cfg.MODEL.RESNETS.OUT_FEATURES)}"
        )
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    norm = cfg.MODEL.FPN.NORM
    kgdet_cfg = cfg.MODEL.get("KGDET", None)
    head_levels = list(kgdet_cfg.IN_FEATURES) if kgdet_cfg is not None else None
    top_block = None
    if "res5" in bottom_up.output_shape():
        top_block = LastLevelP6P7GN(bottom_up.output_shape()["res5"].channels, out_channels, norm)
    elif head_levels is None or any(f in ("p6", "p7") for f in head_levels):
        raise ValueError(
            "P6/P7 are computed from res5: MODEL.RESNETS.OUT_FEATURES = "
            f"{list(cfg.MODEL.RESNETS.OUT_FEATURES)} must include 'res5' when the head reads "
            f"{head_levels if head_levels is not None else 'every level'}"
        )
    full_fpn_test = bool(kgdet_cfg.FULL_FPN_TEST) if kgdet_cfg is not None else True
    backbone = KGDetFPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=norm,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        head_levels=head_levels,
        full_fpn_test=full_fpn_test,
    )
    logger.info(
        "KGDet FPN levels %s; computed in training/inference: %s",
        backbone._out_features,
        backbone.head_levels,
    )
    return backbone
