#!/usr/bin/env python
"""How KGDet's cost scales: latency vs input size (KGDet R50 vs RetinaNet R50) and head cost vs K.

Left panel: inference latency (median over ``--runs``) against the input's long side (the short
side keeps the 800:1333 aspect ratio) for KGDet, its own backbone+FPN, and the baselines.
Right panel: KGDet head latency and head FLOPs (deformable convs included, counted as dense
convs) at ``--head-size`` for K = 8 (FLD) and K = 294 (DeepFashion2) keypoints, classes fixed.
Models are measured round-robin in one process (random init, nothing downloaded).

    python tools/plot_scaling.py --config-file configs/kgdet_R50.yaml \
        [--long-sides 512 640 800 1024 1333] [--keypoints 8 294] [--runs 3] [--threads 2] \
        [--out docs/benchmark/scaling.png]

Writes the PNG and a json of the numbers next to it.
"""

import argparse
import numpy as np
import os
import sys
from typing import Dict, List, Optional, Sequence

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

import torch

from kgdet.benchmark import (
    DISPLAY_NAMES,
    backbone_fn,
    build_benchmark_model,
    build_kgdet_cfg,
    count_flops,
    head_fn,
    inference_fn,
    make_image,
    time_call,
)
from kgdet.file_io import write_atomic, write_json_atomic

ASPECT = 800 / 1333


def _median_round_robin(fns: Dict[str, callable], runs: int) -> Dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            times[name].append(time_call(fn))
    return {k: float(np.median(v)) for k, v in times.items()}


def latency_vs_size(
    config_file: str, opts: Sequence[str], baselines: Sequence[str], long_sides, runs: int
) -> Dict:
    num_classes = int(build_kgdet_cfg(config_file, opts).MODEL.KGDET.NUM_CLASSES)
    models = {"kgdet": build_benchmark_model("kgdet", config_file=config_file, opts=opts)}
    for name in baselines:
        models[name] = build_benchmark_model(name, num_classes=num_classes)
    curves: Dict[str, List[float]] = {name: [] for name in models}
    curves["kgdet_backbone_fpn"] = []
    sizes = []
    for long_side in long_sides:
        height = int(round(long_side * ASPECT))
        image = make_image(height, long_side)
        fns = {name: inference_fn(model, image) for name, model in models.items()}
        fns["kgdet_backbone_fpn"] = backbone_fn(models["kgdet"], image)
        medians = _median_round_robin(fns, runs)
        for name, value in medians.items():
            curves[name].append(round(value, 1))
        sizes.append([height, long_side])
        print(
            f"[scaling] {height}x{long_side}: "
            + ", ".join(f"{k} {v:.0f} ms" for k, v in medians.items()),
            flush=True,
        )
    return {"sizes_hw": sizes, "latency_ms": curves}


def head_cost_vs_keypoints(
    config_file: str, opts: Sequence[str], keypoints: Sequence[int], size, runs: int
) -> Dict:
    image = make_image(*size)
    latency, gflops, total = {}, {}, {}
    models = {}
    for k in keypoints:
        # No training dataset: the keypoint count of the config must not be checked against
        # DF2's metadata; only the head's shape changes with K.
        extra = ["MODEL.KGDET.NUM_KEYPOINTS", str(k), "DATASETS.TRAIN", "()"]
        models[k] = build_benchmark_model("kgdet", config_file=config_file, opts=[*opts, *extra])
    fns = {f"head_K{k}": head_fn(m, image) for k, m in models.items()}
    fns.update({f"total_K{k}": inference_fn(m, image) for k, m in models.items()})
    medians = _median_round_robin(fns, runs)
    for k, model in models.items():
        flops = count_flops(model, image)
        latency[k] = round(medians[f"head_K{k}"], 1)
        total[k] = round(medians[f"total_K{k}"], 1)
        gflops[k] = {
            "head_without_dcn": flops["head_gflops_without_dcn"],
            "dcn": flops["dcn_gmacs"],
        }
        print(
            f"[scaling] K={k}: head {latency[k]:.0f} ms, total {total[k]:.0f} ms, {gflops[k]}",
            flush=True,
        )
    return {
        "size_hw": list(size),
        "keypoints": list(keypoints),
        "head_latency_ms": latency,
        "total_latency_ms": total,
        "head_gflops": gflops,
    }


