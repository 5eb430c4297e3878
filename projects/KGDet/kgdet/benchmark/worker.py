"""Benchmark workers: one model per subprocess, driven by json-line commands on stdin.

Each model lives in its own process, so its peak resident memory is its own; the parent
(:mod:`kgdet.benchmark.runner`) drives the workers one at a time.

    python -m kgdet.benchmark --worker NAME --config-file FILE --device cpu --threads 2 \
        --size H W [--num-classes C] [KEY VALUE ...]
"""

import argparse
import atexit
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import warnings
from typing import Dict
import torch

from .flops import count_flops
from .models import (
    backbone_fn,
    build_benchmark_model,
    exported_inference_fn,
    inference_fn,
    make_image,
    make_training_input,
    model_num_classes,
    model_num_keypoints,
)
from .timing import time_call

__all__ = ["Worker", "run_worker", "worker_parser", "PROTOCOL_PREFIX"]

PROTOCOL_PREFIX = "@@BENCH "

logger = logging.getLogger("kgdet.benchmark")


def _max_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss / 1024.0


def _reply(payload: Dict) -> None:
    sys.stdout.write(PROTOCOL_PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _build(args: argparse.Namespace, export_dir: str):
    """(model, inference callable, backbone callable or None, whether it trains) of the
    worker's model. "kgdet_exported" is the KGDet model exported to ONNX (same random init as
    "kgdet": both seeded) and run by ONNX Runtime's CPU provider with ``--threads`` threads."""
    name = args.worker
    torch.manual_seed(0)
    model_name = "kgdet" if name == "kgdet_exported" else name
    model = build_benchmark_model(
        model_name,
        config_file=args.config_file,
        opts=args.opts,
        device=args.device,
        num_classes=args.num_classes,
    )
    height, width = args.size
    image = make_image(height, width, args.device)
    if name != "kgdet_exported":
        return model, image, inference_fn(model, image), backbone_fn(model, image), True
    from ..export import export_model
    from ..export.predictor import OnnxRuntimeModel

    path = os.path.join(export_dir, "model.onnx")
    export_model(model.cpu(), model_cfg(args), image.cpu(), path, "onnx")
    runtime = OnnxRuntimeModel(path, "cpu", num_threads=args.threads)
    return model, image, exported_inference_fn(runtime, image.cpu()), None, False


def model_cfg(args: argparse.Namespace):
    from .models import build_kgdet_cfg

    return build_kgdet_cfg(args.config_file, args.opts, "cpu")


def run_worker(args: argparse.Namespace) -> None:
    """Serve the commands of :class:`Worker` for the model ``args.worker`` until "exit"."""
    from detectron2.utils.events import EventStorage

    import kgdet  # noqa: F401  (registers the KGDet meta-architecture and backbone)

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    warnings.simplefilter("ignore")
    name = args.worker
    export_dir = tempfile.mkdtemp(prefix="kgdet_bench_export_")
    atexit.register(shutil.rmtree, export_dir, True)
    try:
        model, image, infer, backbone, trains = _build(args, export_dir)
    except Exception as e:  # reported to the parent, which names the model
        logger.exception("benchmark worker %s failed to build", name)
        _reply({"error": f"{type(e).__name__}: {e}"})
        return
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
        runs = command.get("runs", 1)
        try:
            if cmd == "infer":
                model.eval()
                _reply({"times_ms": [time_call(infer, args.device) for _ in range(runs)]})
            elif cmd == "backbone":
                model.eval()
                times = [time_call(backbone, args.device) for _ in range(runs)] if backbone else []
                _reply({"times_ms": times})
            elif cmd == "train":
                if not trains:
                    _reply({"times_ms": []})
                    continue
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

                times = [time_call(step, args.device) for _ in range(runs)]
                model.eval()
                _reply({"times_ms": times})
            elif cmd == "rss":
                payload = {"max_rss_mb": round(_max_rss_mb(), 1)}
                if args.device.startswith("cuda"):
                    payload["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
                _reply(payload)
            elif cmd == "flops":
                if not trains:  # the exported graph: same model, counted as "kgdet"
                    _reply({})
                    continue
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
            "-m",
            "kgdet.benchmark",
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


def worker_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m kgdet.benchmark`` (one worker, started by :class:`Worker`)."""
    parser = argparse.ArgumentParser(description="one benchmark worker (started by the runner)")
    parser.add_argument("--worker", required=True, help="kgdet, kgdet_exported, retinanet, fcos")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", nargs=2, type=int, required=True)
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    return parser
