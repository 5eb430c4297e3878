"""Learning curves from Detectron2's ``metrics.json``: evaluation results against iterations.

Detectron2's ``JSONWriter`` appends one JSON object per line to ``<OUTPUT_DIR>/metrics.json``;
lines written after an evaluation carry the flattened results (``"bbox/AP"``,
``"keypoints/AP"``, ...) with the ``"iteration"`` they belong to.
"""

import json
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["DEFAULT_KEYS", "read_metrics", "final_metric", "seed_summary", "plot_learning_curve"]

# Box AP and the keypoint AP of the DeepFashion2 evaluator (named by its ground-truth variant) or
# of Detectron2's COCOEvaluator.
DEFAULT_KEYS = ("bbox/AP", "keypoints_vis_occ/AP", "keypoints/AP")


def read_metrics(
    path: str, keys: Sequence[str] = DEFAULT_KEYS
) -> Dict[str, List[Tuple[int, float]]]:
    """``{key: [(iteration, value), ...]}`` for every line of ``path`` that has the key.

    Iterations are the number of training iterations done. Detectron2 logs a periodic
    evaluation in the line of the 0-based iteration it follows (with that iteration's losses:
    iteration 299 = 300 done) and the final evaluation after training in a line of its own at
    ``MAX_ITER`` (already the number done). A key logged twice for one point keeps the later
    value.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a line is not JSON (naming the file and line number), or no line has any
            of ``keys`` (naming the keys that were found).
    """
    curves: Dict[str, Dict[int, float]] = {key: {} for key in keys}
    seen = set()
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not a JSON object ({e})") from None
            seen.update(record)
            if "iteration" not in record:
                continue
            # Lines with training scalars belong to the 0-based iteration just run.
            done = int(record["iteration"]) + (1 if "total_loss" in record else 0)
            for key in keys:
                if key in record:
                    curves[key][done] = float(record[key])
    if not any(curves.values()):
        found = sorted(k for k in seen if "/" in k)
        raise ValueError(f"{path}: none of {list(keys)} was logged (found: {found or 'none'})")
    return {key: sorted(points.items()) for key, points in curves.items() if points}


def final_metric(path: str, keys: Sequence[str]) -> Optional[Tuple[str, int, float]]:
    """``(key, iteration, value)`` of the last evaluation in ``path`` of the first of ``keys``
    that was logged, or None when ``path`` is missing or holds no evaluation of them (an
    unfinished run). Raises ValueError for a line that is not JSON (see :func:`read_metrics`)."""
    try:
        curves = read_metrics(path, keys)
    except FileNotFoundError:
        return None
    except ValueError as e:
        if "was logged" in str(e):
            return None
        raise
    for key in keys:
        if key in curves:
            iteration, value = curves[key][-1]
            return key, iteration, value
    return None


def seed_summary(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and min / max of the runs of several
    seeds (AP in %, as logged). Raises ValueError for no values."""
    if not values:
        raise ValueError("seed_summary needs at least one value")
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def plot_learning_curve(
    curves: Dict[str, List[Tuple[int, float]]], output: str, title: str = ""
) -> None:
    """Draw ``curves`` (from :func:`read_metrics`) as AP against iterations into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for key, points in curves.items():
        its, values = zip(*points)
        ax.plot(its, values, marker="o", label=key)
        ax.annotate(
            f"{values[-1]:.1f}",
            (its[-1], values[-1]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xlabel("training iteration")
    ax.set_ylabel("AP (COCO protocol, %)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)
