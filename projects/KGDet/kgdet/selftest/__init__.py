"""``python -m kgdet.selftest --device cuda``: checks of the training / inference / export path
on one device, one PASS / FAIL / SKIP line each (docs/gpu.md). The tests call the same checks."""

from . import checks, report
from .checks import CheckSkipped, cuda_skip_reason
from .report import CheckResult, environment_lines, run_checks
