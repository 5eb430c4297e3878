"""Deployment: KGDet as one traced graph (TorchScript / ONNX) and a predictor over it."""

from .exporter import (
    DEFORM_OPS,
    METADATA_KEY,
    build_tracing_adapter,
    export_model,
    export_onnx,
    export_torchscript,
    prepare_for_export,
)
from .fold import fold_frozen_batchnorm
from .inference import export_inference
from .parity import compare_detections, match_detections
from .predictor import ExportedPredictor, load_exported_model

__all__ = [
    "DEFORM_OPS",
    "METADATA_KEY",
    "ExportedPredictor",
    "build_tracing_adapter",
    "compare_detections",
    "export_inference",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "fold_frozen_batchnorm",
    "load_exported_model",
    "match_detections",
    "prepare_for_export",
]
