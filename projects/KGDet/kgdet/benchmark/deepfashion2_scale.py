"""Time and peak memory of the DeepFashion2 data and evaluation paths at a chosen scale.

Every measured step runs in a fresh subprocess (``python -m kgdet.benchmark.deepfashion2_scale
--step NAME ...``) so its peak resident set size is its own: the parent takes it from
``os.wait4`` (the largest process of the step's process tree, data-loader workers included).
Each step also reports its own wall time without the interpreter start and imports, and the peak
RSS once its imports were done (the floor every step pays).

Steps, all through the package's public entry points:

- ``simulate``: :func:`~kgdet.benchmark.simulate_deepfashion2.write_simulated_split`;
- ``register``: ``kgdet.data.register_deepfashion2_instances`` then ``DatasetCatalog.get``
  (``len`` and a few records read); ``stock`` variant: Detectron2's ``load_coco_json``;
- ``register x2``: two such processes alive at once; the sum of their proportional set sizes
  (``Pss`` of ``/proc/<pid>/smaps_rollup``: pages shared by both count half in each) against
  one process's;
- ``first batch``: the training loader ``train_net.py``'s ``Trainer.build_train_loader`` builds
  for the config (``DATASETS.TRAIN`` = the simulated json), up to its first batch;
- ``evaluate``: the evaluator ``Trainer.build_evaluator`` builds (``build_kgdet_evaluator``),
  ``reset``, ``process`` one image at a time with simulated detections as ``Instances``
  (:func:`~kgdet.benchmark.simulate_deepfashion2.simulated_detections`), ``evaluate``; the
  ``reference`` variant sets ``TEST.OFFICIAL_COCO_EVAL True`` (stock pycocotools).

A "first" registration reads a freshly written json; before the first-time "first batch" step the
json's modification time is moved forward, so an annotation cache keyed by the file's stat is
rebuilt (one keyed by content alone would be reused: that step then measures the cached path).
"""

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["run_scale_benchmark", "format_scale_report", "add_scale_arguments", "main"]

_RESULT = "KGDET_STEP_RESULT "
_MODULE = "kgdet.benchmark.deepfashion2_scale"


# ---------------------------------------------------------------------------- child side


def _peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``), MiB.

    Not ``getrusage``: Linux carries the launching process's peak into a child's ``ru_maxrss``
    across ``exec``, so a step started by a large process would report that process's size.
    """
    with open("/proc/self/status", "r") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _smaps_rollup_mb(pid: int) -> Dict[str, float]:
    """``Rss``, ``Pss``, ``Pss_Anon``, ``Pss_File`` of a live process, MiB."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup", "r") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
                out[key.lower()] = int(rest.split()[0]) / 1024
    return out


def _child_pids() -> List[int]:
    """Process ids of this process's children (``/proc/self/task/*/children``)."""
    pids = []
    for thread in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            with open(f"/proc/self/task/{thread}/children") as f:
                pids += [int(p) for p in f.read().split()]
    return pids


