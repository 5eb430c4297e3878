"""DeepFashion2 box and keypoint AP through Detectron2's ``COCOEvaluator`` (docs/DESIGN.md §15.3).

The official DeepFashion2 protocol is stock COCO evaluation (pycocotools) with 294 per-landmark
OKS sigmas. ``DeepFashion2Evaluator`` keeps Detectron2's ``COCOEvaluator`` (result export,
gathering, per-category AP, NaN for zero detections) and changes only what the protocol needs:

- the OKS sigmas come from the dataset metadata ``keypoint_oks_sigmas`` unless the user sets
  K sigmas (below); a keypoint dataset without them is an error, not a silent fall-back to
  COCO's 17 person sigmas;
- keypoint results are evaluated **without** their ``bbox`` field, like an official submission
  (and the official KGDet writer): pycocotools then takes a detection's area from the extent of
  its keypoints. Detectron2 keeps the box, which only moves which unmatched detections are
  ignored in the medium/large buckets (AP_M/AP_L); AP, AP50, AP75 are identical either way.
  ``official_keypoint_area=False`` restores Detectron2's behaviour;
- keypoint ground-truth variant: ``"vis_occ"`` (visible and occluded landmarks count, v > 0: the
  official converter's semantics) or ``"vis"`` (occluded landmarks demoted to unlabelled and
  ``num_keypoints`` recomputed). The variant is part of the result key
  (``keypoints_vis_occ`` / ``keypoints_vis``) so it is stated with every figure;
- pycocotools is used unless ``use_fast_impl=True`` (``TEST.OFFICIAL_COCO_EVAL``); box maxDets
  stay COCO's 1/10/100 and keypoint maxDets 20, as the official evaluation;
- datasets registered as dicts (no ``json_file``) are converted to COCO json in ``output_dir``
  with ``area`` = box area (DeepFashion2's definition: the OKS scale and the size bucket),
  without mutating the registered dicts, and (unlike ``COCOEvaluator``) without leaving
  ``json_file`` in the metadata, so every evaluator converts the current dicts;
- a dataset without annotations (``deepfashion2_test``) is not evaluated; with
  ``write_submission=True`` the official bbox and keypoint result files are written
  (:mod:`kgdet.evaluation.submission`);
- predictions are checked to carry K keypoints (K = ``len(keypoint_names)``), and the model's
  ``pred_keypoints`` are not modified (Detectron2's export subtracts 0.5 in place otherwise);
- a DeepFashion2 / FLD json is checked when the evaluator is built
  (:mod:`kgdet.data.validation`): unusable files raise naming the file, record and field;
  missing ``area`` / ``iscrowd`` / ``num_keypoints`` are filled with the DeepFashion2
  definition (logged), and a subset or raw-name ``categories`` list is replaced by the official
  records, so pycocotools never fails at the end of a long inference pass;
- the ground truth is checked across records and fields (:mod:`kgdet.data.consistency`, the
  same checks as registration and ``tools/check_dataset.py``): a photo listed twice, boxes of
  zero width or height and landmarks outside their class block are refused when the evaluator
  is built; a set without any labelled landmark evaluates boxes only, and keypoint AP is
  reported as not computed (a warning with the reason, no keypoint result) instead of NaN;
- ``kpt_oks_sigmas`` (``TEST.KEYPOINT_OKS_SIGMAS``) given by the user replace the metadata's
  sigmas only when they have K values; the evaluator logs which sigmas it uses with every
  keypoint result, and a wrong count is an error (see ``build_kgdet_evaluator``).
"""

import contextlib
import copy
import io
import itertools
import logging
import os
import uuid
from typing import Optional, Sequence
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as d2_coco_evaluation
from detectron2.structures import Instances

from ..data.consistency import check_coco_consistency
from ..data.validation import (
    AnnotationSchema,
    check_annotation_file,
    check_coco_annotations,
    official_categories,
)
from ..file_io import write_json_atomic
from .submission import write_deepfashion2_submission

__all__ = [
    "KEYPOINT_GT_VARIANTS",
    "DeepFashion2Evaluator",
    "convert_dataset_dicts_to_coco_json",
    "keypoint_gt_variant_api",
]

logger = logging.getLogger(__name__)

KEYPOINT_GT_VARIANTS = ("vis_occ", "vis")


