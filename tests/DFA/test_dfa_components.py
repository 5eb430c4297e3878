"""DFA building blocks: pseudo-labels (Eq. 1), k-means spaces, routing (Eq. 2), alpha/beta (Eq. 4),
losses (truncated landmarks), normalisation and crops."""

import math
import numpy as np
import pytest
import torch

from detectron2.structures import BoxMode

from dfa.landmarks import (
    FLD_CLASS_SLOTS,
    crop_box,
    denormalize_landmarks,
    garment_targets,
    normalize_landmarks,
    normalized_to_crop_pixels,
)
from dfa.losses import aux_loss_weight, label_loss, position_loss, visibility_loss
from dfa.pseudo_labels import (
    cluster_error_magnitudes,
    cluster_space,
    context_space,
    expected_error,
    fit_kmeans,
    offset_magnitudes,
    pseudo_labels,
    route,
)


# ---- pseudo-labels ---------------------------------------------------------------------------
def test_pseudo_label_formula_matches_eq1_normalised():
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    centres = torch.tensor([[0.0, 0.0], [6.0, 8.0], [0.0, 10.0]])
    temperature = 20.0
    got = pseudo_labels(features, centres, temperature)
    for i, x in enumerate(features):
        d = [float(torch.dist(x, c)) for c in centres]
        raw = [math.exp(-di / temperature) for di in d]
        expected = [r / sum(raw) for r in raw]
        assert got[i].tolist() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(got.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="temperature"):
        pseudo_labels(features, centres, 0.0)


