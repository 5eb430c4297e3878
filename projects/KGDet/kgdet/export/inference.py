"""KGDet inference written for tracing: the whole detector, post-processing included, as one graph.

``export_inference`` runs the backbone, the head and the post-processing that
:meth:`kgdet.modeling.KGDet.forward_inference` runs (the same traceable
:func:`kgdet.modeling.postprocess.postprocess_single_image`), for one image: the traced graph
(TorchScript or ONNX) works for images of any height and width. The outputs follow Detectron2's
export convention (``detectron2.export.TracingAdapter``): ``[{"instances": Instances}]`` with
``pred_boxes``, ``scores``, ``pred_classes`` and ``pred_keypoints``, which the adapter flattens
to a tuple of tensors.
"""

from typing import Dict, List
import torch
from torch import Tensor

from ..modeling.assigner import CellGrid
from ..modeling.postprocess import postprocess_single_image

__all__ = ["export_inference"]


def export_inference(model: torch.nn.Module, batched_inputs: List[Dict[str, Tensor]]) -> List[Dict]:
    """KGDet inference of one image as a traceable function (``TracingAdapter``'s
    ``inference_func``).

    Args:
        model: a :class:`~kgdet.modeling.KGDet` in eval mode.
        batched_inputs: ``[{"image": (3, H, W) float tensor}]`` in ``cfg.INPUT.FORMAT``, already
            resized (as ``DefaultPredictor`` feeds the model).

    Returns:
        ``[{"instances": Instances}]`` in the coordinates of the given image (no rescaling to an
        original size: the predictor does that, as ``detector_postprocess``).

    Raises:
        ValueError: for more than one image, or a model whose final stage has no classifier.
    """
    if len(batched_inputs) != 1:
        raise ValueError(f"export_inference takes one image, got {len(batched_inputs)}")
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    final = model.head(features)[-1]
    if final["cls"] is None:
        raise ValueError("the final stage has no classifier; cannot run inference")
    sizes = [x.shape[-2:] for x in features]
    grid = CellGrid.build(sizes, model.level_strides, model.grid_offset, features[0].device)
    instances = postprocess_single_image(
        model, final, grid.points, grid.strides, images.image_sizes[0], keypoint_visibility=False
    )
    return [{"instances": instances}]
