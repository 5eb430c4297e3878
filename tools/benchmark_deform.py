#!/usr/bin/env python
"""Micro-benchmark of KGDeformConv's implementations at KGDet's P5 shape.

Times every ``impl`` (and a dense conv of the same shape as the floor) for 3x3 / 5x5 / 7x7
kernels on a (1, 256, 25, 42) map (P5 of an 800x1333 input), round-robin so that load changes
on a shared machine hit every implementation alike. Prints median and min in ms; ``--json``
writes the numbers. ``--onnx`` adds the two exported forms run by ONNX Runtime's CPU provider
(``--threads`` intra-op threads): ONNX's ``DeformConv`` operator and the gather formulation
exported as Gather + MatMul (what ``tools/deploy/export_model.py --deform-op`` chooses between).

    python tools/benchmark_deform.py [--threads 2] [--runs 10] [--backward] [--onnx] [--json OUT]
"""

import argparse
import os
import platform
import tempfile
import time
from typing import Callable, Dict, List

import kgdet  # noqa: F401  (first: importing kgdet hides known third-party import warnings)

# isort: split

import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from kgdet.file_io import write_json_atomic
from kgdet.modeling.deform_conv import deform_conv2d_gather, deform_conv2d_grid_sample


def _round_robin(fns: Dict[str, Callable[[], object]], runs: int) -> Dict[str, List[float]]:
    for fn in fns.values():  # warm-up
        fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _median(values: List[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def _impls(padding: int) -> Dict[str, Callable]:
    return {
        "dense_conv": lambda x, off, w: F.conv2d(x, w, padding=padding),
        "torchvision": lambda x, off, w: deform_conv2d(x, off, w, padding=(padding, padding)),
        "grid_sample": lambda x, off, w: deform_conv2d_grid_sample(x, off, w, padding),
        "gather": lambda x, off, w: deform_conv2d_gather(x, off, w, padding),
    }


def _onnx_impls(k: int, channels: int, weight: torch.Tensor, threads: int, directory: str):
    """ONNX Runtime sessions of one deformable conv exported as ``DeformConv`` and as the gather
    formulation; returns {name: fn(x, offset, weight)} (the weight is baked into the graph)."""
    import onnxruntime as ort
    from kgdet.export.exporter import deform_impl, register_deform_conv_symbolic
    from kgdet.modeling.deform_conv import KGDeformConv

    register_deform_conv_symbolic(19)
    module = KGDeformConv(channels, channels, k, k // 2).eval()
    with torch.no_grad():
        module.weight.copy_(weight.detach())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    fns = {}
    for name, impl in (("ort_DeformConv", "torchvision"), ("ort_gather", "gather")):
        path = os.path.join(directory, f"{name}_k{k}.onnx")
        x = torch.zeros(1, channels, 8, 8)
        offset = torch.zeros(1, 2 * k * k, 8, 8)
        with deform_impl(module, impl), torch.no_grad():
            torch.onnx.export(
                module, (x, offset), path, dynamo=False, opset_version=19,
                input_names=["x", "offset"],
                dynamic_axes={"x": {2: "h", 3: "w"}, "offset": {2: "h", 3: "w"}},
            )  # fmt: skip
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        fns[name] = lambda x, off, w, s=session: s.run(
            None, {"x": x.numpy(), "offset": off.numpy()}
        )
    return fns


def benchmark(
    kernel_sizes=(3, 5, 7),
    channels: int = 256,
    height: int = 25,
    width: int = 42,
    runs: int = 10,
    backward: bool = False,
    onnx_threads: int = 0,
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Returns {"k3": {impl: {"median_ms", "min_ms"}}, ...}; with ``onnx_threads`` > 0 (forward
    only) also the ONNX Runtime forms."""
    results = {}
    tmp = tempfile.TemporaryDirectory(prefix="kgdet_deform_onnx_")
    for k in kernel_sizes:
        torch.manual_seed(0)
        x = torch.randn(1, channels, height, width, requires_grad=backward)
        offset = (torch.randn(1, 2 * k * k, height, width) * 2).requires_grad_(backward)
        weight = (torch.randn(channels, channels, k, k) * 0.01).requires_grad_(backward)

        def make(fn):
            if not backward:
                return lambda: fn(x, offset, weight)
            return lambda: fn(x, offset, weight).sum().backward()

        impls = _impls(k // 2)
        if onnx_threads > 0 and not backward:
            impls.update(_onnx_impls(k, channels, weight, onnx_threads, tmp.name))
        with torch.set_grad_enabled(backward):
            times = _round_robin({name: make(fn) for name, fn in impls.items()}, runs)
        results[f"k{k}"] = {
            name: {"median_ms": round(_median(t), 2), "min_ms": round(min(t), 2)}
            for name, t in times.items()
        }
    tmp.cleanup()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per case (median, min)")
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument(
        "--onnx", action="store_true", help="also time the ONNX Runtime forms (needs [deploy])"
    )
    parser.add_argument("--json", default="", help="write the results to this json file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    onnx_threads = args.threads if args.onnx else 0
    results = benchmark(runs=args.runs, backward=args.backward, onnx_threads=onnx_threads)
    names = list(next(iter(results.values())).keys())
    mode = "forward+backward" if args.backward else "forward (no grad)"
    print(f"KGDeformConv at (1, 256, 25, 42), {mode}, {args.threads} threads: median / min ms")
    print(f"{'kernel':<8}" + "".join(f"{n:>20}" for n in names))
    for key, row in results.items():
        cells = "".join(f"{row[n]['median_ms']:>12.1f} / {row[n]['min_ms']:<5.1f}" for n in names)
        print(f"{key:<8}" + cells)
    if args.json:
        payload = {
            "shape": [1, 256, 25, 42],
            "mode": mode,
            "threads": args.threads,
            "runs": args.runs,
            "load_average": os.getloadavg(),
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "results": results,
        }
        write_json_atomic(args.json, payload, indent=2)


if __name__ == "__main__":
    main()
