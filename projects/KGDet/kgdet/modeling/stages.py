"""The stages of the cascade heads (docs/DESIGN.md §2.2-2.3, §3, §10).

Every stage reads the two shared tower features (F_cls, F_reg) and returns its raw outputs:
``cls`` (N, C, H, W) or None, ``kp`` (N, 2K, H, W) accumulated keypoint offsets or None,
``pts`` (N, 2P, H, W) accumulated informative points and ``vis`` (N, K, H, W) or None. All point
tensors are yx-interleaved, in feature cells (see ``point_utils``).

:class:`PointStage` holds what all stages share: stage 1 reads the towers through plain convs,
a refinement stage through deformable convs sampling at the previous stage's points, and
keypoints and points are residuals accumulated under stop-gradient. Its subclasses differ only
in how the informative points are made:

* :class:`EncodingStage`: a conv1×1 2K→2P of the keypoint offsets (KGDet, §3.2-3.3);
* :class:`SelectionStage`: the P keypoints a visibility classifier ranks highest (§3.4);
* :class:`LearnedPointsStage`: predicted directly from F_reg, optionally beside keypoints
  (RepPoints and RepPoints-Kp, §3.5 and §10).
"""

from typing import Dict, List, Optional, Sequence
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .deform_conv import KGDeformConv
from .point_utils import points_to_dcn_offsets, select_points_by_score

__all__ = ["PointStage", "EncodingStage", "SelectionStage", "LearnedPointsStage"]

StageOutput = Dict[str, Optional[Tensor]]


