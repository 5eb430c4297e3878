"""Batch prediction over many image files: input listing, decoding, resumable JSON Lines shards.

Used by ``tools/predict.py`` (resumable, distributed on Detectron2's ``launch``) and ``demo.py``
(the same listing, decoding and record format). See docs/predict.md.
"""

from .decoding import ImageFailure, PredictionImageDataset, check_resizable, resized_shape
from .inputs import InputListing, is_hidden, list_inputs, pil_image_extensions
from .records import (
    ShardWriter,
    instances_to_records,
    read_done_files,
    read_records,
    shard_name,
)
from .output_folder import OutputFolder
from .runner import PredictionOptions, PredictionSummary, predict_files, run_prediction

__all__ = [
    "ImageFailure",
    "InputListing",
    "OutputFolder",
    "PredictionOptions",
    "PredictionImageDataset",
    "PredictionSummary",
    "ShardWriter",
    "check_resizable",
    "instances_to_records",
    "is_hidden",
    "list_inputs",
    "pil_image_extensions",
    "predict_files",
    "read_done_files",
    "read_records",
    "resized_shape",
    "run_prediction",
    "shard_name",
]