def convert_dataset_dicts_to_coco_json(dataset_name: str, output_path: str) -> str:
    """COCO json of a dict-registered dataset with ``area`` = box area (docs/DESIGN.md §15.2).

    Uses Detectron2's ``convert_to_coco_dict`` on a deep copy of the dicts with the
    segmentation removed (so it takes the box area instead of the polygon area, and so its
    in-place -0.5 on keypoints never reaches the registered dicts).
    """
    dicts = copy.deepcopy(DatasetCatalog.get(dataset_name))
    for record in dicts:
        for anno in record.get("annotations", []):
            anno.pop("segmentation", None)
    meta = MetadataCatalog.get(dataset_name)
    tmp_name = f"__kgdet_coco_conversion_{uuid.uuid4().hex}"
    DatasetCatalog.register(tmp_name, lambda: dicts)
    tmp_meta = {"thing_classes": list(meta.thing_classes)}
    if hasattr(meta, "thing_dataset_id_to_contiguous_id"):
        tmp_meta["thing_dataset_id_to_contiguous_id"] = meta.thing_dataset_id_to_contiguous_id
    MetadataCatalog.get(tmp_name).set(**tmp_meta)
    try:
        coco_dict = convert_to_coco_dict(tmp_name)
    finally:
        DatasetCatalog.remove(tmp_name)
        MetadataCatalog.remove(tmp_name)
    write_json_atomic(output_path, coco_dict)
    logger.info(f"Converted '{dataset_name}' to COCO json (box areas) at {output_path}")
    return output_path


def keypoint_gt_variant_api(coco_api: COCO, variant: str) -> COCO:
    """The keypoint GT for ``variant``: "vis_occ" = unchanged; "vis" = occluded (v=1) points
    demoted to unlabelled (v=0, x=y=0) and ``num_keypoints`` = #(v == 2). An annotation left
    with no labelled point becomes an ignored GT for keypoint AP, as in pycocotools."""
    if variant not in KEYPOINT_GT_VARIANTS:
        raise ValueError(
            f"TEST.KEYPOINT_GT_VARIANT must be one of {KEYPOINT_GT_VARIANTS}, got '{variant}'."
        )
    if variant == "vis_occ":
        return coco_api
    dataset = copy.deepcopy(coco_api.dataset)
    for anno in dataset.get("annotations", []):
        kps = anno.get("keypoints")
        if not kps:
            continue
        for i in range(2, len(kps), 3):
            if kps[i] != 2:
                kps[i - 2] = kps[i - 1] = kps[i] = 0
        anno["num_keypoints"] = sum(1 for v in kps[2::3] if v > 0)
    api = COCO()
    api.dataset = dataset
    api.createIndex()
    return api


