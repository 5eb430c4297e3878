"""The annotation cache: one file per json, memory-mapped by every process that loads it.

Where: ``<cache_dir>/<json name>.<hash of its absolute path>.kgdet-annotations``, with
``cache_dir`` = the ``cache_dir`` argument, else ``$KGDET_CACHE/annotations``, else
``~/.cache/kgdet/annotations``; when that folder is not writable, a per-user folder in the
system's temporary folder; when none is writable the columns stay in memory (warned).

Layout: 8 magic bytes, a little-endian uint64 header length, a JSON header (format version, the
json's fingerprint, the schema, the class slots, every column's dtype / shape / offset / CRC-32,
the total file size), then the columns, each 64-byte aligned. Columns are opened with
``np.memmap`` (read-only), so the pages are shared through the page cache.

Trust: a cache is used only if its magic, version, size, schema and the json's fingerprint
(size, modification time in ns, and a BLAKE2b hash of the size and the first and last MiB)
match and every column's CRC-32 verifies. Anything else (a changed json, a truncated or corrupt
cache) is rebuilt, with a warning for a corrupt cache.

Concurrency: the first process of a launch takes an exclusive ``fcntl`` lock on
``<cache>.lock`` and builds; the others wait on the lock and then map the finished file. The
file is written to a temporary name and renamed into place (``kgdet.file_io.write_atomic``), so
a reader never sees a partial file.
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import numpy as np
import os
import struct
import tempfile
import time
import zlib
from typing import Any, Dict, Iterator, List, Optional, Sequence

from ..file_io import write_atomic
from .compact import ANNOTATION_COLUMNS, IMAGE_COLUMNS, CompactAnnotations
from .validation import AnnotationSchema

__all__ = [
    "CACHE_ENV",
    "CacheFileError",
    "default_cache_dir",
    "cache_file_for",
    "json_fingerprint",
    "open_cache_file",
    "write_cache_file",
    "load_or_build",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "KGDET_CACHE"
_MAGIC = b"KGDETAN\x00"
_VERSION = 1
_ALIGN = 64
_HASHED_BYTES = 1 << 20
_CRC_CHUNK = 1 << 24


class CacheFileError(ValueError):
    """A cache file that cannot be trusted (truncated, corrupt, another version or json)."""


def default_cache_dir() -> str:
    """``$KGDET_CACHE/annotations`` if the variable is set, else ``~/.cache/kgdet/annotations``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "kgdet")
    return os.path.join(root, "annotations")


def _writable_dir(folder: str) -> bool:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def _choose_dir(cache_dir: Optional[str]) -> Optional[str]:
    candidates = [cache_dir or default_cache_dir()]
    candidates.append(os.path.join(tempfile.gettempdir(), f"kgdet-{os.getuid()}", "annotations"))
    for folder in candidates:
        if _writable_dir(folder):
            if folder != candidates[0]:
                logger.warning(
                    f"Annotation cache folder {candidates[0]} is not writable; using {folder}"
                )
            return folder
    return None


def json_fingerprint(json_file: str) -> Dict[str, Any]:
    """Size, modification time (ns) and BLAKE2b of (size, first MiB, last MiB) of a file."""
    st = os.stat(json_file)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(st.st_size).encode())
    with open(json_file, "rb") as f:
        h.update(f.read(_HASHED_BYTES))
        if st.st_size > _HASHED_BYTES:
            f.seek(max(_HASHED_BYTES, st.st_size - _HASHED_BYTES))
            h.update(f.read(_HASHED_BYTES))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": h.hexdigest()}


def _schema_key(schema: AnnotationSchema, slots: Sequence[Sequence[int]]) -> Dict[str, Any]:
    return {
        "dataset": schema.dataset,
        "class_names": list(schema.class_names),
        "alternative_names": [list(a) for a in schema.alternative_names],
        "num_keypoints": schema.num_keypoints,
        "class_keypoint_slots": [list(map(int, s)) for s in slots],
    }


