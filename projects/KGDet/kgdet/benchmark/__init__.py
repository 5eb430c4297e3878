"""Benchmark of KGDet against Detectron2's RetinaNet and FCOS: FLOPs, latency, training step,
memory, and the exported KGDet graph's latency (``tools/benchmark.py`` is its command line)."""

from .flops import count_flops
from .models import (
    BASELINES,
    DISPLAY_NAMES,
    backbone_fn,
    build_benchmark_model,
    build_kgdet_cfg,
    exported_inference_fn,
    head_fn,
    inference_fn,
    make_image,
    make_training_input,
    model_num_classes,
    model_num_keypoints,
)
from .report import PAPER_FIGURES, compute_ratios, format_report
from .runner import run_benchmark
from .timing import IdleGate, summarize, time_call

__all__ = [
    "BASELINES",
    "DISPLAY_NAMES",
    "IdleGate",
    "PAPER_FIGURES",
    "backbone_fn",
    "build_benchmark_model",
    "build_kgdet_cfg",
    "compute_ratios",
    "count_flops",
    "exported_inference_fn",
    "format_report",
    "head_fn",
    "inference_fn",
    "make_image",
    "make_training_input",
    "model_num_classes",
    "model_num_keypoints",
    "run_benchmark",
    "summarize",
    "time_call",
]
