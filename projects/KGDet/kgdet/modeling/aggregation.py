"""The stages of the KGDet cascade head: initial and refinement stage (docs/DESIGN.md §2-3).

Both read the shared tower features (F_cls, F_reg) and return the stage's raw outputs:
``cls`` (N, C, H, W) or None, ``kp`` (N, 2K, H, W) accumulated keypoint offsets or None,
``pts`` (N, 2P, H, W) accumulated informative points and ``vis`` (N, K, H, W) or None.
All point tensors are yx-interleaved, in feature cells (see ``point_utils``).

``point_source`` selects how the informative points are made:
* "encoding": conv1×1 2K→2P of the keypoint offsets (stage 1) / of the keypoint residual
  (refinement stages) (§3.2, §3.3);
* "selection": the top-n keypoints by a visibility classifier (§3.4);
* "learned": predicted directly from F_reg (RepPoints baselines, §3.5 and §10), optionally with a
  keypoint branch beside them.
"""

from typing import Dict, List, Optional, Sequence
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .deform_conv import KGDeformConv
from .point_utils import points_to_dcn_offsets, select_points_by_score

__all__ = ["InitialStage", "RefinementStage", "POINT_SOURCES"]

POINT_SOURCES = ("encoding", "selection", "learned")

StageOutput = Dict[str, Optional[Tensor]]


class InitialStage(nn.Module):
    """Stage 1: plain convolutions on the tower features (§2.2)."""

    def __init__(
        self,
        *,
        feat_channels: int,
        num_classes: int,
        num_keypoints: int,
        num_points: int,
        point_source: str,
        select_topk: int = 9,
        sort_selected: bool = True,
    ):
        """
        Args:
            num_classes: C, or 0 for a stage without classifier (RepPoints stage 1).
            num_keypoints: K, or 0 without keypoint branch (RepPoints).
            num_points: P informative points.
        """
        super().__init__()
        self.point_source = point_source
        self.select_topk = select_topk
        self.sort_selected = sort_selected
        self.has_cls = num_classes > 0
        self.has_keypoints = num_keypoints > 0
        ch = feat_channels
        if self.has_cls:
            self.cls_conv = nn.Conv2d(ch, ch, 3, padding=1)
            self.cls_out = nn.Conv2d(ch, num_classes, 1)
        if self.has_keypoints:
            self.kp_conv = nn.Conv2d(ch, ch, 3, padding=1)
            self.kp_out = nn.Conv2d(ch, 2 * num_keypoints, 1)
        if point_source == "encoding":
            self.encoder = nn.Conv2d(2 * num_keypoints, 2 * num_points, 1)
        elif point_source == "selection":
            # Sibling of kp_out on the same hidden feature (§3.4).
            self.vis_out = nn.Conv2d(ch, num_keypoints, 1)
        elif point_source == "learned":
            self.pts_conv = nn.Conv2d(ch, ch, 3, padding=1)
            self.pts_out = nn.Conv2d(ch, 2 * num_points, 1)

    def forward(
        self, f_cls: Tensor, f_reg: Tensor, prev: Optional[StageOutput] = None
    ) -> StageOutput:
        """``prev`` is unused (the first stage has no predecessor); kept for a uniform call."""
        cls = kp = vis = None
        if self.has_cls:
            cls = self.cls_out(F.relu(self.cls_conv(f_cls)))
        if self.has_keypoints:
            kp_hidden = F.relu(self.kp_conv(f_reg))
            kp = self.kp_out(kp_hidden)
        if self.point_source == "encoding":
            pts = self.encoder(kp)
        elif self.point_source == "selection":
            vis = self.vis_out(kp_hidden)
            pts, _ = select_points_by_score(kp, vis, self.select_topk, self.sort_selected)
        else:
            pts = self.pts_out(F.relu(self.pts_conv(f_reg)))
        return {"cls": cls, "kp": kp, "pts": pts, "vis": vis}


class RefinementStage(nn.Module):
    """Refinement stage t >= 2: deformable convs sampling at the previous points (§2.3).

    One k×k deformable conv per column and branch (cls branch on F_cls; keypoint branch and, for
    learned points, a points branch on F_reg), all with the same offsets; ReLU; columns
    concatenated; conv1×1 to the stage's outputs. Keypoints and points are residuals added to the
    previous stage's values under stop-gradient; the previous points reach this stage's loss only
    through the offsets' gradient multiplier.
    """

    def __init__(
        self,
        *,
        feat_channels: int,
        num_classes: int,
        num_keypoints: int,
        num_points: int,
        point_source: str,
        columns: Sequence[int],
        gradient_mul: float,
        deform_impl: str = "auto",
        select_topk: int = 9,
        sort_selected: bool = True,
    ):
        super().__init__()
        self.point_source = point_source
        self.columns = list(columns)
        self.gradient_mul = gradient_mul
        self.select_topk = select_topk
        self.sort_selected = sort_selected
        self.has_keypoints = num_keypoints > 0
        ch = feat_channels
        cat_ch = ch * len(self.columns)
        self.cls_dcns = self._make_dcns(ch, deform_impl)
        self.cls_out = nn.Conv2d(cat_ch, num_classes, 1)
        if self.has_keypoints:
            self.kp_dcns = self._make_dcns(ch, deform_impl)
            self.kp_out = nn.Conv2d(cat_ch, 2 * num_keypoints, 1)
        if point_source == "encoding":
            # Applied to the keypoint residual, not to the accumulated keypoints [C].
            self.encoder = nn.Conv2d(2 * num_keypoints, 2 * num_points, 1)
        elif point_source == "selection":
            self.vis_out = nn.Conv2d(cat_ch, num_keypoints, 1)
        elif point_source == "learned":
            self.pts_dcns = self._make_dcns(ch, deform_impl)
            self.pts_out = nn.Conv2d(cat_ch, 2 * num_points, 1)

    def _make_dcns(self, channels: int, impl: str) -> nn.ModuleList:
        return nn.ModuleList(
            KGDeformConv(channels, channels, k, (k - 1) // 2, impl) for k in self.columns
        )

    @staticmethod
    def _aggregate(dcns: nn.ModuleList, feature: Tensor, offsets: List[Tensor]) -> Tensor:
        """Run every column's DCN on ``feature``, ReLU, concatenate along channels."""
        maps = [F.relu(dcn(feature, off)) for dcn, off in zip(dcns, offsets)]
        return maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)

    def forward(self, f_cls: Tensor, f_reg: Tensor, prev: StageOutput) -> StageOutput:
        offsets = points_to_dcn_offsets(prev["pts"], self.columns, self.gradient_mul)
        cls = self.cls_out(self._aggregate(self.cls_dcns, f_cls, offsets))
        kp = vis = None
        if self.has_keypoints:
            kp_feat = self._aggregate(self.kp_dcns, f_reg, offsets)
            kp_residual = self.kp_out(kp_feat)
            kp = kp_residual + prev["kp"].detach()
        if self.point_source == "encoding":
            pts = self.encoder(kp_residual) + prev["pts"].detach()
        elif self.point_source == "selection":
            vis = self.vis_out(kp_feat)
            pts, _ = select_points_by_score(kp, vis, self.select_topk, self.sort_selected)
        else:
            pts_feat = self._aggregate(self.pts_dcns, f_reg, offsets)
            pts = self.pts_out(pts_feat) + prev["pts"].detach()
        return {"cls": cls, "kp": kp, "pts": pts, "vis": vis}
