"""Throughput of ``tools/predict.py`` against ``demo.py`` and a plain ``DefaultPredictor`` loop.

Used by ``tools/benchmark_predict.py``: the same synthetic JPEGs, the same random-weight model
(eager, and exported to ONNX by :func:`kgdet.export.export_model`), each way of running timed
from the call to its return in this process (model loading and, for several processes, their
start-up included; Python's imports not). Prints images per second.
"""

import numpy as np
import os
import time
from dataclasses import dataclass
from typing import Callable, List, Sequence
import cv2
import torch

from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from ..data.image_io import read_image

__all__ = ["BenchmarkRow", "format_table", "make_images", "prepare_models", "time_loop"]


@dataclass
class BenchmarkRow:
    """One timed way of predicting ``images`` files."""

    method: str
    model: str
    processes: int
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def make_images(folder: str, n: int, size: int, seed: int = 0) -> List[str]:
    """``n`` JPEGs of ``size`` x ``size`` px (a coloured garment-like quadrilateral on noise)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        pts = (rng.uniform(0.1, 0.9, (4, 2)) * size).astype(np.int32)
        cv2.fillPoly(img, [cv2.convexHull(pts)], tuple(int(c) for c in rng.integers(80, 255, 3)))
        path = os.path.join(folder, f"{i:05d}.jpg")
        if not cv2.imwrite(path, img):
            raise OSError(f"cv2.imwrite could not write '{path}'")
        paths.append(path)
    return paths


def prepare_models(cfg, folder: str) -> "tuple[str, str]":
    """(checkpoint, ONNX file) of a random-weight model of ``cfg`` (seed 0) in ``folder``."""
    from ..export import export_model

    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ckpt = os.path.join(folder, "model.pth")
    torch.save({"model": model.state_dict()}, ckpt)
    onnx_path = os.path.join(folder, "model.onnx")
    size = int(cfg.INPUT.MIN_SIZE_TEST)
    export_model(model, cfg, torch.rand(3, size, size) * 255, onnx_path, "onnx")
    return ckpt, onnx_path


def time_loop(cfg, files: Sequence[str], exported: str = None, threads: int = None) -> float:
    """Seconds of ``for f in files: predictor(read_image(f))`` with Detectron2's
    ``DefaultPredictor`` (or ``ExportedPredictor`` for ``exported``), model loading included."""
    start = time.perf_counter()
    if exported:
        from ..export import ExportedPredictor

        predictor = ExportedPredictor(cfg, exported, num_threads=threads)
    else:
        predictor = DefaultPredictor(cfg)
    for path in files:
        predictor(read_image(path, format="BGR"))
    return time.perf_counter() - start


def time_call(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def format_table(rows: Sequence[BenchmarkRow]) -> str:
    """A Markdown table of ``rows``."""
    lines = [
        "| method | model | processes | images | seconds | images/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.model} | {r.processes} | {r.images} | {r.seconds:.1f} | "
            f"{r.images_per_second:.1f} |"
        )
    return "\n".join(lines)
