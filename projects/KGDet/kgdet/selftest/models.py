"""Configs of the head variants on the synthetic config's small network, and random inputs."""

import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple
import torch
from torch import nn

from detectron2.modeling import build_model

from ..benchmark.models import make_image, make_training_input

__all__ = [
    "HEAD_VARIANTS",
    "default_configs_dir",
    "variant_cfg",
    "build_variant",
    "random_batch",
    "spread_head",
]

# Every head variant of configs/, on the synthetic config's ResNet-18 GN backbone and narrow
# FPN/head: (config file, overrides). "selection" and "flip_fusion" take the MODEL.KGDET keys of
# configs/kgdet_selection_R50.yaml and configs/kgdet_flip_R50.yaml.
HEAD_VARIANTS: Dict[str, Tuple[str, List[str]]] = {
    "kgdet": ("kgdet_synth.yaml", []),
    "selection": (
        "kgdet_synth.yaml",
        ["MODEL.KGDET.AGG", "selection", "MODEL.KGDET.COLUMNS", "[3]"]
        + ["MODEL.KGDET.SELECT_TOPK", "9"],
    ),
    "flip_fusion": ("kgdet_synth.yaml", ["MODEL.KGDET.FLIP_FUSION", "True"]),
    "reppoints": ("reppoints_synth.yaml", []),
    "reppoints_kp": ("reppoints_kp_synth.yaml", []),
}


def default_configs_dir() -> str:
    """The repository's ``configs/`` (the package lives in ``projects/KGDet/kgdet``)."""
    return str(Path(__file__).resolve().parents[4] / "configs")


def variant_cfg(configs_dir: str, variant: str, device: str, opts: Sequence[str] = ()):
    """Config of head ``variant`` (random init) on ``device``; its datasets' metadata (class
    keypoint slots, flip map) is read, their images are not.

    Raises:
        ValueError: unknown variant. FileNotFoundError: config file missing.
    """
    from kgdet import get_kgdet_cfg

    if variant not in HEAD_VARIANTS:
        raise ValueError(f"unknown head variant {variant!r}: expected one of {list(HEAD_VARIANTS)}")
    name, overrides = HEAD_VARIANTS[variant]
    path = os.path.join(configs_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {path} not found (pass --configs DIR, the repository's)")
    cfg = get_kgdet_cfg(path, [*overrides, *opts])
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    return cfg


def build_variant(cfg, seed: int = 0) -> nn.Module:
    """The model of ``cfg`` with seeded random weights, in training mode."""
    torch.manual_seed(seed)
    return build_model(cfg).train()


def random_batch(
    model: nn.Module, device: str, size: Tuple[int, int] = (96, 128), images: int = 2, seed: int = 0
) -> List[Dict]:
    """``images`` random training inputs of ``size`` (H, W) with 2 garments each."""
    num_keypoints = int(getattr(model, "num_keypoints", 0) or 0)
    return [
        make_training_input(
            make_image(*size, device=device, seed=seed + i),
            int(model.num_classes),
            num_keypoints,
            num_objects=2,
            seed=seed + i,
        )
        for i in range(images)
    ]


def spread_head(model: nn.Module, seed: int = 0) -> None:
    """Head weights with a wide spread and zero class bias: many detections with distinct scores
    (the prior init scores every cell about 0.01, below the test threshold)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.head.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen).to(m.weight) * 0.05)
        for stage in model.head.stages:
            if getattr(stage, "cls_out", None) is not None:
                stage.cls_out.bias.zero_()
