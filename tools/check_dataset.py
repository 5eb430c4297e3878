#!/usr/bin/env python
"""Check a garment dataset before training or evaluating on it.

    python tools/check_dataset.py --dataset deepfashion2_val
    python tools/check_dataset.py --json val-coco_style.json --image-root validation/image
    python tools/check_dataset.py ../shared/data/deepfashion2_demo   # {annotations.json, image/}
    python tools/check_dataset.py path/to/images/                     # images only

Runs every check the project applies when a dataset is registered, loaded and evaluated
(:mod:`kgdet.data.validation`: structure, ids, categories, boxes, keypoints, fields that are
filled in; :mod:`kgdet.data.consistency`: photos listed twice, boxes of zero width or height,
landmarks outside their class block, no labelled landmark at all), then decodes every image
exactly as training will (:mod:`kgdet.data.image_io`, with a progress bar) and checks that it
is readable, not mirrored or rotated by an EXIF orientation tag, of the size the annotations
give, and large enough for its boxes. Writes a tab-separated
report (``--report``, default ``output/check_dataset/<name>.report.txt``) and prints a summary.
Exit status 1 when something would break or falsify training or evaluation (any ERROR row), 0
otherwise (WARNING rows: filled fields, subset categories, converted pixel formats).
"""

import argparse
import logging
import os
import sys

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

from typing import Dict, List, Optional, Tuple
import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog

import kgdet  # noqa: F401 - registers the built-in datasets
from kgdet.data.consistency import check_coco_consistency
from kgdet.data.image_io import ImageReadError, inspect_image
from kgdet.data.prepare.conversion import ConversionReport
from kgdet.data.register import DEEPFASHION2_SCHEMA, FLD_SCHEMA
from kgdet.data.validation import (
    AnnotationFileError,
    AnnotationSchema,
    check_coco_annotations,
    load_json_file,
)
from kgdet.file_io import atomic_output
from kgdet.predict import list_inputs, pil_image_extensions

logger = logging.getLogger("kgdet.check_dataset")

_CONVERTED_MODES = {
    "I;16": "16-bit grayscale, scaled to 8 bits",
    "I;16B": "16-bit grayscale, scaled to 8 bits",
    "I;16L": "16-bit grayscale, scaled to 8 bits",
    "RGBA": "transparency composited over white",
    "LA": "transparency composited over white",
    "PA": "transparency composited over white",
    "CMYK": "CMYK converted to RGB",
    "P": "palette converted to RGB",
    "L": "grayscale replicated to RGB",
    "1": "1-bit converted to RGB",
}
_BOX_SLACK_PX = 1.0


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "path", nargs="?", help="a folder with annotations.json and image/, or a folder of images"
    )
    parser.add_argument("--dataset", help="a registered dataset name (e.g. deepfashion2_val)")
    parser.add_argument("--json", help="a COCO-style annotation json")
    parser.add_argument("--image-root", help="folder the json's file names are relative to")
    parser.add_argument(
        "--kind",
        choices=("deepfashion2", "fld"),
        default=None,
        help="schema of --json (default: FLD if it lists 3 categories, else DeepFashion2)",
    )
    parser.add_argument("--report", help="report file to write")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cli.add_debug_argument(parser)
    return parser


def _schema_for(kind: Optional[str], data: Dict) -> AnnotationSchema:
    if kind is None:
        categories = data.get("categories") if isinstance(data, dict) else None
        kind = "fld" if isinstance(categories, list) and len(categories) == 3 else "deepfashion2"
    return FLD_SCHEMA if kind == "fld" else DEEPFASHION2_SCHEMA


def _resolve(args: argparse.Namespace) -> Tuple[str, Optional[str], str]:
    """(name, json file or None, image root) from the command line."""
    if args.dataset:
        meta = MetadataCatalog.get(args.dataset)
        cli.check_datasets([args.dataset], "--dataset")
        if not meta.get("json_file", None) or not meta.get("image_root", None):
            DatasetCatalog.get(args.dataset)  # built-in datasets set their paths when loaded
        json_file, image_root = meta.get("json_file", None), meta.get("image_root", None)
        if not json_file:
            raise cli.UsageError(
                f"--dataset '{args.dataset}' has no json_file (not a json data set)"
            )
        return args.dataset, json_file, image_root
    if args.json:
        if not args.image_root:
            raise cli.UsageError("--json needs --image-root")
        return os.path.splitext(os.path.basename(args.json))[0], args.json, args.image_root
    if not args.path:
        get_parser().error("give a dataset folder, an image folder, --dataset or --json")
    path = args.path.rstrip("/")
    json_file = os.path.join(path, "annotations.json")
    if os.path.isfile(json_file):
        return os.path.basename(path), json_file, os.path.join(path, "image")
    if not os.path.isdir(path):
        raise cli.UsageError(f"{path} is not a folder: expected a dataset or image folder")
    return os.path.basename(path), None, path


