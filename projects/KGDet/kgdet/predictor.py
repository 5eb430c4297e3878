"""``KGDetPredictor``: Detectron2's ``DefaultPredictor`` with the project's input and checkpoint
checks.

Same interface and results as ``DefaultPredictor`` (an (H, W, 3) uint8 BGR image in,
``{"instances": Instances}`` out), with two differences at its boundary:

- the image goes through :func:`kgdet.data.image_io.as_uint8_image`, like every predictor of
  the project (``kgdet.export.ExportedPredictor``, ``dfa.DFAPredictor``): gray, BGRA and 16-bit
  arrays are converted as image files are, float arrays and other shapes are refused with one
  line saying what was given and what is expected;
- ``MODEL.WEIGHTS`` is read by :class:`kgdet.checkpoint.KGDetCheckpointer`: an unreadable file is
  one line naming it (``CheckpointReadError``).
"""

import numpy as np
from typing import Dict

import detectron2.data.transforms as T
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import Instances

from .checkpoint import KGDetCheckpointer
from .data.image_io import as_uint8_image

__all__ = ["KGDetPredictor"]


class KGDetPredictor(DefaultPredictor):
    """``DefaultPredictor`` for KGDet models (see the module docstring).

    Args:
        cfg: a KGDet config (``MODEL.WEIGHTS``, ``INPUT.*`` resizing and format).

    ``__call__(original_image)``: (H, W, 3) uint8 BGR (or gray / BGRA / 16-bit, converted) ->
    ``{"instances": Instances}`` in original-image pixels.

    Raises:
        CheckpointReadError: ``MODEL.WEIGHTS`` is truncated or corrupt.
        ImageArrayError: (``ValueError``) an image array of another dtype or shape.
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        KGDetCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")

    def __call__(self, original_image: np.ndarray) -> Dict[str, Instances]:
        image = as_uint8_image(original_image, "BGR", "KGDetPredictor image")
        return super().__call__(image)
