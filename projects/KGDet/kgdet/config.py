"""Config keys of KGDet, all under ``MODEL.KGDET`` (names and defaults: KGDET_SPEC.md §14).

Test-time keys follow RetinaNet's naming (``*_TEST``), as the issue asks.
"""

from typing import Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["add_kgdet_config", "get_kgdet_cfg"]


def get_kgdet_cfg(config_file: str, opts: Sequence[str] = ()) -> CN:
    """Detectron2's defaults + the KGDet keys, then ``config_file``, then ``KEY VALUE`` overrides.

    The one place scripts (train_net, demo, tools) build a config, so every script accepts the
    same files and overrides.
    """
    cfg = get_cfg()
    add_kgdet_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def add_kgdet_config(cfg: CN) -> None:
    """Add the ``MODEL.KGDET`` keys (and a few project-wide ones) to ``cfg`` in place."""
    _C = cfg
    _C.MODEL.KGDET = CN()
    k = _C.MODEL.KGDET

    # ---- problem size ---------------------------------------------------------------------
    k.NUM_CLASSES = 13
    # Global keypoint slots over all classes (DeepFashion2: 294; FLD: 8).
    k.NUM_KEYPOINTS = 294
    # FPN levels fed to the head. Released config: P5 only (KGDET_SPEC §1).
    k.IN_FEATURES = ["p5"]
    # Compute every FPN level at inference even if the head uses only some (Table 1 FLOPs).
    k.FULL_FPN_TEST = False

    # ---- head structure ---------------------------------------------------------------------
    # 1 initial stage + (NUM_STAGES - 1) refinement stages.
    k.NUM_STAGES = 3
    # Feature aggregation: "encoding" (multi/single-column keypoint encoding) or "selection".
    k.AGG = "encoding"
    # Kernel sizes of the deformable columns; P = sum(k * k) informative points.
    k.COLUMNS = [3, 5, 7]
    # Keypoint-selection variant: number of selected keypoints n (a perfect square).
    k.SELECT_TOPK = 9
    # Re-order the selected indices ascending so kernel taps see keypoints in a stable order.
    k.SORT_SELECTED = True
    # Convs per tower (cls and reg), channels and norm.
    k.STACKED_CONVS = 3
    k.FEAT_CHANNELS = 256
    k.NORM = "GN"
    # Prior probability of the class logits at init (bias = -log((1-p)/p)).
    k.PRIOR_PROB = 0.01
    # Gradient multiplier on the DCN offsets built from the previous stage's points.
    k.GRADIENT_MUL = 0.1
    # Moment transform: gradient multiplier on lambda and parametrisation "exp" (code) or
    # "linear" (paper).
    k.MOMENT_MUL = 0.01
    k.MOMENT_PARAM = "exp"
    # Where the informative points come from: "from_keypoints" (KGDet) or "learned" (RepPoints).
    k.POINTS = "from_keypoints"
    # With POINTS "learned": predict keypoints in a parallel branch (RepPoints-Kp) or not.
    k.KEYPOINT_BRANCH = True
    # Classify at every stage (KGDet) or only at the refinement stages (RepPoints baselines).
    k.CLS_ON_ALL_STAGES = True
    # Deformable convolution implementation: "auto", "detectron2", "torchvision" or "grid_sample".
    k.DEFORM_IMPL = "auto"
    # Channels-last (NHWC) weights and images: a speed setting, equal results up to rounding.
    k.CHANNELS_LAST = False

    # ---- assignment ------------------------------------------------------------------------
    k.POINT_BASE_SCALE = 4
    # Positive cells per object (official config 25; paper k = 9).
    k.POS_NUM = 25
    # Refinement-stage assignment: "same" (reuse stage 1, KGDet) or "max_iou" (RepPoints).
    k.REFINE_ASSIGNER = "same"
    # max-IoU assigner thresholds (neg < low, pos >= high) and min positive IoU.
    k.REFINE_IOU_THRESHOLDS = [0.4, 0.5]
    k.REFINE_MIN_POS_IOU = 0.0
    # Grid reference point offset in cells (official: 0.0, i.e. x = j * s).
    k.GRID_OFFSET = 0.0

    # ---- losses ----------------------------------------------------------------------------
    k.FOCAL_LOSS_ALPHA = 0.25
    k.FOCAL_LOSS_GAMMA = 2.0
    k.SMOOTH_L1_LOSS_BETA = 0.1111
    # Per-stage weights (length NUM_STAGES) of the cls, box and keypoint terms.
    k.CLS_STAGE_WEIGHTS = [0.5, 0.5, 1.0]
    k.BOX_STAGE_WEIGHTS = [0.5, 0.5, 1.0]
    k.KP_STAGE_WEIGHTS = [0.5, 0.5, 1.0]
    # Keypoint-loss normalisation: "per_instance_x4" (KGDet) or "per_instance" (RepPoints-Kp).
    k.KP_NORM = "per_instance_x4"
    # Visibility BCE weight (keypoint-selection variant only).
    k.VIS_WEIGHT = 1.0

    # ---- flip fusion (KGDET_SPEC §8.4) -----------------------------------------------------
    k.FLIP_FUSION = False

    # ---- inference -------------------------------------------------------------------------
    k.SCORE_THRESH_TEST = 0.05
    k.TOPK_CANDIDATES_TEST = 1000
    k.NMS_THRESH_TEST = 0.5

    # ---- solver ----------------------------------------------------------------------------
    # Clip the L2 norm of all gradients jointly (official: 35). 0 disables it.
    _C.SOLVER.CLIP_GRADIENTS_FULL_MODEL_NORM = 35.0
    # "SGD" (official, uses SOLVER.MOMENTUM / NESTEROV) or "ADAMW" (for short from-scratch CPU
    # schedules; SOLVER.WEIGHT_DECAY is then AdamW's decoupled decay).
    _C.SOLVER.OPTIMIZER = "SGD"

    # ---- evaluation ------------------------------------------------------------------------
    # Keypoint GT variant for DF2 keypoint AP: "vis_occ" (v > 0, official converter) or "vis".
    _C.TEST.KEYPOINT_GT_VARIANT = "vis_occ"
    # Use pycocotools (official) instead of Detectron2's fast C++ COCO eval.
    _C.TEST.OFFICIAL_COCO_EVAL = True
    # FLD NE/PDL over visible landmarks only (True, the DFA paper's protocol) or visible and
    # occluded ones (False).
    _C.TEST.FLD_VISIBLE_ONLY = True
    # Write DeepFashion2 submission files (bbox and keypoint results) during --eval-only.
    _C.TEST.WRITE_SUBMISSION = False
