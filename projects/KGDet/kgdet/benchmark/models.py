"""Models and inputs of the benchmark: KGDet from a config, Detectron2's RetinaNet and FCOS R50-FPN
(random init, nothing downloaded), the exported KGDet graph, and the callables that are timed."""

from typing import Any, Dict, Optional, Sequence
import torch

__all__ = [
    "BASELINES",
    "DISPLAY_NAMES",
    "build_kgdet_cfg",
    "build_benchmark_model",
    "make_image",
    "make_training_input",
    "model_num_keypoints",
    "model_num_classes",
    "inference_fn",
    "backbone_fn",
    "head_fn",
    "exported_inference_fn",
]

BASELINES = ("retinanet", "fcos")
DISPLAY_NAMES = {"retinanet": "RetinaNet R50-FPN", "fcos": "FCOS R50-FPN"}


def build_kgdet_cfg(config_file: str, opts: Sequence[str] = (), device: str = "cpu"):
    """KGDet yacs config with random init (MODEL.WEIGHTS "") on ``device``."""
    from kgdet import get_kgdet_cfg

    cfg = get_kgdet_cfg(config_file, opts)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    return cfg


def build_benchmark_model(
    name: str,
    *,
    config_file: str = "",
    opts: Sequence[str] = (),
    device: str = "cpu",
    num_classes: Optional[int] = None,
) -> torch.nn.Module:
    """A randomly initialised model in eval mode: ``name`` is "kgdet" (from ``config_file`` +
    ``opts``), "retinanet" or "fcos" (Detectron2's R50-FPN model zoo configs)."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg, instantiate
    from detectron2.modeling import build_model

    if name == "kgdet":
        cfg = build_kgdet_cfg(config_file, opts, device)
        model = build_model(cfg)
    elif name == "retinanet":
        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
        if num_classes is not None:
            cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.DEVICE = device
        model = build_model(cfg)
    elif name == "fcos":
        model_cfg = model_zoo.get_config("COCO-Detection/fcos_R_50_FPN_1x.py").model
        if num_classes is not None:
            model_cfg.num_classes = num_classes
        model = instantiate(model_cfg).to(device)
    else:
        raise ValueError(f"unknown benchmark model {name!r}: expected kgdet, retinanet or fcos")
    return model.eval()


def make_image(height: int, width: int, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    """A reproducible random (3, H, W) float image in [0, 255]."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(3, height, width, generator=gen) * 255).to(device)


def make_training_input(
    image: torch.Tensor, num_classes: int, num_keypoints: int, num_objects: int = 3, seed: int = 0
) -> Dict[str, Any]:
    """One training input with random boxes (and keypoints inside them, v=2, when K > 0)."""
    from detectron2.structures import Boxes, Instances, Keypoints

    gen = torch.Generator().manual_seed(seed)
    _, height, width = image.shape
    size = torch.tensor([width, height], dtype=torch.float32)
    centers = (0.25 + 0.5 * torch.rand(num_objects, 2, generator=gen)) * size
    half = (0.1 + 0.3 * torch.rand(num_objects, 2, generator=gen)) * size / 2
    boxes = torch.cat([centers - half, centers + half], dim=1)
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(boxes.to(image.device))
    instances.gt_classes = torch.randint(num_classes, (num_objects,), generator=gen).to(
        image.device
    )
    if num_keypoints > 0:
        frac = torch.rand(num_objects, num_keypoints, 2, generator=gen)
        xy = boxes[:, None, :2] + frac * (boxes[:, None, 2:] - boxes[:, None, :2])
        kps = torch.cat([xy, torch.full((num_objects, num_keypoints, 1), 2.0)], dim=2)
        instances.gt_keypoints = Keypoints(kps.to(image.device))
        instances.gt_keypoint_defined = torch.ones(
            num_objects, num_keypoints, dtype=torch.bool, device=image.device
        )
    return {"image": image, "height": height, "width": width, "instances": instances}


def model_num_keypoints(model: torch.nn.Module) -> int:
    return int(getattr(model, "num_keypoints", 0) or 0)


def model_num_classes(model: torch.nn.Module) -> int:
    return int(model.num_classes)


def inference_fn(model: torch.nn.Module, image: torch.Tensor):
    """One eager inference of ``model`` on ``image`` (3, H, W), as ``DefaultPredictor`` calls it."""
    inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]

    def run():
        with torch.no_grad():
            return model(inputs)

    return run


def backbone_fn(model: torch.nn.Module, image: torch.Tensor):
    """The model's backbone+FPN on the preprocessed (normalised, padded) image, as inference
    runs it (KGDet computes only the levels its head uses)."""
    with torch.no_grad():
        tensor = model.preprocess_image([{"image": image}]).tensor

    def run():
        with torch.no_grad():
            return model.backbone(tensor)

    return run


def head_fn(model: torch.nn.Module, image: torch.Tensor):
    """The dense head alone on the levels it consumes."""
    with torch.no_grad():
        tensor = model.preprocess_image([{"image": image}]).tensor
        features = model.backbone(tensor)
        features = [features[f] for f in model.head_in_features]

    def run():
        with torch.no_grad():
            return model.head(features)

    return run


def exported_inference_fn(exported, image: torch.Tensor):
    """One call of an exported graph (``kgdet.export.load_exported_model``) on ``image``: the
    same work as :func:`inference_fn` (normalisation, padding, network, post-processing)."""

    def run():
        return exported(image)

    return run