class DeepFashion2Evaluator(COCOEvaluator):
    """COCO box (+ keypoint) AP with the DeepFashion2 protocol; see the module docstring.

    With ``tasks=("bbox",)`` it is the box-AP evaluator of any garment dataset (FLD uses it).
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] = ("bbox", "keypoints"),
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[int] = None,
        use_fast_impl: bool = False,
        keypoint_gt_variant: str = "vis_occ",
        official_keypoint_area: bool = True,
        write_submission: bool = False,
        kpt_oks_sigmas: Sequence[float] = (),
    ):
        tasks = tuple(tasks)
        unknown = set(tasks) - {"bbox", "keypoints"}
        if unknown:
            raise ValueError(f"DeepFashion2Evaluator: unsupported tasks {sorted(unknown)}.")
        if keypoint_gt_variant not in KEYPOINT_GT_VARIANTS:
            raise ValueError(
                f"TEST.KEYPOINT_GT_VARIANT must be one of {KEYPOINT_GT_VARIANTS}, "
                f"got '{keypoint_gt_variant}'."
            )
        meta = MetadataCatalog.get(dataset_name)
        self._num_keypoints = len(meta.get("keypoint_names", []) or [])
        sigmas = ()
        if "keypoints" in tasks:
            sigmas = tuple(float(s) for s in (meta.get("keypoint_oks_sigmas", None) or ()))
            if not sigmas:
                raise ValueError(
                    f"Dataset '{dataset_name}' has no 'keypoint_oks_sigmas' in its metadata: "
                    "keypoint AP needs the dataset's OKS sigmas (DeepFashion2: the 294 official "
                    "values). Register it with kgdet.data.register_deepfashion2_instances, or "
                    "evaluate boxes only."
                )
            if len(sigmas) != self._num_keypoints:
                raise ValueError(
                    f"Dataset '{dataset_name}': {len(sigmas)} keypoint_oks_sigmas but "
                    f"{self._num_keypoints} keypoint_names; they must agree."
                )
        if "keypoints" in tasks and kpt_oks_sigmas:
            user = tuple(float(s) for s in kpt_oks_sigmas)
            if len(user) != self._num_keypoints:
                raise ValueError(
                    f"TEST.KEYPOINT_OKS_SIGMAS has {len(user)} values but dataset "
                    f"'{dataset_name}' has {self._num_keypoints} keypoints; unset it "
                    "(TEST.KEYPOINT_OKS_SIGMAS []) to use the dataset's own OKS sigmas."
                )
            self._user_sigmas = user != sigmas
            if self._user_sigmas:
                logger.warning(
                    f"Dataset '{dataset_name}': keypoint AP uses the {len(user)} OKS sigmas of "
                    "TEST.KEYPOINT_OKS_SIGMAS, not the dataset's official sigmas; the result is "
                    "not comparable with the official protocol."
                )
            sigmas = user
        else:
            self._user_sigmas = False
        self._sigma_source = (
            "TEST.KEYPOINT_OKS_SIGMAS (user-set, not the dataset's official sigmas)"
            if self._user_sigmas
            else "the dataset's metadata (official)"
        )
        converted_here = not hasattr(meta, "json_file")
        schema = None if converted_here else AnnotationSchema.from_metadata(meta)
        if schema is not None:
            # Before pycocotools reads it: unusable files fail here, naming file and field.
            check_annotation_file(meta.json_file, schema)
        if converted_here:
            if output_dir is None:
                raise ValueError(
                    f"Dataset '{dataset_name}' has no json_file: DeepFashion2Evaluator needs "
                    "an output_dir to write its COCO-format conversion."
                )
            json_path = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
            convert_dataset_dicts_to_coco_json(dataset_name, json_path)
            meta.json_file = json_path
        try:
            super().__init__(
                dataset_name,
                tasks=tasks,
                distributed=distributed,
                output_dir=output_dir,
                max_dets_per_image=max_dets_per_image,
                use_fast_impl=use_fast_impl,
                kpt_oks_sigmas=sigmas,
                allow_cached_coco=False,
            )
        finally:
            if converted_here:
                # Unlike COCOEvaluator, do not leave json_file in the global metadata: a later
                # evaluator (another run, another output_dir) converts the current dicts again
                # instead of reading a stale or deleted file.
                del meta.json_file
        if schema is not None:
            dataset = self._coco_api.dataset
            check_coco_annotations(dataset, meta.json_file, schema, fill=True)
            dataset["categories"] = official_categories(schema, dataset.get("categories", []))
            with contextlib.redirect_stdout(io.StringIO()):
                self._coco_api.createIndex()
        self._dataset_name = dataset_name
        self._keypoint_gt_variant = keypoint_gt_variant
        self._official_keypoint_area = official_keypoint_area
        self._write_submission = write_submission
        if not self._coco_api.dataset.get("annotations"):
            self._do_evaluation = False
        if self._do_evaluation:
            self._kpt_oks_sigmas = sigmas
            self._keypoint_coco_api = keypoint_gt_variant_api(self._coco_api, keypoint_gt_variant)
        self._keypoint_ap_not_computed = self._check_ground_truth_consistency(meta)

    def _check_ground_truth_consistency(self, meta) -> Optional[str]:
        """Cross-record checks of the ground truth (:mod:`kgdet.data.consistency`): errors
        raise ``AnnotationFileError``; without any labelled landmark the keypoint task is
        dropped and the reason returned (logged once here, and with the results)."""
        if not self._do_evaluation:
            return None
        slots = meta.get("class_keypoint_slots", None)
        # Category id of class 0 in the COCO json: Detectron2's conversion of a dataset without
        # an id mapping writes the contiguous class; a json keeps its (offset) dataset ids.
        mapping = meta.get("thing_dataset_id_to_contiguous_id", None) or {}
        first = min(mapping) if mapping else 0
        if any(mapping[k] != k - first for k in mapping):
            slots = None  # not an offset mapping: leave the landmark-block check out
        source = meta.get("json_file", None) or f"dataset '{self._dataset_name}'"
        report = check_coco_consistency(self._coco_api.dataset, source, slots, first)
        report.raise_if_errors()
        if not (report.no_labelled_keypoints and "keypoints" in (self._tasks or ())):
            return None
        self._tasks = tuple(t for t in self._tasks if t != "keypoints")
        reason = (
            f"keypoint AP ({self.keypoint_result_key}) not computed for '{self._dataset_name}': "
            f"none of its {len(self._coco_api.dataset['annotations'])} garments has a labelled "
            "landmark (v > 0) in 'keypoints' (a box-only annotation set); box AP only"
        )
        logger.warning(reason)
        return reason

    def evaluate(self, img_ids=None):
        results = super().evaluate(img_ids)
        if self._keypoint_ap_not_computed and results is not None:
            logger.warning(self._keypoint_ap_not_computed)
        return results

    @property
    def keypoint_result_key(self) -> str:
        """Result key of keypoint AP, naming the GT variant (e.g. ``keypoints_vis_occ``)."""
        return f"keypoints_{self._keypoint_gt_variant}"

    def process(self, inputs, outputs):
        safe_outputs = []
        for inp, out in zip(inputs, outputs):
            if "instances" in out and out["instances"].has("pred_keypoints"):
                inst = out["instances"]
                kps = inst.pred_keypoints
                if self._num_keypoints and (kps.dim() != 3 or kps.shape[1] != self._num_keypoints):
                    raise ValueError(
                        f"DeepFashion2Evaluator: image_id {inp.get('image_id')}: pred_keypoints "
                        f"has shape {tuple(kps.shape)}, expected (N, {self._num_keypoints}, 3) "
                        f"for dataset '{self._dataset_name}'."
                    )
                # A new Instances sharing every field but the keypoints, which Detectron2's
                # export shifts in place.
                inst = Instances(inst.image_size, **inst.get_fields())
                inst.pred_keypoints = kps.detach().clone()
                out = {**out, "instances": inst}
            safe_outputs.append(out)
        super().process(inputs, safe_outputs)

    def _eval_predictions(self, predictions, img_ids=None):
        """Like ``COCOEvaluator._eval_predictions``, plus the DeepFashion2 specifics above."""
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)

        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            mapping = self._metadata.thing_dataset_id_to_contiguous_id
            reverse = {v: k for k, v in mapping.items()}
            for result in coco_results:
                if result["category_id"] not in reverse:
                    raise ValueError(
                        f"A prediction has class {result['category_id']}, but dataset "
                        f"'{self._dataset_name}' has classes 0..{len(reverse) - 1}."
                    )
                result["category_id"] = reverse[result["category_id"]]

        if self._output_dir:
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {path}")
            write_json_atomic(path, coco_results)
        if self._write_submission:
            if not self._output_dir:
                raise ValueError("TEST.WRITE_SUBMISSION needs an output directory.")
            write_deepfashion2_submission(coco_results, self._output_dir)

        if not self._do_evaluation:
            self._logger.info(
                f"'{self._dataset_name}' has no annotations: results written, nothing evaluated."
            )
            return

        self._logger.info(
            "Evaluating predictions with {} COCO API...".format(
                "unofficial" if self._use_fast_impl else "official"
            )
        )
        cocoeval_fn = d2_coco_evaluation.COCOeval_opt if self._use_fast_impl else COCOeval
        for task in sorted(tasks):
            task_results = [self._result_view(r, task) for r in coco_results]
            if task == "keypoints":
                coco_api = self._keypoint_coco_api
                landmarks = {"vis_occ": "visible and occluded", "vis": "visible only"}
                area = "keypoints (official)" if self._official_keypoint_area else "boxes"
                log = self._logger.warning if self._user_sigmas else self._logger.info
                log(
                    f"Keypoint AP ({self.keypoint_result_key}): ground-truth variant "
                    f"'{self._keypoint_gt_variant}' ({landmarks[self._keypoint_gt_variant]} "
                    f"landmarks), {len(self._kpt_oks_sigmas)} OKS sigmas from "
                    f"{self._sigma_source}, detection area from {area}."
                )
            else:
                coco_api = self._coco_api
            coco_eval = (
                d2_coco_evaluation._evaluate_predictions_on_coco(
                    coco_api,
                    task_results,
                    task,
                    kpt_oks_sigmas=self._kpt_oks_sigmas,
                    cocoeval_fn=cocoeval_fn,
                    img_ids=img_ids,
                    max_dets_per_image=self._max_dets_per_image,
                )
                if task_results
                else None  # cocoapi does not handle empty results; NaN below
            )
            res = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )
            self._results[self.keypoint_result_key if task == "keypoints" else task] = res

    def _result_view(self, result: dict, task: str) -> dict:
        """A fresh per-task copy (pycocotools' loadRes adds fields to the dicts it gets)."""
        view = {k: result[k] for k in ("image_id", "category_id", "score")}
        if task == "bbox" or not self._official_keypoint_area:
            view["bbox"] = result["bbox"]
        if task == "keypoints":
            view["keypoints"] = result["keypoints"]
        return view
