"""Loss terms (docs/DESIGN.md §6)."""

import unittest
import torch
import torch.nn.functional as F

from kgdet.modeling.losses import (
    KP_NORMS,
    box_loss,
    classification_loss,
    keypoint_loss,
    keypoint_weights,
    visibility_loss,
)


def _smooth_l1(x: torch.Tensor, beta: float) -> torch.Tensor:
    x = x.abs()
    return torch.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta)


class TestKeypointWeights(unittest.TestCase):
    def test_sum_to_four_per_positive_with_labels_zero_otherwise(self):
        vis = torch.tensor([[2.0, 1.0, 0.0, 0.0, 2.0], [0.0] * 5, [1.0, 0.0, 0.0, 0.0, 0.0]])
        w = keypoint_weights(vis, KP_NORMS["per_instance_x4"])
        per_positive = 2 * w.sum(dim=1)  # x and y coordinates share the slot weight
        self.assertTrue(torch.allclose(per_positive, torch.tensor([4.0, 0.0, 4.0])))
        self.assertTrue(torch.all(w[vis == 0] == 0))
        self.assertAlmostEqual(w[0, 0].item(), 4.0 / 6.0)

    def test_per_instance_sums_to_one(self):
        w = keypoint_weights(torch.tensor([[2.0, 2.0, 0.0]]), KP_NORMS["per_instance"])
        self.assertAlmostEqual(2 * w.sum().item(), 1.0)


class TestKeypointLoss(unittest.TestCase):
    def test_matches_manual_and_ignores_unlabelled_coordinates(self):
        beta = 1.0 / 9.0
        pred = torch.tensor([[[10.0, 20.0], [30.0, 40.0], [0.0, 0.0]]], requires_grad=True)
        gt = torch.tensor([[[12.0, 20.0, 2.0], [30.0, 100.0, 1.0], [float("nan"), 5.0, 0.0]]])
        norm = torch.tensor([128.0])
        loss = keypoint_loss(pred, gt, norm, beta, 4.0)
        diffs = torch.tensor([2.0, 0.0, 0.0, 60.0]) / 128.0
        expected = (_smooth_l1(diffs, beta) * (4.0 / 4.0)).sum()
        self.assertTrue(torch.isfinite(loss))
        self.assertAlmostEqual(loss.item(), expected.item(), places=6)
        loss.backward()
        self.assertTrue(torch.all(pred.grad[0, 2] == 0))  # unlabelled slot: no gradient
        self.assertTrue(torch.isfinite(pred.grad).all())

    def test_positive_without_labels_contributes_nothing(self):
        pred = torch.randn(2, 4, 2, requires_grad=True)
        gt = torch.zeros(2, 4, 3)
        loss = keypoint_loss(pred, gt, torch.tensor([128.0, 128.0]), 0.11, 4.0)
        self.assertEqual(loss.item(), 0.0)
        loss.backward()  # still connected to the graph (DDP needs a gradient, even if zero)
        self.assertTrue(torch.all(pred.grad == 0))

    def test_empty(self):
        pred = torch.zeros(0, 4, 2, requires_grad=True)
        loss = keypoint_loss(pred, torch.zeros(0, 4, 3), torch.zeros(0), 0.11, 4.0)
        self.assertEqual(loss.item(), 0.0)
        loss.backward()


class TestBoxLoss(unittest.TestCase):
    def test_normalised_by_four_strides(self):
        beta = 1.0 / 9.0
        gt = torch.tensor([[10.0, 20.0, 110.0, 220.0]])
        delta = torch.tensor([[0.05, -0.5, 0.0, 2.0]])
        norm = torch.tensor([4.0 * 32.0])
        loss = box_loss(gt + delta * norm[:, None], gt, norm, beta)
        self.assertAlmostEqual(loss.item(), _smooth_l1(delta, beta).sum().item(), places=5)


class TestClassificationLoss(unittest.TestCase):
    def test_focal_with_background_rows(self):
        logits = torch.randn(4, 3)
        labels = torch.tensor([0, 2, 3, 3])  # 3 = background
        loss = classification_loss(logits, labels, 3, alpha=0.25, gamma=2.0)
        target = torch.zeros(4, 3)
        target[0, 0] = 1
        target[1, 2] = 1
        p = logits.sigmoid()
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = p * target + (1 - p) * (1 - target)
        alpha_t = 0.25 * target + 0.75 * (1 - target)
        expected = (alpha_t * ce * (1 - p_t) ** 2).sum()
        self.assertAlmostEqual(loss.item(), expected.item(), places=5)


class TestVisibilityLoss(unittest.TestCase):
    def test_bce_mean_over_slots_sum_over_positives(self):
        logits = torch.randn(2, 5)
        vis = torch.tensor([[2.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0]])
        loss = visibility_loss(logits, vis)
        expected = F.binary_cross_entropy_with_logits(logits, (vis > 0).float(), reduction="none")
        self.assertAlmostEqual(loss.item(), expected.mean(dim=1).sum().item(), places=5)


def test_classification_loss_is_float32_for_float16_logits():
    """AMP gives float16 logits; the summed focal loss (here 40000 x 7 background terms, a sum
    far beyond float16's 65504) is computed and returned in float32."""
    logits = torch.full((40000, 7), 3.0)
    labels = torch.full((40000,), 7)
    expected = classification_loss(logits, labels, 7, 0.25, 2.0)
    got = classification_loss(logits.half(), labels, 7, 0.25, 2.0)
    assert got.dtype == torch.float32 and torch.isfinite(got) and expected > 65504
    torch.testing.assert_close(got, expected)
