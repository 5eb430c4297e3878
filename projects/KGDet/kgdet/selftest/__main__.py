"""``python -m kgdet.selftest --device cuda``: the self-check (docs/gpu.md).

Prints the versions found, then one ``PASS`` / ``FAIL`` / ``SKIP`` line per check, then a
summary line; exits 1 when a check failed, 2 on a usage error, 0 otherwise.
"""

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from typing import List, Optional


def get_parser() -> argparse.ArgumentParser:
    from .checks import HEAD_VARIANTS
    from .models import default_configs_dir

    names = ["cuda_available", "deform_conv", "train", "train_amp", "cpu_cuda_parity"]
    names += [f"ddp_{v}" for v in HEAD_VARIANTS]
    names += ["synth_training", "export_torchscript", "export_onnx"]
    parser = argparse.ArgumentParser(
        prog="python -m kgdet.selftest",
        description="Check KGDet's training, inference and export path on one device.",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument(
        "--configs", default=default_configs_dir(), help="the repository's configs/ folder"
    )
    parser.add_argument(
        "--iters", type=int, default=30, help="iterations of the synthetic training (default 30)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=names, metavar="CHECK", help=f"run only these: {names}"
    )
    parser.add_argument("--verbose", action="store_true", help="log output and tracebacks")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.iters < 10:
        print("--iters must be at least 10 (the loss of the first and last 5 is compared)")
        return 2
    if not os.path.isdir(args.configs):
        print(f"configs folder {args.configs} not found: pass --configs DIR (the repository's)")
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.ERROR)
    if not args.verbose:
        warnings.filterwarnings("ignore")
    from .report import environment_lines, planned_checks, run_checks

    start = time.perf_counter()
    print(f"kgdet self-check on {args.device}")
    for line in environment_lines():
        print(f"  {line}")
    with tempfile.TemporaryDirectory(prefix="kgdet_selftest_") as workdir:
        checks = planned_checks(args.device, args.configs, workdir, args.iters)
        results = run_checks(checks, sys.stdout, args.only)
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    print(
        f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
