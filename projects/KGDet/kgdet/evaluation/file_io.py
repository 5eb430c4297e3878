"""Atomic writes: a temporary file in the target folder renamed into place (no partial files)."""

import json
import os
import tempfile
from typing import Any, Callable

__all__ = ["write_atomic", "write_json_atomic"]


def write_atomic(path: str, write_fn: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Call ``write_fn(tmp_path)`` on a temporary path next to ``path``, then rename it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=suffix)
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path: str, obj: Any, **dump_kwargs) -> None:
    """``json.dump(obj)`` to ``path`` atomically."""

    def _write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, **dump_kwargs)

    write_atomic(path, _write, suffix=".json")
