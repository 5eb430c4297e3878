"""Score official-format DeepFashion2 result files with plain pycocotools (docs/DESIGN.md §15.3).

This is the official evaluation driver (``deepfashion2_test.py``) with the one change the
official ``cocoeval.py`` hard-codes: the 294 OKS sigmas are passed as ``params.kpt_oks_sigmas``
(stock pycocotools with these sigmas reproduces the official numbers exactly).
"""

import contextlib
import io
import json
import numpy as np
from typing import Dict, Optional, Sequence, Union
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.utils.file_io import PathManager

from ..validators import is_number as _finite_number

__all__ = [
    "BOX_METRICS",
    "KEYPOINT_METRICS",
    "ResultsFileError",
    "check_results",
    "load_results_json",
    "evaluate_official_results",
]

BOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
KEYPOINT_METRICS = ("AP", "AP50", "AP75", "APm", "APl")


def load_results_json(path: str) -> list:
    """Read a result list, naming the file in the error when it cannot be read or is no list."""
    try:
        with PathManager.open(path, "r") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot read results file '{path}': {e}") from e
    if not isinstance(data, list):
        raise ValueError(
            f"Results file '{path}' must hold a JSON list of results, got {type(data).__name__}."
        )
    return data


class ResultsFileError(ValueError):
    """A result list pycocotools would crash on or score wrongly; names source, record, field."""


def check_results(items: list, gt: COCO, task: str, source: str = "results") -> None:
    """Check official-format results before pycocotools sees them.

    Every record must have an ``image_id`` of the ground truth (an int, as there: ``"000001"``
    or ``1.0`` would silently match nothing), a ``category_id`` of the ground truth's
    categories, a finite ``score``, for "bbox" a ``bbox`` of 4 finite numbers [x, y, w, h] with
    w, h >= 0, and for "keypoints" 3 x K finite ``keypoints`` values (K from the ground truth's
    categories).

    Raises:
        ResultsFileError: naming ``source`` (the file), the record index and the field.
    """
    image_ids = set(gt.getImgIds())
    cat_ids = set(gt.getCatIds())
    num_keypoints = None
    if task == "keypoints":
        counts = {len(c.get("keypoints", [])) for c in gt.loadCats(sorted(cat_ids))}
        num_keypoints = max(counts) if counts else 0
        if not num_keypoints:  # categories without a keypoint list: the ground truth's length
            anns = [a for a in gt.dataset.get("annotations", []) if a.get("keypoints")]
            num_keypoints = len(anns[0]["keypoints"]) // 3 if anns else 0

    def fail(i: int, field: str, got, expected: str):
        text = f"{len(got)} values" if isinstance(got, list) and len(got) >= 8 else repr(got)
        raise ResultsFileError(f"{source}: record {i}, field '{field}': got {text}; {expected}")

    for i, r in enumerate(items):
        if not isinstance(r, dict):
            fail(i, "(record)", r, "expected an object")
        iid = r.get("image_id")
        if not isinstance(iid, int) or isinstance(iid, bool) or iid not in image_ids:
            kind = type(iid).__name__
            fail(i, "image_id", iid, f"({kind}) expected an int image id of the ground truth")
        if r.get("category_id") not in cat_ids:
            fail(i, "category_id", r.get("category_id"), f"expected one of {sorted(cat_ids)}")
        if not _finite_number(r.get("score")):
            fail(i, "score", r.get("score"), "expected a finite number")
        if task == "bbox":
            box = r.get("bbox")
            if not (
                isinstance(box, list)
                and len(box) == 4
                and all(_finite_number(v) for v in box)
                and box[2] >= 0
                and box[3] >= 0
            ):
                fail(i, "bbox", box, "expected [x, y, w, h]: 4 finite numbers, w, h >= 0")
        if task == "keypoints":
            kps = r.get("keypoints")
            if not isinstance(kps, list) or len(kps) != 3 * num_keypoints:
                fail(i, "keypoints", kps, f"expected 3 x {num_keypoints} flat values")
            if not all(_finite_number(v) for v in kps):
                fail(i, "keypoints", "non-finite or non-number values", "expected finite numbers")


def evaluate_official_results(
    gt: Union[str, COCO],
    results: Dict[str, Union[str, list]],
    kpt_oks_sigmas: Optional[Sequence[float]] = None,
) -> Dict[str, Dict[str, float]]:
    """AP figures (percent, NaN where undefined) per task of official-format results.

    Args:
        gt: COCO-style ground-truth json path or a ``COCO`` object.
        results: task ("bbox" / "keypoints") -> result list or path of a json result file.
        kpt_oks_sigmas: K sigmas, required for "keypoints".

    Raises:
        ResultsFileError: a result record pycocotools would crash on or silently mis-score
            (see :func:`check_results`), naming the file, record index and field.
    """
    if isinstance(gt, str):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(gt)
    out = {}
    for task, res in results.items():
        if task not in ("bbox", "keypoints"):
            raise ValueError(f"Unknown task '{task}', expected 'bbox' or 'keypoints'.")
        items = load_results_json(res) if isinstance(res, str) else [dict(r) for r in res]
        check_results(items, gt, task, res if isinstance(res, str) else f"{task} results")
        names = BOX_METRICS if task == "bbox" else KEYPOINT_METRICS
        if not items:
            out[task] = {m: float("nan") for m in names}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(items)
            ev = COCOeval(gt, dt, task)
            ev.params.imgIds = sorted(gt.getImgIds())
            if task == "keypoints":
                if kpt_oks_sigmas is None:
                    raise ValueError("Keypoint evaluation needs the dataset's OKS sigmas.")
                ev.params.kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, dtype=np.float64)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[task] = {
            m: float(ev.stats[i] * 100) if ev.stats[i] >= 0 else float("nan")
            for i, m in enumerate(names)
        }
    return out
