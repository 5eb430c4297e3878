"""tools/benchmark.py end to end on a tiny input: one run measures KGDet, RetinaNet and FCOS.

Only the report's structure and the counted quantities are checked; wall-clock figures are
printed by the tool, never asserted.
"""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_reports_all_models_and_ratios(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, str(REPO / "tools" / "benchmark.py"),
        "--config-file", str(REPO / "configs" / "kgdet_synth.yaml"), "--device", "cpu",
        "--size", "96", "128", "--flops-size", "96", "128",
        "--runs", "1", "--warmup", "0", "--train-runs", "1", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| KGDet (kgdet_synth.yaml) |" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"kgdet", "retinanet", "fcos"}
    kgdet = report["models"]["kgdet"]
    assert kgdet["params"] > 1_000_000
    flops = kgdet["flops"]["inference_path"]
    # Deformable convolutions are counted apart from fvcore's total (the paper's counting).
    assert flops["dcn_gmacs"] > 0
    assert abs(flops["gflops_with_dcn"] - flops["gflops_without_dcn"] - flops["dcn_gmacs"]) < 1e-2
    for name in ("kgdet_over_retinanet_latency", "kgdet_over_fcos_latency"):
        assert report["ratios"][name] > 0