def _touch_records(dicts: Sequence[Dict]) -> int:
    """Read every field of the first, middle and last records' garments (keypoints as an array,
    whatever their stored form); returns how many garments they have."""
    import numpy as np

    n = 0
    for i in sorted({0, len(dicts) // 2, len(dicts) - 1}):
        for ann in dicts[i]["annotations"]:
            fields = dict(ann)
            if "keypoints" in fields:
                np.asarray(fields["keypoints"], dtype=np.float64).sum()
            n += 1
    return n


def _register(json_file: str, image_root: str, name: str, stock: bool) -> List[Dict]:
    if stock:
        from detectron2.data.datasets import load_coco_json

        return load_coco_json(json_file, image_root, name)
    from detectron2.data import DatasetCatalog

    from kgdet.data import register_deepfashion2_instances

    register_deepfashion2_instances(name, json_file, image_root)
    return DatasetCatalog.get(name)


def _step_register(a: Dict[str, Any]) -> Dict[str, Any]:
    t0 = time.perf_counter()
    dicts = _register(a["json"], a["image_root"], "df2_scale_" + a["tag"], a.get("stock", False))
    out = {"seconds": time.perf_counter() - t0, "images": len(dicts)}
    out["garments_touched"] = _touch_records(dicts)
    out.update(_smaps_rollup_mb(os.getpid()))
    if a.get("hold"):  # stay alive until the parent has read both processes' memory
        print("READY", flush=True)
        sys.stdin.readline()
    return out


def _config(a: Dict[str, Any], opts: Sequence[str]):
    from kgdet import get_kgdet_cfg

    return get_kgdet_cfg(a["config_file"], list(opts) + ["MODEL.DEVICE", "cpu"])


def _trainer_class(train_net: Optional[str]):
    """``Trainer`` of ``train_net.py`` (the loader and evaluator it really builds), or None."""
    if not train_net or not os.path.isfile(train_net):
        return None
    spec = importlib.util.spec_from_file_location("kgdet_train_net", train_net)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Trainer


def _step_first_batch(a: Dict[str, Any]) -> Dict[str, Any]:
    from kgdet.data import KGDetDatasetMapper, register_deepfashion2_instances

    name = "df2_scale_" + a["tag"]
    cfg = _config(a, ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()"])
    trainer = _trainer_class(a.get("train_net"))
    t0 = time.perf_counter()
    register_deepfashion2_instances(name, a["json"], a["image_root"])
    if trainer is not None:
        loader = trainer.build_train_loader(cfg)
    else:
        from detectron2.data import build_detection_train_loader

        loader = build_detection_train_loader(cfg, mapper=KGDetDatasetMapper(cfg, is_train=True))
    t1 = time.perf_counter()
    batches = iter(loader)
    batch = next(batches)
    t2 = time.perf_counter()
    workers = [_smaps_rollup_mb(pid) for pid in _child_pids()]  # the loader's workers
    return {
        "seconds": t2 - t0,
        "pss_main_mb": _smaps_rollup_mb(os.getpid())["pss"],
        "pss_workers_mb": sum(w["pss"] for w in workers),
        "build_seconds": t1 - t0,
        "batch_seconds": t2 - t1,
        "batch_size": len(batch),
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "loader": "train_net.Trainer" if trainer is not None else "build_detection_train_loader",
    }


def _instances(det: Dict[str, Any], height: int, width: int):
    import torch

    from detectron2.structures import Boxes, Instances

    inst = Instances((height, width))
    inst.pred_boxes = Boxes(torch.from_numpy(det["boxes"]))
    inst.scores = torch.from_numpy(det["scores"])
    inst.pred_classes = torch.from_numpy(det["classes"])
    inst.pred_keypoints = torch.from_numpy(det["keypoints"])
    return inst


def _step_evaluate(a: Dict[str, Any]) -> Dict[str, Any]:
    from kgdet.benchmark.simulate_deepfashion2 import load_garment_summary, simulated_detections
    from kgdet.data import register_deepfashion2_instances
    from kgdet.evaluation import build_kgdet_evaluator

    name = "df2_scale_" + a["tag"]
    official = "True" if a.get("reference") else "False"
    save = "True" if a.get("save_results", True) else "False"
    overrides = ["DATASETS.TEST", f"('{name}',)", "TEST.OFFICIAL_COCO_EVAL", official]
    cfg = _config(a, overrides + ["TEST.SAVE_COCO_RESULTS", save])
    summary = load_garment_summary(a["json"])
    trainer = _trainer_class(a.get("train_net"))
    t0 = time.perf_counter()
    register_deepfashion2_instances(name, a["json"], a["image_root"])
    build = trainer.build_evaluator if trainer is not None else build_kgdet_evaluator
    evaluator = build(cfg, name, a["output_dir"])
    evaluator.reset()
    t1 = time.perf_counter()
    process_s = simulate_s = 0.0
    for i in range(len(summary.image_ids)):
        s0 = time.perf_counter()
        det = simulated_detections(summary, i, a["detections"], seed=a.get("seed", 0))
        h, w = int(summary.heights[i]), int(summary.widths[i])
        inputs = [{"image_id": int(summary.image_ids[i]), "height": h, "width": w}]
        outputs = [{"instances": _instances(det, h, w)}]
        s1 = time.perf_counter()
        evaluator.process(inputs, outputs)
        simulate_s += s1 - s0
        process_s += time.perf_counter() - s1
    t2 = time.perf_counter()
    results = evaluator.evaluate()
    t3 = time.perf_counter()
    written = sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(a["output_dir"])
        for f in files
    )
    return {
        "seconds": (t1 - t0) + process_s + (t3 - t2),
        "build_seconds": t1 - t0,
        "process_seconds": process_s,
        "evaluate_seconds": t3 - t2,
        "simulate_detections_seconds": simulate_s,
        "images": len(summary.image_ids),
        "detections_per_image": a["detections"],
        "output_bytes": written,
        "results": {k: dict(v) for k, v in (results or {}).items()},
    }


def _step_simulate(a: Dict[str, Any]) -> Dict[str, Any]:
    from kgdet.benchmark.simulate_deepfashion2 import write_simulated_split

    t0 = time.perf_counter()
    spec = write_simulated_split(
        a["json"], a["split"], a.get("num_images"), a.get("seed", 0), a.get("image_root")
    )
    return {
        "seconds": time.perf_counter() - t0,
        "images": spec.num_images,
        "garments": spec.num_garments,
        "json_bytes": os.path.getsize(a["json"]),
    }


_STEPS = {
    "simulate": _step_simulate,
    "register": _step_register,
    "first_batch": _step_first_batch,
    "evaluate": _step_evaluate,
}


def _run_step(name: str, step_args: Dict[str, Any]) -> None:
    import kgdet  # noqa: F401  (the imports every step pays, before its timer starts)

    floor = _peak_rss_mb()
    out = _STEPS[name](step_args)
    out["import_peak_rss_mb"] = floor
    out["peak_rss_mb"] = max(out.get("peak_rss_mb", 0.0), _peak_rss_mb())
    print(_RESULT + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- parent side


class _StepProcess:
    """One measured step in a child process: a fresh interpreter (``python -m``) or, with
    ``fork=True``, a fork of this already-imported process (quick runs and tests: its peak RSS
    then includes what this process held when it forked)."""

    def __init__(self, name: str, step_args: Dict[str, Any], log: str, fork: bool = False):
        self.name, self.log, self.start = name, log, time.perf_counter()
        if not fork:
            with open(log, "w") as err:
                cmd = [sys.executable, "-m", _MODULE, "--step", name]
                self._popen = subprocess.Popen(
                    cmd + ["--step-args", json.dumps(step_args)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")),
                )
            self.pid, self.stdin, self.stdout = (
                self._popen.pid,
                self._popen.stdin,
                self._popen.stdout,
            )
            return
        out_r, out_w = os.pipe()
        in_r, in_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # child
            code = 1
            try:
                os.close(out_r)
                os.close(in_w)
                err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(err, 2)
                sys.stdout = os.fdopen(out_w, "w")
                sys.stdin = os.fdopen(in_r, "r")
                _run_step(name, step_args)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(out_w)
        os.close(in_r)
        self.stdin, self.stdout = os.fdopen(in_w, "w"), os.fdopen(out_r, "r")

    def wait_ready(self) -> None:
        """Wait until a holding step has done its work (it then waits for :meth:`release`)."""
        line = self.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"step {self.name} did not get ready; see {self.log}")

    def release(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.stdin.write("\n")
            self.stdin.flush()

    def finish(self) -> Dict[str, Any]:
        """Wait for the step; its result plus ``wall_seconds`` and ``peak_rss_mb`` (MiB)."""
        stdout = self.stdout.read()
        _, status, usage = os.wait4(self.pid, 0)
        for f in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                f.close()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            with open(self.log) as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"step {self.name} failed (exit {code}); end of {self.log}:\n{tail}")
        for line in reversed(stdout.splitlines()):
            if line.startswith(_RESULT):
                out = json.loads(line[len(_RESULT) :])
                break
        else:
            raise RuntimeError(f"step {self.name} printed no result; see {self.log}")
        out["wall_seconds"] = time.perf_counter() - self.start
        # Largest process of the step's tree by the kernel's count; includes the launching
        # process's own peak (see _peak_rss_mb), so it is an upper bound kept for reference.
        out["tree_max_rss_mb"] = usage.ru_maxrss / 1024
        return out


def _measure(name: str, step_args: Dict[str, Any], log: str, fork: bool) -> Dict[str, Any]:
    """Run one step in its own process; its result with wall time and peak RSS."""
    return _StepProcess(name, step_args, log, fork).finish()


def _measure_two_processes(step_args: Dict[str, Any], log: str, fork: bool) -> Dict[str, Any]:
    """Two registering processes alive together: each one's peak RSS and the sum of their Pss."""
    start = time.perf_counter()
    procs = [
        _StepProcess(
            "register", dict(step_args, hold=True, tag=f"{step_args['tag']}{r}"), f"{log}.{r}", fork
        )
        for r in range(2)
    ]
    try:
        for p in procs:
            p.wait_ready()
        live = [_smaps_rollup_mb(p.pid) for p in procs]
    finally:
        for p in procs:
            p.release()
    results = [p.finish() for p in procs]
    return {
        "seconds": max(r["seconds"] for r in results),
        "wall_seconds": time.perf_counter() - start,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "images": results[0]["images"],
        "pss_sum_mb": sum(m["pss"] for m in live),
        "rss_sum_mb": sum(m["rss"] for m in live),
        "pss_each_mb": [m["pss"] for m in live],
        "import_peak_rss_mb": results[0]["import_peak_rss_mb"],
    }


def _row(step: str, variant: str, out: Dict[str, Any], note: str = "") -> Dict[str, Any]:
    return dict(out, step=step, variant=variant, note=note)


def run_scale_benchmark(args: argparse.Namespace, echo=print) -> Dict[str, Any]:
    """Simulate the splits in ``args.work_dir`` and measure every step (module docstring).

    Returns the report: ``rows`` (one per measured step, wall seconds and peak RSS in MiB,
    evaluation results) and ``ratios``. ``echo`` receives a line per finished step.
    """
    if args.fork:
        import kgdet  # noqa: F401  (imported once, inherited by every forked step)
    os.makedirs(args.work_dir, exist_ok=True)
    logs = os.path.join(args.work_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    common = {"config_file": args.config_file, "train_net": args.train_net, "seed": args.seed}

    def measure(step: str, variant: str, name: str, step_args: Dict, note: str = "") -> Dict:
        log = os.path.join(logs, f"{len(rows):02d}_{name}.log")
        out = _measure(name, dict(common, **step_args), log, args.fork)
        rows.append(_row(step, variant, out, note))
        echo(f"  {step} [{variant}]: {out['seconds']:.1f} s, peak RSS {out['peak_rss_mb']:.0f} MiB")
        return out

    def path(split: str, n: int) -> Dict[str, str]:
        base = os.path.join(args.work_dir, f"{split}_{n}")
        return {"json": base + ".json", "image_root": base + "_images"}

    train = path("train", args.train_images)
    val = path("validation", args.val_images)
    steps = set(args.steps)
    if "register" in steps or "first_batch" in steps:
        shutil.rmtree(train["image_root"], ignore_errors=True)
        measure(
            "simulate train json + image links",
            "-",
            "simulate",
            dict(train, split="train", num_images=args.train_images),
        )
    if "register" in steps:
        measure(
            "simulate validation json",
            "-",
            "simulate",
            dict(val, split="validation", num_images=args.val_images, image_root=None),
        )
        reg = dict(train, tag="train")
        measure("register train", "new", "register", reg, "first read of the json")
        cached = measure("register train", "new", "register", reg, "second read (cached)")
        log = os.path.join(logs, "two_processes.log")
        two = _measure_two_processes(dict(common, **reg), log, args.fork)
        rows.append(_row("register train x2 processes", "new", two, "cached, alive together"))
        echo(f"  2 processes: Pss sum {two['pss_sum_mb']:.0f} MiB vs one {cached['pss']:.0f} MiB")
        measure("register validation", "new", "register", dict(val, tag="val"), "first read")
        for split, p, n in (
            ("train", train, args.train_images),
            ("validation", val, args.val_images),
        ):
            if n <= args.reference_max_register:
                measure(
                    f"register {split}",
                    "stock",
                    "register",
                    dict(p, tag=f"stock_{split}", stock=True),
                    "detectron2 load_coco_json",
                )
    if "first_batch" in steps:
        os.utime(train["json"])  # a cache keyed by the json's stat is rebuilt
        fb = dict(train, tag="train_fb")
        measure("register + first train batch", "new", "first_batch", fb, "json just modified")
        measure("register + first train batch", "new", "first_batch", fb, "second run (cached)")
    if "evaluate" in steps:
        for n in args.eval_sizes:
            p = path("validation", n)
            if n != args.val_images or "register" not in steps:
                measure(
                    f"simulate validation json ({n})",
                    "-",
                    "simulate",
                    dict(p, split="validation", num_images=n, image_root=None),
                )
            variants = ["new"] + (["reference"] if n <= args.reference_max_eval else [])
            for variant in variants:
                out_dir = os.path.join(args.work_dir, f"eval_{variant}_{n}")
                shutil.rmtree(out_dir, ignore_errors=True)
                step_args = dict(
                    p,
                    tag=f"eval_{variant}_{n}",
                    detections=args.detections,
                    reference=variant == "reference",
                    output_dir=out_dir,
                    save_results=n <= args.save_results_max,
                )
                note = "TEST.OFFICIAL_COCO_EVAL True" if variant == "reference" else "compact"
                if n > args.save_results_max:
                    note += ", TEST.SAVE_COCO_RESULTS False"
                measure(f"evaluate {n} x {args.detections}", variant, "evaluate", step_args, note)
                shutil.rmtree(out_dir, ignore_errors=True)
    return {"settings": vars(args), "rows": rows, "ratios": compute_scale_ratios(rows)}


def _metric_diff(a: Dict[str, Dict], b: Dict[str, Dict]) -> Optional[float]:
    diffs = [
        abs(float(va) - float(b[kind][k]))
        for kind, metrics in a.items()
        if kind in b
        for k, va in metrics.items()
        if k in b[kind] and va == va and b[kind][k] == b[kind][k]  # both not NaN
    ]
    return max(diffs) if diffs else None


def compute_scale_ratios(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """New / reference ratios of time and peak RSS per evaluation size and registration split,
    the largest difference of any AP figure between the two evaluators, and the two-process
    Pss sum over one process's Pss."""
    ratios: Dict[str, Any] = {}
    by = {(r["step"], r["variant"], r["note"]): r for r in rows}
    for (step, variant, _), ref in by.items():
        if variant not in ("reference", "stock"):
            continue
        new = next(
            (r for (s, v, n), r in by.items() if s == step and v == "new" and "cached" not in n),
            None,
        )
        if new is None:
            continue
        entry = {
            "time_new_over_ref": new["seconds"] / max(ref["seconds"], 1e-9),
            "peak_rss_new_over_ref": new["peak_rss_mb"] / max(ref["peak_rss_mb"], 1e-9),
        }
        if "results" in new and "results" in ref:
            entry["ap_max_abs_diff"] = _metric_diff(new["results"], ref["results"])
        ratios[step] = entry
    two = next((r for r in rows if r["step"].startswith("register train x2")), None)
    one = next((r for r in rows if r["step"] == "register train" and "cached" in r["note"]), None)
    if two and one:
        ratios["register train x2 processes"] = {"pss_sum_over_one": two["pss_sum_mb"] / one["pss"]}
    return ratios


def _ap_text(results: Dict[str, Dict]) -> str:
    parts = []
    for kind, metrics in sorted(results.items()):
        if "AP" in metrics:
            parts.append(f"{kind} AP {metrics['AP']:.4f}")
    return ", ".join(parts)


def format_scale_report(report: Dict[str, Any]) -> str:
    """The report as a fixed-width table plus the ratios."""
    header = f"{'step':<36} {'variant':<9} {'images':>7} {'step s':>8} {'wall s':>9} "
    header += f"{'peak RSS MiB':>12} {'- imports':>9}  notes"
    lines = [header, "-" * len(header)]
    for r in report["rows"]:
        notes = [r["note"]] if r["note"] else []
        if "pss_sum_mb" in r:
            notes.append(f"Pss sum {r['pss_sum_mb']:.0f} MiB (each {r['pss_each_mb'][0]:.0f})")
        elif "pss" in r:
            notes.append(f"Pss {r['pss']:.0f} MiB")
        if "evaluate_seconds" in r:
            notes.append(
                f"process {r['process_seconds']:.1f} s + evaluate {r['evaluate_seconds']:.1f} s"
            )
        if "batch_seconds" in r:
            notes.append(f"loader {r['build_seconds']:.1f} s + batch {r['batch_seconds']:.1f} s")
            notes.append(
                f"Pss main {r['pss_main_mb']:.0f} + {r['num_workers']} workers "
                f"{r['pss_workers_mb']:.0f} = {r['pss_main_mb'] + r['pss_workers_mb']:.0f} MiB"
            )
        if r.get("results"):
            notes.append(_ap_text(r["results"]))
        if "json_bytes" in r:
            notes.append(f"{r['garments']} garments, {r['json_bytes'] / 2**20:.0f} MiB json")
        lines.append(
            f"{r['step']:<36} {r['variant']:<9} {r.get('images', ''):>7} {r['seconds']:>8.1f} "
            f"{r['wall_seconds']:>9.1f} {r['peak_rss_mb']:>12.0f} "
            f"{r['peak_rss_mb'] - r['import_peak_rss_mb']:>9.0f}  " + "; ".join(notes)
        )
    lines.append("")
    lines.append(
        "import floor (peak RSS of a step process after its imports): "
        f"{min(r['import_peak_rss_mb'] for r in report['rows']):.0f} MiB"
    )
    for step, entry in report["ratios"].items():
        text = ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()
        )
        lines.append(f"{step}: {text}")
    return "\n".join(lines)


def add_scale_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's command-line options (see ``tools/benchmark_deepfashion2_scale.py``)."""
    from .simulate_deepfashion2 import DF2_SPLITS

    full_train, full_val = DF2_SPLITS["train"].num_images, DF2_SPLITS["validation"].num_images
    parser.add_argument("--config-file", default="configs/kgdet_R50.yaml")
    parser.add_argument(
        "--train-net",
        default="train_net.py",
        help="whose Trainer builds the "
        "loader and evaluator (Detectron2's builders if the file is missing)",
    )
    parser.add_argument("--work-dir", default="/tmp/kgdet_df2_scale", help="simulated data")
    parser.add_argument("--train-images", type=int, default=full_train)
    parser.add_argument("--val-images", type=int, default=full_val)
    parser.add_argument(
        "--eval-sizes",
        type=int,
        nargs="+",
        default=None,
        help="validation images per evaluation (default: 1000 4000 and "
        "--val-images, those not above it)",
    )
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument(
        "--reference-max-eval",
        type=int,
        default=1000,
        help="largest evaluation also run with the reference evaluator",
    )
    parser.add_argument(
        "--save-results-max",
        type=int,
        default=4000,
        help="largest evaluation that also writes coco_instances_results.json (all K keypoints "
        "per detection: about 1.3 GB of text per 1,000 images x 100 detections); larger ones "
        "run with TEST.SAVE_COCO_RESULTS False",
    )
    parser.add_argument(
        "--reference-max-register",
        type=int,
        default=40_000,
        help="largest split also registered with load_coco_json",
    )
    parser.add_argument(
        "--steps",
        nargs="+",
        default=["register", "first_batch", "evaluate"],
        choices=["register", "first_batch", "evaluate"],
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fork",
        action="store_true",
        help="fork this process for each step "
        "instead of starting a fresh interpreter (quick checks: the peak RSS "
        "then includes this process's own memory)",
    )
    parser.add_argument("--json", default=None, help="write the figures to this json file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line of the benchmark (and, with ``--step``, of one measured step)."""
    if argv is None:
        argv = sys.argv[1:]
    if "--step" in argv:
        p = argparse.ArgumentParser()
        p.add_argument("--step", choices=sorted(_STEPS), required=True)
        p.add_argument("--step-args", required=True)
        a = p.parse_args(argv)
        _run_step(a.step, json.loads(a.step_args))
        return 0
    args = add_scale_arguments(argparse.ArgumentParser(description=__doc__)).parse_args(argv)
    if args.eval_sizes is None:
        args.eval_sizes = sorted(
            {n for n in (1000, 4000) if n < args.val_images} | {args.val_images}
        )
    args.config_file = os.path.abspath(args.config_file)
    args.train_net = os.path.abspath(args.train_net) if args.train_net else None
    print(f"DeepFashion2 scale benchmark in {args.work_dir} ({os.cpu_count()} CPUs)", flush=True)
    report = run_scale_benchmark(args, echo=lambda s: print(s, flush=True))
    print(format_scale_report(report))
    if args.json:
        from ..file_io import write_json_atomic

        write_json_atomic(args.json, report, indent=1)
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
