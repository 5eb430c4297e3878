"""Official KGDet checkpoint import, on a state dict generated from the official
architecture description (names and shapes of ShenhanQian/KGDet's released model; no download)."""

from pathlib import Path
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import kgdet
from builders import load_script
from kgdet.checkpoint import (
    OfficialCheckpointError,
    convert_official_state_dict,
    load_official_state_dict,
    official_kgdet_shapes,
    official_to_project_name,
    save_converted_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(REPO_ROOT / "configs" / "kgdet_R50.yaml")


def _tool():
    path = REPO_ROOT / "tools" / "convert_official_checkpoint.py"
    return load_script(path, "convert_official_checkpoint")


def _official_state_dict():
    """Every tensor distinct (its index plus a ramp), so any mix-up of names shows."""
    sd = {}
    for i, (name, shape) in enumerate(official_kgdet_shapes(depth=50).items()):
        if name.endswith("num_batches_tracked"):
            sd[name] = torch.tensor(1000, dtype=torch.long)
        else:
            numel = int(torch.Size(shape).numel())
            sd[name] = (torch.linspace(0, 0.5, numel) + 1e-3 * (i + 1)).reshape(shape)
    return sd


@pytest.fixture(scope="module")
def official():
    return _official_state_dict()


@pytest.fixture(scope="module")
def model():
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory, official, model):
    tmp = tmp_path_factory.mktemp("convert")
    src = tmp / "kgdet_official.pth"
    # mmdetection-v1 checkpoint layout: meta (plain values), state_dict, optimizer.
    torch.save({"meta": {"epoch": 12, "mmdet_version": "1.0rc0"}, "state_dict": official}, str(src))
    out = tmp / "kgdet_converted.pth"
    # The tool's conversion against the config's model (passed in to build it only once).
    _tool().convert(str(src), str(out), CONFIG, model=model)
    return out


def test_converted_checkpoint_loads_into_model(official, converted, model):
    out = converted
    saved = torch.load(str(out), map_location="cpu", weights_only=True)  # tensor-only file
    assert set(saved) == {"model"}
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
    # Every official tensor (all distinct) arrived unchanged under its mapped name.
    for name, value in official.items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(state[official_to_project_name(name)], value), name


def test_pkl_output(model, tmp_path):
    """Detectron2's .pkl format (numpy arrays, exact names) loads into the model."""
    name = "head.stages.1.cls_dcns.0.weight"
    value = torch.full(model.state_dict()[name].shape, 0.25)
    out = tmp_path / "kgdet_converted.pkl"
    save_converted_checkpoint({name: value}, str(out))
    DetectionCheckpointer(model).load(str(out))
    torch.testing.assert_close(model.state_dict()[name], value)


def test_missing_and_unexpected_keys_are_listed(official):
    official = dict(official)
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


def test_tool_reports_bad_checkpoint_by_name(tmp_path):
    bad = tmp_path / "official_bad.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": "not a tensor"}}, str(bad))
    with pytest.raises(OfficialCheckpointError, match="official_bad.pth' holds no state dict"):
        _tool().convert(str(bad), str(tmp_path / "out.pth"), CONFIG)
    assert _tool().main([str(bad), str(tmp_path / "out.pth"), "--config-file", CONFIG]) == 1
    assert not (tmp_path / "out.pth").exists()
