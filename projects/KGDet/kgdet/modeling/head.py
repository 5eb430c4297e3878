"""KGDetHead: shared towers + a cascade of stages producing classes, keypoints and boxes.

docs/DESIGN.md §2-4 (structure, init, moment transform), §8.4 (flip fusion) and §10 (RepPoints
baselines from the same code). Output contract: ``KGDetHead.forward``'s docstring.
"""

import logging
import math
from typing import Dict, List, Optional, Sequence
import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.data.detection_utils import create_keypoint_hflip_indices
from detectron2.layers import ShapeSpec, get_norm

from .aggregation import InitialStage, RefinementStage
from .deform_conv import KGDeformConv
from .point_utils import mirror_boxes, mirror_logits, mirror_offsets, moment_transform

__all__ = ["KGDetHead"]

logger = logging.getLogger(__name__)

OUTPUT_KEYS = ("cls", "kp", "pts", "box", "vis")


def _make_tower(in_channels: int, channels: int, num_convs: int, norm: str) -> nn.Sequential:
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


class KGDetHead(nn.Module):
    """The KGDet head (and the RepPoints / RepPoints-Kp heads of docs/DESIGN.md §10).

    ``forward(features)`` returns one dict per stage; every value is a list over the fed levels
    (or None when the stage/model lacks that output):

    * "cls": (N, C, H, W) class logits; None at stage 1 when ``cls_on_all_stages`` is False;
    * "kp": (N, 2K, H, W) accumulated keypoint offsets, yx-interleaved, in cells relative to the
      grid point; None without keypoint branch;
    * "pts": (N, 2P, H, W) accumulated informative points (same layout; with flip fusion: those
      of the plain pass, they are not fused);
    * "box": (N, 4, H, W) moment-transform box (x1, y1, x2, y2) in cells relative to the grid
      point;
    * "vis": (N, K, H, W) visibility logits (keypoint selection only), else None.

    With ``flip_fusion`` the outputs are averaged with those of a pass on width-flipped features
    mapped back (§8.4).
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_keypoints: int,
        num_stages: int = 3,
        agg: str = "encoding",
        columns: Sequence[int] = (3, 5, 7),
        select_topk: int = 9,
        sort_selected: bool = True,
        points: str = "from_keypoints",
        keypoint_branch: bool = True,
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
            num_classes, num_keypoints: C and K.
            num_stages: T >= 1 (1 initial + T-1 refinement stages).
            agg: "encoding" (multi/single-column keypoint encoding) or "selection".
            columns: odd DCN kernel sizes; P = sum(k*k).
            select_topk: n keypoints selected per location (agg "selection"; n = P).
            sort_selected: sort the selected indices ascending.
            points: "from_keypoints" (KGDet) or "learned" (RepPoints baselines).
            keypoint_branch: with learned points, predict keypoints beside them (RepPoints-Kp).
            cls_on_all_stages: False = no classifier at stage 1 (RepPoints baselines).
            stacked_convs, feat_channels, norm: tower structure.
            prior_prob: initial class probability (class-logit bias).
            gradient_mul: gradient multiplier of the DCN offsets.
            moment_mul, moment_param: moment transform (§4).
            deform_impl: implementation passed to ``KGDeformConv``.
            flip_fusion: fuse with the width-flipped pass (§8.4), in training and testing.
            keypoint_flip_indices: (K,) global keypoint flip permutation (needed for
                flip fusion with keypoints).
        """
        super().__init__()
        columns = [int(k) for k in columns]
        point_source = _validate(
            input_shape=input_shape,
            num_classes=num_classes,
            num_keypoints=num_keypoints,
            num_stages=num_stages,
            agg=agg,
            columns=columns,
            select_topk=select_topk,
            points=points,
            keypoint_branch=keypoint_branch,
            cls_on_all_stages=cls_on_all_stages,
            moment_param=moment_param,
        )
        has_keypoints = points == "from_keypoints" or keypoint_branch
        num_keypoints = num_keypoints if has_keypoints else 0
        num_points = select_topk if point_source == "selection" else sum(k * k for k in columns)

        self.num_classes = num_classes
        self.num_keypoints = num_keypoints
        self.num_points = num_points
        self.num_stages = num_stages
        self.has_keypoints = has_keypoints
        self.has_visibility = point_source == "selection"
        self.stage_has_cls = tuple(cls_on_all_stages or t > 0 for t in range(num_stages))
        self.columns = columns
        self.moment_mul = moment_mul
        self.moment_param = moment_param
        self.flip_fusion = flip_fusion

        in_channels = input_shape[0].channels
        self.cls_tower = _make_tower(in_channels, feat_channels, stacked_convs, norm)
        self.reg_tower = _make_tower(in_channels, feat_channels, stacked_convs, norm)
        common = dict(
            feat_channels=feat_channels,
            num_keypoints=num_keypoints,
            num_points=num_points,
            point_source=point_source,
            select_topk=select_topk,
            sort_selected=sort_selected,
        )
        stages: List[nn.Module] = [
            InitialStage(num_classes=num_classes if cls_on_all_stages else 0, **common)
        ]
        for _ in range(1, num_stages):
            stages.append(
                RefinementStage(
                    num_classes=num_classes,
                    columns=columns,
                    gradient_mul=gradient_mul,
                    deform_impl=deform_impl,
                    **common,
                )
            )
        self.stages = nn.ModuleList(stages)
        # One λ = (λx, λy) shared by every stage and level (§2.4).
        self.moment_lambda = nn.Parameter(torch.zeros(2))

        if flip_fusion and has_keypoints:
            perm = _check_flip_indices(keypoint_flip_indices, num_keypoints)
        else:
            perm = torch.zeros(0, dtype=torch.long)
        # Dataset property, not a weight: kept out of checkpoints.
        self.register_buffer("keypoint_flip_indices", perm, persistent=False)

        self._init_weights(prior_prob)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]) -> Dict:
        k = cfg.MODEL.KGDET
        has_keypoints = k.POINTS == "from_keypoints" or k.KEYPOINT_BRANCH
        flip_indices = None
        if k.FLIP_FUSION and has_keypoints:
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
            "num_keypoints": k.NUM_KEYPOINTS,
            "num_stages": k.NUM_STAGES,
            "agg": k.AGG,
            "columns": list(k.COLUMNS),
            "select_topk": k.SELECT_TOPK,
            "sort_selected": k.SORT_SELECTED,
            "points": k.POINTS,
            "keypoint_branch": k.KEYPOINT_BRANCH,
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
            if getattr(stage, "cls_out", None) is not None:
                nn.init.constant_(stage.cls_out.bias, bias_value)
        # "exp": half-width = σ·exp(0) = σ; "linear": width = 2·σ, i.e. the same start.
        nn.init.constant_(self.moment_lambda, 0.0 if self.moment_param == "exp" else 2.0)

    def forward(self, features: List[Tensor]) -> List[Dict[str, Optional[List[Tensor]]]]:
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


