#!/usr/bin/env python
"""Export a KGDet model to TorchScript or ONNX, as Detectron2's ``tools/deploy/export_model.py``.

    python tools/deploy/export_model.py --config-file configs/kgdet_synth.yaml \
        --format onnx --export-method tracing [--sample-image IMG] --output OUT_DIR \
        MODEL.WEIGHTS output/kgdet_synth/model_final.pth

Writes ``OUT_DIR/model.onnx`` or ``OUT_DIR/model.ts``: one graph from a (3, H, W) float image
(any H, W; resized and in ``INPUT.FORMAT`` as ``DefaultPredictor`` feeds the model) to boxes,
scores, classes and keypoints, post-processing included (``kgdet.export``). Then runs the
exported file and the PyTorch model on the sample input and prints how far apart they are. Load
it with ``kgdet.export.ExportedPredictor`` or ``demo.py --exported``.

A TorchScript graph runs only on the device type it was traced on (tracing records the device
of the tensors the model creates): ``--device cuda`` traces it on the GPU. ONNX graphs are
exported on the CPU and run on ONNX Runtime's CPU or CUDA execution provider (docs/gpu.md).

Only ``--export-method tracing`` exists (scripting and caffe2 do not apply to KGDet). Without
``--sample-image`` a random image of the test size (``INPUT.MIN_SIZE_TEST`` by
``INPUT.MAX_SIZE_TEST``) is traced; the graph does not depend on its size.
"""

import argparse
import logging
import os
import sys

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

import torch  # noqa: E402

import detectron2.data.transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.logger import setup_logger

from kgdet import get_kgdet_cfg
from kgdet.checkpoint import KGDetCheckpointer
from kgdet.export import DEFORM_OPS, compare_detections, export_model, load_exported_model

logger = logging.getLogger("kgdet.export")

FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a KGDet model for deployment.")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config yaml")
    parser.add_argument("--format", choices=list(FILE_NAMES), default="onnx")
    parser.add_argument(
        "--export-method",
        choices=["tracing"],
        default="tracing",
        help="how to convert the model (KGDet exports by tracing only)",
    )
    parser.add_argument("--sample-image", default=None, help="image to trace with (BGR file)")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument(
        "--deform-op",
        choices=list(DEFORM_OPS),
        default="DeformConv",
        help="ONNX only: ONNX's DeformConv operator (opset >= 19) or the gather formulation",
    )
    parser.add_argument("--opset", type=int, default=19, help="ONNX opset")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="TorchScript only: the device the graph is traced on and runs on (a traced graph "
        "creates its tensors on it); ONNX graphs are exported on the CPU and run anywhere",
    )
    cli.add_debug_argument(parser)
    parser.add_argument(
        "opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ..."
    )
    return parser


def sample_image(cfg, path) -> torch.Tensor:
    """(3, H, W) float input as ``DefaultPredictor`` feeds the model."""
    if path is None:
        gen = torch.Generator().manual_seed(0)
        h, w = int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST)
        return torch.rand(3, h, w, generator=gen) * 255
    image = read_image(path, format=cfg.INPUT.FORMAT)
    aug = T.ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    )
    image = aug.get_transform(image).apply_image(image)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))


def compare(model, exported, image: torch.Tensor) -> str:
    """One line: detections of both, matched as sets, and their largest differences on
    ``image`` (:func:`kgdet.export.compare_detections`)."""
    with torch.no_grad():
        ref = model([{"image": image}])[0]["instances"]
    raw = exported(image)
    h, w = image.shape[-2:]
    fields = {k: v for k, v in raw.items() if k not in ("image_size", "pred_boxes")}
    out = Instances((h, w), pred_boxes=Boxes(raw["pred_boxes"]), **fields)
    out = detector_postprocess(out, h, w)  # as the model's forward and ExportedPredictor
    return compare_detections(ref, out)


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    cli.pop_debug_flag(args.opts)
    return cli.run_main(lambda: _export(args), "export_model.py", argv)


def _export(args: argparse.Namespace) -> int:
    setup_logger(name="kgdet")
    logger.info(f"Arguments: {args}")
    cfg = get_kgdet_cfg(args.config_file, args.opts)
    cfg.MODEL.DEVICE = args.device if args.format == "torchscript" else "cpu"
    cfg.freeze()
    cli.check_weights(cfg)
    model = build_model(cfg).eval()
    KGDetCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    image = sample_image(cfg, args.sample_image).to(cfg.MODEL.DEVICE)
    path = os.path.join(args.output, FILE_NAMES[args.format])
    onnx_kwargs = {}
    if args.format == "onnx":
        onnx_kwargs = {"opset": args.opset, "deform_op": args.deform_op}
    export_model(model, cfg, image, path, args.format, **onnx_kwargs)
    logger.info(f"Wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    exported = load_exported_model(path, cfg.MODEL.DEVICE)
    logger.info(f"Check on the {tuple(image.shape[1:])} sample: {compare(model, exported, image)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