def _toy_clusters(seed=0):
    """Three well separated 2-D blobs (pixel units), 30 points each."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.tensor([[0.0, 0.0], [60.0, 0.0], [0.0, 60.0]])
    points = means.repeat_interleave(30, 0) + 5 * torch.randn(90, 2, generator=gen)
    return points, torch.arange(3).repeat_interleave(30)


def test_temperature_softens_labels_on_toy_clustering():
    points, truth = _toy_clusters()
    centres, assignments = fit_kmeans(points, 3, n_init=2, seed=0)
    # k-means recovers the blobs (up to a permutation).
    for k in range(3):
        assert len(set(truth[assignments == k].tolist())) == 1
    hard = pseudo_labels(points, centres, temperature=1.0)
    soft = pseudo_labels(points, centres, temperature=20.0)
    # T = 1: (almost) one-hot on the own cluster, the paper's "hard label".
    assert (hard.argmax(1) == assignments).all()
    assert hard.max(1).values.min() > 0.99
    # T = 20: same ranking, but the other clusters keep visible mass.
    assert (soft.argmax(1) == assignments).all()
    assert 0.5 < soft.max(1).values.mean() < 0.99

    def entropy(p):
        return -(p * p.clamp_min(1e-12).log()).sum(1).mean()

    assert entropy(hard) < entropy(soft) < math.log(3)


def test_kmeans_needs_enough_garments():
    with pytest.raises(ValueError, match="NUM_CLUSTERS"):
        fit_kmeans(torch.zeros(5, 16), 20)


def test_cluster_spaces_shapes_units_and_missing_landmarks():
    gt = torch.tensor([[[0.1, -0.2]] * 8])
    prev = gt + 0.05
    labelled = torch.tensor([[True] * 7 + [False]])
    s1 = cluster_space(1, gt, labelled, None, 224.0)
    s2 = cluster_space(2, gt, labelled, prev, 224.0)
    s3 = cluster_space(3, gt, labelled, prev, 224.0)
    assert s1.shape == (1, 16) and s2.shape == (1, 16) and s3.shape == (1, 256)
    assert s1[0, :2].tolist() == pytest.approx([22.4, -44.8])
    assert s1[0, 14:].abs().sum() == 0 and s2[0, 14:].abs().sum() == 0  # unlabelled -> 0
    assert s2[0, 0].item() == pytest.approx(0.05 * 224)
    # Signed square root of the outer product: entries are pixels again.
    assert s3.abs().max().item() == pytest.approx(0.05 * 224, rel=1e-5)
    offsets = torch.tensor([[2.0, -8.0]])
    ctx = context_space(offsets.view(1, 1, 2), torch.zeros(1, 1, 2), torch.ones(1, 1).bool(), 1.0)
    assert ctx[0].tolist() == pytest.approx([2.0, -4.0, -4.0, 8.0])


# ---- routing -----------------------------------------------------------------------------------
def test_routing_follows_threshold():
    cluster_error = torch.tensor([0.1, 0.5])
    labels = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.55, 0.45]])
    g = expected_error(labels, cluster_error)
    assert g.tolist() == pytest.approx([0.1, 0.3, 0.5, 0.28])
    assert route(labels, cluster_error, 0.3).tolist() == [True, False, False, True]
    assert route(labels, cluster_error, 0.6).all()
    assert not route(labels, cluster_error, 0.05).any()


def test_cluster_error_magnitudes_average_per_cluster():
    gt = torch.zeros(4, 8, 2)
    prev = torch.zeros(4, 8, 2)
    prev[:, 0, 0] = torch.tensor([0.1, 0.3, 0.2, 9.0])
    labelled = torch.ones(4, 8, dtype=torch.bool)
    labelled[3, 0] = False  # an unlabelled landmark's error does not count
    mags = offset_magnitudes(prev, gt, labelled)
    assert mags.tolist() == pytest.approx([0.1, 0.3, 0.2, 0.0])
    err = cluster_error_magnitudes(torch.tensor([0, 0, 1, 1]), mags, 3)
    assert err.tolist() == pytest.approx([0.2, 0.1, 0.15])  # empty cluster -> overall mean


# ---- Eq. 4 and losses ----------------------------------------------------------------------------
def test_aux_weight_schedule():
    t1, t2 = 2000, 4000
    assert aux_loss_weight(0, 0.5, t1, t2) == 0.5
    assert aux_loss_weight(1999, 0.5, t1, t2) == 0.5
    assert aux_loss_weight(2000, 0.5, t1, t2) == 0.5
    assert aux_loss_weight(3000, 0.5, t1, t2) == pytest.approx(0.25)
    assert aux_loss_weight(3500, 0.5, t1, t2) == pytest.approx(0.125)
    assert aux_loss_weight(4000, 0.5, t1, t2) == 0.0
    assert aux_loss_weight(10**6, 0.5, t1, t2) == 0.0
    assert aux_loss_weight(5, 1.0, 10, 10) == 1.0 and aux_loss_weight(10, 1.0, 10, 10) == 0.0
    with pytest.raises(ValueError):
        aux_loss_weight(0, 1.0, 10, 5)


def test_truncated_landmarks_give_no_position_loss_or_gradient():
    gt = torch.zeros(2, 8, 2)
    pred = torch.full((2, 8, 2), 0.1, requires_grad=True)
    labelled = torch.ones(2, 8, dtype=torch.bool)
    base = position_loss(pred, gt, labelled)
    assert base.item() == pytest.approx(2 * 8 * 0.02 / 2)
    truncated = labelled.clone()
    truncated[0, 3] = False
    moved = pred.detach().clone()
    moved[0, 3] = 100.0  # a wild prediction on the truncated landmark changes nothing
    moved.requires_grad_(True)
    loss = position_loss(moved, gt, truncated)
    assert loss.item() == pytest.approx((2 * 8 - 1) * 0.02 / 2)
    loss.backward()
    assert moved.grad[0, 3].abs().sum() == 0 and moved.grad[0, 2].abs().sum() > 0


def test_visibility_and_label_losses():
    logits = torch.zeros(1, 8, 3)
    vis = torch.tensor([[0, 1, 2, -1, -1, -1, -1, -1]])
    assert visibility_loss(logits, vis).item() == pytest.approx(math.log(3))
    assert visibility_loss(logits, torch.full((1, 8), -1)).item() == 0.0
    f = torch.tensor([[0.5, 0.5]])
    assert label_loss(torch.tensor([[1.0, 0.0]]), f).item() == pytest.approx(0.5)


# ---- geometry ------------------------------------------------------------------------------------
def test_normalisation_roundtrip_and_units():
    boxes = torch.tensor([[10.0, 20.0, 110.0, 70.0]])
    points = torch.tensor([[[60.0, 45.0], [110.0, 20.0], [35.0, 57.5]]])
    norm = normalize_landmarks(points, boxes)
    assert norm[0].flatten().tolist() == pytest.approx([0.0, 0.0, 0.5, -0.5, -0.25, 0.25])
    assert torch.allclose(denormalize_landmarks(norm, boxes), points)


def test_crop_box_maps_landmarks_to_expected_pixels():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:42, 120:122] = 255  # bright 2x2 blob centred at continuous (121, 41)
    box = [100.0, 20.0, 140.0, 60.0]
    for expand in (1.0, 1.5):
        crop = crop_box(image, box, 40, expand)
        assert crop.shape == (40, 40, 3)
        norm = normalize_landmarks(torch.tensor([[121.0, 41.0]]), torch.tensor(box))
        u, v = normalized_to_crop_pixels(norm, 40, expand)[0].tolist()
        ys, xs = np.nonzero(crop[:, :, 0] > 0)
        weights = crop[ys, xs, 0].astype(float)
        assert np.average(xs + 0.5, weights=weights) == pytest.approx(u, abs=0.3)
        assert np.average(ys + 0.5, weights=weights) == pytest.approx(v, abs=0.3)
    # Outside the image is zero-filled.
    assert crop_box(image, [-50, -50, -10, -10], 16).max() == 0


def test_garment_targets_visibility_and_bad_class():
    kps = [10, 10, 2] * 3 + [0, 0, 0] * 3 + [20, 20, 1] + [30, 30, 0]
    ann = {
        "bbox": [0, 0, 50, 50],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": 0,  # Upper: slots 0, 1, 2, 3, 6, 7
        "keypoints": kps,
        "fld_visibility": [0, 0, 0, 2, 0, 0, 1, 2],
    }
    t = garment_targets(ann, FLD_CLASS_SLOTS, 8, "img.jpg")
    assert t["box"].tolist() == [0, 0, 50, 50]
    assert t["visibility"].tolist() == [0, 0, 0, 2, -1, -1, 1, 2]
    assert t["labelled"].tolist() == [True, True, True, False, False, False, True, False]
    # Without fld_visibility the COCO v is mapped (2 -> visible, 1 -> occluded, 0 -> truncated).
    coco_only = {k: v for k, v in ann.items() if k != "fld_visibility"}
    assert garment_targets(coco_only, FLD_CLASS_SLOTS, 8)["visibility"].tolist() == (
        t["visibility"].tolist()
    )
    with pytest.raises(ValueError, match="img.jpg.*category_id 3"):
        garment_targets(dict(ann, category_id=3), FLD_CLASS_SLOTS, 8, "img.jpg")
    with pytest.raises(ValueError, match="keypoints"):
        garment_targets(dict(ann, keypoints=kps[:21]), FLD_CLASS_SLOTS, 8, "img.jpg")
