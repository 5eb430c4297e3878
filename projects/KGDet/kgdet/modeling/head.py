"""The KGDet head, and the builder that picks the head a config describes.

docs/DESIGN.md §2-4 (structure, init, moment transform), §8.4 (flip fusion) and §10 (baselines).
Output contract: :class:`~kgdet.modeling.cascade_head.CascadeHead`.
"""

from functools import partial
from typing import Dict, List, Sequence

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from .cascade_head import CascadeHead, checked_columns
from .reppoints_head import RepPointsHead, RepPointsKpHead
from .stages import EncodingStage, SelectionStage

__all__ = ["KGDetHead", "build_kgdet_head"]

AGGREGATIONS = ("encoding", "selection")


class KGDetHead(CascadeHead):
    """KGDet's head: the informative points are made from the predicted keypoints (§2-3).

    ``agg`` "encoding" encodes the keypoint offsets into points (:class:`EncodingStage`, multi-
    or single-column by ``columns``); "selection" takes the keypoints a visibility classifier
    ranks highest (:class:`SelectionStage`, which adds the "vis" output). With
    ``cls_on_all_stages`` False, 2 stages and ``columns`` [3] it is the serial RepPoints-Kp
    baseline (§10, ``configs/reppoints_kp_serial_R50.yaml``).
    """

    @configurable
    def __init__(
        self,
        *,
        num_keypoints: int,
        agg: str = "encoding",
        columns: Sequence[int] = (3, 5, 7),
        select_topk: int = 9,
        sort_selected: bool = True,
        **kwargs,
    ):
        """
        Args:
            num_keypoints: K >= 1.
            agg: "encoding" (multi/single-column keypoint encoding) or "selection".
            columns: odd DCN kernel sizes; P = sum(k*k).
            select_topk: keypoints selected per location (agg "selection"): must equal P.
            sort_selected: sort the selected indices ascending (agg "selection").
            kwargs: the options of :class:`CascadeHead` but ``make_stage``.

        Raises:
            ValueError: an inconsistent option, naming its ``MODEL.KGDET`` key.
        """
        columns = checked_columns(columns)
        if agg == "encoding":
            make_stage = partial(EncodingStage, num_keypoints=num_keypoints)
        elif agg == "selection":
            _check_selection(select_topk, columns, num_keypoints)
            make_stage = partial(
                SelectionStage, num_keypoints=num_keypoints, sort_selected=sort_selected
            )
        else:
            raise ValueError(f"MODEL.KGDET.AGG must be one of {AGGREGATIONS}, got {agg!r}")
        super().__init__(
            num_keypoints=num_keypoints, columns=columns, make_stage=make_stage, **kwargs
        )
        self.has_visibility = agg == "selection"

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]) -> Dict:
        k = cfg.MODEL.KGDET
        return {
            **super().from_config(cfg, input_shape),
            "num_keypoints": k.NUM_KEYPOINTS,
            "agg": k.AGG,
            "select_topk": k.SELECT_TOPK,
            "sort_selected": k.SORT_SELECTED,
        }


def _check_selection(select_topk: int, columns: List[int], num_keypoints: int) -> None:
    num_points = sum(k * k for k in columns)
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


def build_kgdet_head(cfg, input_shape: List[ShapeSpec]) -> CascadeHead:
    """The head ``MODEL.KGDET.POINTS`` and ``KEYPOINT_BRANCH`` describe, built from ``cfg``.

    * POINTS "from_keypoints": :class:`KGDetHead` (KGDet, and the serial RepPoints-Kp);
    * POINTS "learned", KEYPOINT_BRANCH False: :class:`RepPointsHead`;
    * POINTS "learned", KEYPOINT_BRANCH True: :class:`RepPointsKpHead` (parallel).

    Args:
        input_shape: shapes of the levels ``MODEL.KGDET.IN_FEATURES`` feeds to the head.

    Raises:
        ValueError: an unknown POINTS, POINTS "from_keypoints" with KEYPOINT_BRANCH False, or
            learned points with an ``AGG`` other than "encoding" (AGG makes points from
            keypoints); the head's own checks.
    """
    k = cfg.MODEL.KGDET
    if k.POINTS == "from_keypoints":
        if not k.KEYPOINT_BRANCH:
            raise ValueError(
                "MODEL.KGDET.KEYPOINT_BRANCH False needs MODEL.KGDET.POINTS 'learned' (points "
                "made from keypoints need the keypoint branch), got POINTS 'from_keypoints'"
            )
        return KGDetHead(cfg, input_shape)
    if k.POINTS == "learned":
        if k.AGG != "encoding":
            raise ValueError(
                f"MODEL.KGDET.AGG {k.AGG!r} makes points from keypoints and cannot be combined "
                "with MODEL.KGDET.POINTS 'learned'; use POINTS 'from_keypoints' or AGG 'encoding'"
            )
        head_class = RepPointsKpHead if k.KEYPOINT_BRANCH else RepPointsHead
        return head_class(cfg, input_shape)
    raise ValueError(f"MODEL.KGDET.POINTS must be 'from_keypoints' or 'learned', got {k.POINTS!r}")
