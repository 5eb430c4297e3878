"""Learning curves read from Detectron2's metrics.json and drawn to a PNG."""

import json
import subprocess
import sys
from pathlib import Path
import pytest

from kgdet.evaluation.learning_curve import plot_learning_curve, read_metrics

REPO = Path(__file__).resolve().parents[2]


def _write_metrics(path: Path) -> None:
    lines = [
        {"iteration": 19, "total_loss": 3.0},
        {"iteration": 299, "total_loss": 2.0, "bbox/AP": 10.5, "keypoints/AP": 2.0},
        {"iteration": 599, "total_loss": 1.5},
        {"iteration": 600, "bbox/AP": 30.25, "keypoints/AP": 8.5, "bbox/AP50": 60.0},
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


@pytest.mark.slow
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


def test_final_metric_and_seed_summary(tmp_path):
    from kgdet.evaluation.learning_curve import final_metric, seed_summary

    path = tmp_path / "metrics.json"
    _write_metrics(path)
    assert final_metric(str(path), ["keypoints_vis_occ/AP", "keypoints/AP"]) == (
        "keypoints/AP",
        600,
        8.5,
    )
    assert final_metric(str(path), ["bbox/AP"]) == ("bbox/AP", 600, 30.25)
    # An unfinished run (no evaluation yet) or a missing file: None, not an error.
    path.write_text('{"iteration": 19, "total_loss": 3.0}\n')
    assert final_metric(str(path), ["bbox/AP"]) is None
    assert final_metric(str(tmp_path / "missing.json"), ["bbox/AP"]) is None
    s = seed_summary([10.0, 12.0, 14.0])
    assert s["mean"] == pytest.approx(12.0) and s["std"] == pytest.approx(2.0)
    assert (s["min"], s["max"], s["n"]) == (10.0, 14.0, 3)
    assert seed_summary([5.0])["std"] == 0.0
    with pytest.raises(ValueError):
        seed_summary([])


def test_compare_seeds_tabulates_finished_runs(tmp_path):
    """The comparison tool's summary over finished runs (no training: metrics files given)."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import compare_seeds
    finally:
        sys.path.pop(0)
    for seed, ap in ((0, 10.0), (1, 14.0)):
        run = Path(compare_seeds._run_dir(str(tmp_path), "configs/kgdet_synth.yaml", seed))
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(
            json.dumps({"iteration": 100, "bbox/AP": ap, "keypoints_vis_occ/AP": ap / 2}) + "\n"
        )
    summary = compare_seeds.summarize(["configs/kgdet_synth.yaml"], [0, 1, 2], str(tmp_path))
    entry = summary["configs/kgdet_synth.yaml"]
    assert entry["box_ap"]["runs"] == {0: 10.0, 1: 14.0}  # seed 2 never ran: left out
    assert entry["box_ap"]["mean"] == pytest.approx(12.0)
    assert entry["keypoint_ap"]["mean"] == pytest.approx(6.0)
    table = compare_seeds.format_table(summary)
    assert "12.00 ± 2.83 (10.00–14.00)" in table and "6.00 ± 1.41" in table
