"""``ExportedPredictor``: Detectron2's ``DefaultPredictor`` over an exported KGDet graph.

The same interface and the same pre/post-processing as ``DefaultPredictor`` (BGR image in,
``ResizeShortestEdge`` to ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, ``INPUT.FORMAT`` channel
order, ``{"instances": Instances}`` out, rescaled to the original image by
``detector_postprocess``), running the graph with ONNX Runtime (``.onnx``) or TorchScript
(``.ts`` / ``.pt``) instead of the PyTorch model.
"""

import json
import logging
import numpy as np
import os
import warnings
from typing import Dict, Optional
import torch

import detectron2.data.transforms as T
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..data.image_io import as_uint8_image
from .exporter import METADATA_KEY

__all__ = ["ExportedPredictor", "load_exported_model", "OnnxRuntimeModel", "TorchScriptModel"]

logger = logging.getLogger(__name__)


class OnnxRuntimeModel:
    """An exported ``.onnx`` graph in an ONNX Runtime session.

    Args:
        path: the file written by ``tools/deploy/export_model.py --format onnx``.
        device: "cpu" (CPUExecutionProvider) or "cuda" (CUDAExecutionProvider, then CPU).
        num_threads: ``intra_op_num_threads`` (None: ONNX Runtime's default, one per core).

    Raises:
        ImportError: without ``onnxruntime`` (``pip install -e .[deploy]``).
        ValueError: "cuda" asked but this ONNX Runtime has no CUDA provider, or a file without
            KGDet export metadata.
    """

    def __init__(self, path: str, device: str = "cpu", num_threads: Optional[int] = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError(
                    f"device {device!r} asked for ONNX Runtime's CUDAExecutionProvider, but this "
                    f"onnxruntime only has {ort.get_available_providers()} (install "
                    "onnxruntime-gpu)"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.session = ort.InferenceSession(path, options, providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(
                f"'{path}' has no '{METADATA_KEY}' metadata: export it with "
                "tools/deploy/export_model.py"
            )
        self.metadata = json.loads(meta[METADATA_KEY])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(3, H, W) float image -> the graph's outputs by name (CPU tensors)."""
        feed = {self.metadata["input_name"]: image.detach().cpu().numpy().astype(np.float32)}
        outputs = self.session.run(self.output_names, feed)
        return {n: torch.from_numpy(v) for n, v in zip(self.output_names, outputs)}


class TorchScriptModel:
    """An exported TorchScript file (``--format torchscript``) on ``device``."""

    def __init__(self, path: str, device: str = "cpu"):
        extra = {METADATA_KEY: ""}
        with warnings.catch_warnings():
            # torch >= 2.10 deprecates TorchScript; this class exists to serve TorchScript files.
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning
            )
            self.module = torch.jit.load(path, map_location=device, _extra_files=extra)
        if not extra[METADATA_KEY]:
            raise ValueError(
                f"'{path}' has no '{METADATA_KEY}' metadata: export it with "
                "tools/deploy/export_model.py"
            )
        self.metadata = json.loads(extra[METADATA_KEY])
        self.device = device

    def __call__(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            outputs = self.module(image.to(self.device))
        return dict(zip(self.metadata["output_names"], outputs))


def load_exported_model(path: str, device: str = "cpu", num_threads: Optional[int] = None):
    """An :class:`OnnxRuntimeModel` for ``*.onnx``, else a :class:`TorchScriptModel`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model '{path}' does not exist")
    if path.endswith(".onnx"):
        return OnnxRuntimeModel(path, device, num_threads)
    return TorchScriptModel(path, device)


class ExportedPredictor:
    """``DefaultPredictor`` for an exported KGDet graph.

    Args:
        cfg: the config the model was exported from (its ``INPUT.*`` resizing and format, and
            ``MODEL.KGDET.SCORE_THRESH_TEST``, which may be higher than the threshold baked into
            the graph: the extra detections are dropped here; thresholding before or after NMS
            and the per-image cap keeps the same detections above it).
        model_path: ``.onnx`` (ONNX Runtime) or TorchScript file.
        device: "cpu" or "cuda" (ONNX Runtime's CUDA provider / TorchScript on the GPU).
        num_threads: ONNX Runtime intra-op threads (None: its default).

    ``__call__(original_image)``: (H, W, 3) uint8 BGR image -> ``{"instances": Instances}`` in
    original-image pixels, with ``pred_boxes``, ``scores``, ``pred_classes`` and
    ``pred_keypoints`` (N, K, 3) as the PyTorch model returns them. Gray, BGRA and 16-bit
    arrays are converted and other arrays (float, other shapes) refused with one line by
    :func:`kgdet.data.image_io.as_uint8_image` (``ImageArrayError``, a ``ValueError``).
    """

    def __init__(
        self, cfg, model_path: str, device: str = "cpu", num_threads: Optional[int] = None
    ):
        self.cfg = cfg.clone()
        self.model = load_exported_model(model_path, device, num_threads)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")
        meta = self.model.metadata
        if meta.get("input_format") != self.input_format:
            raise ValueError(
                f"'{model_path}' was exported for INPUT.FORMAT {meta.get('input_format')!r} but "
                f"the config has {self.input_format!r}"
            )
        self.score_thresh = float(cfg.MODEL.KGDET.SCORE_THRESH_TEST)
        if self.score_thresh < meta["score_thresh"]:
            logger.warning(
                "MODEL.KGDET.SCORE_THRESH_TEST %.3f is below the threshold %.3f exported into "
                "'%s': detections scoring in between are not available",
                self.score_thresh,
                meta["score_thresh"],
                model_path,
            )

    def __call__(self, original_image: np.ndarray) -> Dict[str, Instances]:
        original_image = as_uint8_image(original_image, "BGR", "ExportedPredictor image")
        if self.input_format == "RGB":
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.aug.get_transform(original_image).apply_image(original_image)
        image = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        outputs = self.model(image)
        instances = Instances(tuple(image.shape[-2:]))
        instances.pred_boxes = Boxes(outputs["pred_boxes"])
        instances.scores = outputs["scores"]
        instances.pred_classes = outputs["pred_classes"]
        if "pred_keypoints" in outputs:
            instances.pred_keypoints = outputs["pred_keypoints"]
        instances = instances[instances.scores > self.score_thresh]
        return {"instances": detector_postprocess(instances, height, width)}
