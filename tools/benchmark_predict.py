#!/usr/bin/env python
"""Images per second of tools/predict.py, demo.py and a plain DefaultPredictor loop.

    python tools/benchmark_predict.py --config-file configs/kgdet_synth.yaml --num-images 500 \
        --workdir /tmp/kgdet_predict_bench

Writes ``--num-images`` synthetic JPEGs at the config's test size and a random-weight model
(checkpoint and ONNX export) into ``--workdir``, then times, on the same files: the
``DefaultPredictor`` / ``ExportedPredictor`` loop, ``demo.py`` (which also draws every image),
and ``tools/predict.py`` with 1 and 2 processes, each with the eager and the ONNX model. Prints
a Markdown table (docs/predict.md). ``--threads`` CPU threads in all (divided among processes).
"""

import argparse
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import kgdet  # noqa: F401  (first: importing kgdet hides known third-party import warnings)

# isort: split

import torch  # noqa: E402

from detectron2.utils.logger import setup_logger  # noqa: E402

from kgdet import get_kgdet_cfg  # noqa: E402
from kgdet.predict.benchmark import (  # noqa: E402
    BenchmarkRow,
    format_table,
    make_images,
    prepare_models,
    time_call,
    time_loop,
)

REPO = Path(__file__).resolve().parents[1]


def _main_of(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default=str(REPO / "configs" / "kgdet_synth.yaml"))
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--workdir", default="/tmp/kgdet_predict_bench")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=8, help="tools/predict.py batches")
    parser.add_argument("--num-workers", type=int, default=1, help="decoding workers per rank")
    args = parser.parse_args(argv)
    setup_logger(name="kgdet")
    overrides = ["MODEL.DEVICE", "cpu"]
    cfg = get_kgdet_cfg(args.config_file, overrides)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    images = work / "images"
    files = make_images(str(images), args.num_images, int(cfg.INPUT.MIN_SIZE_TEST))
    ckpt, onnx_path = prepare_models(cfg, str(work))
    cfg = get_kgdet_cfg(args.config_file, overrides + ["MODEL.WEIGHTS", ckpt])
    demo_main = _main_of("kgdet_demo", REPO / "demo.py")
    predict_main = _main_of("kgdet_predict_tool", REPO / "tools" / "predict.py")
    common = ["--config-file", args.config_file, "--input", str(images)]
    tail = overrides + ["MODEL.WEIGHTS", ckpt]
    rows = []

    def add(method, model, processes, fn):
        torch.set_num_threads(args.threads)
        rows.append(BenchmarkRow(method, model, processes, len(files), time_call(fn)))
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)

    for model, exported in (("eager", None), ("onnx", onnx_path)):
        add(
            "DefaultPredictor loop", model, 1, lambda: time_loop(cfg, files, exported, args.threads)
        )
        out = str(work / f"demo_{model}")
        extra = ["--exported", exported] if exported else []
        add("demo.py", model, 1, lambda: demo_main(common + ["--output", out] + extra + tail))
        for processes in (1, 2):
            out = str(work / f"predict_{model}_{processes}")
            argv = common + ["--output", out, "--batch-size", str(args.batch_size)]
            argv += ["--num-workers", str(args.num_workers), "--num-gpus", str(processes)]
            argv += ["--num-threads", str(max(1, args.threads // processes))] + extra + tail
            add("tools/predict.py", model, processes, lambda: predict_main(argv))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
