#!/usr/bin/env python
"""Cost of a KGDet model against Detectron2's RetinaNet R50-FPN and FCOS R50-FPN, in one run.

For every model (random init, nothing downloaded): trainable parameters, FLOPs (fvcore through
``detectron2.utils.analysis.FlopCountAnalysis``; deformable convolutions counted apart, as the
paper's counter ignores them), inference latency (median and min–max over ``--runs`` after
warm-up, statistics by ``torch.utils.benchmark``), the latency of the model's own backbone+FPN as
inference runs it, training-step time (forward, backward, SGD step on one image with random
ground truth) and peak memory (max resident set size). With ``--exported`` (the default when
``onnxruntime`` is installed) the same KGDet model exported to ONNX (``kgdet.export``) is timed
in ONNX Runtime's CPU provider beside them.

Each model lives in its own worker subprocess; the models are timed round-robin, one call at a
time, so load changes on a shared machine affect all of them alike. The code is in
``kgdet.benchmark``; this file is its command line.

    python tools/benchmark.py --config-file configs/kgdet_R50.yaml --device cpu \
        [--size 800 1333] [--runs 10] [--threads 2] [--no-full-fpn] [--json OUT] [KEY VALUE ...]

Baselines: RetinaNet from ``COCO-Detection/retinanet_R_50_FPN_1x.yaml`` and FCOS from the
``COCO-Detection/fcos_R_50_FPN_1x.py`` LazyConfig (Detectron2's model zoo files), with their
class count set to the KGDet config's ``MODEL.KGDET.NUM_CLASSES``.
"""

import argparse
import importlib.util
import sys
from typing import Optional, Sequence

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

import torch  # noqa: E402

from kgdet.benchmark import BASELINES, build_kgdet_cfg, format_report, run_benchmark
from kgdet.file_io import write_json_atomic


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
        help="also count KGDet's FLOPs with every FPN level (the paper's counting, printed next "
        "to the paper's Table 1 figure)",
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
    parser.add_argument(
        "--exported",
        action=argparse.BooleanOptionalAction,
        default=importlib.util.find_spec("onnxruntime") is not None,
        help="also time KGDet exported to ONNX in ONNX Runtime (CPU provider, --threads threads; "
        "needs pip install -e .[deploy])",
    )
    parser.add_argument("--json", default="", metavar="OUT", help="write the report as json")
    cli.add_debug_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KGDet config overrides KEY VALUE")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cli.pop_debug_flag(args.opts)
    return cli.run_main(lambda: _main(args), "benchmark.py", argv)


def _main(args: argparse.Namespace) -> None:
    cfg = build_kgdet_cfg(args.config_file, args.opts)  # ConfigError: one line, exit 2
    if args.exported and importlib.util.find_spec("onnxruntime") is None:
        raise cli.UsageError("--exported needs onnxruntime and onnx: pip install -e .[deploy]")
    if args.num_classes is None:
        args.num_classes = int(cfg.MODEL.KGDET.NUM_CLASSES)
    torch.set_num_threads(args.threads)
    report = run_benchmark(args)
    print(format_report(report))
    if args.json:
        write_json_atomic(args.json, report, indent=2)
        print(f"[benchmark] wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
