"""Learning curves from Detectron2's ``metrics.json``: evaluation results against iterations.

Detectron2's ``JSONWriter`` appends one JSON object per line to ``<OUTPUT_DIR>/metrics.json``;
lines written after an evaluation carry the flattened results (``"bbox/AP"``,
``"keypoints/AP"``, ...) with the ``"iteration"`` they belong to.
"""

import json
from typing import Dict, List, Sequence, Tuple

__all__ = ["DEFAULT_KEYS", "read_metrics", "plot_learning_curve"]

DEFAULT_KEYS = ("bbox/AP", "keypoints/AP")


def read_metrics(
    path: str, keys: Sequence[str] = DEFAULT_KEYS
) -> Dict[str, List[Tuple[int, float]]]:
    """``{key: [(iteration, value), ...]}`` for every line of ``path`` that has the key.

    Iterations are Detectron2's 0-based ``"iteration"`` field plus one (the number of training
    iterations done), so an evaluation after the last of 1800 iterations is at 1800. A key
    logged twice for one iteration keeps the later value.

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
            for key in keys:
                if key in record and "iteration" in record:
                    curves[key][int(record["iteration"]) + 1] = float(record[key])
    if not any(curves.values()):
        found = sorted(k for k in seen if "/" in k)
        raise ValueError(f"{path}: none of {list(keys)} was logged (found: {found or 'none'})")
    return {key: sorted(points.items()) for key, points in curves.items() if points}


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
