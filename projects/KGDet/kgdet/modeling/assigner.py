"""Cell grid and target assignment (docs/DESIGN.md §5).

Shape shorthand: R = cells over all fed levels (level-major, row-major inside a level),
M = ground-truth objects of one image.

Assignment results are per image, a (R,) long tensor ``matched``: the index of the GT object a
cell is assigned to (>= 0), ``BACKGROUND`` (-1) or ``IGNORE`` (-2, no classification loss).
"""

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple
import torch
from torch import Tensor

from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, pairwise_iou

__all__ = ["BACKGROUND", "IGNORE", "CellGrid", "PointAssigner", "MaxIoUAssigner"]

BACKGROUND = -1
IGNORE = -2


@dataclass
class CellGrid:
    """The reference points of every cell of the fed levels, concatenated level by level.

    Attributes:
        points: (R, 2) reference point (x, y) in input pixels: ((j + offset)·s, (i + offset)·s).
        strides: (R,) stride s of each cell's level (float).
        levels: (R,) index of each cell's level in the fed-level list.
        level_sizes: (H_l, W_l) of every level.
        level_strides: s_l of every level.
    """

    points: Tensor
    strides: Tensor
    levels: Tensor
    level_sizes: List[Tuple[int, int]]
    level_strides: List[int]

    @classmethod
    def build(
        cls,
        level_sizes: Sequence[Tuple[int, int]],
        level_strides: Sequence[int],
        offset: float,
        device: torch.device,
    ) -> "CellGrid":
        """Grid of cells (i, j) with reference point ((j + offset)·s, (i + offset)·s).

        Traceable: the level sizes may be 0-dim tensors (``x.shape[-2:]`` under
        ``torch.jit.trace``), so an exported graph builds the grid of any input size.
        """
        points, strides, levels = [], [], []
        for lvl, ((h, w), s) in enumerate(zip(level_sizes, level_strides)):
            ys = (torch.arange(h, device=device, dtype=torch.float32) + offset) * s
            xs = (torch.arange(w, device=device, dtype=torch.float32) + offset) * s
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            level_points = torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1)
            ones = torch.ones_like(level_points[:, 0])
            points.append(level_points)
            strides.append(ones * float(s))
            levels.append((ones * lvl).long())
        return cls(
            points=torch.cat(points),
            strides=torch.cat(strides),
            levels=torch.cat(levels),
            level_sizes=[tuple(x) for x in level_sizes],
            level_strides=list(level_strides),
        )

    @property
    def num_cells_per_level(self) -> List[int]:
        return [h * w for h, w in self.level_sizes]

    def valid_mask(self, image_size: Tuple[int, int], size_divisibility: int) -> Tensor:
        """(R,) bool: cells inside the image's own padded extent (docs/DESIGN.md §5.1).

        A cell (i, j) of stride s is valid if i < ceil(H_pad / s) and j < ceil(W_pad / s), with
        H_pad = d·ceil(h / d) for the backbone's size divisibility d (32). Cells that exist only
        because other images of the batch are larger are invalid (no loss, never positive).
        """
        h, w = image_size
        d = max(int(size_divisibility), 1)
        h_pad, w_pad = d * math.ceil(h / d), d * math.ceil(w / d)
        masks = []
        for (lh, lw), s in zip(self.level_sizes, self.level_strides):
            vh, vw = min(math.ceil(h_pad / s), lh), min(math.ceil(w_pad / s), lw)
            m = torch.zeros((lh, lw), dtype=torch.bool, device=self.points.device)
            m[:vh, :vw] = True
            masks.append(m.reshape(-1))
        return torch.cat(masks)


