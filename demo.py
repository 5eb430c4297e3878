#!/usr/bin/env python
"""KGDet predictor demo: detect garments and their keypoints in images.

    python demo.py --config-file configs/kgdet_synth.yaml --input IMG_OR_DIR_OR_GLOB [...] \
        --output DIR [--confidence-threshold 0.3] [--keypoint-threshold 0.5] \
        MODEL.WEIGHTS output/kgdet_synth/model_final.pth
    python demo.py --config-file configs/kgdet_synth.yaml --dataset kgdet_synth_val \
        --output output/kgdet_synth/demo MODEL.WEIGHTS output/kgdet_synth/model_final.pth
    python demo.py --config-file configs/kgdet_synth.yaml --dataset kgdet_synth_val \
        --output output/kgdet_synth/demo_exported --exported model.onnx

With ``--exported`` the detections come from a model exported by ``tools/deploy/export_model.py``
(ONNX Runtime for ``.onnx``, TorchScript otherwise; ``kgdet.export.ExportedPredictor``) instead
of the PyTorch model (MODEL.WEIGHTS is then not needed); the config still gives the resizing,
the threshold and the metadata.

For every readable input image it writes ``DIR/<name>.jpg`` and, at the end,
``DIR/predictions.json``. The picture shows the detections scoring at least the confidence
threshold: boxes with class names and scores (boxes that coincide, e.g. one cell kept for two
classes by the class-wise NMS, are drawn once with both labels), and only the keypoints of each
garment's own class, filled; a model that predicts keypoint visibility (the selection variant)
draws keypoints below the keypoint threshold hollow. ``predictions.json`` holds every detection
above the confidence threshold, unmerged:
``{"images": [{"file_name", "height", "width", "instances": [{"bbox": [x1, y1, x2, y2],
"score", "category_id" (contiguous), "category_name", "keypoints": [{"slot", "name", "x", "y",
"score"}, ...]}]}], "skipped": [{"file_name", "error"}], "left_out": [...]}`` — coordinates are
Detectron2's continuous image coordinates of the original image. A directory input gives every
file whose extension Pillow knows an image format for (``.jpg``, ``.jfif``, ``.jpe``, ``.png``,
``.gif``, ``.avif``, ...), decoded by content; its other entries are named in a warning and in
``"left_out": [{"file_name", "reason"}]``. Images that cannot be read, that are too thin to be
resized to the test size (e.g. a 1200x3 px strip), or that the model fails on are skipped with a
counted warning; the others are still written, and so is ``predictions.json``. The drawings
never replace an input: an ``--output`` that is a folder of the inputs, or an output file that
is an input, is refused in one line (``tools/predict.py`` writes its records beside the inputs
safely). Config overrides may follow the arguments (``KEY VALUE`` pairs) or ``--opts``.

Without ``MODEL.WEIGHTS`` the model would be randomly initialised and find nothing: the demo
refuses unless ``--random-weights`` is given (then it warns). A missing config, weights or input
file, or an unknown config key, ends in one line and exit status 2 (``--debug`` for the
traceback).
"""

import argparse
import glob
import logging
import numpy as np
import os
import sys
from typing import Dict, List, Sequence, Tuple

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

import cv2
import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger

from kgdet import get_kgdet_cfg  # importing kgdet registers the model and datasets
from kgdet.data.image_io import read_image  # Detectron2's read_image, exact 8-bit conversion
from kgdet.evaluation.garment_visualizer import GarmentVisualizer
from kgdet.file_io import write_atomic, write_json_atomic
from kgdet.predict import check_resizable, instances_to_records, list_inputs, pil_image_extensions
from kgdet.predictor import KGDetPredictor

