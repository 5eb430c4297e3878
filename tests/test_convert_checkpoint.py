"""Official KGDet checkpoint import (issue 4 item 6), on a state dict generated from the official
architecture description (names and shapes of ShenhanQian/KGDet's released model; no download)."""
import importlib.util
from pathlib import Path

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import kgdet
from kgdet.checkpoint import (
    OfficialCheckpointError,
    convert_official_state_dict,
    load_official_state_dict,
    official_kgdet_shapes,
    official_to_project_name,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(REPO_ROOT / "configs" / "kgdet_R50.yaml")


def _tool():
    path = REPO_ROOT / "tools" / "convert_official_checkpoint.py"
    spec = importlib.util.spec_from_file_location("convert_official_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _official_state_dict(seed=0):
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in official_kgdet_shapes(depth=50).items():
        if name.endswith("num_batches_tracked"):
            sd[name] = torch.tensor(1000, dtype=torch.long)
        elif name.endswith("running_var"):
            sd[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            sd[name] = torch.randn(shape, generator=gen) * 0.01
    return sd


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("convert")
    official = _official_state_dict()
    src = tmp / "kgdet_official.pth"
    # mmdetection-v1 checkpoint layout: meta (plain values), state_dict, optimizer.
    torch.save(
        {"meta": {"epoch": 12, "mmdet_version": "1.0rc0"}, "state_dict": official}, str(src)
    )
    out = tmp / "kgdet_converted.pth"
    assert _tool().main([str(src), str(out), "--config-file", CONFIG]) == 0
    return official, out, tmp


def _model():
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg).eval()


def test_converted_checkpoint_loads_and_runs(converted):
    official, out, _ = converted
    saved = torch.load(str(out), map_location="cpu", weights_only=True)  # tensor-only file
    assert set(saved) == {"model"}
    model = _model()
    incompatible = DetectionCheckpointer(model).load(str(out))
    assert incompatible is not None
    state = model.state_dict()
    assert set(saved["model"]) == set(state)
    pairs = {
        "backbone.layer3.5.bn2.running_var": "backbone.bottom_up.res4.5.conv2.norm.running_var",
        "backbone.layer1.0.downsample.0.weight": "backbone.bottom_up.res2.0.shortcut.weight",
        "neck.fpn_convs.3.conv.weight": "backbone.top_block.p6.weight",
        "neck.lateral_convs.2.gn.bias": "backbone.fpn_lateral5.norm.bias",
        "bbox_head.reg_convs.2.gn.weight": "head.reg_tower.7.weight",
        "bbox_head.kp_rep_block_3.keypts_dfmconv_7.weight": "head.stages.2.kp_dcns.2.weight",
        "bbox_head.kp_rep_block_1.reppts_out.weight": "head.stages.0.encoder.weight",
        "bbox_head.moment_transfer": "head.moment_lambda",
    }
    for ours_from, ours in pairs.items():
        assert official_to_project_name(ours_from) == ours
        torch.testing.assert_close(state[ours], official[ours_from])
    with torch.no_grad():
        outputs = model([{"image": torch.zeros(3, 64, 96, dtype=torch.uint8)}])
    assert outputs[0]["instances"].pred_keypoints.shape[1:] == (294, 3)


def test_pkl_output(converted):
    official, _, tmp = converted
    out = tmp / "kgdet_converted.pkl"
    assert _tool().main([str(tmp / "kgdet_official.pth"), str(out), "--config-file", CONFIG]) == 0
    model = _model()
    DetectionCheckpointer(model).load(str(out))
    torch.testing.assert_close(
        model.state_dict()["head.stages.1.cls_dcns.0.weight"],
        official["bbox_head.kp_rep_block_2.cls_dfmconv_3.weight"],
    )


def test_missing_and_unexpected_keys_are_listed():
    official = _official_state_dict()
    target = {official_to_project_name(k): tuple(v.shape) for k, v in official.items()}
    del official["bbox_head.kp_rep_block_2.keypts_out.bias"]
    official["bbox_head.extra_layer.weight"] = torch.zeros(3)
    official["bbox_head.cls_convs.0.conv.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(OfficialCheckpointError) as err:
        convert_official_state_dict(official, target)
    msg = str(err.value)
    assert "1 unexpected official keys: bbox_head.extra_layer.weight" in msg
    assert "1 missing keys of this model: head.stages.1.kp_out.bias" in msg
    assert "bbox_head.cls_convs.0.conv.weight (1, 1, 3, 3) -> head.cls_tower.0.weight" in msg


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(OfficialCheckpointError, match="bad.pth"):
        load_official_state_dict(str(bad))
    with pytest.raises(OfficialCheckpointError, match="does not exist"):
        load_official_state_dict(str(tmp_path / "missing.pth"))
