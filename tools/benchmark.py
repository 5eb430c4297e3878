#!/usr/bin/env python
"""Cost of a KGDet model against Detectron2's RetinaNet R50-FPN and FCOS R50-FPN, in one run.

For every model (random init, nothing downloaded): trainable parameters, FLOPs (fvcore through
``detectron2.utils.analysis.FlopCountAnalysis``; deformable convolutions counted by a separate
op handle and reported apart, as the paper's counter ignores them, docs/DESIGN.md §11.2), inference
latency (median and min–max over ``--runs`` after warm-up), the latency of the model's own
backbone+FPN as inference runs it, training-step time (forward, backward, SGD step on one image
with random ground truth) and peak memory (max resident set size).

Each model lives in its own worker subprocess (so the RSS is per model); the parent drives the
workers round-robin, one at a time, so load changes on a shared machine affect all models alike.

    python tools/benchmark.py --config-file configs/kgdet_R50.yaml --device cpu \
        [--size 800 1333] [--runs 10] [--threads 2] [--no-full-fpn] [--json OUT] [KEY VALUE ...]

Baselines: RetinaNet from ``COCO-Detection/retinanet_R_50_FPN_1x.yaml`` and FCOS from the
``COCO-Detection/fcos_R_50_FPN_1x.py`` LazyConfig (Detectron2's model zoo files), with their
class count set to the KGDet config's ``MODEL.KGDET.NUM_CLASSES``.
"""

import argparse
import json
import logging
import numpy as np
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

with warnings.catch_warnings(record=True) as _import_warnings:
    warnings.simplefilter("always")
    from kgdet import cli  # imports Detectron2; its warnings are replayed, minus third-party ones
cli.filter_third_party_warnings(replay=_import_warnings)

import torch

PROTOCOL_PREFIX = "@@BENCH "
BASELINES = ("retinanet", "fcos")
DISPLAY_NAMES = {"retinanet": "RetinaNet R50-FPN", "fcos": "FCOS R50-FPN"}

# The project's CPU latency targets (800x1333) and the paper's Table 1 FLOPs (docs/DESIGN.md §11.1).
TARGET_VS_RETINANET = 0.80
TARGET_VS_FCOS = 0.90
TARGET_VS_BACKBONE = 1.60
PAPER_GFLOPS = {"kgdet": 107.50, "retinanet": 209.67, "fcos": 197.21}
PAPER_FLOPS_TOLERANCE = 0.03

logger = logging.getLogger("kgdet.benchmark")


# ------------------------------------------------------------------------------------------------
# model building and inputs (also used by tools/plot_scaling.py and tools/profile_model.py)
# ------------------------------------------------------------------------------------------------
def build_kgdet_cfg(config_file: str, opts: Sequence[str] = (), device: str = "cpu"):
    """KGDet yacs config with random init (MODEL.WEIGHTS "") on ``device``."""
    from kgdet import get_kgdet_cfg

    cfg = get_kgdet_cfg(config_file, opts)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    return cfg


def build_benchmark_model(
    name: str,
    *,
    config_file: str = "",
    opts: Sequence[str] = (),
    device: str = "cpu",
    num_classes: Optional[int] = None,
) -> torch.nn.Module:
    """A randomly initialised model in eval mode: ``name`` is "kgdet" (from ``config_file`` +
    ``opts``), "retinanet" or "fcos" (Detectron2's R50-FPN model zoo configs)."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg, instantiate
    from detectron2.modeling import build_model

    if name == "kgdet":
        cfg = build_kgdet_cfg(config_file, opts, device)
        model = build_model(cfg)
    elif name == "retinanet":
        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
        if num_classes is not None:
            cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.DEVICE = device
        model = build_model(cfg)
    elif name == "fcos":
        model_cfg = model_zoo.get_config("COCO-Detection/fcos_R_50_FPN_1x.py").model
        if num_classes is not None:
            model_cfg.num_classes = num_classes
        model = instantiate(model_cfg).to(device)
    else:
        raise ValueError(f"unknown benchmark model {name!r}: expected kgdet, retinanet or fcos")
    return model.eval()


def make_image(height: int, width: int, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    """A reproducible random (3, H, W) float image in [0, 255]."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(3, height, width, generator=gen) * 255).to(device)


