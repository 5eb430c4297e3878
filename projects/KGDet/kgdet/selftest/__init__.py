"""``python -m kgdet.selftest --device cuda``: checks of the training / inference / export path
on one device, one PASS / FAIL / SKIP line each (docs/gpu.md). The tests call the same checks."""

from . import report
from .checks import (
    HEAD_VARIANTS,
    CheckSkipped,
    check_ddp,
    check_deform_conv,
    check_export_onnx,
    check_export_torchscript,
    check_inference_parity,
    check_synthetic_training,
    check_training,
    cuda_skip_reason,
)
from .report import CheckResult, environment_lines, run_checks
