"""CascadeHead: what the KGDet and RepPoints heads share (docs/DESIGN.md §2, §4, §8.4).

Two towers run once per level; a cascade of T stages (``stages.py``) reads them; every stage's
points give its box by the moment transform. The subclasses (``head.py``,
``reppoints_head.py``) choose the stages and check their own options.
"""

import math
from typing import Callable, Dict, List, Optional, Sequence
import torch
from torch import Tensor, nn

from detectron2.data.detection_utils import create_keypoint_hflip_indices
from detectron2.layers import ShapeSpec, get_norm

from .deform_conv import KGDeformConv
from .point_utils import mirror_boxes, mirror_logits, mirror_offsets, moment_transform
from .stages import PointStage

__all__ = ["CascadeHead", "make_tower", "checked_columns"]

OUTPUT_KEYS = ("cls", "kp", "pts", "box", "vis")

HeadOutput = List[Dict[str, Optional[List[Tensor]]]]


def make_tower(in_channels: int, channels: int, num_convs: int, norm: str) -> nn.Sequential:
    """num_convs × [conv3×3 (bias only without norm) -> norm -> ReLU] (§2.1)."""
    layers: List[nn.Module] = []
    for i in range(num_convs):
        norm_layer = get_norm(norm, channels)
        layers.append(
            nn.Conv2d(
                in_channels if i == 0 else channels, channels, 3, padding=1, bias=norm_layer is None
            )
        )
        if norm_layer is not None:
            layers.append(norm_layer)
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def checked_columns(columns: Sequence[int]) -> List[int]:
    """``MODEL.KGDET.COLUMNS`` as ints. Raises ValueError unless non-empty odd kernel sizes."""
    columns = [int(k) for k in columns]
    if len(columns) == 0 or any(k < 1 or k % 2 == 0 for k in columns):
        raise ValueError(f"MODEL.KGDET.COLUMNS must be non-empty odd kernel sizes, got {columns}")
    return columns


