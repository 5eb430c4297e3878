#!/usr/bin/env python
"""Predict garments and keypoints for a folder, glob or list of images: resumable, distributed.

    python tools/predict.py --config-file configs/kgdet_synth.yaml --input photos/ --recursive \
        --output predictions/ --progress MODEL.WEIGHTS output/kgdet_synth/model_final.pth
    python tools/predict.py ... --num-gpus 8                       # one process per GPU
    python tools/predict.py ... --exported model.onnx --num-processes 4 MODEL.DEVICE cpu

Writes one JSON Lines record per image to ``OUTPUT/predictions.rank{r}-of-{w}.jsonl`` as it
goes (resumed by re-running the same command), the files that could not be predicted with
their reason to ``failed.rank{r}-of-{w}.jsonl`` and ``failed.json``, the counts to
``summary.json``, and on request COCO results / the DeepFashion2 submission files and
drawings. See docs/predict.md. The logic lives in ``kgdet.predict``.
"""

import argparse
import logging
import os
import sys
from typing import Sequence

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

from detectron2.engine import launch
from detectron2.utils.logger import setup_logger

from kgdet import get_kgdet_cfg
from kgdet.predict import OutputFolder, PredictionOptions, list_inputs, run_prediction
from kgdet.predict.formats import FORMATS

logger = logging.getLogger("kgdet.predict")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="KGDet batch prediction over many images")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config yaml")
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="folders, glob patterns (quote them), image files, or .txt/.lst files listing "
        "one path per line (relative to the list's folder)",
    )
    parser.add_argument("--recursive", action="store_true", help="walk sub-folders (and **)")
    parser.add_argument("--output", required=True, help="output folder (may be the input's)")
    parser.add_argument(
        "--format",
        nargs="+",
        default=["jsonl"],
        metavar="FORMAT",
        help="besides the JSON Lines shards: 'coco' (coco_results.json) and/or 'deepfashion2' "
        "(the official submission files)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call")
    parser.add_argument(
        "--num-workers", type=int, default=2, help="image-decoding worker processes per rank"
    )
    parser.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="CPU threads of each process for PyTorch and ONNX Runtime (default: PyTorch's; "
        "with several CPU processes the cores divided among them)",
    )
    parser.add_argument(
        "--exported",
        metavar="MODEL",
        help="run an exported model (.onnx: ONNX Runtime, else TorchScript) instead of "
        "MODEL.WEIGHTS",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="minimum detection score (default: the config's MODEL.KGDET.SCORE_THRESH_TEST)",
    )
    parser.add_argument("--draw", action="store_true", help="also write OUTPUT/drawings/*.jpg")
    parser.add_argument("--keypoint-threshold", type=float, default=0.5, help="for --draw")
    parser.add_argument("--progress", action="store_true", help="progress bar (images/s, ETA)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="allow an empty MODEL.WEIGHTS (a randomly initialised model)",
    )
    parser.add_argument(
        "--num-gpus",
        "--num-processes",
        dest="num_gpus",
        type=int,
        default=1,
        help="processes per machine: one per GPU, or CPU processes with MODEL.DEVICE cpu",
    )
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="rank of the machine running this command"
    )
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="initialisation URL of the process group (tcp://HOST:PORT or file://PATH; 'auto': "
        "a free local port, one machine only)",
    )
    return cli.add_overrides_argument(parser)


def parse_args(argv: Sequence[str] = None) -> argparse.Namespace:
    """Parse; ``KEY VALUE`` config overrides may follow the other arguments without ``--opts``."""
    parser = get_parser()
    args = cli.parse_args_and_overrides(parser, argv, multi_value=("input", "format"))
    if not args.input:
        parser.error("--input needs at least one folder, pattern or file")
    bad = [f for f in args.format if f not in FORMATS]
    if bad:
        parser.error(f"--format {bad[0]}: expected some of {', '.join(FORMATS)}")
    return args


def setup(args: argparse.Namespace):
    """(config, input listing, options); raises ``cli.UsageError`` for the user's mistakes."""
    cfg = get_kgdet_cfg(args.config_file, args.opts)
    if args.confidence_threshold is not None:
        cfg.MODEL.KGDET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()
    if args.exported:
        if not os.path.isfile(args.exported):
            raise cli.UsageError(f"--exported {args.exported}: no such file (an exported model)")
    else:
        cli.check_weights(cfg, required=not args.random_weights)
    if args.batch_size < 1 or args.num_workers < 0:
        raise cli.UsageError("--batch-size must be >= 1 and --num-workers >= 0")
    cli.check_input_paths(args.input, "--input")
    output = OutputFolder(args.output)
    listing = list_inputs(
        args.input, args.recursive, path_lists=True, is_output=output.is_output, sort=True
    )
    if not listing.files:
        raise cli.UsageError(
            f"--input {' '.join(args.input)} gave no file to predict "
            f"({len(listing.skipped)} left out: hidden files, folders or this tool's outputs)"
        )
    output.prepare()
    options = PredictionOptions(
        output_dir=args.output,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        exported=args.exported,
        num_threads=args.num_threads,
        draw=args.draw,
        keypoint_threshold=args.keypoint_threshold,
        progress=args.progress,
        formats=list(dict.fromkeys(["jsonl"] + list(args.format))),
    )
    return cfg, listing, options


def main(argv: Sequence[str] = None) -> int:
    setup_logger(name="kgdet")
    args = parse_args(argv)

    def run() -> int:
        cfg, listing, options = setup(args)
        logger.info(
            f"{len(listing.files)} files to predict into {args.output}; {len(listing.skipped)} "
            "left out (listed in failed.json)"
        )
        launch(
            run_prediction,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(cfg, listing, options),
        )
        return 0

    return cli.run_main(run, "predict.py", argv)


if __name__ == "__main__":
    sys.exit(main())
