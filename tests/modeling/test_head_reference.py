"""The heads built from every config keep their checkpoint layout, initial weights and outputs.

Two stored references (``tests/fixtures/head``):

* ``state_dict_layout.json``: for every KGDet config in ``configs/``, the head's ``state_dict``
  keys with their shapes, in order. Checkpoints (and the official-checkpoint converter's key
  map) load only if this layout holds; the order fixes the order of the random initialisation.
* ``reference_outputs.pt``: for small heads of each variant (KGDet encoding / selection /
  flip fusion, RepPoints, RepPoints-Kp parallel and serial), built from a config after
  ``torch.manual_seed(0)``: every output on fixed features, and a fingerprint of the gradient
  each parameter gets from a fixed loss of the outputs (so stop-gradients between stages are
  covered too).

Regenerate (only for an intended change of layout or outputs)::

    python tests/modeling/test_head_reference.py --write
"""

import argparse
import json
from pathlib import Path
from typing import Dict, List
import pytest
import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from kgdet import add_kgdet_config
from kgdet.modeling.head import build_kgdet_head

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
FIXTURES = ROOT / "tests" / "fixtures" / "head"
LAYOUT_FILE = FIXTURES / "state_dict_layout.json"
OUTPUTS_FILE = FIXTURES / "reference_outputs.pt"

# Small heads: C classes, K keypoints with an involutive flip map, 32 channels (GN needs 32).
C, K, CHANNELS = 3, 12, 32
FLIP_DATASET = "test_head_reference_flip_meta"
KEYPOINT_NAMES = [f"kp{i}" for i in range(K)]
FLIP_MAP = [("kp0", "kp1"), ("kp2", "kp3"), ("kp6", "kp7"), ("kp8", "kp9"), ("kp10", "kp11")]

LEARNED = dict(POINTS="learned", NUM_STAGES=2, COLUMNS=[3], CLS_ON_ALL_STAGES=False)
VARIANTS: Dict[str, dict] = {
    "kgdet_two_levels": dict(COLUMNS=[1, 3], IN_FEATURES=["p4", "p5"]),
    "kgdet_one_stage": dict(NUM_STAGES=1, COLUMNS=[3]),
    "kgdet_single_column_linear": dict(NUM_STAGES=2, COLUMNS=[3], MOMENT_PARAM="linear"),
    "selection": dict(AGG="selection", COLUMNS=[3], SELECT_TOPK=9),
    "flip_fusion": dict(COLUMNS=[1, 3], FLIP_FUSION=True),
    "flip_fusion_selection": dict(AGG="selection", COLUMNS=[3], FLIP_FUSION=True),
    "reppoints": dict(LEARNED, KEYPOINT_BRANCH=False),
    "reppoints_cls_on_all_stages": dict(LEARNED, KEYPOINT_BRANCH=False, CLS_ON_ALL_STAGES=True),
    "reppoints_kp_parallel": dict(LEARNED, KEYPOINT_BRANCH=True),
    "reppoints_kp_parallel_flip": dict(LEARNED, KEYPOINT_BRANCH=True, FLIP_FUSION=True),
    "reppoints_kp_serial": dict(LEARNED, POINTS="from_keypoints"),
}
STRIDES = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


def kgdet_configs() -> List[str]:
    """The config files whose meta-architecture is KGDet."""
    names = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        merged = CfgNode.load_yaml_with_base(str(path))
        if merged.get("MODEL", {}).get("META_ARCHITECTURE") == "KGDet":
            names.append(path.name)
    return names


def head_layout(config_name: str) -> List[str]:
    """``"key shape"`` of every entry of the head's state_dict, built through ``build_model``."""
    cfg = get_cfg()
    add_kgdet_config(cfg)
    cfg.merge_from_file(str(CONFIGS / config_name))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "meta"  # shapes only: no memory, no initialisation
    with torch.device("meta"):
        model = build_model(cfg)
    return [
        f"{key} {list(value.shape)}"
        for key, value in model.state_dict().items()
        if key.startswith("head.")
    ]


def _register_flip_metadata() -> None:
    meta = MetadataCatalog.get(FLIP_DATASET)
    if not hasattr(meta, "keypoint_names"):
        meta.set(keypoint_names=KEYPOINT_NAMES, keypoint_flip_map=FLIP_MAP)


