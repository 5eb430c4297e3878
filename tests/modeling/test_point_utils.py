"""Tests of kgdet.modeling.point_utils (docs/DESIGN.md §3.1, §3.4, §4, §8.4)."""

import math
import pytest
import torch
from torch.nn import functional as F

from kgdet.modeling.deform_conv import KGDeformConv
from kgdet.modeling.point_utils import (
    gradient_multiply,
    kernel_grid_offsets,
    mirror_boxes,
    mirror_logits,
    mirror_offsets,
    moment_transform,
    points_to_dcn_offsets,
    select_points_by_score,
    split_yx,
    xy_to_yx,
    yx_to_xy,
)


def _bilinear_sample(feature: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sample feature (1, 1, H, W) at absolute cell coords y, x (M, H, W) -> (M, H, W)."""
    h, w = feature.shape[-2:]
    grid = torch.stack((2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1), dim=-1)  # (M, H, W, 2)
    out = F.grid_sample(
        feature.expand(grid.shape[0], -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    return out[:, 0]


def test_gradient_multiply_keeps_value_scales_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    for mul in (0.0, 0.1, 1.0):
        y = gradient_multiply(x, mul)
        torch.testing.assert_close(y, x, rtol=0, atol=1e-6)
        (grad,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(grad, torch.full_like(x, mul))


def test_kernel_grid_offsets_row_major_yx():
    base = kernel_grid_offsets(3).view(9, 2)
    expected = torch.tensor([[a - 1, b - 1] for a in range(3) for b in range(3)], dtype=base.dtype)
    assert torch.equal(base, expected)
    assert kernel_grid_offsets(7).numel() == 98


def test_dcn_offsets_sample_exactly_at_points():
    """Each tap of each column, fed known points, returns the bilinear sample at (i+dy, j+dx)."""
    torch.manual_seed(0)
    columns = [3, 5]
    height, width = 6, 7
    feature = torch.randn(1, 1, height, width, dtype=torch.float64)
    num_points = sum(k * k for k in columns)
    points = (torch.rand(1, 2 * num_points, height, width, dtype=torch.float64) - 0.5) * 5
    offsets = points_to_dcn_offsets(points, columns, gradient_mul=0.1)
    rows = torch.arange(height, dtype=torch.float64).view(1, -1, 1)
    cols = torch.arange(width, dtype=torch.float64).view(1, 1, -1)
    start = 0
    for k, offset in zip(columns, offsets):
        assert offset.shape == (1, 2 * k * k, height, width)
        dcn = KGDeformConv(1, k * k, k, (k - 1) // 2).double()
        with torch.no_grad():
            # Output channel m copies tap m of the kernel.
            dcn.weight.copy_(torch.eye(k * k, dtype=torch.float64).view(k * k, 1, k, k))
            sampled = dcn(feature, offset)[0]
        dy, dx = split_yx(points[:, start : start + 2 * k * k])
        expected = _bilinear_sample(feature, rows + dy[0], cols + dx[0])
        torch.testing.assert_close(sampled, expected, rtol=0, atol=1e-6)
        start += 2 * k * k


def test_dcn_offsets_gradient_multiplier_and_channel_check():
    points = torch.randn(2, 18, 3, 4, requires_grad=True)
    (offset,) = points_to_dcn_offsets(points, [3], gradient_mul=0.1)
    (grad,) = torch.autograd.grad(offset.sum(), points)
    torch.testing.assert_close(grad, torch.full_like(points, 0.1))
    with pytest.raises(ValueError, match="18 channels"):
        points_to_dcn_offsets(points, [3, 5], gradient_mul=0.1)


def _hand_made_points() -> torch.Tensor:
    # Points (x, y): (0, 1), (2, 1), (4, 4) -> mean (2, 2), unbiased std (2, sqrt(3)).
    xy = torch.tensor([0.0, 1.0, 2.0, 1.0, 4.0, 4.0]).view(1, 6, 1, 1)
    return xy_to_yx(xy)


def test_moment_transform_hand_made_set():
    points = _hand_made_points()
    s3 = math.sqrt(3.0)
    box = moment_transform(points, torch.zeros(2), param="exp").flatten()
    torch.testing.assert_close(box, torch.tensor([0.0, 2 - s3, 4.0, 2 + s3]))
    # λ = 0 in the exp form <=> λ = 2 in the linear (paper) form: half-width = σ.
    box_lin = moment_transform(points, torch.full((2,), 2.0), param="linear").flatten()
    torch.testing.assert_close(box_lin, box)
    box_wide = moment_transform(points, torch.tensor([math.log(2.0), 0.0])).flatten()
    torch.testing.assert_close(box_wide, torch.tensor([-2.0, 2 - s3, 6.0, 2 + s3]))


def test_moment_transform_lambda_gradient_is_damped():
    lam = torch.zeros(2, requires_grad=True)
    box = moment_transform(_hand_made_points(), lam, moment_mul=0.01).flatten()
    (grad,) = torch.autograd.grad(box[2], lam)  # x2 = μx + σx·exp(λx)
    torch.testing.assert_close(grad, torch.tensor([0.01 * 2.0, 0.0]))


def test_moment_transform_coincident_points_have_finite_gradient():
    points = torch.zeros(1, 18, 2, 2, requires_grad=True)
    box = moment_transform(points, torch.zeros(2))
    (grad,) = torch.autograd.grad(box.sum(), points)
    assert torch.isfinite(grad).all()


def test_yx_xy_helpers():
    yx = torch.arange(8.0).view(1, 8, 1, 1)
    xy = yx_to_xy(yx)
    assert xy.flatten().tolist() == [1, 0, 3, 2, 5, 4, 7, 6]
    assert torch.equal(xy_to_yx(xy), yx)
    y, x = split_yx(yx)
    assert y.flatten().tolist() == [0, 2, 4, 6] and x.flatten().tolist() == [1, 3, 5, 7]


def test_select_points_by_score_gathers_top_pairs():
    num_keypoints = 6
    offsets = torch.arange(2.0 * num_keypoints).view(1, -1, 1, 1).repeat(1, 1, 1, 2)
    offsets.requires_grad_(True)
    scores = torch.tensor([[0.1, 5.0, -1.0, 3.0, 4.0, 0.0], [9.0, 0.0, 0.0, 0.0, 0.0, 8.0]])
    scores = scores.t().reshape(1, num_keypoints, 1, 2)
    pts, idx = select_points_by_score(offsets, scores, 3, sort_indices=True)
    assert idx[0, :, 0, 0].tolist() == [1, 3, 4]
    assert idx[0, :, 0, 1].tolist()[0] == 0 and idx[0, :, 0, 1].tolist()[-1] == 5
    assert pts[0, :, 0, 0].tolist() == [2, 3, 6, 7, 8, 9]
    _, idx_unsorted = select_points_by_score(offsets, scores, 3, sort_indices=False)
    assert idx_unsorted[0, :, 0, 0].tolist() == [1, 4, 3]
    (grad,) = torch.autograd.grad(pts[..., 0].sum(), offsets)
    assert grad[0, :, 0, 0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0]


def test_mirror_helpers():
    torch.manual_seed(0)
    perm = torch.tensor([1, 0, 2, 4, 3])
    offsets = torch.randn(2, 10, 3, 4)
    logits = torch.randn(2, 5, 3, 4)
    boxes = torch.randn(2, 4, 3, 4)
    # Involutions.
    torch.testing.assert_close(mirror_offsets(mirror_offsets(offsets, perm), perm), offsets)
    torch.testing.assert_close(mirror_logits(mirror_logits(logits, perm), perm), logits)
    torch.testing.assert_close(mirror_boxes(mirror_boxes(boxes)), boxes)
    # Explicit values: point 0 of the result = point 1 of the flipped pass, x negated.
    mirrored = mirror_offsets(offsets, perm)
    torch.testing.assert_close(mirrored[:, 0], offsets[:, 2].flip(-1))
    torch.testing.assert_close(mirrored[:, 1], -offsets[:, 3].flip(-1))
    box = mirror_boxes(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)).flatten()
    assert box.tolist() == [-3.0, 2.0, -1.0, 4.0]


def test_moment_transform_lambda_stays_float32_for_half_points():
    """Under AMP the head's points are float16: the transform runs in float32, so λ's gradient
    (a sum over every cell, times GradScaler's 65536) stays finite."""
    torch.manual_seed(0)
    points = (torch.randn(2, 18, 16, 16) * 4).half().requires_grad_()
    lam = torch.zeros(2, requires_grad=True)
    boxes = moment_transform(points, lam, moment_mul=1.0)
    assert boxes.dtype == torch.float32
    sizes = boxes[:, 2:] - boxes[:, :2]  # width and height: 2·σ·exp(λ)
    (sizes.sum() * 65536.0).backward()
    assert lam.grad.dtype == torch.float32
    assert torch.isfinite(lam.grad).all() and lam.grad.abs().max() > 65504  # beyond float16
    assert points.grad.dtype == torch.float16


def test_moment_transform_float32_under_cpu_autocast():
    torch.manual_seed(1)
    points = torch.randn(1, 18, 5, 6)
    lam = torch.tensor([0.1, -0.2])
    expected = moment_transform(points, lam)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = moment_transform(points, lam)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