def make_training_input(
    image: torch.Tensor, num_classes: int, num_keypoints: int, num_objects: int = 3, seed: int = 0
) -> Dict[str, Any]:
    """One training input with random boxes (and keypoints inside them, v=2, when K > 0)."""
    from detectron2.structures import Boxes, Instances, Keypoints

    gen = torch.Generator().manual_seed(seed)
    _, height, width = image.shape
    size = torch.tensor([width, height], dtype=torch.float32)
    centers = (0.25 + 0.5 * torch.rand(num_objects, 2, generator=gen)) * size
    half = (0.1 + 0.3 * torch.rand(num_objects, 2, generator=gen)) * size / 2
    boxes = torch.cat([centers - half, centers + half], dim=1)
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(boxes.to(image.device))
    instances.gt_classes = torch.randint(num_classes, (num_objects,), generator=gen).to(
        image.device
    )
    if num_keypoints > 0:
        frac = torch.rand(num_objects, num_keypoints, 2, generator=gen)
        xy = boxes[:, None, :2] + frac * (boxes[:, None, 2:] - boxes[:, None, :2])
        kps = torch.cat([xy, torch.full((num_objects, num_keypoints, 1), 2.0)], dim=2)
        instances.gt_keypoints = Keypoints(kps.to(image.device))
        instances.gt_keypoint_defined = torch.ones(
            num_objects, num_keypoints, dtype=torch.bool, device=image.device
        )
    return {"image": image, "height": height, "width": width, "instances": instances}


def model_num_keypoints(model: torch.nn.Module) -> int:
    return int(getattr(model, "num_keypoints", 0) or 0)


