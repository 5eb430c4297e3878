#!/usr/bin/env python
"""Write a simulated DeepFashion2 split: a COCO-style json in the official converter's layout
with the released split's counts and class frequencies (or ``--num-images`` / ``--scale`` of
them), its compact garment summary (``<json>.garments.npz``, what simulated detections are made
from) and, with ``--image-root``, placeholder images (symlinks to flat JPEGs of each size).

    python tools/simulate_deepfashion2.py --split train --output /tmp/df2sim/train.json
    python tools/simulate_deepfashion2.py --split validation --scale 0.1 \
        --output /tmp/df2sim/val_10pct.json --image-root /tmp/df2sim/val_images

The code is in ``kgdet.benchmark.simulate_deepfashion2``.
"""

import argparse
import logging
import sys
import time

import kgdet  # noqa: F401  (first: importing kgdet hides known third-party import warnings)

# isort: split

from kgdet.benchmark.simulate_deepfashion2 import DF2_SPLITS, write_simulated_split


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=sorted(DF2_SPLITS), default="validation")
    parser.add_argument("--output", required=True, help="json file to write")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--num-images", type=int, default=None)
    size.add_argument("--scale", type=float, default=None, help="fraction of the split's images")
    parser.add_argument("--image-root", default=None, help="create placeholder images here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    num_images = args.num_images
    if args.scale is not None:
        if not 0 < args.scale <= 1:
            parser.error(f"--scale must be in (0, 1], got {args.scale}")
        num_images = max(1, round(args.scale * DF2_SPLITS[args.split].num_images))
    start = time.perf_counter()
    spec = write_simulated_split(args.output, args.split, num_images, args.seed, args.image_root)
    print(
        f"{args.output}: {spec.num_images} images, {spec.num_garments} garments "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
