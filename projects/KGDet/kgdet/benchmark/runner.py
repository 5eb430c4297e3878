"""The interleaved run: build every model in its worker, time them round-robin, count FLOPs."""

import argparse
import os
import platform
import tempfile
from typing import Dict, List
import torch

from .models import BASELINES
from .report import PAPER_FIGURES, compute_ratios, cpu_name
from .timing import IdleGate, summarize
from .worker import Worker

__all__ = ["run_benchmark"]


def _round_robin(
    workers: List[Worker], cmd: str, rounds: int, gate: IdleGate
) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {w.name: [] for w in workers}
    for _ in range(rounds):
        for w in workers:
            gate.wait()
            times[w.name] += w.call(cmd, runs=1)["times_ms"]
    return times


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _summaries(times: Dict[str, List[float]], label: str) -> Dict[str, Dict]:
    """Statistics of the models that ran ``label`` (the exported graph has no backbone or
    training step of its own)."""
    return {name: summarize(t, f"{name} {label}") for name, t in times.items() if t}


def run_benchmark(args: argparse.Namespace) -> Dict:
    """Build every model in its own worker, then time them in one interleaved run.

    Models: "kgdet" (eager, from ``args.config_file`` + ``args.opts``), "kgdet_exported" (that
    model exported to ONNX, ONNX Runtime CPU; when ``args.exported``) and the Detectron2
    baselines in ``args.baselines``. Inference runs round-robin, one call of each model in turn
    (after ``args.warmup`` untimed calls), so load changes on a shared machine affect all models
    alike; then training steps, then FLOPs. Returns the report (see :func:`format_report`).
    """
    names = ["kgdet"] + (["kgdet_exported"] if getattr(args, "exported", False) else [])
    names += [b for b in BASELINES if b in args.baselines]
    load_before = os.getloadavg()
    gate = IdleGate(args.quiet_wait)
    results: Dict[str, Dict] = {}
    with tempfile.TemporaryDirectory(prefix="kgdet_bench_") as log_dir:
        workers: List[Worker] = []
        try:
            for name in names:
                print(f"[benchmark] building {name} in a worker process ...", flush=True)
                workers.append(Worker(name, args, log_dir))
                results[name] = {"params": workers[-1].info["params"]}
                results[name]["rss_after_build_mb"] = workers[-1].info["rss_after_build_mb"]

            print(
                f"[benchmark] inference: {args.warmup} warm-up + {args.runs} runs each", flush=True
            )
            for w in workers:
                w.call("infer", runs=args.warmup)
                w.call("backbone", runs=1)
            infer = {w.name: [] for w in workers}
            backbone = {w.name: [] for w in workers}
            for _ in range(args.runs):
                for w in workers:  # total then backbone of the same model back to back
                    gate.wait()
                    infer[w.name] += w.call("infer", runs=1)["times_ms"]
                    backbone[w.name] += w.call("backbone", runs=1)["times_ms"]
            for key, times in (("inference", infer), ("backbone_fpn", backbone)):
                for name, stats in _summaries(times, key).items():
                    results[name][key] = stats
            for w in workers:
                results[w.name]["peak_rss_inference_mb"] = w.call("rss")["max_rss_mb"]

            if args.train_runs > 0:
                print(f"[benchmark] training: 1 warm-up + {args.train_runs} steps each", flush=True)
                for w in workers:
                    w.call("train", runs=1)
                train = _round_robin(workers, "train", args.train_runs, gate)
                for name, stats in _summaries(train, "train_step").items():
                    results[name]["train_step"] = stats
                for w in workers:
                    if "train_step" in results[w.name]:
                        results[w.name]["peak_rss_training_mb"] = w.call("rss")["max_rss_mb"]

            if not args.skip_flops:
                print(
                    f"[benchmark] FLOPs at 3x{args.flops_size[0]}x{args.flops_size[1]}", flush=True
                )
                for w in workers:
                    full = args.full_fpn and w.name == "kgdet"
                    flops = w.call("flops", size=args.flops_size, full_fpn=full)
                    if flops:
                        results[w.name]["flops"] = flops
        finally:
            for w in workers:
                w.close()

    ratios = compute_ratios(results)
    return {
        "config_file": args.config_file,
        "opts": list(args.opts),
        "size": list(args.size),
        "flops_size": list(args.flops_size),
        "device": args.device,
        "threads": args.threads,
        "machine": {
            "cpu": cpu_name(),
            "logical_cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "cpu_busy_by_others": gate.summary(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "onnxruntime": _onnxruntime_version() if "kgdet_exported" in names else None,
        },
        "models": results,
        "ratios": ratios,
        "paper": dict(PAPER_FIGURES),
    }
