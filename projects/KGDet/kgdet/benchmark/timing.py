"""Timing on a shared machine: one timed call, statistics, and waiting for an idle CPU."""

import numpy as np
import time
from typing import Dict, List, Optional
import torch
from torch.utils.benchmark import Measurement, TaskSpec

__all__ = ["time_call", "summarize", "IdleGate"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn, device: str = "cpu") -> float:
    """Wall time of one ``fn()`` in ms (CUDA synchronised before and after). One call, not
    ``torch.utils.benchmark.Timer``'s blocks: every call here takes seconds on a CPU, and the
    runner interleaves single calls of all models."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def summarize(times_ms: List[float], label: str = "call") -> Dict[str, float]:
    """Statistics of single-call wall times (ms) by ``torch.utils.benchmark.Measurement``:
    median, interquartile range, mean, min and max in ms, and the number of runs."""
    m = Measurement(
        number_per_run=1,
        raw_times=[t / 1e3 for t in times_ms],
        task_spec=TaskSpec(stmt=label, setup="pass"),
    )
    return {
        "median_ms": round(m.median * 1e3, 1),
        "iqr_ms": round(m.iqr * 1e3, 1),
        "mean_ms": round(m.mean * 1e3, 1),
        "min_ms": round(min(m.times) * 1e3, 1),
        "max_ms": round(max(m.times) * 1e3, 1),
        "runs": len(m.times),
    }


def _cpu_busy_fraction(interval: float = 0.5) -> Optional[float]:
    """Fraction of all CPUs busy during ``interval`` seconds (/proc/stat; None elsewhere).
    Called while the workers wait for a command, so it measures the other processes."""

    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(interval)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


class IdleGate:
    """Before each timed run, wait (within a total budget) until other processes leave the CPU
    mostly idle, and record how busy it was: a shared 2-core machine otherwise times the
    neighbours as much as the model."""

    def __init__(self, budget_s: float, max_busy: float = 0.15):
        self.budget_s = budget_s
        self.max_busy = max_busy
        self.waited_s = 0.0
        self.busy: List[float] = []

    def wait(self) -> None:
        busy = _cpu_busy_fraction()
        while busy is not None and busy > self.max_busy and self.waited_s < self.budget_s:
            time.sleep(2.0)
            self.waited_s += 2.5
            busy = _cpu_busy_fraction()
        if busy is not None:
            self.busy.append(round(busy, 3))

    def summary(self) -> Dict:
        busy = self.busy or [float("nan")]
        return {
            "budget_s": self.budget_s,
            "waited_s": round(self.waited_s, 1),
            "max_busy_wanted": self.max_busy,
            "busy_before_runs_median": round(float(np.median(busy)), 3),
            "busy_before_runs_max": round(float(np.max(busy)), 3),
        }
