"""One deformable-convolution module for every device, with a fast CPU formulation.

Detectron2's ``DeformConv`` has no CPU backward (and is a dummy without the compiled ``_C``);
torchvision's ``deform_conv2d`` has forward and backward on CPU and CUDA but is slow on CPU
(its im2col kernel is single-threaded per image). Both use the same offset layout (channel 2m =
dy, 2m+1 = dx of kernel tap m, row-major; docs/DESIGN.md §3.1) and weight
shape (out, in, k, k).

On CPU the default path writes the deformable convolution as

    1. a bilinear gather of every tap: ``F.embedding_bag`` over the channels-last input rows,
       4 corners per sample, the bilinear weights as ``per_sample_weights`` (out-of-bounds
       corners get weight 0, which is torchvision's zero-padding rule), then
    2. one matrix multiply of the (cells, k*k*C) samples with the weight.

Autograd differentiates both steps: ``embedding_bag`` gives the input gradient and the gradient
of the per-sample weights, which carries the offset gradient. The result equals
``torchvision.ops.deform_conv2d`` in values and in gradients w.r.t. input, offset and weight
(tests/modeling/test_deform_conv.py). A ``grid_sample`` + matmul formulation is kept as
``impl="grid_sample"``; ``tools/benchmark_deform.py`` times all paths.
"""

import functools
import logging
import math
from typing import Optional, Tuple
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from detectron2.layers.wrappers import shapes_to_tensor

__all__ = [
    "KGDeformConv",
    "deform_conv2d_gather",
    "deform_conv2d_grid_sample",
    "detectron2_cuda_op_runs",
    "DEFORM_IMPLS",
]

logger = logging.getLogger(__name__)

DEFORM_IMPLS = ("auto", "gather", "grid_sample", "torchvision", "detectron2")

# Samples are gathered and multiplied in chunks of cells whose sampled block stays below this
# size: large temporary blocks are served by fresh mmap pages (glibc's threshold is 32 MiB),
# whose page faults cost as much as the gather itself at P5 with a 7x7 kernel.
_CHUNK_BYTES = 16 << 20


def _detectron2_cuda_available() -> bool:
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return bool(_C.has_cuda())


def _run_tiny_detectron2_op(device: torch.device) -> None:
    """One 3x3 deformable conv of a 1x1x3x3 input with Detectron2's op on ``device``."""
    from detectron2.layers.deform_conv import deform_conv

    x = torch.zeros(1, 1, 3, 3, device=device)
    offset = torch.zeros(1, 18, 3, 3, device=device)
    weight = torch.zeros(1, 1, 3, 3, device=device)
    deform_conv(x, offset, weight, 1, 1, 1, 1, 1)
    torch.cuda.synchronize(device)


@functools.lru_cache(maxsize=None)
def detectron2_cuda_op_runs(device: torch.device) -> bool:
    """Whether Detectron2's compiled CUDA ``deform_conv`` runs on the CUDA ``device``.

    ``detectron2._C.has_cuda()`` only says the extension was compiled with CUDA; a build for
    other GPU architectures fails on the first call ("no kernel image is available"). The op is
    tried once per device on a tiny input; a failure is logged once as a warning and the caller
    falls back to torchvision's kernel.
    """
    if not _detectron2_cuda_available():
        return False
    try:
        _run_tiny_detectron2_op(device)
    except Exception as e:  # RuntimeError / CUDA errors of a build without this architecture
        logger.warning(
            "Detectron2's CUDA deform_conv does not run on %s (%s: %s); DEFORM_IMPL 'auto' uses "
            "torchvision's deform_conv2d instead",
            device,
            type(e).__name__,
            str(e).strip().splitlines()[0] if str(e).strip() else "",
        )
        return False
    return True


def _output_size(x: Tensor, k: int, padding: int) -> Tuple[int, int]:
    return x.shape[-2] + 2 * padding - k + 1, x.shape[-1] + 2 * padding - k + 1