def small_head(overrides: dict):
    """A small head of one variant, built from a config after seeding the global RNG with 0."""
    cfg = get_cfg()
    add_kgdet_config(cfg)
    k = cfg.MODEL.KGDET
    k.NUM_CLASSES, k.NUM_KEYPOINTS, k.FEAT_CHANNELS = C, K, CHANNELS
    k.IN_FEATURES = ["p5"]
    for key, value in overrides.items():
        setattr(k, key, value)
    _register_flip_metadata()
    cfg.DATASETS.TRAIN = (FLIP_DATASET,)
    shapes = [ShapeSpec(channels=CHANNELS, stride=STRIDES[f]) for f in k.IN_FEATURES]
    torch.manual_seed(0)
    return build_kgdet_head(cfg, shapes)


def run_variant(overrides: dict) -> Dict[str, torch.Tensor]:
    """Every output (``s{t}/{key}/{level}``) and every parameter's gradient fingerprint
    (``grad/{name}``)."""
    head = small_head(overrides)
    gen = torch.Generator().manual_seed(1)
    sizes = [(3, 4), (2, 2)]
    batch = 2 if overrides.get("FLIP_FUSION") else 1
    levels = len(overrides.get("IN_FEATURES", ["p5"]))
    feats = [torch.randn(batch, CHANNELS, *sizes[i], generator=gen) for i in range(levels)]
    outputs = head(feats)
    result: Dict[str, torch.Tensor] = {}
    loss = torch.zeros(())
    for t, stage in enumerate(outputs):
        for key, values in stage.items():
            for lvl, value in enumerate(values or []):
                result[f"s{t}/{key}/{lvl}"] = value.detach().clone()
                if key != "pts":
                    loss = (
                        loss + (value * torch.linspace(-1, 1, value.numel()).view_as(value)).sum()
                    )
    loss.backward()
    for name, param in head.named_parameters():
        result[f"grad/{name}"] = _fingerprint(param.grad)
    return result


def _fingerprint(x: torch.Tensor) -> torch.Tensor:
    """(3,) sum, absolute sum and a position-weighted sum: a compact stand-in for a gradient."""
    flat = x.detach().flatten().double()
    weights = torch.linspace(-1, 1, flat.numel(), dtype=torch.float64)
    return torch.stack((flat.sum(), flat.abs().sum(), (flat * weights).sum()))


def write() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    layouts = {name: head_layout(name) for name in kgdet_configs()}
    LAYOUT_FILE.write_text(json.dumps(layouts, indent=0) + "\n")
    torch.save({name: _pack(run_variant(v)) for name, v in VARIANTS.items()}, OUTPUTS_FILE)


def _pack(result: Dict[str, torch.Tensor]) -> dict:
    """Keys and shapes plus one flat tensor per dtype (one file entry per variant, not per key)."""
    keys = sorted(result)
    return {
        "keys": keys,
        "shapes": [list(result[k].shape) for k in keys],
        "float32": torch.cat(
            [result[k].flatten() for k in keys if result[k].dtype == torch.float32]
        ),
        "float64": torch.cat(
            [result[k].flatten() for k in keys if result[k].dtype == torch.float64]
        ),
    }


def _unpack(packed: dict) -> Dict[str, torch.Tensor]:
    start = {"float32": 0, "float64": 0}
    result = {}
    for key, shape in zip(packed["keys"], packed["shapes"]):
        dtype = "float64" if key.startswith("grad/") else "float32"
        end = start[dtype] + torch.Size(shape).numel()
        result[key] = packed[dtype][start[dtype] : end].view(shape)
        start[dtype] = end
    return result


@pytest.fixture(scope="module")
def layouts() -> Dict[str, List[str]]:
    return json.loads(LAYOUT_FILE.read_text())


@pytest.fixture(scope="module")
def reference() -> Dict[str, Dict[str, torch.Tensor]]:
    return {name: _unpack(packed) for name, packed in torch.load(OUTPUTS_FILE).items()}


def test_every_kgdet_config_has_a_stored_layout(layouts):
    assert sorted(layouts) == kgdet_configs()


@pytest.mark.parametrize("config_name", kgdet_configs())
def test_state_dict_layout_unchanged(config_name, layouts):
    assert head_layout(config_name) == layouts[config_name]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_outputs_and_gradients_unchanged(variant, reference):
    expected = reference[variant]
    actual = run_variant(VARIANTS[variant])
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        # Same code, same machine: equal to the bit; the tolerances cover other BLAS builds.
        tol = dict(rtol=1e-4, atol=1e-6) if key.startswith("grad/") else dict(rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(actual[key], value, **tol, msg=key)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the stored references")
    if parser.parse_args().write:
        write()