def model_num_classes(model: torch.nn.Module) -> int:
    return int(model.num_classes)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn, device: str = "cpu") -> float:
    """Wall time of ``fn()`` in ms."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def inference_fn(model: torch.nn.Module, image: torch.Tensor):
    inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]

    def run():
        with torch.no_grad():
            return model(inputs)

    return run


def backbone_fn(model: torch.nn.Module, image: torch.Tensor):
    """The model's backbone+FPN on the preprocessed (normalised, padded) image, as inference
    runs it (KGDet computes only the levels its head uses)."""
    with torch.no_grad():
        tensor = model.preprocess_image([{"image": image}]).tensor

    def run():
        with torch.no_grad():
            return model.backbone(tensor)

    return run


def head_fn(model: torch.nn.Module, image: torch.Tensor):
    """The dense head alone on the levels it consumes."""
    with torch.no_grad():
        tensor = model.preprocess_image([{"image": image}]).tensor
        features = model.backbone(tensor)
        features = [features[f] for f in model.head_in_features]

    def run():
        with torch.no_grad():
            return model.head(features)

    return run


# ------------------------------------------------------------------------------------------------
# FLOPs
# ------------------------------------------------------------------------------------------------
def _deform_conv_flop_handle(inputs: List[Any], outputs: List[Any]) -> Counter:
    """Multiply-accumulates of a deformable conv counted like a dense conv (fvcore's unit):
    prod(output shape) * Cin/groups * kh * kw. Bilinear sampling is not counted."""
    from fvcore.nn.jit_handles import get_shape

    out_shape = get_shape(outputs[0])
    weight_shape = None
    for value in inputs:  # torchvision::deform_conv2d(input, weight, offset, ...) or _DeformConv
        shape = get_shape(value)
        if shape is not None and len(shape) == 4 and value is not inputs[0]:
            weight_shape = shape
            break
    if out_shape is None or weight_shape is None:
        return Counter()
    return Counter({"deform_conv": int(np.prod(out_shape)) * int(np.prod(weight_shape[1:]))})


def _flatten_tensors(value: Any) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flatten_tensors(v)]
    return []  # None and non-tensor leaves


class _AllOutputs(torch.nn.Module):
    """Calls ``module`` and returns every tensor it produced as a flat tuple, so that a JIT trace
    keeps all of the module's work (tracing drops computations that reach no output)."""

    def __init__(self, module: torch.nn.Module, list_input: bool = False):
        super().__init__()
        self.module = module
        self.list_input = list_input

    def forward(self, *tensors: torch.Tensor):
        out = self.module(list(tensors)) if self.list_input else self.module(*tensors)
        return tuple(_flatten_tensors(out))


def _new_analysis(model: torch.nn.Module, inputs: Any, detectron2_inputs: bool):
    from fvcore.nn import FlopCountAnalysis as FvcoreFlopCountAnalysis

    from detectron2.utils.analysis import _IGNORED_OPS, FlopCountAnalysis

    if detectron2_inputs:
        analysis = FlopCountAnalysis(model, inputs)
    else:
        analysis = FvcoreFlopCountAnalysis(model, inputs)
        analysis.set_op_handle(**{k: None for k in _IGNORED_OPS})
    analysis.set_op_handle(
        **{
            "torchvision::deform_conv2d": _deform_conv_flop_handle,
            "prim::PythonOp._DeformConv": _deform_conv_flop_handle,
        }
    )
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def count_flops(model: torch.nn.Module, image: torch.Tensor, full_fpn: bool = False) -> Dict:
    """fvcore FLOPs (multiply-accumulates, fvcore's and the paper's unit) of one inference, in G.

    Returns the total without deformable convs (the paper's counting, docs/DESIGN.md §11.2), the
    deformable convs apart (as dense-conv MACs), backbone+FPN / head / pre- and post-processing
    counts, per-operator counts and the ops fvcore could not count.

    A JIT trace of the whole detector drops work whose result reaches no output (e.g. the class
    logits of non-final KGDet stages, unused FPN levels), which eager inference still executes.
    So the backbone and the head are traced alone with all their outputs kept, and the
    whole-model trace only contributes pre/post-processing. ``full_fpn``: KGDet's backbone
    computes every FPN level (``full_fpn_test``), as in the paper's Table 1.
    """
    from kgdet.modeling.deform_conv import KGDeformConv

    dcns = [m for m in model.modules() if isinstance(m, KGDeformConv)]
    saved_impls = [m.impl for m in dcns]
    has_full_fpn = hasattr(model.backbone, "full_fpn_test")
    saved_full_fpn = getattr(model.backbone, "full_fpn_test", None)
    inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]
    model.eval()
    try:
        for m in dcns:  # a traceable op with a known name for the handle
            m.impl = "torchvision"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            whole = _new_analysis(model, inputs, detectron2_inputs=True)
            whole_ops = Counter(whole.by_operator())
            whole_by_module = whole.by_module()
            whole_by_module_ops = whole.by_module_and_operator()
            rest = whole.total()
            for name in ("model.backbone", "model.head"):
                rest -= whole_by_module.get(name, 0)
                whole_ops.subtract(whole_by_module_ops.get(name, {}))
            unsupported = Counter(whole.unsupported_ops())

            if full_fpn and has_full_fpn:
                model.backbone.full_fpn_test = True
            with torch.no_grad():
                tensor = model.preprocess_image(inputs).tensor
                features = model.backbone(tensor)
                features = [features[f] for f in model.head_in_features]
            backbone = _new_analysis(_AllOutputs(model.backbone), (tensor,), False)
            head = _new_analysis(_AllOutputs(model.head, list_input=True), tuple(features), False)
            by_operator = whole_ops + Counter(backbone.by_operator()) + Counter(head.by_operator())
            backbone_total, head_total = backbone.total(), head.total()
            head_dcn = head.by_operator().get("deform_conv", 0)
            unsupported.update(backbone.unsupported_ops())
            unsupported.update(head.unsupported_ops())
    finally:
        for m, impl in zip(dcns, saved_impls):
            m.impl = impl
        if has_full_fpn:
            model.backbone.full_fpn_test = saved_full_fpn
    total = backbone_total + head_total + rest
    dcn = by_operator.get("deform_conv", 0)
    return {
        "input": [3, image.shape[1], image.shape[2]],
        "full_fpn": bool(full_fpn and has_full_fpn),
        "gflops_without_dcn": round((total - dcn) / 1e9, 3),
        "dcn_gmacs": round(dcn / 1e9, 3),
        "gflops_with_dcn": round(total / 1e9, 3),
        "backbone_fpn_gflops": round(backbone_total / 1e9, 3),
        "head_gflops_without_dcn": round((head_total - head_dcn) / 1e9, 3),
        "pre_post_processing_gflops": round(rest / 1e9, 3),
        "by_operator_g": {k: round(v / 1e9, 3) for k, v in sorted(by_operator.items()) if v},
        "uncounted_ops": dict(unsupported),
    }