def _validate(
    *,
    input_shape: List[ShapeSpec],
    num_classes: int,
    num_keypoints: int,
    num_stages: int,
    agg: str,
    columns: List[int],
    select_topk: int,
    points: str,
    keypoint_branch: bool,
    cls_on_all_stages: bool,
    moment_param: str,
) -> str:
    """Check the head's config for consistency; return the point source of the stages."""
    if len(input_shape) == 0:
        raise ValueError("MODEL.KGDET.IN_FEATURES is empty: the head needs at least one level")
    channels = [s.channels for s in input_shape]
    if len(set(channels)) != 1:
        raise ValueError(f"All levels fed to KGDetHead need the same channels, got {channels}")
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
    if len(columns) == 0 or any(k < 1 or k % 2 == 0 for k in columns):
        raise ValueError(f"MODEL.KGDET.COLUMNS must be non-empty odd kernel sizes, got {columns}")
    if points not in ("from_keypoints", "learned"):
        raise ValueError(
            f"MODEL.KGDET.POINTS must be 'from_keypoints' or 'learned', got {points!r}"
        )
    if agg not in ("encoding", "selection"):
        raise ValueError(f"MODEL.KGDET.AGG must be 'encoding' or 'selection', got {agg!r}")
    if points == "from_keypoints" and not keypoint_branch:
        raise ValueError(
            "MODEL.KGDET.KEYPOINT_BRANCH False needs MODEL.KGDET.POINTS 'learned' (points made "
            f"from keypoints need the keypoint branch), got POINTS {points!r}"
        )
    has_keypoints = points == "from_keypoints" or keypoint_branch
    if has_keypoints and num_keypoints < 1:
        raise ValueError(f"MODEL.KGDET.NUM_KEYPOINTS must be >= 1, got {num_keypoints}")
    num_points = sum(k * k for k in columns)
    if points == "learned":
        if agg == "selection":
            raise ValueError(
                "MODEL.KGDET.AGG 'selection' selects keypoints and cannot be combined with "
                "MODEL.KGDET.POINTS 'learned'; use POINTS 'from_keypoints' or AGG 'encoding'"
            )
        source = "learned"
    else:
        source = agg
    if source == "selection":
        if select_topk != num_points:
            raise ValueError(
                f"MODEL.KGDET.SELECT_TOPK ({select_topk}) must equal the number of DCN taps of "
                f"MODEL.KGDET.COLUMNS ({columns} -> {num_points}); e.g. SELECT_TOPK 9 with "
                "COLUMNS [3]"
            )
        if select_topk > num_keypoints:
            raise ValueError(
                f"MODEL.KGDET.SELECT_TOPK ({select_topk}) exceeds MODEL.KGDET.NUM_KEYPOINTS "
                f"({num_keypoints})"
            )
    if num_points < 2:
        raise ValueError(
            f"The moment transform needs >= 2 informative points; MODEL.KGDET.COLUMNS {columns} "
            f"gives {num_points}"
        )
    return source


def _check_flip_indices(indices: Optional[Sequence[int]], num_keypoints: int) -> Tensor:
    """The keypoint flip permutation as a LongTensor, checked to be an involution of K slots."""
    if indices is None:
        raise ValueError(
            "MODEL.KGDET.FLIP_FUSION needs keypoint_flip_indices (from the training datasets' "
            "keypoint_names / keypoint_flip_map metadata)"
        )
    perm = torch.as_tensor(list(indices), dtype=torch.long)
    if perm.numel() != num_keypoints:
        raise ValueError(
            f"keypoint flip indices have {perm.numel()} entries, MODEL.KGDET.NUM_KEYPOINTS is "
            f"{num_keypoints}"
        )
    identity = torch.arange(num_keypoints)
    if perm.min() < 0 or perm.max() >= num_keypoints or not torch.equal(perm[perm], identity):
        raise ValueError("keypoint flip indices must be a permutation that is its own inverse")
    return perm
