"""Exported graphs and the device they run on; ONNX Runtime versions and distributions."""

import os
import re
import stat
import warnings
from importlib import metadata
from pathlib import Path
import pytest
import torch

from detectron2.modeling import build_model

from kgdet import get_kgdet_cfg
from kgdet.export import ExportedPredictor, export_model, load_exported_model, runtime
from kgdet.export.predictor import TorchScriptModel, baked_devices

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cpu_traced(tmp_path_factory):
    cfg = get_kgdet_cfg(str(REPO_ROOT / "configs" / "kgdet_synth.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = tmp_path_factory.mktemp("ts") / "model.ts"
    metadata_ = export_model(model, cfg, torch.rand(3, 64, 96) * 255, str(path), "torchscript")
    return path, metadata_


def test_cpu_traced_graph_refuses_cuda_with_one_line(cpu_traced):
    """Tracing records the tracing device of the tensors the model creates (torch.arange(...,
    device=x.device)); such a graph cannot run on another device: a clear refusal instead of
    a mixed-device error inside the graph (ExportedPredictor / demo.py --exported)."""
    path, meta = cpu_traced
    assert meta["device"] == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 deprecates TorchScript
        module = torch.jit.load(str(path))
    assert baked_devices(module) == {"cpu"}
    with pytest.raises(ValueError, match=r"traced on cpu .* --device cuda"):
        TorchScriptModel(str(path), device="cuda")
    cfg = get_kgdet_cfg(str(REPO_ROOT / "configs" / "kgdet_synth.yaml"))
    with pytest.raises(ValueError, match=r"traced on cpu and creates tensors there"):
        ExportedPredictor(cfg, str(path), device="cuda")  # demo.py --exported ... MODEL.DEVICE cuda
    exported = load_exported_model(str(path), "cpu")
    assert set(exported(torch.rand(3, 64, 80) * 255)) >= {"pred_boxes", "scores"}


def test_deform_conv_needs_onnxruntime_1_25():
    """ONNX Runtime runs DeformConv(19) from 1.25.0 on (1.24.4: NOT_IMPLEMENTED)."""
    assert runtime.MIN_ONNXRUNTIME_DEFORM_CONV == (1, 25, 0)
    assert "1.25.0" in runtime.deform_conv_unsupported_message("1.24.4")
    assert "--deform-op gather" in runtime.deform_conv_unsupported_message("1.16.3")
    assert runtime.deform_conv_unsupported_message("1.25.0") == ""
    assert runtime.deform_conv_unsupported_message("1.32.0") == ""
    assert runtime.deform_conv_unsupported_message("1.26.0+cu128") == ""


def test_setup_deploy_extras_start_at_the_deform_conv_release():
    setup_py = (REPO_ROOT / "setup.py").read_text()
    minimum = ".".join(map(str, runtime.MIN_ONNXRUNTIME_DEFORM_CONV[:2]))
    assert re.search(rf'"deploy": \[.*"onnxruntime>={minimum}"\]', setup_py)
    assert re.search(rf'"deploy-gpu": \[.*"onnxruntime-gpu>={minimum}"\]', setup_py)


def test_both_onnxruntime_distributions_are_named(monkeypatch):
    installed = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}

    def version(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(runtime.metadata, "version", version)
    message = runtime.conflicting_distributions_message()
    assert "onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1" in message
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in message
    del installed["onnxruntime-gpu"]
    assert runtime.conflicting_distributions_message() == ""
    assert runtime.onnxruntime_distributions() == {"onnxruntime": "1.32.0"}


def test_exported_file_has_the_permissions_of_a_normally_created_file(cpu_traced):
    """The export is written to a temporary file and renamed into place; the published file
    gets the user's umask like any other output (the temporary file is private)."""
    path, _ = cpu_traced
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
