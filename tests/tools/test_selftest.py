"""kgdet.selftest: its checks on the CPU (DDP of every head variant with gloo, AMP training
with bfloat16), its command line, and the ``cuda`` tests, which run the same checks on a GPU and
skip with the reason elsewhere (``python -m pytest tests/tools/test_selftest.py -m cuda -rs``)."""

import io
import pytest

from kgdet.selftest import checks, report
from kgdet.selftest.__main__ import main
from kgdet.selftest.models import default_configs_dir

CONFIGS = default_configs_dir()


def _need_cuda():
    reason = checks.cuda_skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("variant", sorted(checks.HEAD_VARIANTS))
def test_ddp_without_find_unused_parameters_on_cpu(variant):
    """One-process gloo group: DDP's reducer raises on the second step if a trainable parameter
    got no gradient in the first (what find_unused_parameters=False needs)."""
    assert "all" in checks.check_ddp(CONFIGS, variant, "cpu")


def test_amp_training_steps_on_cpu():
    """bfloat16 autocast, GradScaler, channels-last weights and fused AdamW with clipping."""
    detail = checks.check_training(CONFIGS, "cpu", amp=True, iters=2, size=(64, 96))
    assert "AMP bfloat16" in detail


def test_cli_prints_versions_and_one_line_per_check(capsys):
    assert main(["--device", "cpu", "--only", "deform_conv", "cpu_cuda_parity"]) == 0
    out = capsys.readouterr().out
    assert "torch " in out and "detectron2 " in out and "compiled ops:" in out
    assert "onnxruntime" in out
    assert "\nPASS deform_conv: " in out
    assert "\nSKIP cpu_cuda_parity: compares CPU and CUDA" in out
    assert "1 passed, 0 failed, 1 skipped" in out


def test_cli_exit_status_on_a_failing_check(monkeypatch, capsys):
    def broken(device):
        raise AssertionError("gather k=3: differs from torchvision by 1.00e+00 (> 0.0001)")

    monkeypatch.setattr(report, "check_deform_conv", broken)
    assert main(["--device", "cpu", "--only", "deform_conv"]) == 1
    out = capsys.readouterr().out
    assert "FAIL deform_conv: AssertionError: gather k=3: differs" in out


def test_cli_refuses_too_few_iterations(capsys):
    assert main(["--device", "cpu", "--iters", "3"]) == 2


def test_run_checks_skips_and_continues():
    def skipped():
        raise report.CheckSkipped("no GPU")

    out = io.StringIO()
    results = report.run_checks([("a", skipped), ("b", lambda: "fine")], out)
    assert [r.status for r in results] == ["SKIP", "PASS"]
    assert out.getvalue().startswith("SKIP a: no GPU")


# ------------------------------------------------------------------------------------------
# CUDA: the same checks on a GPU
# ------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("amp", [False, True], ids=["float32", "amp"])
def test_cuda_training_steps(amp):
    _need_cuda()
    checks.check_training(CONFIGS, "cuda", amp=amp)


@pytest.mark.cuda
def test_cuda_inference_matches_cpu_on_the_same_weights():
    _need_cuda()
    checks.check_inference_parity(CONFIGS, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("variant", sorted(checks.HEAD_VARIANTS))
def test_cuda_ddp_without_find_unused_parameters(variant):
    _need_cuda()
    checks.check_ddp(CONFIGS, variant, "cuda")


@pytest.mark.cuda
def test_cuda_synthetic_training(tmp_path):
    _need_cuda()
    checks.check_synthetic_training(CONFIGS, "cuda", str(tmp_path), iters=20)


@pytest.mark.cuda
def test_cuda_export_round_trip(tmp_path):
    _need_cuda()
    checks.check_export_torchscript(CONFIGS, "cuda", str(tmp_path))
    try:
        checks.check_export_onnx(CONFIGS, "cuda", str(tmp_path))
    except report.CheckSkipped as e:
        pytest.skip(str(e))


def test_cli_cuda_without_cuda_fails_once_and_skips_the_rest(capsys):
    if checks.cuda_skip_reason() is None:
        pytest.skip("CUDA is available here")
    assert main(["--device", "cuda", "--only", "cuda_available", "deform_conv"]) == 1
    out = capsys.readouterr().out
    assert "\nFAIL cuda_available: RuntimeError: CUDA is not available" in out
    assert "\nSKIP deform_conv: CUDA is not available" in out
