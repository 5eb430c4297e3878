"""Atomic file output: a temporary file in the target folder, renamed into place on success.

Used by every writer of the project (converters, evaluators, demo, checkpoint tools, DFA), so a
failure never leaves a partial output file behind.
"""

import contextlib
import json
import os
import tempfile
from typing import IO, Any, Callable, Iterator

__all__ = ["atomic_output", "write_atomic", "write_json_atomic"]


def _temporary_path_next_to(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1] or ".tmp"  # keep the extension: cv2.imwrite needs it
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
    os.close(fd)
    return tmp


def _publish(tmp: str, path: str) -> None:
    """Give the file the permissions of a normally created one (mkstemp makes it 0600), move it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def write_atomic(path: str, write_fn: Callable[[str], Any]) -> None:
    """Call ``write_fn(tmp_path)`` on a temporary path next to ``path``, then rename it to
    ``path``; on failure the temporary file is removed and ``path`` is left as it was."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"output {path} is a directory; expected a file path")
    tmp = _temporary_path_next_to(path)
    try:
        write_fn(tmp)
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_output(path: str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path``; move it to ``path`` only if the block succeeds."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"output {path} is a directory; expected a file path")
    tmp = _temporary_path_next_to(path)
    try:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, obj: Any, **dump_kwargs) -> None:
    """``json.dump(obj)`` to ``path`` atomically."""
    with atomic_output(path) as f:
        json.dump(obj, f, **dump_kwargs)
