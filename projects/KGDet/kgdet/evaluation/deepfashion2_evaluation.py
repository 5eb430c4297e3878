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
- ``use_fast_impl=True`` (``TEST.OFFICIAL_COCO_EVAL False``, the default config) keeps each
  detection compact (:mod:`kgdet.evaluation.compact_results`: float32 arrays with the predicted
  class's keypoint block and the keypoint extent, gathered across ranks as arrays) and computes
  AP with faster-coco-eval's C++ COCOeval in chunks of images
  (:mod:`kgdet.evaluation.compact_cocoeval`), equal to pycocotools; the result files are
  written record by record from the compact arrays and the full keypoints kept in a temporary
  file (:mod:`kgdet.evaluation.result_files`). ``use_fast_impl=False`` is the reference: stock
  pycocotools on Detectron2's COCO json results (``instances_predictions.pth`` is written only
  there). The compact path drops the ``keypoints`` lists from ``self._coco_api`` once its
  arrays are built. Box maxDets stay COCO's 1/10/100 and keypoint maxDets 20, as the official
  evaluation;
- datasets registered as dicts (no ``json_file``) are converted to COCO json in ``output_dir``
  with ``area`` = box area (DeepFashion2's definition: the OKS scale and the size bucket),
  without mutating the registered dicts, and (unlike ``COCOEvaluator``) without leaving
  ``json_file`` in the metadata, so every evaluator converts the current dicts;
- ``save_results=False`` (``TEST.SAVE_COCO_RESULTS False``) skips Detectron2's
  ``coco_instances_results.json`` (all K keypoints of every detection: tens of GB at the
  DeepFashion2 validation size with 100 detections per image);
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
import numbers
import numpy as np
import os
import uuid
from collections import OrderedDict
from typing import Iterator, List, Optional, Sequence
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as d2_coco_evaluation
from detectron2.structures import Instances
from detectron2.utils import comm

from ..data.consistency import check_coco_consistency
from ..data.validation import (
    AnnotationSchema,
    check_annotation_file,
    check_coco_annotations,
    official_categories,
)
from ..file_io import write_json_atomic
from .compact_cocoeval import evaluate_compact
from .compact_results import CompactDetections, CompactGroundTruth, DetectionAccumulator
from .result_files import KeypointSpill, detectron2_records, iter_chunks, write_json_lists
from .submission import SUBMISSION_FILES, to_submission_records, write_deepfashion2_submission

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

    # Compact path: images per faster-coco-eval evaluation chunk, detections per piece of the
    # result files (both bound the memory beyond the compact arrays).
    images_per_chunk = 1000
    result_chunk_size = 2000

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] = ("bbox", "keypoints"),
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[int] = None,
        use_fast_impl: bool = True,
        keypoint_gt_variant: str = "vis_occ",
        official_keypoint_area: bool = True,
        write_submission: bool = False,
        kpt_oks_sigmas: Sequence[float] = (),
        save_results: bool = True,
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
        self._save_results = save_results
        if not self._coco_api.dataset.get("annotations"):
            self._do_evaluation = False
        if self._do_evaluation:
            self._kpt_oks_sigmas = sigmas
            if use_fast_impl:
                self._compact_gt = CompactGroundTruth.from_coco_dataset(
                    self._coco_api.dataset, keypoint_gt_variant if "keypoints" in tasks else None
                )
            else:
                self._keypoint_coco_api = keypoint_gt_variant_api(
                    self._coco_api, keypoint_gt_variant
                )
        self._keypoint_ap_not_computed = self._check_ground_truth_consistency(meta)
        if self._do_evaluation and use_fast_impl:
            # The compact ground truth has every garment's labelled landmarks: free the K x 3
            # lists of the json (hundreds of MB at the DeepFashion2 validation size).
            for anno in self._coco_api.dataset.get("annotations", []):
                anno.pop("keypoints", None)
        self._spill: Optional[KeypointSpill] = None
        self.reset()

    def _check_ground_truth_consistency(self, meta) -> Optional[str]:
        """Cross-record checks of the ground truth (:mod:`kgdet.data.consistency`): errors
        raise ``AnnotationFileError``; without any labelled landmark the keypoint task is
        dropped and the reason returned (logged here as a warning; the results only say box AP
        only)."""
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

    @property
    def keypoint_result_key(self) -> str:
        """Result key of keypoint AP, naming the GT variant (e.g. ``keypoints_vis_occ``)."""
        return f"keypoints_{self._keypoint_gt_variant}"

    def reset(self):
        super().reset()
        if getattr(self, "_spill", None) is not None:
            self._spill.close()
        self._spill = None
        self._num_images = 0
        self._results_have_keypoints: Optional[bool] = None
        self._accumulator = None
        if self._use_fast_impl:
            self._accumulator = DetectionAccumulator(
                self._num_keypoints if "keypoints" in self._tasks else 0,
                self._metadata.get("class_keypoint_slots", None),
                self._full_keypoint_pairs(),
            )

    def _full_keypoint_pairs(self):
        if not self._do_evaluation or "keypoints" not in self._tasks:
            return set()
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        if mapping is None:
            mapping = {int(c): i for i, c in enumerate(self._compact_gt.category_ids)}
        return self._compact_gt.full_keypoint_pairs(
            self._metadata.get("class_keypoint_slots", None), mapping
        )

    def _check_keypoints(self, image_id, kps) -> None:
        if self._num_keypoints and (kps.dim() != 3 or kps.shape[1] != self._num_keypoints):
            raise ValueError(
                f"DeepFashion2Evaluator: image_id {image_id}: pred_keypoints "
                f"has shape {tuple(kps.shape)}, expected (N, {self._num_keypoints}, 3) "
                f"for dataset '{self._dataset_name}'."
            )

    def process(self, inputs, outputs):
        if self._use_fast_impl:
            for inp, out in zip(inputs, outputs):
                if "instances" in out:
                    self._process_compact(inp["image_id"], out["instances"].to("cpu"))
            return
        safe_outputs = []
        for inp, out in zip(inputs, outputs):
            if "instances" in out and out["instances"].has("pred_keypoints"):
                inst = out["instances"]
                kps = inst.pred_keypoints
                self._check_keypoints(inp.get("image_id"), kps)
                # A new Instances sharing every field but the keypoints, which Detectron2's
                # export shifts in place.
                inst = Instances(inst.image_size, **inst.get_fields())
                inst.pred_keypoints = kps.detach().clone()
                out = {**out, "instances": inst}
            safe_outputs.append(out)
        super().process(inputs, safe_outputs)

    def _process_compact(self, image_id, inst: Instances) -> None:
        """One image's predictions into the compact arrays (and the keypoint spill file)."""
        if not isinstance(image_id, (numbers.Integral, np.integer)):
            raise ValueError(
                f"DeepFashion2Evaluator: image_id {image_id!r} ({type(image_id).__name__}) of "
                f"dataset '{self._dataset_name}': expected an integer (the COCO json image id)."
            )
        image_id = int(image_id)
        classes = inst.pred_classes.numpy().astype(np.int64)
        num_classes = len(self._metadata.thing_classes)
        if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(
                f"A prediction of image_id {image_id} has class {int(classes.max())}, but "
                f"dataset '{self._dataset_name}' has classes 0..{num_classes - 1}."
            )
        kps = None
        if inst.has("pred_keypoints"):
            self._check_keypoints(image_id, inst.pred_keypoints)
            kps = np.asarray(inst.pred_keypoints.detach().numpy(), dtype=np.float32)
        if self._results_have_keypoints is None:
            self._results_have_keypoints = kps is not None
        elif self._results_have_keypoints != (kps is not None):
            raise ValueError(
                f"DeepFashion2Evaluator: image_id {image_id}: pred_keypoints present in some "
                "images' predictions and absent in others."
            )
        self._num_images += 1
        if kps is not None and (self._output_dir and self._save_results or self._write_submission):
            if self._spill is None:
                self._spill = KeypointSpill(
                    self._output_dir or ".", kps.shape[1] if kps.ndim == 3 else 0
                )
            shifted = kps.copy()
            shifted[:, :, :2] -= np.float32(0.5)  # Detectron2's instances_to_coco_json
            self._spill.append(shifted)
        self._accumulator.add(
            image_id,
            np.asarray(inst.pred_boxes.tensor.detach().numpy(), dtype=np.float32),
            np.asarray(inst.scores.detach().numpy(), dtype=np.float32),
            classes,
            kps if "keypoints" in self._tasks else None,
        )

    def evaluate(self, img_ids=None):
        """Gather, write the result files, evaluate (main process); see the module docstring.

        Returns:
            task -> metrics on the main process (``{}`` on the others, without predictions,
            or for a dataset without annotations).
        """
        if self._use_fast_impl:
            try:
                results = self._evaluate_compact(img_ids)
            finally:
                if self._spill is not None:
                    self._spill.close()
                    self._spill = None
        else:
            results = super().evaluate(img_ids)
        if self._keypoint_ap_not_computed and results is not None:
            logger.info(
                f"'{self._dataset_name}': box AP only; keypoint AP not computed (a box-only "
                "annotation set, warned when the evaluator was built)"
            )
        return results

    def _evaluate_compact(self, img_ids=None):
        dets = self._accumulator.result()
        spilled = self._spill.count if self._spill is not None else 0
        distributed = self._distributed and comm.get_world_size() > 1
        if distributed:
            comm.synchronize()
            counts = comm.all_gather((self._num_images, spilled))
            parts = comm.gather(dets, dst=0)
            dets = CompactDetections.concatenate(parts) if comm.is_main_process() else None
        else:
            counts = [(self._num_images, spilled)]
        if sum(c[0] for c in counts) == 0:
            self._logger.warning("[COCOEvaluator] Did not receive valid predictions.")
            return {}
        if comm.is_main_process() or not distributed:
            mapping = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
            if mapping is not None:
                reverse = np.zeros(max(mapping.values()) + 1, dtype=np.int64)
                for dataset_id, contiguous in mapping.items():
                    reverse[contiguous] = dataset_id
                dets.classes = reverse[dets.classes]
        self._write_result_files(dets, [c[1] for c in counts], distributed)
        if distributed and not comm.is_main_process():
            return {}
        self._results = OrderedDict()
        if not self._do_evaluation:
            self._logger.info(
                f"'{self._dataset_name}' has no annotations: results written, nothing evaluated."
            )
            return {}
        self._logger.info("Evaluating predictions with faster-coco-eval on compact results...")
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id", None) or {
            int(c): i for i, c in enumerate(self._compact_gt.category_ids)
        }
        for task in sorted(self._tasks):
            if task == "keypoints":
                self._log_keypoint_protocol()
            coco_eval = None  # no detections: NaN below
            if len(dets):
                coco_eval = evaluate_compact(
                    self._compact_gt,
                    dets,
                    task,
                    dataset_to_contiguous=mapping,
                    kpt_oks_sigmas=self._kpt_oks_sigmas if task == "keypoints" else None,
                    class_slots=self._metadata.get("class_keypoint_slots", None),
                    max_dets_per_image=self._max_dets_per_image,
                    keypoint_area=self._official_keypoint_area,
                    img_ids=img_ids,
                    images_per_chunk=self.images_per_chunk,
                )
            res = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )
            self._results[self.keypoint_result_key if task == "keypoints" else task] = res
        return copy.deepcopy(self._results)

    def _gathered_keypoints(
        self, spilled: List[int], distributed: bool, chunk: int
    ) -> Iterator[Optional[np.ndarray]]:
        """Every rank's spilled keypoints in rank order, ``chunk`` detections at a time, on the
        main process (None elsewhere); every process runs the same gather rounds."""
        rank = comm.get_rank() if distributed else 0
        for source, total in enumerate(spilled):
            for start, count in iter_chunks(total, chunk):
                payload = self._spill.read(start, count) if rank == source else None
                if distributed and source != 0:
                    gathered = comm.gather(payload, dst=0)
                    payload = gathered[source] if rank == 0 else None
                yield payload

    def _write_result_files(self, dets, spilled: List[int], distributed: bool) -> None:
        """``coco_instances_results.json`` (output_dir) and the official submission files
        (``write_submission``), record by record, atomically."""
        if self._write_submission and not self._output_dir:
            raise ValueError("TEST.WRITE_SUBMISSION needs an output directory.")
        if not self._output_dir or not (self._save_results or self._write_submission):
            return
        main = not distributed or comm.is_main_process()
        paths = {}
        if main and self._save_results:
            paths["results"] = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {paths['results']}")
        if main and self._write_submission:
            paths["bbox"] = os.path.join(self._output_dir, SUBMISSION_FILES["bbox"])
            if self._results_have_keypoints or not len(dets):
                paths["keypoints"] = os.path.join(self._output_dir, SUBMISSION_FILES["keypoints"])
        chunk = self.result_chunk_size

        def chunks():
            if not sum(spilled):  # no keypoints: boxes only
                if main:
                    for start, count in iter_chunks(len(dets), chunk):
                        records = detectron2_records(dets, start, count, None)
                        yield self._file_chunk(records)
                return
            start = 0
            for kps in self._gathered_keypoints(spilled, distributed, chunk):
                if main:
                    records = detectron2_records(dets, start, len(kps), kps)
                    start += len(kps)
                    yield self._file_chunk(records)

        if main:
            counts = write_json_lists(paths, chunks())
            for task in ("bbox", "keypoints"):
                if task in counts:
                    self._logger.info(
                        f"Wrote {counts[task]} DeepFashion2 {task} results to {paths[task]}"
                    )
        else:
            for _ in chunks():
                pass

    def _file_chunk(self, records):
        chunk = {"results": records}
        if self._write_submission:
            official = to_submission_records(records)
            chunk["bbox"], chunk["keypoints"] = official["bbox"], official["keypoints"]
        return chunk

    def _log_keypoint_protocol(self) -> None:
        landmarks = {"vis_occ": "visible and occluded", "vis": "visible only"}
        area = "keypoints (official)" if self._official_keypoint_area else "boxes"
        log = self._logger.warning if self._user_sigmas else self._logger.info
        log(
            f"Keypoint AP ({self.keypoint_result_key}): ground-truth variant "
            f"'{self._keypoint_gt_variant}' ({landmarks[self._keypoint_gt_variant]} "
            f"landmarks), {len(self._kpt_oks_sigmas)} OKS sigmas from "
            f"{self._sigma_source}, detection area from {area}."
        )

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

        if self._output_dir and self._save_results:
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
                self._log_keypoint_protocol()
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
