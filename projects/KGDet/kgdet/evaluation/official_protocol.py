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

__all__ = ["BOX_METRICS", "KEYPOINT_METRICS", "load_results_json", "evaluate_official_results"]

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
    """
    if isinstance(gt, str):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(gt)
    out = {}
    for task, res in results.items():
        if task not in ("bbox", "keypoints"):
            raise ValueError(f"Unknown task '{task}', expected 'bbox' or 'keypoints'.")
        items = load_results_json(res) if isinstance(res, str) else [dict(r) for r in res]
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