logger = logging.getLogger("kgdet.demo")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="KGDet garment detection demo")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config yaml")
    parser.add_argument(
        "--input",
        nargs="+",
        default=[],
        help="image files, directories (all images inside) or glob patterns",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="instead of --input: the images of a registered dataset, e.g. kgdet_synth_val",
    )
    parser.add_argument(
        "--num-images",
        type=int,
        default=8,
        help="with --dataset: how many of its images, from the first (<= 0: all)",
    )
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.3,
        help="minimum detection score to draw and report (sets MODEL.KGDET.SCORE_THRESH_TEST)",
    )
    parser.add_argument(
        "--keypoint-threshold",
        type=float,
        default=0.5,
        help="only for models that predict keypoint visibility (MODEL.KGDET.AGG selection): "
        "keypoints whose predicted visibility is below it are drawn hollow. Other models have no "
        "per-keypoint confidence; their keypoints are always drawn filled",
    )
    parser.add_argument(
        "--exported",
        default=None,
        metavar="MODEL",
        help="run this exported model (.onnx: ONNX Runtime, else TorchScript) instead of the "
        "PyTorch model of MODEL.WEIGHTS",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="run without MODEL.WEIGHTS (a randomly initialised model, which finds nothing "
        "meaningful); without this flag an empty MODEL.WEIGHTS is refused",
    )
    return cli.add_overrides_argument(parser)


def parse_args(argv: Sequence[str] = None) -> argparse.Namespace:
    """Parse; ``KEY VALUE`` overrides may also follow the other arguments without ``--opts``."""
    parser = get_parser()
    args = cli.parse_args_and_overrides(parser, argv, multi_value=("input",))
    if bool(args.input) == bool(args.dataset):
        parser.error("give either --input (images, directories or glob patterns) or --dataset NAME")
    return args


WEIGHTS_HINT = (
    "README's first command (python train_net.py --config-file configs/kgdet_synth.yaml) "
    "writes output/kgdet_synth/model_final.pth; pass --random-weights to run an untrained model"
)


def setup_cfg(args: argparse.Namespace):
    """Config of the demo; raises ``UsageError``/``ConfigError`` for the user's mistakes."""
    cfg = get_kgdet_cfg(args.config_file, args.opts)
    cfg.MODEL.KGDET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()
    if args.exported:  # the exported file holds the weights
        if not os.path.isfile(args.exported):
            raise cli.UsageError(f"--exported {args.exported}: no such file (an exported model)")
        return cfg
    cli.check_weights(cfg, required=not args.random_weights, hint=WEIGHTS_HINT)
    if not cfg.MODEL.WEIGHTS:
        logger.warning(
            "MODEL.WEIGHTS is empty (--random-weights): the model is randomly initialised, so "
            "its detections are meaningless"
        )
    return cfg


def expand_inputs(inputs: Sequence[str]) -> Tuple[List[str], List[Dict[str, str]]]:
    """(files, left out): files as given, glob matches, and the files of directories whose
    extension is one Pillow knows an image format for (.jpg, .jfif, .jpe, .png, .gif, .avif,
    ...; tried by content); the other directory entries are left out, each with its reason."""
    listing = list_inputs(inputs, extensions=pil_image_extensions())
    for item in inputs:
        if not os.path.isdir(item) and any(ch in item for ch in "*?["):
            if not glob.glob(os.path.expanduser(item)):
                logger.warning(f"--input '{item}' matched no file")
    return listing.files, listing.skipped


def dataset_images(name: str, num_images: int) -> List[str]:
    """File names of the first ``num_images`` records (<= 0: all) of a registered dataset."""
    cli.check_datasets([name], "--dataset")
    records = DatasetCatalog.get(name)
    if num_images > 0:
        records = records[:num_images]
    return [r["file_name"] for r in records]


def _output_names(paths: Sequence[str]) -> Dict[str, str]:
    """Unique output file names (``<stem>.jpg``, ``<stem>_2.jpg``, ... on clashes)."""
    names, used = {}, set()
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        name, n = f"{stem}.jpg", 1
        while name in used:
            n += 1
            name = f"{stem}_{n}.jpg"
        used.add(name)
        names[path] = name
    return names


instances_to_json = instances_to_records  # detections with each garment's own keypoint slots


def check_outputs(paths: Sequence[str], out_names: Dict[str, str], output: str) -> None:
    """Raise ``cli.UsageError`` (one line) if ``output`` is a folder of the inputs or an output
    file would replace an input: the drawings would overwrite photos or be read back as
    inputs by the next run."""
    out_real = os.path.realpath(output)
    inputs = {os.path.realpath(p) for p in paths}
    folders = {os.path.dirname(p) for p in inputs}
    if out_real in folders:
        raise cli.UsageError(
            f"--output '{output}' is a folder of the input images: the drawings would replace "
            "or mix with them; choose another folder"
        )
    planned = [os.path.join(out_real, n) for n in out_names.values()]
    planned.append(os.path.join(out_real, "predictions.json"))
    clash = [p for p in planned if p in inputs]
    if clash:
        raise cli.UsageError(f"--output '{output}' would overwrite the input '{clash[0]}'")