def _check_images(
    images: List[Tuple[str, Optional[Dict], List[List[float]]]],
    report: ConversionReport,
    progress: bool,
) -> int:
    """Decode every image; report problems. Returns the number of images that are fine."""
    ok = 0
    for path, record, boxes in tqdm.tqdm(images, desc="decode", unit="img", disable=not progress):
        try:
            info = inspect_image(path, decode=True)
        except ImageReadError as e:
            report.error(
                "unreadable_image", path, "(file)", e.problem, "skipped by training/evaluation"
            )
            continue
        fine = True
        if info.orientation_changes_pixels:
            report.error(
                "exif_orientation",
                path,
                "EXIF Orientation",
                f"{info.describe_orientation()}: Detectron2 turns the stored "
                f"{info.stored_width}x{info.stored_height} pixels into {info.width}x{info.height}; "
                "annotations (stored frame) would not lie on the garment",
                "skipped by converters, training and evaluation",
            )
            fine = False
        if info.mode in _CONVERTED_MODES and info.mode not in ("L",):
            report.warning(
                "pixel_format",
                path,
                "mode",
                f"pixel format '{info.mode}'",
                _CONVERTED_MODES[info.mode],
            )
        if record is not None and fine:
            size = (record.get("width"), record.get("height"))
            if size != (info.width, info.height):
                report.error(
                    "image_size",
                    path,
                    "width/height",
                    f"the json says {size[0]}x{size[1]}, the image decodes to "
                    f"{info.width}x{info.height}",
                    "training stops with SizeMismatchError",
                )
                fine = False
            for x, y, w, h in boxes:
                if (
                    x < -_BOX_SLACK_PX
                    or y < -_BOX_SLACK_PX
                    or x + w > info.width + _BOX_SLACK_PX
                    or (y + h > info.height + _BOX_SLACK_PX)
                ):
                    report.error(
                        "box_outside_image",
                        path,
                        "bbox",
                        f"box [x, y, w, h] = {[x, y, w, h]} lies outside the "
                        f"{info.width}x{info.height} image",
                        "wrong image for these annotations?",
                    )
                    fine = False
                    break
        ok += fine
    return ok


_CONSISTENCY_FIELDS = {
    "file_name_listed_twice": ("images.file_name", "registration and evaluation refuse the file"),
    "zero_size_box": ("bbox", "registration and evaluation refuse the file"),
    "keypoints_outside_class": ("keypoints", "registration and evaluation refuse the file"),
    "no_labelled_keypoints": ("keypoints", "keypoint AP not computed (box AP only)"),
}


def _report_consistency(
    data: Dict, json_file: str, schema: AnnotationSchema, report: ConversionReport
) -> None:
    """One report row per kind of problem across records (with its count and examples)."""
    consistency = check_coco_consistency(data, json_file, schema.class_keypoint_slots or None)
    for finding in consistency.findings:
        field, action = _CONSISTENCY_FIELDS.get(finding.kind, ("(file)", ""))
        add = report.error if finding.level == "error" else report.warning
        add(finding.kind, json_file, field, finding.message, action)


def _left_out_summary(skipped: List[Dict[str, str]], most: int = 5) -> str:
    """One summary entry naming the folder entries that are not checked, with their reasons."""
    names = [f"{os.path.basename(s['file_name'])} ({s['reason']})" for s in skipped[:most]]
    more = f", and {len(skipped) - most} more" if len(skipped) > most else ""
    return f"{len(skipped)} folder entr{'y' if len(skipped) == 1 else 'ies'} left out: " + (
        ", ".join(names) + more
    )


def run(args: argparse.Namespace) -> int:
    """Run every check; returns the exit status (1 when there is an ERROR)."""
    name, json_file, image_root = _resolve(args)
    report = ConversionReport(f"check_dataset: {json_file or '(images only)'} + {image_root}")
    summary: List[str] = []
    images: List[Tuple[str, Optional[Dict], List[List[float]]]] = []
    if json_file is not None:
        try:
            data = load_json_file(json_file)
            schema = _schema_for(args.kind, data)
            check = check_coco_annotations(data, json_file, schema, check_consistency=False)
        except (AnnotationFileError, OSError) as e:
            report.error("annotation_file", json_file, "(file)", str(e), "training/evaluation fail")
            data = None
        else:
            for message in check.messages():
                report.warning("annotation_file", json_file, "(file)", message, "handled")
            _report_consistency(data, json_file, schema, report)
            summary.append(
                f"{check.num_images} images, {check.num_annotations} annotations "
                f"({schema.dataset} schema)"
            )
        if data is not None:
            boxes: Dict[int, List[List[float]]] = {}
            for ann in data.get("annotations", []):
                boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
            for img in data["images"]:
                path = os.path.join(image_root, img["file_name"])
                if not os.path.isfile(path):
                    report.error(
                        "missing_image", path, "(file)", "not found", "training/evaluation fail"
                    )
                    continue
                images.append((path, img, boxes.get(img["id"], [])))
    else:
        # The listing of demo.py and tools/predict.py: every file with an extension Pillow
        # reads (.jfif, .jpe, .gif, ...) is decoded; every other entry is named with its reason.
        listing = list_inputs([image_root], extensions=pil_image_extensions(), sort=True)
        images.extend((path, None, []) for path in listing.files)
        if listing.skipped:
            summary.append(_left_out_summary(listing.skipped))
        if not images:
            report.error("no_images", image_root, "(folder)", "no image files", "nothing to check")
    ok = _check_images(images, report, progress=not args.no_progress)
    summary.append(f"{ok} of {len(images)} images decode cleanly")
    summary.append(f"{report.num_errors} error(s), {report.num_warnings} warning(s)")
    path = args.report or os.path.join("output", "check_dataset", f"{name}.report.txt")
    with atomic_output(path) as f:
        f.write(report.render(summary))
    for issue in report.issues:
        print(f"{issue.level} {issue.kind} {issue.file}: {issue.message}")
    status = "FAILED" if report.num_errors else "clean" if not report.num_warnings else "usable"
    print(f"check_dataset {name}: {status}: " + "; ".join(summary) + f"; report: {path}")
    return 1 if report.num_errors else 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = get_parser().parse_args(argv)
    return cli.run_main(lambda: run(args), "check_dataset.py", argv)


if __name__ == "__main__":
    sys.exit(main())
