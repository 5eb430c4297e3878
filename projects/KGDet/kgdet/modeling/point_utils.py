"""Pure tensor functions on point sets in the head's layout (docs/DESIGN.md §0, §3, §4, §8.4).

A set of M points is a (N, 2M, H, W) tensor, "yx-interleaved": channel 2m is the row (y) offset
of point m and channel 2m+1 its column (x) offset, in feature cells relative to the cell's grid
point. This is the offset layout deformable convolution consumes, so no conversion is needed
between stages; convert to (x, y) only for outputs (``yx_to_xy``).
"""

from typing import List, Optional, Sequence, Tuple
import torch
from torch import Tensor

__all__ = [
    "gradient_multiply",
    "kernel_grid_offsets",
    "points_to_dcn_offsets",
    "split_yx",
    "yx_to_xy",
    "xy_to_yx",
    "moment_transform",
    "select_points_by_score",
    "mirror_logits",
    "mirror_offsets",
    "mirror_boxes",
]


def gradient_multiply(x: Tensor, mul: float) -> Tensor:
    """Return a tensor equal to ``x`` whose gradient is ``mul`` times the incoming one.

    ``mul * x + (1 - mul) * stopgrad(x)`` (the official "gradient_mul"). With ``mul == 0`` the
    graph stays connected but the gradient is exactly zero.
    """
    if mul == 1.0:
        return x
    return x * mul + x.detach() * (1.0 - mul)


def kernel_grid_offsets(
    kernel_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
) -> Tensor:
    """Fixed displacement of every tap of a k×k kernel, (2k²,) yx-interleaved, row-major taps.

    Tap m = (a, b) = (m // k, m % k) sits at (a - r, b - r) with r = (k - 1) / 2.
    """
    r = (kernel_size - 1) // 2
    line = torch.arange(-r, r + 1, device=device, dtype=dtype)
    dy = line.repeat_interleave(kernel_size)
    dx = line.repeat(kernel_size)
    return torch.stack((dy, dx), dim=1).flatten()


def points_to_dcn_offsets(
    points: Tensor, columns: Sequence[int], gradient_mul: float
) -> List[Tensor]:
    """Deformable-conv offsets that make column c's taps sample exactly at its points (§3.1).

    Args:
        points: (N, 2P, H, W) yx-interleaved, P = sum(k * k for k in columns); the first 2·k₀²
            channels belong to the first column, and so on.
        columns: odd kernel sizes.
        gradient_mul: gradient multiplier applied to the points (value unchanged).

    Returns:
        One (N, 2k², H, W) offset tensor per column: ``gm(points) - kernel grid``.
    """
    sizes = [2 * k * k for k in columns]
    if points.shape[1] != sum(sizes):
        raise ValueError(
            f"points have {points.shape[1]} channels, columns {list(columns)} need {sum(sizes)}"
        )
    points = gradient_multiply(points, gradient_mul)
    offsets = []
    for chunk, k in zip(torch.split(points, sizes, dim=1), columns):
        base = kernel_grid_offsets(k, device=points.device, dtype=points.dtype)
        offsets.append(chunk - base.view(1, -1, 1, 1))
    return offsets


def split_yx(points: Tensor) -> Tuple[Tensor, Tensor]:
    """(N, 2M, ...) yx-interleaved -> (y, x), each (N, M, ...)."""
    pairs = points.unflatten(1, (-1, 2))
    return pairs[:, :, 0], pairs[:, :, 1]


def yx_to_xy(points: Tensor) -> Tensor:
    """Swap the two coordinates of every point: (N, 2M, ...) yx-interleaved -> xy-interleaved."""
    return points.unflatten(1, (-1, 2)).flip(2).flatten(1, 2)


# The swap is an involution.
xy_to_yx = yx_to_xy


def moment_transform(
    points: Tensor, moment_lambda: Tensor, moment_mul: float = 0.01, param: str = "exp"
) -> Tensor:
    """Box (x1, y1, x2, y2) from a point set by its mean and unbiased std (docs/DESIGN.md §4).

    Args:
        points: (N, 2P, H, W) yx-interleaved, P >= 2.
        moment_lambda: (2,) = (λx, λy), shared by all stages and levels.
        moment_mul: gradient multiplier of λ (value unchanged).
        param: "exp" (code: half-width = σ·exp(λ)) or "linear" (paper: width = λ·σ).

    Returns:
        (N, 4, H, W) in cells relative to the grid point, float32 (float64 for float64 points).

    Computed in at least float32 whatever the input dtype (float16 / bfloat16 under autocast): λ's
    gradient is a sum over every cell of the batch, which overflows float16 once scaled by
    AMP's ``GradScaler``, and the squares of the variance lose float16's few digits.
    """
    dtype = torch.promote_types(points.dtype, torch.float32)  # float64 stays float64
    with torch.autocast(points.device.type, enabled=False):
        return _moment_transform(points.to(dtype), moment_lambda, moment_mul, param)