# ------------------------------------------------------------------------------------------------
# worker: one model per process, commands as json lines on stdin
# ------------------------------------------------------------------------------------------------
def _max_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss / 1024.0


def _reply(payload: Dict) -> None:
    sys.stdout.write(PROTOCOL_PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def run_worker(args: argparse.Namespace) -> None:
    from detectron2.utils.events import EventStorage

    import kgdet  # noqa: F401  (registers the KGDet meta-architecture and backbone)

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    warnings.simplefilter("ignore")
    name = args.worker
    try:
        model = build_benchmark_model(
            name,
            config_file=args.config_file,
            opts=args.opts,
            device=args.device,
            num_classes=args.num_classes,
        )
    except Exception as e:  # reported to the parent, which names the model
        _reply({"error": f"{type(e).__name__}: {e}"})
        return
    height, width = args.size
    image = make_image(height, width, args.device)
    infer = inference_fn(model, image)
    backbone = backbone_fn(model, image)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = None
    storage = EventStorage(0)
    _reply(
        {
            "ready": True,
            "params": sum(p.numel() for p in trainable),
            "rss_after_build_mb": round(_max_rss_mb(), 1),
        }
    )
    for line in sys.stdin:
        command = json.loads(line)
        cmd = command["cmd"]
        try:
            if cmd == "infer":
                model.eval()
                times = [time_call(infer, args.device) for _ in range(command.get("runs", 1))]
                _reply({"times_ms": times})
            elif cmd == "backbone":
                model.eval()
                times = [time_call(backbone, args.device) for _ in range(command.get("runs", 1))]
                _reply({"times_ms": times})
            elif cmd == "train":
                if optimizer is None:
                    optimizer = torch.optim.SGD(trainable, lr=1e-6, momentum=0.9)
                batch = [
                    make_training_input(image, model_num_classes(model), model_num_keypoints(model))
                ]
                model.train()

                def step():
                    with storage:
                        losses = model(batch)
                        total = sum(losses.values())
                        optimizer.zero_grad()
                        total.backward()
                        optimizer.step()

                times = [time_call(step, args.device) for _ in range(command.get("runs", 1))]
                model.eval()
                _reply({"times_ms": times})
            elif cmd == "rss":
                payload = {"max_rss_mb": round(_max_rss_mb(), 1)}
                if args.device.startswith("cuda"):
                    payload["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
                _reply(payload)
            elif cmd == "flops":
                fh, fw = command["size"]
                flops_image = make_image(fh, fw, args.device)
                result = {"inference_path": count_flops(model, flops_image, full_fpn=False)}
                if command.get("full_fpn") and hasattr(model.backbone, "full_fpn_test"):
                    result["full_fpn"] = count_flops(model, flops_image, full_fpn=True)
                _reply(result)
            elif cmd == "exit":
                _reply({"bye": True})
                return
            else:
                _reply({"error": f"unknown command {cmd!r}"})
        except Exception as e:
            logger.exception("benchmark worker %s failed on %s", name, cmd)
            _reply({"error": f"{type(e).__name__}: {e}"})


class Worker:
    """Parent-side handle of one worker subprocess."""

    def __init__(self, name: str, args: argparse.Namespace, log_dir: str):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            name,
            "--config-file",
            args.config_file,
            "--device",
            args.device,
            "--threads",
            str(args.threads),
            "--size",
            str(args.size[0]),
            str(args.size[1]),
        ]
        if args.num_classes is not None:
            cmd += ["--num-classes", str(args.num_classes)]
        cmd += list(args.opts)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        self.info = self._read()

    def _read(self) -> Dict:
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL_PREFIX):
                payload = json.loads(line[len(PROTOCOL_PREFIX) :])
                if "error" in payload:
                    raise RuntimeError(
                        f"benchmark worker '{self.name}' failed: {payload['error']} "
                        f"(log: {self.log_path})"
                    )
                return payload
        raise RuntimeError(
            f"benchmark worker '{self.name}' exited with code {self.proc.wait()} "
            f"(log: {self.log_path}):\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-lines:])

    def call(self, cmd: str, **kwargs) -> Dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("exit")
            except RuntimeError:
                pass
            self.proc.wait(timeout=60)
        self._log.close()


# ------------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------------
def _stats(times: List[float]) -> Dict[str, float]:
    return {
        "median_ms": round(float(np.median(times)), 1),
        "min_ms": round(min(times), 1),
        "max_ms": round(max(times), 1),
        "runs": len(times),
    }


def _cpu_busy_fraction(interval: float = 0.5) -> Optional[float]:
    """Fraction of all CPUs busy during ``interval`` seconds (/proc/stat; None elsewhere).
    Called while the workers wait for a command, so it measures the other processes."""

    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(interval)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


class IdleGate:
    """Before each timed run, wait (within a total budget) until other processes leave the CPU
    mostly idle, and record how busy it was: a shared 2-core machine otherwise times the
    neighbours as much as the model."""

    def __init__(self, budget_s: float, max_busy: float = 0.15):
        self.budget_s = budget_s
        self.max_busy = max_busy
        self.waited_s = 0.0
        self.busy: List[float] = []

    def wait(self) -> None:
        busy = _cpu_busy_fraction()
        while busy is not None and busy > self.max_busy and self.waited_s < self.budget_s:
            time.sleep(2.0)
            self.waited_s += 2.5
            busy = _cpu_busy_fraction()
        if busy is not None:
            self.busy.append(round(busy, 3))

    def summary(self) -> Dict:
        busy = self.busy or [float("nan")]
        return {
            "budget_s": self.budget_s,
            "waited_s": round(self.waited_s, 1),
            "max_busy_wanted": self.max_busy,
            "busy_before_runs_median": round(float(np.median(busy)), 3),
            "busy_before_runs_max": round(float(np.max(busy)), 3),
        }


def _round_robin(
    workers: List[Worker], cmd: str, rounds: int, gate: IdleGate
) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {w.name: [] for w in workers}
    for _ in range(rounds):
        for w in workers:
            gate.wait()
            times[w.name] += w.call(cmd, runs=1)["times_ms"]
    return times


def compute_ratios(results: Dict[str, Dict]) -> Dict[str, float]:
    """KGDet against its own backbone+FPN and against the baselines."""
    kg = results["kgdet"]

    def ratio(a: Dict, b: Dict, stat: str) -> float:
        return a[stat] / b[stat]

    # Ratios of medians (the targets) and of minima (the least disturbed runs on a shared
    # machine, closest to the uncontended cost).
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
            if "train_step" in kg:
                ratios[f"kgdet_over_{b}_train_step{suffix}"] = ratio(
                    kg["train_step"], results[b]["train_step"], stat
                )
    return {k: round(v, 3) for k, v in ratios.items()}


def run_benchmark(args: argparse.Namespace) -> Dict:
    names = ["kgdet"] + [b for b in BASELINES if b in args.baselines]
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
            for w in workers:
                results[w.name]["inference"] = _stats(infer[w.name])
                results[w.name]["backbone_fpn"] = _stats(backbone[w.name])
                results[w.name]["peak_rss_inference_mb"] = w.call("rss")["max_rss_mb"]

            if args.train_runs > 0:
                print(f"[benchmark] training: 1 warm-up + {args.train_runs} steps each", flush=True)
                for w in workers:
                    w.call("train", runs=1)
                train = _round_robin(workers, "train", args.train_runs, gate)
                for w in workers:
                    results[w.name]["train_step"] = _stats(train[w.name])
                    results[w.name]["peak_rss_training_mb"] = w.call("rss")["max_rss_mb"]

            if not args.skip_flops:
                print(
                    f"[benchmark] FLOPs at 3x{args.flops_size[0]}x{args.flops_size[1]}", flush=True
                )
                for w in workers:
                    full = args.full_fpn and w.name == "kgdet"
                    results[w.name]["flops"] = w.call("flops", size=args.flops_size, full_fpn=full)
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
            "cpu": _cpu_name(),
            "logical_cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "cpu_busy_by_others": gate.summary(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "models": results,
        "ratios": ratios,
        "targets": {
            "kgdet_over_retinanet_latency": TARGET_VS_RETINANET,
            "kgdet_over_fcos_latency": TARGET_VS_FCOS,
            "kgdet_total_over_own_backbone_fpn": TARGET_VS_BACKBONE,
            "kgdet_paper_gflops": PAPER_GFLOPS["kgdet"],
        },
    }


