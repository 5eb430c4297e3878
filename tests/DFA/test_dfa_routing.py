"""Auto-routing (Eq. 2) on FLD-like error distributions: the paper config's settings split the
garments between both stage-3 branches; a degenerate split is an error (DESIGN.md §6)."""

import numpy as np
from pathlib import Path
import pytest
import torch

from detectron2.config import get_cfg

from dfa import add_dfa_config
from dfa.pseudo_labels import (
    check_routing_split,
    cluster_error_magnitudes,
    expected_error,
    fit_kmeans,
    offset_magnitudes,
    offset_space,
    pseudo_labels,
    route,
    routing_labels,
    routing_shares,
    routing_threshold_from_training,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _paper_cfg():
    cfg = get_cfg()
    add_dfa_config(cfg)
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "dfa_fld_VGG16.yaml"))
    return cfg.MODEL.DFA


def _fld_like_offsets(num, seed):
    """Stage-1 offsets (N, 8, 2) whose per-garment norms have the spread measured on FLD-like
    errors: log-normal with 10th / 90th percentiles 0.075 / 0.33 (normalised units)."""
    gen = torch.Generator().manual_seed(seed)
    mu = (np.log(0.075) + np.log(0.33)) / 2
    sigma = (np.log(0.33) - np.log(0.075)) / (2 * 1.2816)
    norms = torch.exp(mu + sigma * torch.randn(num, generator=gen))
    layout = torch.rand(8, 2, generator=gen) - 0.5
    direction = (
        torch.randn(num, 1, 2, generator=gen)
        + 2 * torch.randn(num, 1, 1, generator=gen) * layout
        + 0.7 * torch.randn(num, 8, 2, generator=gen)
    )
    labelled = torch.rand(num, 8, generator=gen) > 0.15
    labelled[:, 0] = True
    direction = direction * labelled.unsqueeze(-1)
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1)
    return direction * norms.view(-1, 1, 1), labelled


@pytest.mark.parametrize("label_noise", [0.0, 0.5])
def test_paper_config_routing_splits_fld_like_errors(label_noise):
    d = _paper_cfg()
    offsets, labelled = _fld_like_offsets(1200, seed=3)
    gt = torch.zeros_like(offsets)
    errors = offset_magnitudes(offsets, gt, labelled)
    assert 0.06 < float(torch.quantile(errors, 0.1)) < 0.09  # the distribution is as described
    assert 0.29 < float(torch.quantile(errors, 0.9)) < 0.37
    features = offset_space(offsets, gt, labelled, d.DISTANCE_SCALE)
    train, test = slice(0, 800), slice(800, None)
    centres, assignments = fit_kmeans(features[train], d.NUM_CLUSTERS, n_init=2, seed=0)
    cluster_error = cluster_error_magnitudes(assignments, errors[train], d.NUM_CLUSTERS)
    # The stage-2 network's label logits: Eq. 1 at T on a noisy copy of the true offsets.
    gen = torch.Generator().manual_seed(4)
    noisy = features + label_noise * features.pow(2).mean().sqrt() * torch.randn(
        features.shape, generator=gen
    )
    logits = torch.log(pseudo_labels(noisy, centres, d.TEMPERATURE))

    t_route = d.TEMPERATURE if d.ROUTING_TEMPERATURE < 0 else d.ROUTING_TEMPERATURE
    labels = routing_labels(logits, d.TEMPERATURE, t_route)
    g = expected_error(labels, cluster_error)
    eps, _ = routing_threshold_from_training(
        g[train],
        errors[train],
        d.ROUTING_THRESHOLD,
        d.ROUTING_CALIBRATE,
        d.ROUTING_THRESHOLD_QUANTILE,
    )
    for part in (train, test):
        easy, hard = check_routing_split(
            route(labels[part], cluster_error, eps), d.ROUTING_MIN_SHARE, False
        )
        assert 0.05 <= easy <= 0.95 and 0.05 <= hard <= 0.95
    # The routing separates: the hard branch holds garments with larger true errors.
    easy_mask = route(labels[test], cluster_error, eps)
    assert errors[test][~easy_mask].mean() > 1.8 * errors[test][easy_mask].mean()
    # The defect this configuration avoids: the soft G against the fixed eps = 0.3 sends
    # (nearly) every garment to branch 1.
    fixed = route(labels[train], cluster_error, d.ROUTING_THRESHOLD)
    assert routing_shares(fixed)[0] > 0.95
    with pytest.raises(ValueError, match="branch 1"):
        check_routing_split(fixed, d.ROUTING_MIN_SHARE, False)


def test_routing_labels_hard_soft_and_retempered():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    hard = routing_labels(logits, 20.0, 0.0)
    assert hard.tolist() == [[1.0, 0.0, 0.0]]
    assert torch.allclose(routing_labels(logits, 20.0, 20.0), torch.tensor([[0.5, 0.3, 0.2]]))
    # T_r = T / 2 squares the (normalised) label: exp(-d / T_r) = exp(-d / T)^2
    half = routing_labels(logits, 20.0, 10.0)
    expected = torch.tensor([0.25, 0.09, 0.04]) / 0.38
    assert torch.allclose(half[0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="routing temperature"):
        routing_labels(logits, 20.0, -1.0)


def test_routing_threshold_choices():
    g = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    errors = torch.tensor([0.1, 0.1, 0.1, 0.5, 0.5])  # 60 % below 0.3
    assert routing_threshold_from_training(g, errors, 0.3)[0] == pytest.approx(0.3)
    eps, how = routing_threshold_from_training(g, errors, 0.3, calibrate=True)
    assert eps == pytest.approx(float(torch.quantile(g, 0.6))) and "calibrated" in how
    assert routing_shares(g < eps) == pytest.approx((0.6, 0.4))
    eps, _ = routing_threshold_from_training(g, errors, 0.3, calibrate=True, quantile=0.5)
    assert eps == pytest.approx(0.3)  # the quantile overrides


def test_degenerate_split_is_an_error(caplog):
    everything_easy = torch.ones(200, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"100.0% of 200 training garments to branch 1.*0.0%"):
        check_routing_split(everything_easy, 0.05, allow_degenerate=False, where="stage 3: ")
    almost = torch.zeros(200, dtype=torch.bool)
    almost[:6] = True  # 3 % easy
    with pytest.raises(ValueError, match="ROUTING_ALLOW_DEGENERATE"):
        check_routing_split(almost, 0.05, allow_degenerate=False)
    with caplog.at_level("WARNING"):
        assert check_routing_split(almost, 0.05, allow_degenerate=True) == pytest.approx(
            (0.03, 0.97)
        )
    assert "branch 1" in caplog.text
    balanced = torch.arange(200) % 2 == 0
    assert check_routing_split(balanced, 0.05, allow_degenerate=False) == (0.5, 0.5)