class PointAssigner:
    """RepPoints/KGDet point assigner, assigning once for all stages (docs/DESIGN.md §5.1).

    1. GT level ℓ = floor((log2(w/scale) + log2(h/scale)) / 2), clamped to the fed levels (the
       official code truncates toward zero; floor is what §13.10 asks for; they agree wherever the
       clamp does not decide).
    2. On that level, the ``pos_num`` valid cells of smallest normalised distance
       ‖((x, y) − c) ⊘ (w, h)‖ are candidates (clamped to the number of valid cells).
    3. A cell that is a candidate of several GTs goes to the nearest one; ties keep the earlier GT.
    """

    def __init__(self, pos_num: int = 25, scale: float = 4.0):
        if pos_num < 1:
            raise ValueError(f"MODEL.KGDET.POS_NUM must be >= 1, got {pos_num}")
        self.pos_num = int(pos_num)
        self.scale = float(scale)

    @torch.no_grad()
    def __call__(self, grid: CellGrid, valid: Tensor, gt_boxes: Tensor) -> Tensor:
        """
        Args:
            grid: the cells of the fed levels.
            valid: (R,) bool, cells that may be assigned.
            gt_boxes: (M, 4) XYXY in input pixels.

        Returns:
            (R,) long: matched GT index or ``BACKGROUND``.
        """
        num_cells = grid.points.shape[0]
        matched = torch.full((num_cells,), BACKGROUND, dtype=torch.long, device=valid.device)
        if gt_boxes.shape[0] == 0 or num_cells == 0:
            return matched
        gt_boxes = gt_boxes.float()
        wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=1e-6)  # (M, 2)
        centers = (gt_boxes[:, 2:] + gt_boxes[:, :2]) / 2
        scale_lvl = torch.floor(
            (torch.log2(wh[:, 0] / self.scale) + torch.log2(wh[:, 1] / self.scale)) / 2
        )
        # Map to the fed level of nearest log2 stride (exact for contiguous levels after clamping).
        level_log2 = torch.tensor(
            [math.log2(s) for s in grid.level_strides], device=gt_boxes.device
        )
        gt_level = (scale_lvl[:, None] - level_log2[None, :]).abs().argmin(dim=1)  # (M,)

        dist = ((grid.points[None, :, :] - centers[:, None, :]) / wh[:, None, :]).norm(dim=2)
        eligible = (grid.levels[None, :] == gt_level[:, None]) & valid[None, :]
        dist = dist.masked_fill(~eligible, float("inf"))  # (M, R)

        k = min(self.pos_num, num_cells)
        cand_dist, cand_idx = dist.topk(k, dim=1, largest=False)  # (M, k)
        # Fewer than k eligible cells on a level (tiny maps): drop the non-eligible picks.
        cand_dist = cand_dist.masked_fill(~torch.isfinite(cand_dist), float("inf"))
        candidate = torch.full_like(dist, float("inf")).scatter_(1, cand_idx, cand_dist)
        best_dist, best_gt = candidate.min(dim=0)  # first minimum on ties = earlier GT
        # torch.where, not boolean-mask indexing: no host synchronisation per image.
        return torch.where(torch.isfinite(best_dist), best_gt, matched)


class MaxIoUAssigner:
    """Max-IoU assignment on predicted boxes (RepPoints' refine stage, docs/DESIGN.md §10).

    IoU ≥ high → positive, < low → negative, in between → ignored; plus, through Detectron2's
    ``Matcher(allow_low_quality_matches=True)``, every GT's highest-IoU cells are positive.
    mmdetection's ``min_pos_iou = 0`` would also accept a "best" match of IoU 0 (e.g. when the
    predicted boxes are degenerate at initialisation, every cell would tie); we require IoU > 0
    and ≥ ``min_pos_iou`` for such low-quality matches [D].
    """

    def __init__(self, thresholds: Sequence[float] = (0.4, 0.5), min_pos_iou: float = 0.0):
        thresholds = list(thresholds)
        if len(thresholds) != 2 or not 0.0 <= thresholds[0] <= thresholds[1] <= 1.0:
            raise ValueError(
                f"MODEL.KGDET.REFINE_IOU_THRESHOLDS must be [low, high] with 0 <= low <= high <= 1,"
                f" got {thresholds}"
            )
        self.high = thresholds[1]
        self.min_pos_iou = float(min_pos_iou)
        self.matcher = Matcher(thresholds, [0, -1, 1], allow_low_quality_matches=True)

    @torch.no_grad()
    def __call__(self, pred_boxes: Tensor, valid: Tensor, gt_boxes: Tensor) -> Tensor:
        """
        Args:
            pred_boxes: (R, 4) XYXY predicted boxes of the previous stage (input pixels).
            valid: (R,) bool, cells that may be assigned.
            gt_boxes: (M, 4) XYXY.

        Returns:
            (R,) long: matched GT index, ``BACKGROUND`` or ``IGNORE``.
        """
        num_cells = pred_boxes.shape[0]
        matched = torch.full((num_cells,), BACKGROUND, dtype=torch.long, device=valid.device)
        if gt_boxes.shape[0] == 0 or num_cells == 0:
            return matched
        iou = pairwise_iou(Boxes(gt_boxes.float()), Boxes(pred_boxes.float()))  # (M, R)
        iou = iou.nan_to_num(0.0).masked_fill(~valid[None, :], 0.0)
        gt_idx, labels = self.matcher(iou)
        best_iou = iou.gather(0, gt_idx[None, :])[0]
        low_quality = (labels == 1) & (best_iou < self.high)
        labels = labels.masked_fill(
            low_quality & ((best_iou <= 0) | (best_iou < self.min_pos_iou)), 0
        )
        # torch.where / masked_fill, not boolean-mask indexing: no host synchronisation.
        matched = torch.where(labels == 1, gt_idx, matched)
        return matched.masked_fill(labels == -1, IGNORE)
