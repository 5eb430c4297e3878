"""Evaluation: DeepFashion2 box/keypoint AP and FLD NE/PDL."""

from .build import build_kgdet_evaluator, check_oks_sigmas_config
from .deepfashion2_evaluation import (
    KEYPOINT_GT_VARIANTS,
    DeepFashion2Evaluator,
    convert_dataset_dicts_to_coco_json,
    keypoint_gt_variant_api,
)
from .fld_evaluation import FLDEvaluator, match_detections_to_garments
from .fld_metrics import PDL_THRESHOLDS, fld_metrics
from .official_protocol import (
    ResultsFileError,
    check_results,
    evaluate_official_results,
    load_results_json,
)
from .submission import SUBMISSION_FILES, to_submission_records, write_deepfashion2_submission
