#!/usr/bin/env python
"""How well DFA's auto-routing G(f2) separates easy from hard garments (DESIGN.md §6).

Draws stage-1 landmark errors with an FLD-like spread (per-garment error norm, box units, from a
log-normal whose 10th / 90th percentiles are 0.075 / 0.33), then runs the project's own stage-2
clustering (``fit_kmeans`` on ``offset_space``), pseudo-labels (Eq. 1, T = 20), cluster error
magnitudes e(C_k) and routing (Eq. 2) with several routing labels: the soft label (T_r = T), a
lower routing temperature, the hard label (T_r = 0), and a threshold taken as a training-set
quantile of the soft G. The stage-2 network's predicted labels are simulated as the labels of a
noisy copy of the true offset (``--label-noise``: noise std / per-dimension rms offset).

    python tools/simulate_dfa_routing.py [--label-noise 0.5] [--garments 4000]

Prints, per method on held-out garments: the share routed to branch 1 ("easy"), the mean true
error in each branch, the rank correlation of G with the true error and the balanced accuracy
of the routing against the true rule 1[error < eps].
"""

import argparse

import kgdet  # noqa: F401  (first: importing kgdet hides known third-party import warnings)

# isort: split

import numpy as np
from typing import Dict
import torch

from dfa.pseudo_labels import (
    cluster_error_magnitudes,
    expected_error,
    fit_kmeans,
    offset_magnitudes,
    offset_space,
    pseudo_labels,
    route,
    routing_labels,
)


def draw_errors(num: int, num_landmarks: int = 8, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Stage-1 offsets (N, L, 2) box units: a per-garment magnitude (log-normal, FLD-like spread)
    times a direction mixing a whole-garment shift, a scale change and per-landmark noise."""
    gen = torch.Generator().manual_seed(seed)
    # log-normal with 10th / 90th percentiles 0.075 / 0.33 (z = 1.2816)
    mu = (np.log(0.075) + np.log(0.33)) / 2
    sigma = (np.log(0.33) - np.log(0.075)) / (2 * 1.2816)
    norms = torch.exp(mu + sigma * torch.randn(num, generator=gen))
    layout = torch.rand(num_landmarks, 2, generator=gen) - 0.5  # typical landmark positions
    shift = torch.randn(num, 1, 2, generator=gen)
    scale = torch.randn(num, 1, 1, generator=gen) * layout.unsqueeze(0)
    local = 0.7 * torch.randn(num, num_landmarks, 2, generator=gen)
    direction = shift + 2 * scale + local
    labelled = torch.rand(num, num_landmarks, generator=gen) > 0.15  # some truncated landmarks
    labelled[:, 0] = True
    direction = direction * labelled.unsqueeze(-1)
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1)
    return {"offsets": direction * norms.view(-1, 1, 1), "labelled": labelled}


def _rank_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def _auc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties counted half."""
    ranks = score.double().argsort().argsort().double() + 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def simulate(
    num: int = 4000,
    label_noise: float = 0.5,
    num_clusters: int = 20,
    temperature: float = 20.0,
    scale: float = 224.0,
    threshold: float = 0.3,
    quantile: float = 0.5,  # also 0.8, 0.9 and the calibrated quantile
    seed: int = 0,
) -> Dict[str, Dict[str, float]]:
    """Routing statistics per method on the held-out half (first half fits centres and e(C_k))."""
    data = draw_errors(num, seed=seed)
    gt = torch.zeros_like(data["offsets"])
    labelled = data["labelled"]
    prev = data["offsets"]
    features = offset_space(prev, gt, labelled, scale)
    errors = offset_magnitudes(prev, gt, labelled)
    train, test = slice(0, num // 2), slice(num // 2, num)
    centres, assignments = fit_kmeans(features[train], num_clusters, n_init=4, seed=seed)
    cluster_error = cluster_error_magnitudes(assignments, errors[train], num_clusters)
    gen = torch.Generator().manual_seed(seed + 1)
    rms = features.pow(2).mean().sqrt()
    noisy = features + label_noise * rms * torch.randn(features.shape, generator=gen)
    noisy = noisy * labelled.repeat_interleave(2, dim=1)
    # the stage-2 network's logits, trained to match Eq. 1 at T: -d / T up to a constant
    logits = torch.log(pseudo_labels(noisy, centres, temperature))
    truth_easy = errors[test] < threshold

    def stats(name: str, g: torch.Tensor, eps: float) -> Dict[str, float]:
        easy = g[test] < eps
        e = errors[test]
        tpr = float((easy & truth_easy).sum()) / max(int(truth_easy.sum()), 1)
        tnr = float((~easy & ~truth_easy).sum()) / max(int((~truth_easy).sum()), 1)
        return {
            "easy_share": float(easy.float().mean()),
            "err_easy": float(e[easy].mean()) if easy.any() else float("nan"),
            "err_hard": float(e[~easy].mean()) if (~easy).any() else float("nan"),
            "G_p10": float(torch.quantile(g[test], 0.1)),
            "G_p90": float(torch.quantile(g[test], 0.9)),
            "rank_corr": _rank_corr(g[test], e),
            "auc": _auc(g[test], ~truth_easy),
            "balanced_acc": (tpr + tnr) / 2,
            "eps": eps,
        }

    results = {}
    for name, t_route in (("soft T_r=20", 20.0), ("T_r=5", 5.0), ("T_r=2", 2.0), ("hard", 0.0)):
        g = expected_error(routing_labels(logits, temperature, t_route), cluster_error)
        results[name] = stats(name, g, threshold)
    soft = expected_error(routing_labels(logits, temperature, temperature), cluster_error)
    for q in (quantile, 0.8, 0.9):
        eps_q = float(torch.quantile(soft[train], q))
        results[f"soft, eps = q{q:g} of G"] = stats("quantile", soft, eps_q)
    # calibrated: the quantile of G at the training share of garments with true error < eps
    share = float((errors[train] < threshold).float().mean())
    eps_c = float(torch.quantile(soft[train], share))
    results[f"soft, eps = q{share:.2f} (calibrated)"] = stats("calibrated", soft, eps_c)
    hard = expected_error(routing_labels(logits, temperature, 0.0), cluster_error)
    assert torch.equal(
        route(routing_labels(logits, temperature, 0.0), cluster_error, 0.3)[test], hard[test] < 0.3
    )
    results["true error"] = stats("true", errors, threshold)
    results["_meta"] = {
        "err_p10": float(torch.quantile(errors, 0.1)),
        "err_p90": float(torch.quantile(errors, 0.9)),
        "true_easy_share": float(truth_easy.float().mean()),
    }
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--garments", type=int, default=4000)
    parser.add_argument("--label-noise", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for noise in args.label_noise:
        res = simulate(args.garments, noise, seed=args.seed)
        meta = res.pop("_meta")
        print(
            f"\nlabel noise {noise}: true error p10 {meta['err_p10']:.3f}, p90 "
            f"{meta['err_p90']:.3f}, true share < 0.3: {100 * meta['true_easy_share']:.1f}%"
        )
        print(
            "| routing | eps | G p10..p90 | branch 1 share | err br.1 | err br.2 | rank corr "
            "| AUC | bal. acc |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for name, r in res.items():
            print(
                f"| {name} | {r['eps']:.3f} | {r['G_p10']:.3f}..{r['G_p90']:.3f} | "
                f"{100 * r['easy_share']:.1f}% | {r['err_easy']:.3f} | {r['err_hard']:.3f} | "
                f"{r['rank_corr']:.2f} | {r['auc']:.2f} | {r['balanced_acc']:.2f} |"
            )


if __name__ == "__main__":
    main()
