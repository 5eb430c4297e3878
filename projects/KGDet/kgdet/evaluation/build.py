"""``build_kgdet_evaluator``: the evaluator of a dataset, chosen by its metadata."""

import logging
import os
from typing import Optional

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators

from .deepfashion2_evaluation import DeepFashion2Evaluator
from .fld_evaluation import FLDEvaluator

__all__ = ["build_kgdet_evaluator", "check_oks_sigmas_config"]

logger = logging.getLogger(__name__)


# Detectron2 meta-architectures that predict boxes and classes only.
BOX_ONLY_META_ARCHITECTURES = ("RetinaNet", "FCOS")


def _model_predicts_keypoints(cfg: CfgNode) -> bool:
    """Whether the configured model predicts keypoints (and so gets keypoint AP).

    False for Detectron2's box-only dense detectors (``BOX_ONLY_META_ARCHITECTURES``, e.g.
    RetinaNet trained on the same data as a baseline) and for KGDet's RepPoints baseline
    (learned points, no keypoint branch); True otherwise.
    """
    if cfg.MODEL.META_ARCHITECTURE in BOX_ONLY_META_ARCHITECTURES:
        return False
    kgdet_cfg = cfg.MODEL.get("KGDET", None)
    if kgdet_cfg is None:
        return True
    return kgdet_cfg.POINTS != "learned" or kgdet_cfg.KEYPOINT_BRANCH


def check_oks_sigmas_config(cfg: CfgNode, dataset_names=None) -> None:
    """Make a user-set ``TEST.KEYPOINT_OKS_SIGMAS`` count, before any training or inference.

    For each test dataset with keypoint AP: K values are used (and stated with the result,
    see :class:`DeepFashion2Evaluator`), any other count raises ValueError. Where no keypoint AP
    is computed (FLD: NE/PDL; the RepPoints baseline) a set value is reported as unused.
    """
    user = list(cfg.TEST.KEYPOINT_OKS_SIGMAS)
    if not user:
        return
    for name in cfg.DATASETS.TEST if dataset_names is None else dataset_names:
        meta = MetadataCatalog.get(name)
        evaluator_type = meta.get("evaluator_type", None)
        num_keypoints = len(meta.get("keypoint_names", None) or ())
        keypoint_ap = (
            evaluator_type in ("deepfashion2", "coco")
            and num_keypoints
            and _model_predicts_keypoints(cfg)
        )
        if not keypoint_ap:
            logger.warning(
                f"TEST.KEYPOINT_OKS_SIGMAS is set ({len(user)} values) but '{name}' gets no "
                "keypoint AP (FLD is scored by NE/PDL; RepPoints predicts no keypoints): unused."
            )
        elif len(user) != num_keypoints:
            raise ValueError(
                f"TEST.KEYPOINT_OKS_SIGMAS has {len(user)} values but dataset '{name}' has "
                f"{num_keypoints} keypoints; unset it (TEST.KEYPOINT_OKS_SIGMAS []) to use the "
                "dataset's own OKS sigmas."
            )


def build_kgdet_evaluator(
    cfg: CfgNode, dataset_name: str, output_dir: Optional[str] = None
) -> DatasetEvaluator:
    """Evaluator for ``dataset_name`` by ``metadata.evaluator_type``:

    - "deepfashion2" (DeepFashion2 and the DF2-like synthetic set) or "coco" (a DF2-style json
      registered with ``register_coco_instances``): :class:`DeepFashion2Evaluator`, box AP and
      (when the dataset has keypoints) keypoint AP with the metadata's OKS sigmas (or K sigmas
      the user sets in ``TEST.KEYPOINT_OKS_SIGMAS``, stated with the result), GT variant
      ``TEST.KEYPOINT_GT_VARIANT``, pycocotools when ``TEST.OFFICIAL_COCO_EVAL``, official
      submission files when ``TEST.WRITE_SUBMISSION``, Detectron2's
      ``coco_instances_results.json`` unless ``TEST.SAVE_COCO_RESULTS False``;
    - "fld" (FLD and the FLD-layout synthetic set): box AP plus :class:`FLDEvaluator` (NE/PDL).

    ``output_dir`` defaults to ``cfg.OUTPUT_DIR/inference/<dataset_name>``. Box AP uses COCO's
    maxDets 1/10/100 (the official protocol), whatever ``TEST.DETECTIONS_PER_IMAGE`` is.
    """
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type", None)
    if output_dir is None:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    use_fast_impl = not cfg.TEST.OFFICIAL_COCO_EVAL
    check_oks_sigmas_config(cfg, [dataset_name])
    if evaluator_type in ("deepfashion2", "coco"):
        has_keypoints = bool(meta.get("keypoint_names", None)) and _model_predicts_keypoints(cfg)
        return DeepFashion2Evaluator(
            dataset_name,
            tasks=("bbox", "keypoints") if has_keypoints else ("bbox",),
            output_dir=output_dir,
            use_fast_impl=use_fast_impl,
            keypoint_gt_variant=cfg.TEST.KEYPOINT_GT_VARIANT,
            write_submission=cfg.TEST.WRITE_SUBMISSION,
            save_results=cfg.TEST.SAVE_COCO_RESULTS,
            kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS if has_keypoints else (),
        )
    if evaluator_type == "fld":
        return DatasetEvaluators(
            [
                DeepFashion2Evaluator(
                    dataset_name,
                    tasks=("bbox",),
                    output_dir=output_dir,
                    use_fast_impl=use_fast_impl,
                    save_results=cfg.TEST.SAVE_COCO_RESULTS,
                ),
                FLDEvaluator(
                    dataset_name,
                    output_dir=output_dir,
                    visible_only=cfg.TEST.FLD_VISIBLE_ONLY,
                ),
            ]
        )
    raise ValueError(
        f"No KGDet evaluator for dataset '{dataset_name}': metadata evaluator_type is "
        f"{evaluator_type!r}, expected 'deepfashion2', 'coco' or 'fld'."
    )