class CascadeHead(nn.Module):
    """Towers + a cascade of stages + the moment-transform box, optionally flip-fused.

    ``forward(features)`` returns one dict per stage; every value is a list over the fed levels
    (or None when the stage/model lacks that output):

    * "cls": (N, C, H, W) class logits; None at a stage without classifier;
    * "kp": (N, 2K, H, W) accumulated keypoint offsets, yx-interleaved, in cells relative to the
      grid point; None without keypoints;
    * "pts": (N, 2P, H, W) accumulated informative points (same layout; with flip fusion: those
      of the plain pass, they are not fused);
    * "box": (N, 4, H, W) moment-transform box (x1, y1, x2, y2) in cells relative to the grid
      point;
    * "vis": (N, K, H, W) visibility logits (keypoint selection only), else None.

    With ``flip_fusion`` the outputs are averaged with those of a pass on width-flipped features
    mapped back (§8.4).

    Subclasses set ``has_keypoints``, pass a ``make_stage`` factory and extend ``from_config``.
    """

    # Whether the head predicts keypoints ("kp"); the meta-architecture reads it.
    has_keypoints: bool = True

    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        make_stage: Callable[..., PointStage],
        num_keypoints: int = 0,
        num_stages: int = 3,
        columns: Sequence[int] = (3, 5, 7),
        cls_on_all_stages: bool = True,
        stacked_convs: int = 3,
        feat_channels: int = 256,
        norm: str = "GN",
        prior_prob: float = 0.01,
        gradient_mul: float = 0.1,
        moment_mul: float = 0.01,
        moment_param: str = "exp",
        deform_impl: str = "auto",
        flip_fusion: bool = False,
        keypoint_flip_indices: Optional[Sequence[int]] = None,
    ):
        """
        Args:
            input_shape: shapes of the fed levels (all with the same channels).
            num_classes: C.
            make_stage: builds one stage, called with the keyword arguments ``feat_channels``,
                ``num_classes`` (0: no classifier), ``num_points``, ``columns`` (None for stage
                1), ``gradient_mul`` and ``deform_impl``.
            num_keypoints: K (ignored by heads without keypoints).
            num_stages: T >= 1 (1 initial + T-1 refinement stages).
            columns: odd DCN kernel sizes; P = sum(k*k) informative points.
            cls_on_all_stages: False = no classifier at stage 1 (RepPoints baselines).
            stacked_convs, feat_channels, norm: tower structure.
            prior_prob: initial class probability (class-logit bias).
            gradient_mul: gradient multiplier of the DCN offsets.
            moment_mul, moment_param: moment transform (§4).
            deform_impl: implementation passed to ``KGDeformConv``.
            flip_fusion: fuse with the width-flipped pass (§8.4), in training and testing.
            keypoint_flip_indices: (K,) global keypoint flip permutation (needed for flip fusion
                with keypoints).

        Raises:
            ValueError: an inconsistent option, naming its ``MODEL.KGDET`` key.
        """
        super().__init__()
        _check_structure(input_shape, num_classes, num_stages, cls_on_all_stages, moment_param)
        num_keypoints = num_keypoints if self.has_keypoints else 0
        if self.has_keypoints and num_keypoints < 1:
            raise ValueError(f"MODEL.KGDET.NUM_KEYPOINTS must be >= 1, got {num_keypoints}")
        columns = checked_columns(columns)
        num_points = sum(k * k for k in columns)
        if num_points < 2:
            raise ValueError(
                f"The moment transform needs >= 2 informative points; MODEL.KGDET.COLUMNS "
                f"{columns} gives {num_points}"
            )
        self.num_classes = num_classes
        self.num_keypoints = num_keypoints
        self.num_points = num_points
        self.num_stages = num_stages
        self.columns = columns
        self.moment_mul = moment_mul
        self.moment_param = moment_param
        self.flip_fusion = flip_fusion

        in_channels = input_shape[0].channels
        self.cls_tower = make_tower(in_channels, feat_channels, stacked_convs, norm)
        self.reg_tower = make_tower(in_channels, feat_channels, stacked_convs, norm)
        self.stages = nn.ModuleList(
            make_stage(
                feat_channels=feat_channels,
                num_classes=num_classes if cls_on_all_stages or t > 0 else 0,
                num_points=num_points,
                columns=None if t == 0 else columns,
                gradient_mul=gradient_mul,
                deform_impl=deform_impl,
            )
            for t in range(num_stages)
        )
        self.stage_has_cls = tuple(stage.has_cls for stage in self.stages)
        # One λ = (λx, λy) shared by every stage and level (§2.4).
        self.moment_lambda = nn.Parameter(torch.zeros(2))

        if flip_fusion and self.has_keypoints:
            perm = _checked_flip_indices(keypoint_flip_indices, num_keypoints)
        else:
            perm = torch.zeros(0, dtype=torch.long)
        # Dataset property, not a weight: kept out of checkpoints.
        self.register_buffer("keypoint_flip_indices", perm, persistent=False)

        self._init_weights(prior_prob)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]) -> Dict:
        """The ``MODEL.KGDET`` options every head reads (subclasses add their own)."""
        k = cfg.MODEL.KGDET
        flip_indices = None
        if k.FLIP_FUSION and cls.has_keypoints:
            if len(cfg.DATASETS.TRAIN) == 0:
                raise ValueError(
                    "MODEL.KGDET.FLIP_FUSION True needs the keypoint flip map of DATASETS.TRAIN, "
                    "which is empty"
                )
            # The same permutation the mapper uses for training-time flips.
            flip_indices = create_keypoint_hflip_indices(cfg.DATASETS.TRAIN)
        return {
            "input_shape": input_shape,
            "num_classes": k.NUM_CLASSES,
            "num_stages": k.NUM_STAGES,
            "columns": list(k.COLUMNS),
            "cls_on_all_stages": k.CLS_ON_ALL_STAGES,
            "stacked_convs": k.STACKED_CONVS,
            "feat_channels": k.FEAT_CHANNELS,
            "norm": k.NORM,
            "prior_prob": k.PRIOR_PROB,
            "gradient_mul": k.GRADIENT_MUL,
            "moment_mul": k.MOMENT_MUL,
            "moment_param": k.MOMENT_PARAM,
            "deform_impl": k.DEFORM_IMPL,
            "flip_fusion": k.FLIP_FUSION,
            "keypoint_flip_indices": flip_indices,
        }

    def _init_weights(self, prior_prob: float) -> None:
        """N(0, 0.01²) weights, zero biases, class-logit bias from the prior, λ = 0 (§2.4)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, KGDeformConv)):
                nn.init.normal_(module.weight, std=0.01)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        bias_value = -math.log((1 - prior_prob) / prior_prob)
        for stage in self.stages:
            if stage.has_cls:
                nn.init.constant_(stage.cls_out.bias, bias_value)
        # "exp": half-width = σ·exp(0) = σ; "linear": width = 2·σ, i.e. the same start.
        nn.init.constant_(self.moment_lambda, 0.0 if self.moment_param == "exp" else 2.0)

    def forward(self, features: List[Tensor]) -> HeadOutput:
        """features: list over levels of (N, Cin, Hl, Wl) -> one dict per stage (class doc)."""
        per_level = [self._forward_level(x) for x in features]
        outputs = []
        for t in range(self.num_stages):
            stage_out: Dict[str, Optional[List[Tensor]]] = {}
            for key in OUTPUT_KEYS:
                values = [level[t][key] for level in per_level]
                stage_out[key] = None if values[0] is None else values
            outputs.append(stage_out)
        return outputs

    def _forward_level(self, x: Tensor) -> List[Dict[str, Optional[Tensor]]]:
        batch = x.shape[0]
        if self.flip_fusion:
            # Both passes in one batch: the towers and every stage run once on 2N maps.
            x = torch.cat((x, x.flip(-1)), dim=0)
        f_cls = self.cls_tower(x)
        f_reg = self.reg_tower(x)
        results = []
        prev = None
        for stage in self.stages:
            out = stage(f_cls, f_reg, prev)
            out["box"] = moment_transform(
                out["pts"], self.moment_lambda, self.moment_mul, self.moment_param
            )
            results.append(out)
            prev = out
        if self.flip_fusion:
            results = [self._fuse_flipped(out, batch) for out in results]
        return results

    def _fuse_flipped(self, out: Dict[str, Optional[Tensor]], batch: int) -> Dict:
        """Average the plain pass (first ``batch`` rows) with the mirrored flipped pass (§8.4)."""
        perm = self.keypoint_flip_indices
        fused: Dict[str, Optional[Tensor]] = {}
        for key, value in out.items():
            if value is None:
                fused[key] = None
                continue
            plain, flipped = value[:batch], value[batch:]
            if key == "cls":
                mirrored = mirror_logits(flipped)
            elif key == "vis":
                mirrored = mirror_logits(flipped, perm)
            elif key == "kp":
                mirrored = mirror_offsets(flipped, perm)
            elif key == "box":
                mirrored = mirror_boxes(flipped)
            else:  # "pts": not an output, not fused; the plain pass's points are returned.
                fused[key] = plain
                continue
            fused[key] = (plain + mirrored) * 0.5
        return fused


def _check_structure(
    input_shape: List[ShapeSpec],
    num_classes: int,
    num_stages: int,
    cls_on_all_stages: bool,
    moment_param: str,
) -> None:
    """Raise ValueError for structure options no cascade head can be built with."""
    if len(input_shape) == 0:
        raise ValueError("MODEL.KGDET.IN_FEATURES is empty: the head needs at least one level")
    channels = [s.channels for s in input_shape]
    if len(set(channels)) != 1:
        raise ValueError(f"All levels fed to the head need the same channels, got {channels}")
    if num_classes < 1:
        raise ValueError(f"MODEL.KGDET.NUM_CLASSES must be >= 1, got {num_classes}")
    if num_stages < 1:
        raise ValueError(f"MODEL.KGDET.NUM_STAGES must be >= 1, got {num_stages}")
    if not cls_on_all_stages and num_stages < 2:
        raise ValueError(
            "MODEL.KGDET.CLS_ON_ALL_STAGES False classifies only at refinement stages, so "
            f"MODEL.KGDET.NUM_STAGES must be >= 2, got {num_stages}"
        )
    if moment_param not in ("exp", "linear"):
        raise ValueError(
            f"MODEL.KGDET.MOMENT_PARAM must be 'exp' or 'linear', got {moment_param!r}"
        )


def _checked_flip_indices(indices: Optional[Sequence[int]], num_keypoints: int) -> Tensor:
    """The keypoint flip permutation as a LongTensor, checked to be an involution of K slots."""
    if indices is None:
        raise ValueError(
            "MODEL.KGDET.FLIP_FUSION needs keypoint_flip_indices (from the training datasets' "
            "keypoint_names / keypoint_flip_map metadata)"
        )
    # Checked on the CPU whatever the default device (e.g. a model built on "meta").
    perm = torch.as_tensor(list(indices), dtype=torch.long, device="cpu")
    if perm.numel() != num_keypoints:
        raise ValueError(
            f"keypoint flip indices have {perm.numel()} entries, MODEL.KGDET.NUM_KEYPOINTS is "
            f"{num_keypoints}"
        )
    identity = torch.arange(num_keypoints, device="cpu")
    if perm.min() < 0 or perm.max() >= num_keypoints or not torch.equal(perm[perm], identity):
        raise ValueError("keypoint flip indices must be a permutation that is its own inverse")
    return perm
