"""Per-stage FLD evaluation of DFA with the shared ``kgdet.evaluation.FLDEvaluator``.

DFA is run on the ground-truth boxes (aligned-output mode); every stage's landmarks are passed as
``aligned_keypoints_per_stage``, so the evaluator reports ``fld_s1``, ``fld_s2``, ``fld_s3`` (the
paper's Table 2 rows) besides ``fld`` (the last stage), each per landmark, clothing type and
variation type.
"""

import logging
import os
from typing import Dict, List, Optional

from detectron2.evaluation import inference_on_dataset

from .data import build_dfa_test_loader

__all__ = ["evaluate_dfa", "format_stage_table"]

logger = logging.getLogger(__name__)


def evaluate_dfa(
    cfg, model, dataset_name: str, output_dir: Optional[str] = None, batch_size: int = 4
) -> Dict[str, Dict[str, float]]:
    """FLDEvaluator results of ``model`` (all its ``test_stages``) on ``dataset_name``."""
    from kgdet.evaluation import FLDEvaluator  # the shared NE/PDL implementation

    loader = build_dfa_test_loader(cfg, dataset_name, batch_size=batch_size)
    evaluator = FLDEvaluator(dataset_name, distributed=False, output_dir=output_dir)
    return inference_on_dataset(model, loader, evaluator)


def _table(results: Dict[str, Dict[str, float]], stage_keys: List[str], columns: List[str]):
    lines = ["| stage | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for key in stage_keys:
        row = results[key]
        name = key.replace("fld_s", "") if key != "fld" else "final"
        cells = [f"{row[c]:.2f}" if c.startswith("PDL") else f"{row[c]:.4f}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def format_stage_table(results: Dict[str, Dict[str, float]], dataset_name: str = "") -> str:
    """Markdown tables, one row per stage: NE, NE6, PDL@15 and NE per clothing type (as the
    paper's Table 2), then NE per variation type (as its Table 3) when the dataset has them."""
    stage_keys: List[str] = sorted(k for k in results if k.startswith("fld_s")) or ["fld"]
    first = results[stage_keys[0]]
    type_keys = sorted(k for k in first if k.startswith("type=") and k.endswith("/NE"))
    columns = [c for c in ("NE", "NE6", "PDL@15") if c in first] + type_keys
    title = f"DFA per-stage results on {dataset_name} (box-normalised NE, visible landmarks)"
    lines = [title, ""] + _table(results, stage_keys, columns)
    variation_keys = [k for k in first if k.startswith("variation=") and k.endswith("/NE")]
    if variation_keys:
        lines += ["", "NE per variation type:", ""] + _table(results, stage_keys, variation_keys)
    return os.linesep.join(lines)
