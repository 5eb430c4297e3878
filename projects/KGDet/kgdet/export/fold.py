"""Fold frozen batch normalisation into the preceding convolution (inference only)."""

import torch
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d

__all__ = ["fold_frozen_batchnorm"]


@torch.no_grad()
def fold_frozen_batchnorm(model: nn.Module) -> int:
    """Merge every ``FrozenBatchNorm2d`` that is the ``norm`` of a Detectron2 ``Conv2d`` into
    that convolution's weight and bias, in place, and remove the norm.

    A frozen BN is y = x·a + b per channel with a = γ / sqrt(σ² + ε) and b = β - μ·a, so
    conv(x)·a + b is the convolution with weight W·a and bias (bias·a + b): the same function
    (to float rounding) with one operator less per convolution. Trainable norms (BN, GN) are
    left alone. Use on a copy that is only run for inference.

    Returns:
        The number of folded convolutions.
    """
    folded = 0
    for module in model.modules():
        if not isinstance(module, Conv2d) or not isinstance(module.norm, FrozenBatchNorm2d):
            continue
        norm = module.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        module.weight.mul_(scale.view(-1, 1, 1, 1))
        if module.bias is None:
            module.bias = nn.Parameter(shift.clone())
        else:
            module.bias.mul_(scale).add_(shift)
        module.norm = None
        folded += 1
    return folded
