"""Run the self-check's checks and print one line per check, after the versions found."""

import logging
import time
import traceback
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, TextIO, Tuple
import torch

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

__all__ = ["CheckResult", "environment_lines", "planned_checks", "run_checks"]


@dataclass
class CheckResult:
    """Outcome of one check: status "PASS", "FAIL" or "SKIP", and a one-line detail."""

    name: str
    status: str
    detail: str
    seconds: float

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.detail} [{self.seconds:.1f} s]"


def environment_lines() -> List[str]:
    """torch / CUDA / GPU, Detectron2 and its ops, torchvision, ONNX Runtime and providers."""
    import torchvision

    import detectron2

    lines = [f"torch {torch.__version__} (built for CUDA {torch.version.cuda or 'none'})"]
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        lines.append(
            f"GPU {torch.cuda.get_device_name(index)} (compute capability {major}.{minor}), "
            f"{torch.cuda.device_count()} visible"
        )
    else:
        lines.append("CUDA not available")
    try:
        from detectron2 import _C

        ops = "with CUDA" if _C.has_cuda() else "CPU only"
    except ImportError:
        ops = "not compiled"
    lines.append(f"detectron2 {detectron2.__version__}, compiled ops: {ops}")
    lines.append(f"torchvision {torchvision.__version__}")
    try:
        import onnxruntime as ort

        lines.append(
            f"onnxruntime {ort.__version__}, providers {', '.join(ort.get_available_providers())}"
        )
    except ImportError:
        lines.append("onnxruntime not installed")
    from ..export.runtime import conflicting_distributions_message

    conflict = conflicting_distributions_message()
    if conflict:
        lines.append(f"WARNING: {conflict}")
    return lines


Check = Tuple[str, Callable[[], str]]


def _cuda_available() -> str:
    """FAIL (not SKIP) when the self-check was asked for CUDA and torch cannot use it."""
    reason = cuda_skip_reason()
    if reason:
        raise RuntimeError(reason)
    return f"{torch.cuda.device_count()} GPU(s), CUDA runtime {torch.version.cuda}"


def planned_checks(device: str, configs_dir: str, workdir: str, iters: int) -> List[Check]:
    """(name, check) of every check, in the order they run."""
    checks: List[Check] = []
    if device == "cuda":
        checks.append(("cuda_available", _cuda_available))
    checks += [
        ("deform_conv", lambda: check_deform_conv(device)),
        ("train", lambda: check_training(configs_dir, device, amp=False)),
        ("train_amp", lambda: check_training(configs_dir, device, amp=True)),
        ("cpu_cuda_parity", lambda: check_inference_parity(configs_dir, device)),
    ]
    for variant in HEAD_VARIANTS:
        checks.append(
            (f"ddp_{variant}", lambda v=variant: check_ddp(configs_dir, v, device))  # type: ignore
        )
    checks += [
        (
            "synth_training",
            lambda: check_synthetic_training(configs_dir, device, workdir, iters=iters),
        ),
        ("export_torchscript", lambda: check_export_torchscript(configs_dir, device, workdir)),
        ("export_onnx", lambda: check_export_onnx(configs_dir, device, workdir)),
    ]
    return checks


def run_checks(
    checks: Sequence[Check], out: TextIO, only: Optional[Sequence[str]] = None
) -> List[CheckResult]:
    """Run ``checks`` (those named in ``only``, if given), printing each line as it finishes.
    A failing check prints its exception on that line (and the traceback at DEBUG level)."""
    log = logging.getLogger(__name__)
    results = []
    for name, fn in checks:
        if only and name not in only:
            continue
        start = time.perf_counter()
        try:
            status, detail = "PASS", fn()
        except CheckSkipped as e:
            status, detail = "SKIP", str(e)
        except Exception as e:  # a failing check must not stop the others
            status, detail = "FAIL", f"{type(e).__name__}: {e}".splitlines()[0]
            log.debug("%s failed:\n%s", name, traceback.format_exc())
        result = CheckResult(name, status, detail, time.perf_counter() - start)
        print(result.line(), file=out, flush=True)
        results.append(result)
    return results