def cache_file_for(
    json_file: str,
    schema: AnnotationSchema,
    slots: Sequence[Sequence[int]],
    cache_dir: str,
) -> str:
    """The cache path of ``json_file`` (one per absolute json path and schema)."""
    ident = json.dumps([os.path.abspath(json_file), _schema_key(schema, slots)], sort_keys=True)
    digest = hashlib.sha1(ident.encode()).hexdigest()[:12]
    return os.path.join(cache_dir, f"{os.path.basename(json_file)}.{digest}.kgdet-annotations")


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def write_cache_file(
    path: str, compact: CompactAnnotations, fingerprint: Dict[str, Any], schema_key: Dict[str, Any]
) -> None:
    """Write ``compact``'s columns and header to ``path`` atomically."""
    arrays = {k: np.ascontiguousarray(v) for k, v in compact.arrays.items()}
    columns, offset = {}, 0
    for name, a in arrays.items():
        columns[name] = {
            "dtype": a.dtype.str,
            "shape": list(a.shape),
            "offset": offset,
            "crc32": zlib.crc32(memoryview(a).cast("B")) if a.nbytes else 0,
        }
        offset = _aligned(offset + a.nbytes)
    header = {
        "version": _VERSION,
        "json_file": compact.json_file,
        "fingerprint": fingerprint,
        "schema": schema_key,
        "num_keypoints": compact.num_keypoints,
        "outside_block_slots": {str(k): v for k, v in compact.outside_block_slots.items()},
        "info": compact.info,
        "columns": columns,
    }
    # Column offsets are relative to data_start, which follows the header (room reserved for
    # the digits of data_start and total_size themselves).
    data_start = _aligned(len(_MAGIC) + 8 + len(json.dumps(header).encode("utf-8")) + 96)
    header["data_start"] = data_start
    header["total_size"] = data_start + offset
    text = json.dumps(header).encode("utf-8")
    if len(_MAGIC) + 8 + len(text) > data_start:
        raise AssertionError("cache header outgrew its reserved space")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(_MAGIC + struct.pack("<Q", len(text)) + text)
            for name, a in arrays.items():
                if a.size == 0:  # an empty column (a json without images or garments)
                    continue
                f.seek(data_start + columns[name]["offset"])
                f.write(memoryview(a).cast("B"))
            f.truncate(header["total_size"])
            f.flush()
            os.fsync(f.fileno())

    write_atomic(path, write)


def _read_header(path: str) -> Dict[str, Any]:
    with open(path, "rb") as f:
        head = f.read(len(_MAGIC) + 8)
        if len(head) < len(_MAGIC) + 8 or head[: len(_MAGIC)] != _MAGIC:
            raise CacheFileError(f"{path}: not a KGDet annotation cache (bad magic bytes)")
        (length,) = struct.unpack("<Q", head[len(_MAGIC) :])
        if length > 1 << 30:
            raise CacheFileError(f"{path}: header length {length} is not plausible")
        text = f.read(length)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheFileError(f"{path}: unreadable header ({e})") from e
    if not isinstance(header, dict) or header.get("version") != _VERSION:
        raise CacheFileError(
            f"{path}: cache format version {header.get('version')!r}, " f"expected {_VERSION}"
        )
    return header


def _verify_columns(path: str, header: Dict[str, Any]) -> None:
    with open(path, "rb") as f:
        for name, col in header["columns"].items():
            nbytes = int(np.dtype(col["dtype"]).itemsize * int(np.prod(col["shape"])))
            f.seek(header["data_start"] + col["offset"])
            crc, left = 0, nbytes
            while left:
                chunk = f.read(min(left, _CRC_CHUNK))
                if not chunk:
                    raise CacheFileError(f"{path}: column '{name}' is truncated")
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
            if crc != col["crc32"]:
                raise CacheFileError(f"{path}: column '{name}' fails its CRC-32 check")


