"""Learning curves read from Detectron2's metrics.json and drawn to a PNG."""

import json
import subprocess
import sys
from pathlib import Path
import pytest

from kgdet.evaluation.learning_curve import plot_learning_curve, read_metrics

REPO = Path(__file__).resolve().parents[1]


def _write_metrics(path: Path) -> None:
    lines = [
        {"iteration": 19, "total_loss": 3.0},
        {"iteration": 299, "bbox/AP": 10.5, "keypoints/AP": 2.0},
        {"iteration": 299, "total_loss": 2.0},
        {"iteration": 599, "bbox/AP": 30.25, "keypoints/AP": 8.5, "bbox/AP50": 60.0},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_read_metrics(tmp_path):
    path = tmp_path / "metrics.json"
    _write_metrics(path)
    curves = read_metrics(str(path))
    assert curves == {
        "bbox/AP": [(300, 10.5), (600, 30.25)],
        "keypoints/AP": [(300, 2.0), (600, 8.5)],
    }
    assert read_metrics(str(path), ["bbox/AP50"]) == {"bbox/AP50": [(600, 60.0)]}


def test_read_metrics_errors(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 1, "total_loss": 1.0}\n')
    with pytest.raises(ValueError, match="none of .*bbox/AP"):
        read_metrics(str(path))
    path.write_text('{"iteration": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(str(path))


def test_plot_tool_writes_png(tmp_path):
    path = tmp_path / "metrics.json"
    _write_metrics(path)
    out = tmp_path / "curve.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "plot_learning_curve.py"),
            str(path),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "bbox/AP 300:10.5 600:30.2" in proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_learning_curve(read_metrics(str(path)), str(tmp_path / "direct.png"), title="t")
    assert (tmp_path / "direct.png").stat().st_size > 1000
