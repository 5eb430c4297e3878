"""One deformable-convolution module for every device.

Detectron2's ``DeformConv`` has no CPU backward (and is a dummy without the compiled ``_C``);
torchvision's ``deform_conv2d`` has forward and backward on CPU and CUDA and uses the same
offset layout (channel 2m = dy, 2m+1 = dx of kernel tap m, row-major) and weight shape.
"""
import math

import torch
from torch import nn
from torchvision.ops import deform_conv2d

__all__ = ["KGDeformConv"]


class KGDeformConv(nn.Module):
    """Deformable conv (one offset group, stride 1, no bias) with a device-dependent kernel.

    The single ``weight`` parameter has the name and shape of Detectron2's ``DeformConv``, so
    checkpoints load into either path.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int,
                 impl: str = "auto"):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.padding = padding
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """x: (N, Cin, H, W); offset: (N, 2*k*k, H, W) -> (N, Cout, H, W)."""
        return deform_conv2d(x, offset, self.weight, padding=(self.padding, self.padding))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"padding={self.padding}, impl={self.impl}")
