"""Which ONNX Runtime is installed, and the one-line messages for the set-ups that cannot work.

The exported ONNX graph uses the standard ``DeformConv`` operator (opset 19). ONNX Runtime has
a kernel for it (CPU and CUDA execution providers) from release 1.25.0 on: 1.24.4 answers
``NOT_IMPLEMENTED : Could not find an implementation for DeformConv(19) node``, 1.25.0 runs it
(docs/gpu.md). ``onnxruntime`` (CPU) and ``onnxruntime-gpu`` are two distributions of the same
``onnxruntime`` module: with both installed, whichever was installed last owns the files, and
the CUDA provider may be missing or broken.
"""

import logging
from importlib import metadata
from typing import Dict, Tuple

__all__ = [
    "MIN_ONNXRUNTIME_DEFORM_CONV",
    "onnxruntime_distributions",
    "conflicting_distributions_message",
    "deform_conv_unsupported_message",
]

logger = logging.getLogger(__name__)

MIN_ONNXRUNTIME_DEFORM_CONV = (1, 25, 0)
_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


def _version_tuple(version: str) -> Tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def onnxruntime_distributions() -> Dict[str, str]:
    """Installed ONNX Runtime Python distributions: {"onnxruntime": "1.32.0", ...}."""
    found = {}
    for name in _DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def conflicting_distributions_message() -> str:
    """One line when both ``onnxruntime`` and ``onnxruntime-gpu`` are installed, else ""."""
    found = onnxruntime_distributions()
    if len(found) < 2:
        return ""
    return (
        f"both onnxruntime {found['onnxruntime']} and onnxruntime-gpu {found['onnxruntime-gpu']} "
        "are installed; they provide the same 'onnxruntime' module and overwrite each other's "
        "files. Keep one: pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
        "'onnxruntime-gpu>=1.25' (GPU) or 'onnxruntime>=1.25' (CPU)"
    )


def deform_conv_unsupported_message(ort_version: str) -> str:
    """One line when ``ort_version`` predates ONNX Runtime's DeformConv kernel, else ""."""
    if _version_tuple(ort_version) >= MIN_ONNXRUNTIME_DEFORM_CONV:
        return ""
    minimum = ".".join(map(str, MIN_ONNXRUNTIME_DEFORM_CONV))
    return (
        f"onnxruntime {ort_version} has no DeformConv kernel (added in {minimum}): "
        f"pip install 'onnxruntime>={minimum}' (or onnxruntime-gpu), or export with "
        "tools/deploy/export_model.py --deform-op gather"
    )