def run_demo(args: argparse.Namespace) -> Tuple[int, int]:
    """Run on every input; returns (images written, images skipped)."""
    cfg = setup_cfg(args)
    dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else cfg.DATASETS.TRAIN[0]
    metadata = MetadataCatalog.get(dataset)
    left_out: List[Dict[str, str]] = []
    if args.dataset:
        paths = dataset_images(args.dataset, args.num_images)
    else:
        cli.check_input_paths(args.input, "--input")
        paths, left_out = expand_inputs(args.input)
    if left_out:
        logger.warning(
            f"Left out {len(left_out)} director{'y entry' if len(left_out) == 1 else 'y entries'}"
            " (not image files): "
            + ", ".join(f"{os.path.basename(s['file_name'])} ({s['reason']})" for s in left_out)
        )
    if not paths:
        raise cli.UsageError(
            f"--input {' '.join(args.input)} matched no image: expected image files, "
            "directories of images or glob patterns"
        )
    out_names = _output_names(paths)
    check_outputs(paths, out_names, args.output)
    if args.exported:
        from kgdet.export import ExportedPredictor

        predictor = ExportedPredictor(cfg, args.exported, device=cfg.MODEL.DEVICE)
    else:
        predictor = KGDetPredictor(cfg)
    os.makedirs(args.output, exist_ok=True)
    records, skipped = [], []
    for path in tqdm.tqdm(paths, desc="demo", unit="img", disable=len(paths) < 2):
        try:
            image = read_image(path, format="BGR")
        except Exception as e:  # noqa: B902 - PIL/OS errors of many kinds for bad files
            logger.warning(f"Skipping unreadable image '{path}': {e}")
            skipped.append({"file_name": path, "error": str(e)})
            continue
        problem = check_resizable(
            *image.shape[:2], cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
        )
        if problem:
            logger.warning(f"Skipping '{path}': {problem}")
            skipped.append({"file_name": path, "error": problem})
            continue
        try:
            instances = predictor(image)["instances"].to("cpu")
        except Exception as e:  # noqa: B902 - one image the model fails on ends nothing
            logger.warning(f"Skipping '{path}': prediction failed: {type(e).__name__}: {e}")
            skipped.append({"file_name": path, "error": f"prediction error ({e})"})
            continue
        vis = GarmentVisualizer(image[:, :, ::-1], metadata)
        drawn = vis.draw_instance_predictions_garments(instances, args.keypoint_threshold)
        out_path = os.path.join(args.output, out_names[path])
        write_atomic(
            out_path,
            lambda tmp: _imwrite(tmp, np.ascontiguousarray(drawn.get_image()[:, :, ::-1])),
        )
        records.append(
            {
                "file_name": path,
                "output": out_path,
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "instances": instances_to_json(instances, metadata),
            }
        )
    write_json_atomic(
        os.path.join(args.output, "predictions.json"),
        {"images": records, "skipped": skipped, "left_out": left_out},
        indent=1,
    )
    if skipped:
        logger.warning(
            f"Skipped {len(skipped)} of {len(paths)} inputs that could not be used: "
            + ", ".join(s["file_name"] for s in skipped)
        )
    logger.info(f"Wrote {len(records)} images and predictions.json to {args.output}")
    return len(records), len(skipped)


def _imwrite(path: str, bgr: np.ndarray) -> None:
    if not cv2.imwrite(path, bgr):
        raise OSError(f"cv2.imwrite could not write '{path}'")


def main(argv: Sequence[str] = None) -> int:
    setup_logger(name="kgdet")
    setup_logger(name="fvcore")
    args = parse_args(argv)
    logger.info(f"Arguments: {args}")

    def run() -> int:
        written, _ = run_demo(args)
        return 0 if written else 1

    return cli.run_main(run, "demo.py", argv)


if __name__ == "__main__":
    sys.exit(main())