def open_cache_file(
    path: str,
    expected_fingerprint: Optional[Dict[str, Any]] = None,
    expected_schema: Optional[Dict[str, Any]] = None,
    verify: bool = True,
) -> CompactAnnotations:
    """Map a cache file read-only as :class:`CompactAnnotations`.

    Args:
        expected_fingerprint / expected_schema: when given, must equal the header's.
        verify: check every column's CRC-32 (reads the file once).

    Raises:
        CacheFileError: the file is missing columns, truncated, corrupt, of another format
            version, or made from another json / schema.
    """
    header = _read_header(path)
    try:
        columns = header["columns"]
        size = os.path.getsize(path)
        if size != header["total_size"]:
            raise CacheFileError(
                f"{path}: {size} bytes, the header says {header['total_size']} (truncated?)"
            )
        if expected_fingerprint is not None and header["fingerprint"] != expected_fingerprint:
            raise CacheFileError(f"{path}: made from another version of {header['json_file']}")
        if expected_schema is not None and header["schema"] != expected_schema:
            raise CacheFileError(f"{path}: made for another schema")
        missing = (set(IMAGE_COLUMNS) | set(ANNOTATION_COLUMNS)) - set(columns)
        if missing:
            raise CacheFileError(f"{path}: missing columns {sorted(missing)}")
        if verify:
            _verify_columns(path, header)
        arrays = {}
        for name, col in columns.items():
            shape = tuple(col["shape"])
            if int(np.prod(shape)) == 0:
                arrays[name] = np.zeros(shape, dtype=np.dtype(col["dtype"]))
                continue
            arrays[name] = np.memmap(
                path,
                dtype=np.dtype(col["dtype"]),
                mode="r",
                offset=header["data_start"] + col["offset"],
                shape=shape,
            )
        return CompactAnnotations(
            header["json_file"],
            arrays,
            header["num_keypoints"],
            header["schema"]["class_keypoint_slots"],
            {int(k): v for k, v in header["outside_block_slots"].items()},
            header["info"],
            cache_file=path,
        )
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CacheFileError):
            raise
        raise CacheFileError(f"{path}: malformed header ({e!r})") from e


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _try_open(
    path: str, fingerprint, schema_key, quiet: bool = False
) -> Optional[CompactAnnotations]:
    """The cache if it is valid for this json; None if absent or made from another json."""
    if not os.path.exists(path):
        return None
    try:
        return open_cache_file(path, fingerprint, schema_key)
    except CacheFileError as e:
        if quiet:
            return None
        if "another version of" in str(e) or "another schema" in str(e):
            logger.info(f"Annotation cache {path} is out of date; rebuilding it")
        else:
            logger.warning(f"Annotation cache {path} is not usable and is rebuilt: {e}")
        return None
    except OSError as e:
        logger.warning(f"Annotation cache {path} cannot be read and is rebuilt: {e}")
        return None


def _build(json_file: str, schema: AnnotationSchema, slots: List[List[int]]) -> CompactAnnotations:
    from .compact_build import build_compact_columns

    start = time.perf_counter()
    columns, outside, info = build_compact_columns(json_file, schema, slots)
    compact = CompactAnnotations(json_file, columns, schema.num_keypoints, slots, outside, info)
    logger.info(
        f"Parsed {json_file}: {compact.num_images} images, {compact.num_annotations} "
        f"annotations in {time.perf_counter() - start:.1f}s"
    )
    return compact


def load_or_build(
    json_file: str,
    schema: AnnotationSchema,
    slots: List[List[int]],
    cache_dir: Optional[str] = None,
    use_cache: bool = True,
) -> CompactAnnotations:
    """The cached columns of ``json_file`` if valid, else parse it and write the cache (see the
    module docstring). ``use_cache=False`` parses and keeps the columns in memory."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"annotation file {json_file} not found")
    if not use_cache:
        return _build(json_file, schema, slots)
    folder = _choose_dir(cache_dir)
    if folder is None:
        logger.warning(
            f"No writable folder for the annotation cache (set ${CACHE_ENV}); the annotations "
            f"of {json_file} are kept in this process's memory"
        )
        return _build(json_file, schema, slots)
    path = cache_file_for(json_file, schema, slots, folder)
    schema_key = _schema_key(schema, slots)
    fingerprint = json_fingerprint(json_file)
    compact = _try_open(path, fingerprint, schema_key)
    if compact is not None:
        logger.info(f"Loaded the annotations of {json_file} from the cache {path}")
        return compact
    with _locked(path):
        # Built by another process meanwhile? (The reason it was unusable is logged already.)
        compact = _try_open(path, fingerprint, schema_key, quiet=True)
        if compact is not None:
            return compact
        built = _build(json_file, schema, slots)
        if json_fingerprint(json_file) != fingerprint:
            logger.warning(f"{json_file} changed while it was read; its cache is not written")
            return built
        write_cache_file(path, built, fingerprint, schema_key)
        logger.info(f"Wrote the annotation cache {path}")
    return open_cache_file(path, fingerprint, schema_key, verify=False)
