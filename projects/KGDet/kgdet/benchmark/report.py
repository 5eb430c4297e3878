"""Ratios, the paper's reference figure and the plain-text (Markdown) benchmark table."""

import os
import platform
from typing import Dict, Optional

from .models import BASELINES, DISPLAY_NAMES

__all__ = ["PAPER_FIGURES", "compute_ratios", "format_report", "cpu_name"]

# The paper's Table 1 GFLOPs of KGDet R-50 (3x1280x800, full FPN, deformable convolutions not
# counted), printed next to the measured count.
PAPER_FIGURES = {"kgdet_gflops": 107.50}
RATIO_LABELS = {
    "kgdet_over_retinanet_latency": "KGDet / RetinaNet inference latency",
    "kgdet_over_fcos_latency": "KGDet / FCOS inference latency",
    "kgdet_total_over_own_backbone_fpn": "KGDet total / own backbone+FPN latency",
    "kgdet_exported_over_kgdet_latency": "KGDet exported (ONNX Runtime) / KGDet eager latency",
    "kgdet_exported_over_retinanet_latency": "KGDet exported (ONNX Runtime) / RetinaNet latency",
    "kgdet_exported_over_fcos_latency": "KGDet exported (ONNX Runtime) / FCOS latency",
}


def compute_ratios(results: Dict[str, Dict]) -> Dict[str, float]:
    """KGDet against its own backbone+FPN and against the baselines; the exported KGDet against
    eager KGDet and the baselines. Medians (``name``) and minima (``name_of_min``)."""
    kg = results["kgdet"]

    def ratio(a: Dict, b: Dict, stat: str) -> float:
        return a[stat] / b[stat]

    # Ratios of medians and of minima (the least disturbed runs on a shared machine, closest to
    # the uncontended cost).
    ratios = {}
    for stat, suffix in (("median_ms", ""), ("min_ms", "_of_min")):
        ratios["kgdet_total_over_own_backbone_fpn" + suffix] = ratio(
            kg["inference"], kg["backbone_fpn"], stat
        )
        for b in BASELINES:
            if b not in results:
                continue
            ratios[f"kgdet_over_{b}_latency{suffix}"] = ratio(
                kg["inference"], results[b]["inference"], stat
            )
            if "train_step" in kg and "train_step" in results[b]:
                ratios[f"kgdet_over_{b}_train_step{suffix}"] = ratio(
                    kg["train_step"], results[b]["train_step"], stat
                )
        exported = results.get("kgdet_exported", {}).get("inference")
        if exported:
            ratios["kgdet_exported_over_kgdet_latency" + suffix] = ratio(
                exported, kg["inference"], stat
            )
            for b in BASELINES:
                if b in results:
                    ratios[f"kgdet_exported_over_{b}_latency{suffix}"] = ratio(
                        exported, results[b]["inference"], stat
                    )
    return {k: round(v, 3) for k, v in ratios.items()}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_report(report: Dict) -> str:
    """The comparison as a plain-text table (also valid Markdown)."""
    models = report["models"]
    size = "x".join(map(str, report["size"]))
    fsize = "x".join(map(str, report["flops_size"]))
    config = os.path.basename(report["config_file"])
    display = {
        "kgdet": f"KGDet ({config})",
        "kgdet_exported": f"KGDet ({config}) exported, ONNX Runtime CPU",
        **DISPLAY_NAMES,
    }

    def lat(entry: Optional[Dict]) -> str:
        if not entry:
            return "-"
        return f"{entry['median_ms']:.0f} ({entry['min_ms']:.0f}–{entry['max_ms']:.0f})"

    def gflops(name: str) -> str:
        flops = models[name].get("flops")
        if not flops:
            return "-"
        path = flops.get("full_fpn", flops["inference_path"])
        text = f"{path['gflops_without_dcn']:.1f}"
        if path["dcn_gmacs"]:
            text += f" + {path['dcn_gmacs']:.1f} DCN"
        if "full_fpn" in flops:
            text += f" (inference path {flops['inference_path']['gflops_without_dcn']:.1f})"
        return text

    header = [
        "model",
        "params (M)",
        f"GFLOPs 3x{fsize}",
        f"inference ms {size}",
        "backbone+FPN ms",
        "train step ms",
        "peak RSS infer / train (MB)",
    ]
    rows = []
    for name, entry in models.items():
        rss_train = entry.get("peak_rss_training_mb")
        rows.append(
            [
                display[name],
                f"{entry['params'] / 1e6:.2f}",
                gflops(name),
                lat(entry.get("inference")),
                lat(entry.get("backbone_fpn")),
                lat(entry.get("train_step")),
                f"{entry['peak_rss_inference_mb']:.0f} / "
                + (f"{rss_train:.0f}" if rss_train else "-"),
            ]
        )
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]

    ratios = report["ratios"]
    lines.append("")
    for key, label in RATIO_LABELS.items():
        if key in ratios:
            lines.append(
                f"{label}: {ratios[key]:.2f} (ratio of minima {ratios[key + '_of_min']:.2f})"
            )
    for key, label in (
        ("kgdet_over_retinanet_train_step", "KGDet / RetinaNet training step"),
        ("kgdet_over_fcos_train_step", "KGDet / FCOS training step"),
    ):
        if key in ratios:
            lines.append(
                f"{label}: {ratios[key]:.2f} (ratio of minima {ratios[key + '_of_min']:.2f})"
            )
    flops = models["kgdet"].get("flops", {}).get("full_fpn")
    paper_gflops = report.get("paper", PAPER_FIGURES)["kgdet_gflops"]
    if flops:
        rel = flops["gflops_without_dcn"] / paper_gflops - 1
        lines.append(
            f"KGDet GFLOPs, full FPN, DCNs excluded: {flops['gflops_without_dcn']:.2f} vs paper "
            f"{paper_gflops:.2f} ({rel:+.1%})"
        )
    machine = report["machine"]
    busy = machine.get("cpu_busy_by_others", {})
    busy_text = ""
    if busy.get("busy_before_runs_median") == busy.get("busy_before_runs_median"):  # not NaN
        busy_text = (
            f"; CPU busy with other processes just before the timed runs: median "
            f"{busy['busy_before_runs_median']:.0%}, max {busy['busy_before_runs_max']:.0%}"
        )
    lines.append(
        f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, "
        f"{report['threads']} torch threads, device {report['device']}; load average "
        f"before {machine['load_average_before']}, after {machine['load_average_after']}"
        f"{busy_text}; torch {machine['torch']}"
        + (f", onnxruntime {machine['onnxruntime']}" if machine.get("onnxruntime") else "")
        + ". Random-init models, batch 1; latency = median (min–max)."
    )
    return "\n".join(lines)
