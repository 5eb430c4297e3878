"""Trainable parameters of the Table 1 models, randomly initialised, Detectron2 FrozenBN backbone.

Targets: Table 1's counts minus the 50,176 (R-50) / 102,400 (R-101) BN affine
parameters of res3-res5 that the official code trains and FrozenBN freezes
(docs/DESIGN.md §1, §2.4).
Our GN-FPN has GN on all 8 FPN convs (docs/DESIGN.md §1), 512 parameters more than Table 1's FPN
figure; the tolerance is ±2,000.
"""

from pathlib import Path
import pytest

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from kgdet import add_kgdet_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TOLERANCE = 2_000
EXPECTED = {
    "kgdet_R50.yaml": 59_083_735,
    "kgdet_R101.yaml": 78_023_639,
    "reppoints_R50.yaml": 36_555_827,
    "reppoints_kp_R50.yaml": 38_037_963,
}
HEAD_KGDET = 27_852_247  # docs/DESIGN.md §2.4 (C = 13, K = 294, P = 83)


def trainable_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build(name: str):
    cfg = get_cfg()
    add_kgdet_config(cfg)
    cfg.merge_from_file(str(CONFIGS / name))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_trainable_parameter_count(name):
    model = build(name)
    count = trainable_parameters(model)
    print(f"{name}: {count:,} trainable (expected {EXPECTED[name]:,} ± {TOLERANCE:,})")
    assert abs(count - EXPECTED[name]) <= TOLERANCE, (name, count, EXPECTED[name])
    if name.startswith("kgdet"):
        assert trainable_parameters(model.head) == HEAD_KGDET


# README's "Configs" table for the small synthetic configs (exact: no paper figure to match).
SYNTH_EXPECTED = {
    "kgdet_synth.yaml": 19_392_833,
    "reppoints_synth.yaml": 13_797_677,
    "reppoints_kp_synth.yaml": 14_148_445,
    "retinanet_synth.yaml": 13_836_325,
}


@pytest.mark.parametrize("name", sorted(SYNTH_EXPECTED))
def test_synthetic_config_parameter_count(name):
    count = trainable_parameters(build(name))
    assert count == SYNTH_EXPECTED[name], (name, count)
    assert f"| {count:,} |" in (CONFIGS.parent / "README.md").read_text(), "README table"
