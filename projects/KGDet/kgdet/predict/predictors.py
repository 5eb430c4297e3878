"""Batched prediction on decoded items: the PyTorch model or an exported graph.

Both take a list of :class:`~kgdet.predict.decoding.PredictionImageDataset` items and return
``(item, Instances)`` pairs (on the CPU, in pixels of the decoded image) plus an
:class:`~kgdet.predict.decoding.ImageFailure` for every item the model failed on: a batch that
raises is retried one image at a time, so one bad image never costs the others.
"""

import logging
from collections import OrderedDict
from typing import Dict, List, Tuple
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import Instances

from .decoding import ImageFailure

__all__ = ["EagerBatchPredictor", "ExportedBatchPredictor"]

logger = logging.getLogger(__name__)

Result = Tuple[List[Tuple[Dict, Instances]], List[ImageFailure]]


class EagerBatchPredictor:
    """The PyTorch model of ``cfg`` (``MODEL.WEIGHTS`` loaded) on lists of images.

    Images are run together only when they pad to the same size (Detectron2 pads a batch to its
    largest image, rounded up to the backbone's ``size_divisibility``), so every image gets
    exactly the input ``DefaultPredictor`` would give it, whatever the batch: the results do
    not depend on the batch size or on which images share a batch.
    """

    def __init__(self, cfg):
        self.model = build_model(cfg).eval()
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.divisibility = max(int(getattr(self.model.backbone, "size_divisibility", 1) or 1), 1)

    def _padded(self, item: Dict) -> Tuple[int, int]:
        d = self.divisibility
        h, w = item["image"].shape[-2:]
        return (-(-h // d) * d, -(-w // d) * d)

    def __call__(self, items: List[Dict]) -> Result:
        groups: "OrderedDict[Tuple[int, int], List[Dict]]" = OrderedDict()
        for item in items:
            groups.setdefault(self._padded(item), []).append(item)
        done, failed = [], []
        for group in groups.values():
            try:
                outputs = self._run(group)
            except Exception as e:  # noqa: B902 - reported with the file, the run goes on
                if len(group) == 1:
                    failed.append(_model_failure(group[0], e))
                    continue
                for item in group:  # retried one by one to find the image at fault
                    d, f = self([item])
                    done += d
                    failed += f
                continue
            done += [(item, out["instances"].to("cpu")) for item, out in zip(group, outputs)]
        return done, failed

    def _run(self, group: List[Dict]) -> List[Dict]:
        with torch.no_grad():
            return self.model(group)


class ExportedBatchPredictor:
    """An exported graph (``kgdet.export.ExportedPredictor``: ONNX Runtime or TorchScript), one
    image at a time (the exported graphs take a single image)."""

    def __init__(self, cfg, model_path: str, num_threads: int = None):
        from ..export import ExportedPredictor

        self.predictor = ExportedPredictor(
            cfg, model_path, device=cfg.MODEL.DEVICE, num_threads=num_threads
        )

    def __call__(self, items: List[Dict]) -> Result:
        done, failed = [], []
        for item in items:
            try:
                out = self.predictor.predict_resized(item["image"], item["height"], item["width"])
            except Exception as e:  # noqa: B902 - reported with the file, the run goes on
                failed.append(_model_failure(item, e))
                continue
            done.append((item, out["instances"].to("cpu")))
        return done, failed


def _model_failure(item: Dict, error: Exception) -> ImageFailure:
    logger.warning(f"Prediction failed on '{item['file_name']}': {type(error).__name__}: {error}")
    return ImageFailure(
        item["index"], item["file_name"], f"prediction error ({type(error).__name__}: {error})"
    )
