"""Per-stage FLD evaluation of DFA with the shared ``kgdet.evaluation.FLDEvaluator``.

DFA is run on the ground-truth boxes (aligned-output mode); every stage's landmarks are passed as
``aligned_keypoints_per_stage``, so the evaluator reports ``fld_s1``, ``fld_s2``, ``fld_s3`` (the
paper's Table 2 rows) besides ``fld`` (the last stage), each per landmark, clothing type and
variation type.
"""

import logging
import os
from typing import Dict, List, Optional

from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, inference_on_dataset

from .data import build_dfa_test_loader

__all__ = ["RoutingShareEvaluator", "evaluate_dfa", "format_stage_table"]

logger = logging.getLogger(__name__)


class RoutingShareEvaluator(DatasetEvaluator):
    """Shares of the garments that stage 3's auto-routing sends to each branch (percent)."""

    def reset(self):
        self._easy = self._total = 0

    def process(self, inputs, outputs):
        for out in outputs:
            if "routing" in out:
                self._easy += int(out["routing"].sum())
                self._total += int(out["routing"].numel())

    def evaluate(self):
        if not self._total:
            return {}
        easy = 100.0 * self._easy / self._total
        logger.info(f"DFA routing: branch 1 {easy:.1f}%, branch 2 {100 - easy:.1f}% of garments")
        return {"routing": {"N": float(self._total), "branch1": easy, "branch2": 100.0 - easy}}


def evaluate_dfa(
    cfg, model, dataset_name: str, output_dir: Optional[str] = None, batch_size: int = 4
) -> Dict[str, Dict[str, float]]:
    """FLDEvaluator results of ``model`` (all its ``test_stages``) on ``dataset_name``, plus
    ``routing`` (branch shares in percent) when stage 3 runs."""
    from kgdet.evaluation import FLDEvaluator  # the shared NE/PDL implementation

    loader = build_dfa_test_loader(cfg, dataset_name, batch_size=batch_size)
    evaluator = DatasetEvaluators(
        [
            FLDEvaluator(dataset_name, distributed=False, output_dir=output_dir),
            RoutingShareEvaluator(),
        ]
    )
    return inference_on_dataset(model, loader, evaluator)


def _label(key: str) -> str:
    """Table header of a result key: the NE convention spelled out."""
    name = key.replace("type=", "").replace("variation=", "").replace("/", " ")
    if "_long" in key:
        return name.replace("_long", "") + " (long side)"
    return name + " (box axes)"


def _table(results: Dict[str, Dict[str, float]], stage_keys: List[str], columns: List[str]):
    lines = ["| stage | " + " | ".join(_label(c) for c in columns) + " |"]
    lines.append("|" + "---|" * (len(columns) + 1))
    for key in stage_keys:
        row = results[key]
        name = key.replace("fld_s", "") if key != "fld" else "final"
        cells = [f"{row[c]:.2f}" if c.startswith("PDL") else f"{row[c]:.4f}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def format_stage_table(results: Dict[str, Dict[str, float]], dataset_name: str = "") -> str:
    """Markdown tables, one row per stage: NE, NE6, PDL@15 and NE per clothing type (as the
    paper's Table 2), then NE per variation type (as its Table 3) when the dataset has them.

    Every NE is given in both conventions: "box axes" (x error / box width, y error / box
    height; later FLD papers) and "long side" (both / the box's long side; the DFA paper).
    """
    stage_keys: List[str] = sorted(k for k in results if k.startswith("fld_s")) or ["fld"]
    first = results[stage_keys[0]]
    main = [c for c in ("NE", "NE_long", "NE6", "NE6_long", "PDL@15", "PDL_long@15") if c in first]
    types = sorted(k for k in first if k.startswith("type=") and k.endswith("/NE"))
    columns = main + [c for t in types for c in (t, t + "_long") if c in first]
    title = f"DFA per-stage results on {dataset_name} (visible landmarks, ground-truth boxes)"
    lines = [title, ""] + _table(results, stage_keys, columns)
    variations = [k for k in first if k.startswith("variation=") and k.endswith("/NE")]
    if variations:
        variation_columns = [c for v in variations for c in (v, v + "_long") if c in first]
        lines += ["", "NE per variation type:", ""]
        lines += _table(results, stage_keys, variation_columns)
    if "routing" in results:
        r = results["routing"]
        lines += [
            "",
            f"Stage-3 auto-routing on {dataset_name}: branch 1 {r['branch1']:.1f}%, "
            f"branch 2 {r['branch2']:.1f}% of {int(r['N'])} garments",
        ]
    return os.linesep.join(lines)
