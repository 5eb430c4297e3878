#!/usr/bin/env python
"""Convert an official KGDet checkpoint (mmdetection v1, ShenhanQian/KGDet) for this project.

    python tools/convert_official_checkpoint.py IN.pth OUT.pth \
        [--config-file configs/kgdet_R50.yaml] [--allow-pickle] [KEY VALUE ...]
    python train_net.py --config-file configs/kgdet_R50.yaml --eval-only MODEL.WEIGHTS OUT.pth

The model of ``--config-file`` (built on the CPU, no weights loaded) defines the expected names
and shapes; every official key must map onto it and every model key must be provided, otherwise
one error lists the offending names. ``OUT.pth`` is a tensor-only ``{"model": state_dict}``
(loads with ``torch.load(weights_only=True)``); ``OUT.pkl`` is Detectron2's pickle format.
Name mapping: :mod:`kgdet.checkpoint.convert`.
"""

import argparse
import logging
import os
import sys
from typing import Dict, Optional, Sequence

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

import torch

from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from kgdet import get_kgdet_cfg
from kgdet.checkpoint import (
    OfficialCheckpointError,
    convert_official_state_dict,
    load_official_state_dict,
    save_converted_checkpoint,
)

logger = logging.getLogger("kgdet.convert_official_checkpoint")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Convert an official KGDet checkpoint")
    parser.add_argument("input", help="official checkpoint (.pth, mmdetection v1)")
    parser.add_argument("output", help="converted checkpoint (.pth tensor-only, or .pkl)")
    parser.add_argument(
        "--config-file",
        default="configs/kgdet_R50.yaml",
        metavar="FILE",
        help="config of the model the weights are for (default: configs/kgdet_R50.yaml)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load with torch.load(weights_only=False); only for files you trust",
    )
    cli.add_debug_argument(parser)
    return parser


def parse_args(argv: Sequence[str] = None) -> argparse.Namespace:
    """Options in any order; the remaining ``KEY VALUE`` pairs are config overrides."""
    return cli.parse_args_and_overrides(get_parser(), argv)


def setup_cfg(config_file: str, opts: Sequence[str] = ()):
    cfg = get_kgdet_cfg(config_file, opts)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def convert(
    input_path: str,
    output_path: str,
    config_file: str,
    opts: Sequence[str] = (),
    allow_pickle: bool = False,
    model: Optional[torch.nn.Module] = None,
) -> Dict[str, torch.Tensor]:
    """Load, convert against the config's model (built on the CPU unless given), save.

    Returns the converted state dict.
    """
    official = load_official_state_dict(input_path, allow_pickle=allow_pickle)
    cfg = setup_cfg(config_file, opts)
    if model is None:
        model = build_model(cfg)
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.MODEL.KGDET.MOMENT_PARAM != "exp":
        raise OfficialCheckpointError(
            "the official moment transform is half-width = std * exp(lambda): "
            f"MODEL.KGDET.MOMENT_PARAM must be 'exp', got '{cfg.MODEL.KGDET.MOMENT_PARAM}'"
        )
    if cfg.MODEL.KGDET.GRID_OFFSET != 0.0:
        logger.warning(
            f"MODEL.KGDET.GRID_OFFSET is {cfg.MODEL.KGDET.GRID_OFFSET}; the official model was "
            "trained with grid points at j*s (0.0)."
        )
    converted = convert_official_state_dict(official, target, columns=cfg.MODEL.KGDET.COLUMNS)
    save_converted_checkpoint(converted, output_path)
    return converted


def main(argv: Sequence[str] = None) -> int:
    setup_logger(name="kgdet")
    args = parse_args(argv)

    def run() -> int:
        if not os.path.isfile(args.input):
            raise cli.UsageError(
                f"input checkpoint '{args.input}' not found: expected an official KGDet .pth"
            )
        try:
            convert(args.input, args.output, args.config_file, args.opts, args.allow_pickle)
        except OfficialCheckpointError as e:
            logger.error(f"{args.input}: {e}")
            return 1
        return 0

    return cli.run_main(run, "convert_official_checkpoint.py", argv)


if __name__ == "__main__":
    sys.exit(main())