def _cpu_name() -> str:
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
    display = {"kgdet": f"KGDet ({os.path.basename(report['config_file'])})", **DISPLAY_NAMES}

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
    targets = report["targets"]
    lines.append("")

    def verdict(value: float, target: float) -> str:
        return "meets" if value <= target else "MISSES"

    for key, label, target in (
        (
            "kgdet_over_retinanet_latency",
            "KGDet / RetinaNet inference latency",
            TARGET_VS_RETINANET,
        ),
        ("kgdet_over_fcos_latency", "KGDet / FCOS inference latency", TARGET_VS_FCOS),
        (
            "kgdet_total_over_own_backbone_fpn",
            "KGDet total / own backbone+FPN latency",
            TARGET_VS_BACKBONE,
        ),
    ):
        if key in ratios:
            lines.append(
                f"{label}: {ratios[key]:.2f} (target <= {target:.2f}: "
                f"{verdict(ratios[key], target)}; ratio of minima {ratios[key + '_of_min']:.2f})"
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
    if flops:
        rel = flops["gflops_without_dcn"] / targets["kgdet_paper_gflops"] - 1
        ok = "meets" if abs(rel) <= PAPER_FLOPS_TOLERANCE else "MISSES"
        lines.append(
            f"KGDet GFLOPs, full FPN, DCNs excluded: {flops['gflops_without_dcn']:.2f} vs paper "
            f"{targets['kgdet_paper_gflops']:.2f} ({rel:+.1%}; target within 3%: {ok})"
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
        f"{busy_text}; torch {machine['torch']}. Random-init models, batch 1; latency = "
        "median (min–max)."
    )
    return "\n".join(lines)


def write_json_atomic(payload: Dict, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as f:
        json.dump(payload, f, indent=2)
    os.replace(f.name, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="KGDet vs RetinaNet vs FCOS: params, FLOPs, latency, training step, memory",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config-file", default="configs/kgdet_R50.yaml", metavar="FILE", help="KGDet config"
    )
    parser.add_argument(
        "--size", nargs=2, type=int, default=[800, 1333], metavar=("H", "W"), help="input size"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--runs", type=int, default=10, help="timed inference runs per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed inference runs first")
    parser.add_argument("--train-runs", type=int, default=3, help="timed training steps (0: skip)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--full-fpn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also count KGDet's FLOPs with every FPN level (the paper's counting, which the "
        "3%% FLOPs target is checked against)",
    )
    parser.add_argument(
        "--flops-size",
        nargs=2,
        type=int,
        default=[800, 1280],
        metavar=("H", "W"),
        help="input for FLOPs (the paper's 3x1280x800)",
    )
    parser.add_argument("--skip-flops", action="store_true", help="do not count FLOPs")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="total time allowed for waiting, before timed runs, until other processes leave "
        "the CPU idle (shared machines); the CPU share they used is reported either way",
    )
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=list(BASELINES),
        choices=list(BASELINES),
        help="Detectron2 models to compare with (none: KGDet only)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="class count of the baselines (default: the KGDet config's MODEL.KGDET.NUM_CLASSES)",
    )
    parser.add_argument("--json", default="", metavar="OUT", help="write the report as json")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    cli.add_debug_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KGDet config overrides KEY VALUE")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cli.pop_debug_flag(args.opts)
    if args.worker:
        run_worker(args)
        return 0
    return cli.run_main(lambda: _main(args), "benchmark.py", argv)


def _main(args: argparse.Namespace) -> None:
    cfg = build_kgdet_cfg(args.config_file, args.opts)  # ConfigError: one line, exit 2
    if args.num_classes is None:
        args.num_classes = int(cfg.MODEL.KGDET.NUM_CLASSES)
    torch.set_num_threads(args.threads)
    report = run_benchmark(args)
    print(format_report(report))
    if args.json:
        write_json_atomic(report, args.json)
        print(f"[benchmark] wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