def _moment_transform(
    points: Tensor, moment_lambda: Tensor, moment_mul: float, param: str
) -> Tensor:
    ys, xs = split_yx(points)
    num_points = ys.shape[1]
    if num_points < 2:
        raise ValueError(f"moment transform needs at least 2 points, got {num_points}")
    mean_y = ys.mean(dim=1, keepdim=True)
    mean_x = xs.mean(dim=1, keepdim=True)
    # Unbiased std. sqrt of a clamped variance instead of torch.std: torch.std's backward is NaN
    # when all points coincide (e.g. exactly-zero features); the clamp changes values < 1e-6.
    var_y = (ys - mean_y).square().sum(dim=1, keepdim=True) / (num_points - 1)
    var_x = (xs - mean_x).square().sum(dim=1, keepdim=True) / (num_points - 1)
    std_y = var_y.clamp(min=1e-12).sqrt()
    std_x = var_x.clamp(min=1e-12).sqrt()
    lam = gradient_multiply(moment_lambda, moment_mul).to(points.dtype)
    if param == "exp":
        scale = lam.exp()
    elif param == "linear":
        scale = lam * 0.5
    else:
        raise ValueError(f"MOMENT_PARAM must be 'exp' or 'linear', got {param!r}")
    half_w = std_x * scale[0]
    half_h = std_y * scale[1]
    return torch.cat((mean_x - half_w, mean_y - half_h, mean_x + half_w, mean_y + half_h), dim=1)


def select_points_by_score(
    offsets: Tensor, scores: Tensor, num_selected: int, sort_indices: bool = True
) -> Tuple[Tensor, Tensor]:
    """Keypoint selection (docs/DESIGN.md §3.4): gather the n highest-scoring points per location.

    Args:
        offsets: (N, 2K, H, W) yx-interleaved keypoint offsets.
        scores: (N, K, H, W) visibility logits (monotone in the probability; no gradient flows
            through the indices).
        num_selected: n <= K.
        sort_indices: re-order the selected indices ascending (stable tap order).

    Returns:
        points (N, 2n, H, W) gathered from ``offsets`` (differentiable w.r.t. ``offsets``) and
        the indices (N, n, H, W).
    """
    idx = scores.detach().topk(num_selected, dim=1).indices
    if sort_indices:
        idx = idx.sort(dim=1).values
    channels = torch.stack((2 * idx, 2 * idx + 1), dim=2).flatten(1, 2)
    return offsets.gather(1, channels), idx


def mirror_logits(flipped: Tensor, permutation: Optional[Tensor] = None) -> Tensor:
    """Map per-channel maps of the width-flipped pass back to the plain frame (§8.4).

    Flips the width axis and, if given, permutes the channels (``out[:, p] = in[:, perm[p]]``,
    e.g. the keypoint flip permutation for visibility logits).
    """
    out = flipped.flip(-1)
    if permutation is not None:
        out = out.index_select(1, permutation)
    return out


def mirror_offsets(flipped: Tensor, permutation: Optional[Tensor] = None) -> Tensor:
    """Map yx-interleaved offsets of the width-flipped pass back to the plain frame (§8.4).

    Flips the width axis, negates every x offset and, if given, permutes the points
    (point p of the result = point ``perm[p]`` of the flipped pass).
    """
    pairs = flipped.flip(-1).unflatten(1, (-1, 2))
    pairs = torch.stack((pairs[:, :, 0], -pairs[:, :, 1]), dim=2)
    if permutation is not None:
        pairs = pairs.index_select(1, permutation)
    return pairs.flatten(1, 2)


def mirror_boxes(flipped: Tensor) -> Tensor:
    """Map (x1, y1, x2, y2) boxes of the width-flipped pass back: flipW, then (-x2, y1, -x1, y2)."""
    x1, y1, x2, y2 = flipped.flip(-1).unbind(1)
    return torch.stack((-x2, y1, -x1, y2), dim=1)