def _check_inputs(x: Tensor, offset: Tensor, weight: Tensor, padding: int) -> None:
    if x.dim() != 4 or offset.dim() != 4:
        raise ValueError(
            f"deformable conv expects 4-D input and offset, got input {tuple(x.shape)} and "
            f"offset {tuple(offset.shape)}"
        )
    out_ch, in_ch, kh, kw = weight.shape
    if kh != kw:
        raise ValueError(f"deformable conv expects a square kernel, got {kh}x{kw}")
    if x.shape[1] != in_ch:
        raise ValueError(f"input has {x.shape[1]} channels, the weight expects {in_ch}")
    expected = (x.shape[0], 2 * kh * kw, *_output_size(x, kh, padding))
    if tuple(offset.shape) != expected:
        raise ValueError(
            f"offset shape {tuple(offset.shape)} does not match the {kh}x{kw} kernel with "
            f"padding {padding} on input {tuple(x.shape)}: expected {expected} "
            "(N, 2*k*k, H_out, W_out), one offset group, stride 1"
        )


def _sample_positions(offset: Tensor, k: int, padding: int) -> Tensor:
    """Absolute sampling positions (N, Ho, Wo, k*k, 2) as (row, col) in input pixels.

    Tap m = a*k + b of output cell (i, j) samples at
    (i - padding + a + dy_m, j - padding + b + dx_m) (``deform_conv2d``'s convention: stride 1,
    dilation 1). One addition on the offsets, so the positions round exactly as torchvision's.
    """
    n, _, ho, wo = offset.shape
    taps = k * k
    kernel = torch.arange(k, device=offset.device, dtype=offset.dtype) - padding
    rows = torch.arange(ho, device=offset.device, dtype=offset.dtype)
    cols = torch.arange(wo, device=offset.device, dtype=offset.dtype)
    base_y = rows.view(ho, 1, 1) + kernel.repeat_interleave(k).view(1, 1, taps)
    base_x = cols.view(1, wo, 1) + kernel.repeat(k).view(1, 1, taps)
    base = torch.stack(torch.broadcast_tensors(base_y, base_x), dim=-1)  # (Ho, Wo, L, 2)
    return offset.view(n, taps, 2, ho, wo).permute(0, 3, 4, 1, 2) + base


