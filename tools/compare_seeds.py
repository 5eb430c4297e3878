#!/usr/bin/env python
"""Train several configs with several seeds on the same data and budget; tabulate final AP.

    python tools/compare_seeds.py --configs configs/kgdet_synth.yaml configs/reppoints_synth.yaml \\
        --seeds 0 1 2 --output-root output/compare [--parallel 2] [KEY VALUE ...]

Each run is ``train_net.py --config-file C OUTPUT_DIR <root>/<config>/seed<S> SEED S`` plus the
trailing overrides (the same for every run, e.g. ``SOLVER.MAX_ITER 600``). A run whose
``metrics.json`` already holds a final evaluation is not repeated, so an interrupted comparison
resumes (an unfinished run starts again from scratch). ``--parallel N`` runs N trainings at once
with ``OMP_NUM_THREADS`` = cores / N each.
Prints a Markdown table (mean ± sample standard deviation, min–max over the seeds) and writes
it with every run's value to ``<root>/summary.json``.
"""

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Tuple

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

from kgdet.evaluation.learning_curve import final_metric, seed_summary
from kgdet.file_io import write_json_atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOX_KEYS = ("bbox/AP",)
KEYPOINT_KEYS = ("keypoints_vis_occ/AP", "keypoints/AP")


def _run_dir(root: str, config: str, seed: int) -> str:
    return os.path.join(root, os.path.splitext(os.path.basename(config))[0], f"seed{seed}")


def _train(config: str, seed: int, root: str, opts: List[str], threads: int) -> Tuple[str, int]:
    out = _run_dir(root, config, seed)
    if final_metric(os.path.join(out, "metrics.json"), BOX_KEYS) is not None:
        print(f"[compare_seeds] {out}: finished earlier, not repeated", flush=True)
        return out, 0
    os.makedirs(out, exist_ok=True)
    stale = os.path.join(out, "metrics.json")
    if os.path.exists(stale):  # an interrupted run: Detectron2 would append to its lines
        os.remove(stale)
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", config]
    cmd += ["OUTPUT_DIR", out, "SEED", str(seed), *opts]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    print(f"[compare_seeds] OMP_NUM_THREADS={threads} {' '.join(cmd)}", flush=True)
    with open(os.path.join(out, "stdout.log"), "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    print(f"[compare_seeds] {out}: exit status {rc}", flush=True)
    return out, rc


def summarize(configs: List[str], seeds: List[int], root: str) -> Dict:
    """Final box (and keypoint) AP of every run and their summary over seeds, by config."""
    summary: Dict[str, Dict] = {}
    for config in configs:
        entry: Dict[str, Dict] = {}
        for label, keys in (("box_ap", BOX_KEYS), ("keypoint_ap", KEYPOINT_KEYS)):
            runs = {}
            for seed in seeds:
                found = final_metric(
                    os.path.join(_run_dir(root, config, seed), "metrics.json"), keys
                )
                if found is not None:
                    runs[seed] = found[2]
            if runs:
                entry[label] = {"runs": runs, **seed_summary(list(runs.values()))}
        summary[config] = entry
    return summary


def format_table(summary: Dict) -> str:
    lines = [
        "| config | box AP, mean ± std (min–max) | keypoint AP, mean ± std (min–max) | seeds |",
        "|---|---|---|---|",
    ]
    for config, entry in summary.items():
        cells = []
        for label in ("box_ap", "keypoint_ap"):
            s = entry.get(label)
            cells.append(
                f"{s['mean']:.2f} ± {s['std']:.2f} ({s['min']:.2f}–{s['max']:.2f})" if s else "—"
            )
        seeds = entry.get("box_ap", {}).get("runs", {})
        lines.append(f"| {config} | {cells[0]} | {cells[1]} | {', '.join(map(str, seeds))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", required=True, help="config files to compare")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="SEED values")
    parser.add_argument("--output-root", required=True, help="one folder per config and seed")
    parser.add_argument("--parallel", type=int, default=1, help="trainings at once")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="overrides KEY VALUE for all runs")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    return cli.run_main(lambda: _main(args), "compare_seeds.py", argv)


def _main(args: argparse.Namespace) -> int:
    for config in args.configs:
        if not os.path.isfile(config):
            raise cli.UsageError(f"config file '{config}' not found")
    if args.parallel < 1:
        raise cli.UsageError(f"--parallel must be >= 1, got {args.parallel}")
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    jobs = [(c, s) for s in args.seeds for c in args.configs]
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(
            pool.map(lambda j: _train(j[0], j[1], args.output_root, args.opts, threads), jobs)
        )
    failed = [out for out, rc in results if rc != 0]
    summary = summarize(args.configs, args.seeds, args.output_root)
    table = format_table(summary)
    print(table)
    write_json_atomic(
        os.path.join(args.output_root, "summary.json"),
        {"overrides": args.opts, "summary": summary, "table": table},
        indent=1,
    )
    if failed:
        print(f"[compare_seeds] {len(failed)} run(s) failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
