"""Config keys of KGDet, all under ``MODEL.KGDET`` (names and defaults: docs/DESIGN.md §14).

Test-time keys follow RetinaNet's naming (``*_TEST``).
"""

import difflib
import os
import re
from typing import Callable, Iterator, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["ConfigError", "add_kgdet_config", "build_config", "get_kgdet_cfg"]


class ConfigError(ValueError):
    """A config file or override a user got wrong (missing file, unknown key, bad value).

    The message is one line naming the file or key and what was expected; command-line entry
    points print it without a traceback (``kgdet.cli``).
    """


def get_kgdet_cfg(config_file: str, opts: Sequence[str] = ()) -> CN:
    """Detectron2's defaults + the KGDet keys, then ``config_file``, then ``KEY VALUE`` overrides.

    The one place scripts (train_net, demo, tools) build a config, so every script accepts the
    same files and overrides.

    Raises:
        ConfigError: missing config file, unknown key (with the nearest existing key), a value of
            the wrong type, or an odd number of override items.
    """
    return build_config(config_file, opts, add_kgdet_config)


def build_config(
    config_file: str, opts: Sequence[str] = (), *add_config: Callable[[CN], None]
) -> CN:
    """``get_cfg()`` extended by ``add_config`` functions, merged with a file and overrides.

    Detectron2/yacs raise a bare ``KeyError`` for an unknown key and a ``FileNotFoundError`` from
    deep inside the merge; this turns both (and type mismatches, odd-length overrides) into a
    :class:`ConfigError` whose one-line message names the file or key, suggests the nearest
    existing key (``difflib``), and says what was expected.
    """
    if not os.path.isfile(config_file):
        raise ConfigError(_missing_file_message(config_file))
    cfg = get_cfg()
    for add in add_config:
        add(cfg)
    try:
        cfg.merge_from_file(config_file)
    except FileNotFoundError as e:  # a missing _BASE_ file
        raise ConfigError(
            f"config file '{e.filename}' (the _BASE_ of '{config_file}') not found"
        ) from e
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(_merge_error_message(cfg, e, f"in config file '{config_file}'")) from e
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(
            f"config overrides must be KEY VALUE pairs, got an odd number of items: {opts}"
        )
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(_merge_error_message(cfg, e, "on the command line")) from e
    return cfg


def _config_keys(node: CN, prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        full = f"{prefix}{key}"
        if isinstance(value, CN):
            yield from _config_keys(value, full + ".")
        else:
            yield full


def nearest_config_key(cfg: CN, key: str) -> str:
    """The existing full key closest to ``key`` (``difflib``), or "" if nothing is close."""
    keys = list(_config_keys(cfg))
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not match:  # e.g. the right leaf under the wrong parent: compare the last component
        leaf = key.rsplit(".", 1)[-1]
        leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
        match = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1)]
    return match[0] if match else ""


def _merge_error_message(cfg: CN, error: Exception, where: str) -> str:
    text = str(error.args[0]) if error.args else str(error)
    # yacs says "Non-existent config key: K" (file) or "Non-existent key: K" (overrides).
    unknown = re.match(r"Non-existent (?:config )?key: (\S+)$", text)
    if unknown:
        key = unknown.group(1)
        near = nearest_config_key(cfg, key)
        hint = f"; did you mean {near}?" if near else ""
        return f"unknown config key {key} {where}{hint}"
    return f"bad config value {where}: {' '.join(text.split())}"


def _missing_file_message(config_file: str) -> str:
    folder = os.path.dirname(config_file) or "."
    hint = ""
    if os.path.isdir(folder):
        yamls = sorted(f for f in os.listdir(folder) if f.endswith((".yaml", ".yml")))
        near = difflib.get_close_matches(os.path.basename(config_file), yamls, n=1, cutoff=0.8)
        if near:
            hint = f"; did you mean {os.path.join(folder, near[0])}?"
    return f"config file '{config_file}' not found: expected a yaml config file{hint}"


def add_kgdet_config(cfg: CN) -> None:
    """Add the ``MODEL.KGDET`` keys (and a few project-wide ones) to ``cfg`` in place."""
    _C = cfg
    _C.MODEL.KGDET = CN()
    k = _C.MODEL.KGDET

    # ---- problem size ---------------------------------------------------------------------
    k.NUM_CLASSES = 13
    # Global keypoint slots over all classes (DeepFashion2: 294; FLD: 8).
    k.NUM_KEYPOINTS = 294
    # FPN levels fed to the head. Released config: P5 only (docs/DESIGN.md §2).
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
    # Deformable convolution implementation: "auto", "detectron2", "torchvision", "gather" or
    # "grid_sample". "auto": gather on CPU; on CUDA Detectron2's op if it runs on this GPU (tried
    # once, warns and falls back otherwise), else torchvision (docs/gpu.md).
    k.DEFORM_IMPL = "auto"
    # Channels-last (NHWC) weights and images: a speed setting, equal results up to rounding.
    # Detectron2's CUDA deformable conv gets a contiguous copy of its weight.
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

    # ---- flip fusion (paper Table 4 "flip"; docs/DESIGN.md §8.4) ----------------------------
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
    # AdamW's update as one fused kernel per parameter group (torch.optim.AdamW(fused=True)):
    # the same update up to float rounding (tested), a 4-image step of kgdet_synth.yaml 8 %
    # faster on 2 CPU cores, used where the parameters' device supports it. Off by default: the
    # rounding differences change a from-scratch run's trajectory, so the README's measured
    # results (made with the loop) would not reproduce to the digit (docs/synthetic_training.md).
    # With SOLVER.AMP.ENABLED the joint clipping accounts for the loss scale GradScaler leaves
    # in a fused optimizer's gradients (kgdet/solver.py).
    _C.SOLVER.ADAMW_FUSED = False

    # ---- evaluation ------------------------------------------------------------------------
    # Keypoint GT variant for DF2 keypoint AP: "vis_occ" (v > 0, official converter) or "vis".
    _C.TEST.KEYPOINT_GT_VARIANT = "vis_occ"
    # True: stock pycocotools on Detectron2's COCO json results (the reference; memory grows
    # with ~4.5 MB per image at 100 detections x 294 keypoints). False: compact float32 results
    # and faster-coco-eval's C++ COCOeval, equal to pycocotools (tested), full DeepFashion2 val
    # size in a few GB (kgdet.evaluation.compact_cocoeval).
    _C.TEST.OFFICIAL_COCO_EVAL = False
    # FLD NE/PDL over visible landmarks only (True, the DFA paper's protocol) or visible and
    # occluded ones (False).
    _C.TEST.FLD_VISIBLE_ONLY = True
    # Write DeepFashion2 submission files (bbox and keypoint results) during --eval-only.
    _C.TEST.WRITE_SUBMISSION = False
    # Write Detectron2's coco_instances_results.json (every detection with all K keypoints) into
    # the evaluation's output directory. False keeps only the metrics: at the DeepFashion2
    # validation size with 100 detections per image the file holds ~3.2 M records of 882 numbers.
    _C.TEST.SAVE_COCO_RESULTS = True