class PointStage(nn.Module):
    """One stage: branches reading the tower features, each ending in a conv1×1.

    A branch ``name`` reads its tower feature through ``{name}_conv`` (stage 1, ``columns``
    None: conv3×3) or ``{name}_dcns`` (refinement stage: one k×k deformable conv per column, all
    sampling at the previous stage's points), ReLU, columns concatenated, then ``{name}_out``.
    These attribute names are the checkpoint layout (``kgdet/checkpoint/convert.py`` maps the
    official checkpoint onto them). The classification branch ``cls`` reads F_cls; subclasses
    add their branches on F_reg and implement :meth:`predict_points`.
    """

    def __init__(
        self,
        *,
        feat_channels: int,
        num_classes: int,
        columns: Optional[Sequence[int]] = None,
        gradient_mul: float = 0.1,
        deform_impl: str = "auto",
    ):
        """
        Args:
            feat_channels: channels of the tower features and of every branch.
            num_classes: C, or 0 for a stage without classifier (RepPoints' stage 1).
            columns: odd DCN kernel sizes of a refinement stage; None for stage 1.
            gradient_mul: gradient multiplier of the DCN offsets (the previous points).
            deform_impl: implementation passed to ``KGDeformConv``.
        """
        super().__init__()
        self.feat_channels = feat_channels
        self.columns = None if columns is None else [int(k) for k in columns]
        self.gradient_mul = gradient_mul
        self.deform_impl = deform_impl
        self.has_cls = num_classes > 0
        if self.has_cls:
            self.add_branch("cls", num_classes)

    @property
    def hidden_channels(self) -> int:
        """Channels of a branch's hidden feature (the input of ``{name}_out``)."""
        return self.feat_channels * (1 if self.columns is None else len(self.columns))

    def add_branch(self, name: str, out_channels: int) -> None:
        """Register ``{name}_conv`` or ``{name}_dcns``, and ``{name}_out`` (class doc)."""
        ch = self.feat_channels
        if self.columns is None:
            setattr(self, f"{name}_conv", nn.Conv2d(ch, ch, 3, padding=1))
        else:
            dcns = [KGDeformConv(ch, ch, k, (k - 1) // 2, self.deform_impl) for k in self.columns]
            setattr(self, f"{name}_dcns", nn.ModuleList(dcns))
        setattr(self, f"{name}_out", nn.Conv2d(self.hidden_channels, out_channels, 1))

    def hidden(self, name: str, feature: Tensor, offsets: Optional[List[Tensor]]) -> Tensor:
        """Branch ``name``'s hidden feature (N, hidden_channels, H, W) of a tower feature."""
        if offsets is None:
            return F.relu(getattr(self, f"{name}_conv")(feature))
        dcns = getattr(self, f"{name}_dcns")
        maps = [F.relu(dcn(feature, off)) for dcn, off in zip(dcns, offsets)]
        return maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)

    def branch(self, name: str, feature: Tensor, offsets: Optional[List[Tensor]]) -> Tensor:
        """Branch ``name``'s output: ``{name}_out`` of its hidden feature."""
        return getattr(self, f"{name}_out")(self.hidden(name, feature, offsets))

    @staticmethod
    def accumulate(delta: Tensor, prev: Optional[StageOutput], key: str) -> Tensor:
        """``delta`` plus the previous stage's ``key`` under stop-gradient (stage 1: ``delta``).

        The previous values reach this stage's loss only through the DCN offsets' gradient
        multiplier (§2.3).
        """
        return delta if prev is None else delta + prev[key].detach()

    def forward(
        self, f_cls: Tensor, f_reg: Tensor, prev: Optional[StageOutput] = None
    ) -> StageOutput:
        """(N, Cf, H, W) tower features and the previous stage's outputs (None at stage 1)."""
        offsets = None
        if self.columns is not None:
            if prev is None:
                raise ValueError("a refinement stage needs the previous stage's outputs")
            offsets = points_to_dcn_offsets(prev["pts"], self.columns, self.gradient_mul)
        cls = self.branch("cls", f_cls, offsets) if self.has_cls else None
        return {"cls": cls, **self.predict_points(f_reg, offsets, prev)}

    def predict_points(
        self, f_reg: Tensor, offsets: Optional[List[Tensor]], prev: Optional[StageOutput]
    ) -> StageOutput:
        """The stage's "kp", "pts" and "vis" outputs (module doc); ``offsets`` None at stage 1."""
        raise NotImplementedError


class EncodingStage(PointStage):
    """Keypoint encoding (§3.2-3.3): the points are a conv1×1 2K→2P (``encoder``) of the
    keypoint offsets at stage 1 and of the keypoint residual at refinement stages."""

    def __init__(self, *, num_keypoints: int, num_points: int, **kwargs):
        """``num_keypoints`` K, ``num_points`` P; the rest as :class:`PointStage`."""
        super().__init__(**kwargs)
        self.add_branch("kp", 2 * num_keypoints)
        self.encoder = nn.Conv2d(2 * num_keypoints, 2 * num_points, 1)

    def predict_points(self, f_reg, offsets, prev) -> StageOutput:
        kp_delta = self.branch("kp", f_reg, offsets)
        # Encodes the keypoint residual, not the accumulated keypoints [C].
        pts_delta = self.encoder(kp_delta)
        return {
            "kp": self.accumulate(kp_delta, prev, "kp"),
            "pts": self.accumulate(pts_delta, prev, "pts"),
            "vis": None,
        }


class SelectionStage(PointStage):
    """Keypoint selection (§3.4): a visibility classifier (``vis_out``, beside ``kp_out`` on
    the same hidden feature) ranks the K accumulated keypoints; the top P are the points."""

    def __init__(
        self, *, num_keypoints: int, num_points: int, sort_selected: bool = True, **kwargs
    ):
        """
        Args:
            num_keypoints: K.
            num_points: P <= K keypoints selected per location.
            sort_selected: re-order the selected indices ascending (stable tap order).
            kwargs: as :class:`PointStage`.
        """
        super().__init__(**kwargs)
        self.num_points = num_points
        self.sort_selected = sort_selected
        self.add_branch("kp", 2 * num_keypoints)
        self.vis_out = nn.Conv2d(self.hidden_channels, num_keypoints, 1)

    def predict_points(self, f_reg, offsets, prev) -> StageOutput:
        hidden = self.hidden("kp", f_reg, offsets)
        kp = self.accumulate(self.kp_out(hidden), prev, "kp")
        vis = self.vis_out(hidden)
        pts, _ = select_points_by_score(kp, vis, self.num_points, self.sort_selected)
        return {"kp": kp, "pts": pts, "vis": vis}


class LearnedPointsStage(PointStage):
    """Learned points (RepPoints, §3.5 and §10): a ``pts`` branch on F_reg; with
    ``num_keypoints`` > 0 a keypoint branch beside it (RepPoints-Kp, parallel)."""

    def __init__(self, *, num_points: int, num_keypoints: int = 0, **kwargs):
        """``num_points`` P, ``num_keypoints`` K (0: no keypoints); the rest as
        :class:`PointStage`."""
        super().__init__(**kwargs)
        self.has_keypoints = num_keypoints > 0
        if self.has_keypoints:
            self.add_branch("kp", 2 * num_keypoints)
        self.add_branch("pts", 2 * num_points)

    def predict_points(self, f_reg, offsets, prev) -> StageOutput:
        kp = None
        if self.has_keypoints:
            kp = self.accumulate(self.branch("kp", f_reg, offsets), prev, "kp")
        pts = self.accumulate(self.branch("pts", f_reg, offsets), prev, "pts")
        return {"kp": kp, "pts": pts, "vis": None}
