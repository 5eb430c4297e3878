#!/usr/bin/env python
"""Draw the ground truth of any registered garment dataset, as the model sees it.

    python tools/visualize_data.py --config-file configs/kgdet_synth.yaml --output DIR \
        [--dataset NAME] [--source dataloader|annotation] [--num-images N] [--seed S] \
        [KEY VALUE ...]

``--source dataloader`` (default) runs each record through ``KGDetDatasetMapper`` in training
mode, so the picture shows the augmented image (resize, random flip) with its transformed boxes
and keypoints (flipped slots included); ``--source annotation`` draws the raw records. Boxes and
class names are drawn for every garment, and only the keypoints of its own class: filled dots for
visible (v = 2), hollow rings for occluded (v = 1), nothing for unlabelled (v = 0).
``--dataset`` defaults to the first of ``DATASETS.TRAIN``. Records whose image cannot be read are
skipped with a counted warning. Writes ``DIR/<image name>.jpg``.
"""

import argparse
import logging
import numpy as np
import os
import random
import sys
from typing import Optional, Sequence

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

import cv2
import torch
import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.structures import BoxMode
from detectron2.utils.logger import setup_logger

from kgdet import get_kgdet_cfg
from kgdet.data import KGDetDatasetMapper
from kgdet.data.image_io import decode_image
from kgdet.evaluation.garment_visualizer import GarmentVisualizer
from kgdet.file_io import write_atomic

logger = logging.getLogger("kgdet.visualize_data")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw ground-truth garments of a dataset")
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="config yaml (gives the dataset)"
    )
    parser.add_argument(
        "--output",
        "--output-dir",
        dest="output",
        required=True,
        metavar="DIR",
        help="directory for the drawings, <image name>.jpg (created if needed)",
    )
    parser.add_argument(
        "--dataset", default=None, help="registered dataset name (default: DATASETS.TRAIN[0])"
    )
    parser.add_argument(
        "--source",
        choices=["dataloader", "annotation"],
        default="dataloader",
        help="dataloader: after KGDetDatasetMapper's training augmentation (resize, flip); "
        "annotation: the raw records (default: dataloader)",
    )
    parser.add_argument("--num-images", type=int, default=20, help="records to draw (<=0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random augmentations")
    cli.add_debug_argument(parser)
    return parser


def parse_args(argv: Sequence[str] = None) -> argparse.Namespace:
    """Options in any order; the remaining ``KEY VALUE`` pairs are config overrides."""
    return cli.parse_args_and_overrides(get_parser(), argv)


def setup_cfg(args: argparse.Namespace):
    cfg = get_kgdet_cfg(args.config_file, args.opts)
    if args.dataset:
        cfg.DATASETS.TRAIN = (args.dataset,)
    if not cfg.DATASETS.TRAIN:
        raise cli.UsageError("no dataset: pass --dataset NAME or set DATASETS.TRAIN")
    cli.check_datasets(cfg.DATASETS.TRAIN[:1], "--dataset" if args.dataset else "DATASETS.TRAIN")
    cfg.freeze()
    return cfg


def _annotation_arrays(record: dict, num_keypoints: int):
    """Raw record -> (boxes XYXY (N, 4), classes (N,), keypoints (N, K, 3))."""
    annos = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    boxes = np.array(
        [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos],
        dtype=np.float64,
    ).reshape(-1, 4)
    classes = [int(a["category_id"]) for a in annos]
    kps = np.zeros((len(annos), num_keypoints, 3))
    for i, a in enumerate(annos):
        if a.get("keypoints"):
            kps[i] = np.asarray(a["keypoints"], dtype=np.float64).reshape(num_keypoints, 3)
    return boxes, classes, kps


def draw_record(record: dict, cfg, metadata, mapper: Optional[KGDetDatasetMapper]) -> np.ndarray:
    """RGB image of one record's ground truth (after the mapper when given)."""
    num_keypoints = len(metadata.keypoint_names)
    if mapper is not None:
        out = mapper(record)
        if out is None:  # the mapper logged why (unreadable image, EXIF orientation)
            raise OSError(f"{record['file_name']}: skipped by KGDetDatasetMapper")
        image = utils.convert_image_to_rgb(out["image"].permute(1, 2, 0), cfg.INPUT.FORMAT)
        inst = out["instances"]
        boxes = inst.gt_boxes.tensor.numpy()
        classes = inst.gt_classes.tolist()
        kps = (
            inst.gt_keypoints.tensor.numpy()
            if inst.has("gt_keypoints")
            else np.zeros((len(inst), num_keypoints, 3))
        )
    else:
        decoded = decode_image(record["file_name"], format="RGB")  # as the model sees it
        if decoded.info.orientation_changes_pixels and record.get("annotations"):
            raise ValueError(
                f"{record['file_name']}: {decoded.info.describe_orientation()} moves the pixels "
                "away from their annotations (stored frame)"
            )
        image = decoded.image
        boxes, classes, kps = _annotation_arrays(record, num_keypoints)
    vis = GarmentVisualizer(image, metadata)
    return vis.draw_garments(boxes, classes, kps, kind="ground_truth").get_image()


def run(args: argparse.Namespace) -> int:
    """Draw the records; returns the number of images written."""
    cfg = setup_cfg(args)
    dataset = cfg.DATASETS.TRAIN[0]
    metadata = MetadataCatalog.get(dataset)
    if not metadata.get("keypoint_names", None):
        raise SystemExit(f"visualize_data: dataset '{dataset}' has no keypoint_names metadata")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    mapper = KGDetDatasetMapper(cfg, is_train=True) if args.source == "dataloader" else None
    records = DatasetCatalog.get(dataset)
    if args.num_images > 0:
        records = records[: args.num_images]
    os.makedirs(args.output, exist_ok=True)
    written, skipped = 0, []
    used = set()
    for record in tqdm.tqdm(records, desc="visualize", unit="img", disable=len(records) < 2):
        try:
            drawn = draw_record(dict(record), cfg, metadata, mapper)
        except (OSError, ValueError) as e:
            # Unreadable image files (PIL/OS errors) and size mismatches: skip and count.
            logger.warning(f"Skipping '{record.get('file_name')}': {e}")
            skipped.append(record.get("file_name"))
            continue
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        name, n = f"{stem}.jpg", 1
        while name in used:
            n += 1
            name = f"{stem}_{n}.jpg"
        used.add(name)
        bgr = np.ascontiguousarray(drawn[:, :, ::-1])
        write_atomic(os.path.join(args.output, name), lambda tmp: cv2.imwrite(tmp, bgr))
        written += 1
    if skipped:
        logger.warning(f"Skipped {len(skipped)} of {len(records)} records: {', '.join(skipped)}")
    logger.info(f"Wrote {written} images to {args.output}")
    return written


def main(argv: Sequence[str] = None) -> int:
    setup_logger(name="kgdet")
    setup_logger()
    args = parse_args(argv)
    return cli.run_main(lambda: 0 if run(args) else 1, "visualize_data.py", argv)


if __name__ == "__main__":
    sys.exit(main())
