"""The RepPoints baselines' heads: learned points, with or without keypoints (docs/DESIGN.md §10).

Built from the same towers, stages and moment transform as KGDet's head
(:class:`~kgdet.modeling.cascade_head.CascadeHead`). The serial RepPoints-Kp, whose points are
encoded from the keypoints, is a :class:`~kgdet.modeling.head.KGDetHead`.
"""

from functools import partial
from typing import Dict, List, Sequence

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from .cascade_head import CascadeHead
from .stages import LearnedPointsStage

__all__ = ["RepPointsHead", "RepPointsKpHead"]


class RepPointsHead(CascadeHead):
    """RepPoints: points predicted directly from the regression tower (:class:`LearnedPointsStage`);
    boxes and classes only. The defaults are the baseline's: 2 stages, 9 points (``columns``
    [3]), no classifier at stage 1."""

    has_keypoints = False

    @configurable
    def __init__(
        self,
        *,
        num_stages: int = 2,
        columns: Sequence[int] = (3,),
        cls_on_all_stages: bool = False,
        **kwargs,
    ):
        """``kwargs``: the other options of :class:`CascadeHead` but ``make_stage``.

        Raises:
            ValueError: an inconsistent option, naming its ``MODEL.KGDET`` key.
        """
        super().__init__(
            num_stages=num_stages,
            columns=columns,
            cls_on_all_stages=cls_on_all_stages,
            make_stage=LearnedPointsStage,
            **kwargs,
        )


class RepPointsKpHead(CascadeHead):
    """RepPoints-Kp (parallel): RepPoints plus a keypoint branch beside the learned points in
    every stage; the keypoints do not shape the points. Defaults as :class:`RepPointsHead`."""

    has_keypoints = True

    @configurable
    def __init__(
        self,
        *,
        num_keypoints: int,
        num_stages: int = 2,
        columns: Sequence[int] = (3,),
        cls_on_all_stages: bool = False,
        **kwargs,
    ):
        """``num_keypoints`` K >= 1; ``kwargs`` as :class:`RepPointsHead`."""
        super().__init__(
            num_keypoints=num_keypoints,
            num_stages=num_stages,
            columns=columns,
            cls_on_all_stages=cls_on_all_stages,
            make_stage=partial(LearnedPointsStage, num_keypoints=num_keypoints),
            **kwargs,
        )

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]) -> Dict:
        return {
            **super().from_config(cfg, input_shape),
            "num_keypoints": cfg.MODEL.KGDET.NUM_KEYPOINTS,
        }