def _bilinear_corners(positions: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """Row indices (M, 4) into the (N*H*W, C) input and bilinear weights (M, 4) of positions
    (N, ..., 2); corners ordered (y0x0, y0x1, y1x0, y1x1).

    Corners outside the map get weight 0 (and a clamped, valid index), so the sample equals
    ``deform_conv2d``'s: out-of-bounds corners contribute 0, in value and in gradient. The
    weights are differentiable w.r.t. the positions (the offsets); floor() has zero gradient.
    Both axes are processed together (few, large elementwise ops: each op is a parallel region,
    whose synchronisation dominates on a loaded machine).
    """
    low = torch.floor(positions.detach())
    frac = positions - low
    corners = torch.stack((low, low + 1), dim=-1)  # (N, ..., 2 axes, 2 corners)
    # Traceable: under tracing the sizes are 0-dim tensors and stay inputs of the graph.
    limit = shapes_to_tensor([height - 1, width - 1], low.device).to(low.dtype).view(2, 1)
    clamped = torch.clamp(corners, torch.zeros_like(limit), limit)
    weights = torch.stack((1 - frac, frac), dim=-1) * (clamped == corners)
    weights = weights[..., 0, :, None] * weights[..., 1, None, :]  # (N, ..., 2, 2)

    # NaN offsets (a diverged run) keep NaN weights, so the output and the loss become NaN and
    # the trainer names the non-finite loss term; their indices must still be valid.
    index = torch.nan_to_num(clamped, nan=0.0).long()
    index = index[..., 0, :, None] * width + index[..., 1, None, :]
    n = positions.shape[0]
    if n > 1:
        image_start = torch.arange(n, device=index.device).mul_(height * width)
        index = index + image_start.view(n, *([1] * (index.dim() - 1)))
    return index.reshape(-1, 4), weights.reshape(-1, 4)


def _weight_matrix(weight: Tensor) -> Tensor:
    """(out, in, k, k) -> (out, k*k*in), the column order of the (tap, channel) samples."""
    out_ch = weight.shape[0]
    return weight.permute(0, 2, 3, 1).reshape(out_ch, -1)


def _empty_output(x: Tensor, offset: Tensor, weight: Tensor, padding: int) -> Tensor:
    shape = (x.shape[0], weight.shape[0], *_output_size(x, weight.shape[-1], padding))
    # Keep the graph connected so empty batches still produce (zero) gradients.
    return x.new_zeros(shape) + 0.0 * (weight.sum() + offset.sum() + x.sum())


def deform_conv2d_gather(
    x: Tensor, offset: Tensor, weight: Tensor, padding: int, weight_matrix: Optional[Tensor] = None
) -> Tensor:
    """Deformable conv as bilinear ``embedding_bag`` gathers + one matmul (see module doc).

    Args:
        x: (N, C, H, W) input.
        offset: (N, 2*k*k, Ho, Wo), yx-interleaved per tap, stride 1, one offset group.
        weight: (Cout, C, k, k).
        padding: zero padding on each side.
        weight_matrix: optional precomputed ``_weight_matrix(weight)`` (inference cache).
    Returns:
        (N, Cout, Ho, Wo), channels-last strided.
    """
    _check_inputs(x, offset, weight, padding)
    if x.numel() == 0 or offset.numel() == 0:
        return _empty_output(x, offset, weight, padding)
    n, c, h, w = x.shape
    out_ch, _, k, _ = weight.shape
    taps = k * k
    ho, wo = offset.shape[-2:]

    index, bilinear = _bilinear_corners(_sample_positions(offset, k, padding), h, w)
    rows = x.permute(0, 2, 3, 1).contiguous().view(n * h * w, c)
    if weight_matrix is None:
        weight_matrix = _weight_matrix(weight)

    if torch.jit.is_tracing():
        # A traced graph works for every input size: no chunking (its count depends on the size).
        if torch.onnx.is_in_onnx_export():
            # ONNX: a plain Gather of the 4 corners (embedding_bag exports as a loop per sample).
            samples = (rows[index] * bilinear[..., None]).sum(1)
        else:
            samples = F.embedding_bag(index, rows, per_sample_weights=bilinear, mode="sum")
        out = F.linear(samples.view(-1, taps * c), weight_matrix)
        return out.view(n, ho, wo, out_ch).permute(0, 3, 1, 2)
    cells = n * ho * wo
    step = max(1, _CHUNK_BYTES // (taps * c * x.element_size()))
    outputs = []
    for start in range(0, cells, step):
        stop = min(cells, start + step)
        samples = F.embedding_bag(
            index[start * taps : stop * taps],
            rows,
            per_sample_weights=bilinear[start * taps : stop * taps],
            mode="sum",
        )
        outputs.append(F.linear(samples.view(stop - start, taps * c), weight_matrix))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return out.view(n, ho, wo, out_ch).permute(0, 3, 1, 2)


def deform_conv2d_grid_sample(x: Tensor, offset: Tensor, weight: Tensor, padding: int) -> Tensor:
    """Deformable conv as one ``F.grid_sample`` of all taps + one matmul (the grid-sample variant).

    The input is zero-padded by one pixel and sampled with ``padding_mode="zeros"``,
    ``align_corners=True`` in that padded frame, which reproduces ``deform_conv2d``'s
    zero-padding rule (and works for 1-pixel maps). Values and gradients match torchvision to
    float rounding of the coordinate normalisation (gradients w.r.t. offsets may differ on exact
    integer sampling positions, where bilinear interpolation has a kink).
    """
    _check_inputs(x, offset, weight, padding)
    if x.numel() == 0 or offset.numel() == 0:
        return _empty_output(x, offset, weight, padding)
    n, c, h, w = x.shape
    out_ch, _, k, _ = weight.shape
    taps = k * k
    ho, wo = offset.shape[-2:]

    positions = _sample_positions(offset, k, padding)
    # Padded frame: index 0 and H+1 are the zero border; align_corners=True maps -1..1 to 0..H+1.
    # Traceable: under tracing the sizes are 0-dim tensors and stay inputs of the graph.
    scale = 2.0 / shapes_to_tensor([h + 1, w + 1], x.device).to(positions.dtype)
    grid = ((positions + 1) * scale - 1).flip(-1)  # grid_sample wants (x, y)
    padded = F.pad(x, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
    samples = F.grid_sample(
        padded, grid.view(n, ho * wo, taps, 2), "bilinear", "zeros", align_corners=True
    )  # (N, C, Ho*Wo, L), channels-last strided
    samples = samples.permute(0, 2, 3, 1).reshape(n * ho * wo, taps * c)
    out = F.linear(samples, _weight_matrix(weight))
    return out.view(n, ho, wo, out_ch).permute(0, 3, 1, 2)


class KGDeformConv(nn.Module):
    """Deformable conv (one offset group, stride 1, no bias) with a device-dependent kernel.

    The single ``weight`` parameter has the name and shape of Detectron2's ``DeformConv``, so
    checkpoints load into either path, and every ``impl`` computes the same function:

    * ``"auto"``: CUDA input -> Detectron2's op when ``detectron2._C`` has CUDA and the op runs
      on this GPU (:func:`detectron2_cuda_op_runs`, tried once), else torchvision; CPU input
      -> ``"gather"``.
    * ``"gather"``: :func:`deform_conv2d_gather` (fastest on CPU; trains on CPU).
    * ``"grid_sample"``: :func:`deform_conv2d_grid_sample`.
    * ``"torchvision"``: ``torchvision.ops.deform_conv2d``.
    * ``"detectron2"``: ``detectron2.layers.deform_conv`` (on CPU its forward is torchvision's
      and its backward raises, as in Detectron2). Detectron2's CUDA op needs a contiguous
      weight; a channels-last weight (``MODEL.KGDET.CHANNELS_LAST``) is passed as a contiguous
      copy.

    Under AMP the convolution runs in float32 (docs/DESIGN.md §3.1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int,
        impl: str = "auto",
    ):
        super().__init__()
        if impl not in DEFORM_IMPLS:
            raise ValueError(
                f"KGDeformConv impl (MODEL.KGDET.DEFORM_IMPL) must be one of {DEFORM_IMPLS}, "
                f"got {impl!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.padding = padding
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        # Inference cache of the permuted weight: (key, tensor); never saved in checkpoints.
        self._weight_matrix_cache: Optional[Tuple[tuple, Tensor]] = None

    def resolved_impl(self, device: torch.device) -> str:
        """The implementation ``"auto"`` resolves to for tensors on ``device``."""
        if self.impl != "auto":
            return self.impl
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            runs = detectron2_cuda_op_runs(torch.device("cuda", index))
            return "detectron2" if runs else "torchvision"
        return "gather"

    def _cached_weight_matrix(self) -> Optional[Tensor]:
        """The permuted weight, reused across calls while autograd is off (eval/inference); the
        key follows in-place updates (optimizer steps, ``load_state_dict``) and moves."""
        weight = self.weight
        if torch.is_grad_enabled():
            return None
        key = (
            weight.data_ptr(),
            weight._version,
            weight.dtype,
            weight.device,
            weight.shape,
            torch.is_inference_mode_enabled(),
        )
        if self._weight_matrix_cache is None or self._weight_matrix_cache[0] != key:
            self._weight_matrix_cache = (key, _weight_matrix(weight.detach()))
        return self._weight_matrix_cache[1]

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        """x: (N, Cin, H, W); offset: (N, 2*k*k, H_out, W_out) -> (N, Cout, H_out, W_out)."""
        weight = self.weight
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self._forward(x.float(), offset.float(), weight.float())
        return self._forward(x, offset, weight)

    def _forward(self, x: Tensor, offset: Tensor, weight: Tensor) -> Tensor:
        impl = self.resolved_impl(x.device)
        if impl == "gather":
            # Not while tracing: the cached matrix would be stored as a second copy of the weight.
            cached = weight is self.weight and not torch.jit.is_tracing()
            matrix = self._cached_weight_matrix() if cached else None
            return deform_conv2d_gather(x, offset, weight, self.padding, matrix)
        if impl == "grid_sample":
            return deform_conv2d_grid_sample(x, offset, weight, self.padding)
        _check_inputs(x, offset, weight, self.padding)
        if x.numel() == 0 or offset.numel() == 0:
            return _empty_output(x, offset, weight, self.padding)
        if impl == "torchvision":
            return tv_deform_conv2d(x, offset, weight, padding=(self.padding, self.padding))
        from detectron2.layers.deform_conv import deform_conv

        # Detectron2's CUDA kernel checks weight.is_contiguous() (a channels-last weight fails).
        return deform_conv(
            x.contiguous(), offset.contiguous(), weight.contiguous(), 1, self.padding, 1, 1, 1
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"padding={self.padding}, impl={self.impl}"
        )