def plot(result: Dict, out_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    scaling = result["latency_vs_size"]
    long_sides = [w for _, w in scaling["sizes_hw"]]
    labels = {
        "kgdet": "KGDet R50",
        "kgdet_backbone_fpn": "KGDet backbone+FPN only",
        **DISPLAY_NAMES,
    }
    styles = {"kgdet_backbone_fpn": "--"}
    for name, values in scaling["latency_ms"].items():
        left.plot(long_sides, values, styles.get(name, "-"), marker="o", label=labels[name])
    left.set_xlabel("input long side (px), aspect 800:1333")
    left.set_ylabel("inference latency, median (ms)")
    left.set_title("Latency vs input size (CPU)")
    left.grid(alpha=0.3)
    left.legend()

    heads = result["head_vs_keypoints"]
    ks = heads["keypoints"]
    x = np.arange(len(ks))
    lat = [heads["head_latency_ms"][k] for k in ks]
    right.bar(x - 0.2, lat, 0.4, label="head latency (ms)", color="tab:blue")
    right.set_ylabel("head latency, median (ms)")
    right.set_xticks(x, [f"K = {k}" for k in ks])
    twin = right.twinx()
    dense = [heads["head_gflops"][k]["head_without_dcn"] for k in ks]
    dcn = [heads["head_gflops"][k]["dcn"] for k in ks]
    twin.bar(x + 0.2, dense, 0.4, label="head GFLOPs (without DCN)", color="tab:orange")
    twin.bar(x + 0.2, dcn, 0.4, bottom=dense, label="+ DCN GMACs", color="tab:red", alpha=0.6)
    twin.set_ylabel("GFLOPs (fvcore, multiply-accumulates)")
    h, w = heads["size_hw"]
    right.set_title(f"KGDet head cost vs keypoints K ({h}x{w})")
    handles = right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    names = right.get_legend_handles_labels()[1] + twin.get_legend_handles_labels()[1]
    right.legend(handles, names, loc="upper left", fontsize=8)
    fig.suptitle(result["caption"], fontsize=8)
    fig.tight_layout()

    write_atomic(out_path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config-file", default="configs/kgdet_R50.yaml", metavar="FILE", help="KGDet config"
    )
    parser.add_argument(
        "--long-sides",
        nargs="+",
        type=int,
        default=[512, 640, 800, 1024, 1333],
        help="input long sides for the latency curve",
    )
    parser.add_argument(
        "--keypoints", nargs="+", type=int, default=[8, 294], help="K values for the head cost"
    )
    parser.add_argument(
        "--head-size",
        nargs=2,
        type=int,
        default=[800, 1333],
        metavar=("H", "W"),
        help="input size for the head-cost measurement",
    )
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=["retinanet"],
        choices=["retinanet", "fcos"],
        help="Detectron2 models on the latency curve",
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs per point (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--out", default="docs/benchmark/scaling.png", help="plot path (a .json is written beside)"
    )
    cli.add_debug_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KGDet config overrides")
    args = parser.parse_args(argv)
    cli.pop_debug_flag(args.opts)
    return cli.run_main(lambda: _main(args), "plot_scaling.py", argv)


def _main(args: argparse.Namespace) -> None:
    from kgdet import get_kgdet_cfg

    get_kgdet_cfg(args.config_file, args.opts)  # ConfigError: one line, exit 2
    torch.set_num_threads(args.threads)
    import kgdet  # noqa: F401  (registers the meta-architecture)

    load_before = os.getloadavg()
    result = {
        "config_file": args.config_file,
        "threads": args.threads,
        "latency_vs_size": latency_vs_size(
            args.config_file, args.opts, args.baselines, args.long_sides, args.runs
        ),
        "head_vs_keypoints": head_cost_vs_keypoints(
            args.config_file, args.opts, args.keypoints, args.head_size, args.runs
        ),
    }
    load_after = os.getloadavg()
    result["load_average"] = {"before": load_before, "after": load_after}
    result["caption"] = (
        f"{os.path.basename(args.config_file)}, random init, batch 1, {args.threads} threads, "
        f"median of {args.runs} runs; load average {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    plot(result, args.out)
    json_path = os.path.splitext(args.out)[0] + ".json"
    write_json_atomic(json_path, result, indent=2)
    print(f"wrote {args.out} and {json_path}")


if __name__ == "__main__":
    sys.exit(main())
