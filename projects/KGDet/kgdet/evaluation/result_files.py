"""Result files written record by record: Detectron2's ``coco_instances_results.json`` and the
official DeepFashion2 submission files, from :class:`CompactDetections` plus the full keypoints
kept on disk (:class:`KeypointSpill`), never as one list in memory.

Each file is written into a temporary file next to it and renamed at the end
(:func:`kgdet.file_io.atomic_output`): a failure leaves no partial file. The text is exactly
what ``json.dump`` of the whole list writes (``", "`` between records and values).
"""

import contextlib
import json
import numpy as np
import os
import tempfile
from typing import IO, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..file_io import atomic_output
from .compact_results import CompactDetections

__all__ = ["JsonListWriter", "KeypointSpill", "detectron2_records", "write_json_lists"]


class KeypointSpill:
    """Append-only float32 file of every detection's (K, 3) keypoints, in ``folder``.

    Detectron2's result file carries all K keypoints (x - 0.5, y - 0.5, score) of each
    detection; they are kept here instead of in memory and read back in order by
    :meth:`read`. The file is removed by :meth:`close`.
    """

    def __init__(self, folder: str, num_keypoints: int):
        os.makedirs(folder, exist_ok=True)
        fd, self.path = tempfile.mkstemp(prefix=".kgdet_keypoints.", suffix=".f32", dir=folder)
        self._file: Optional[IO[bytes]] = os.fdopen(fd, "wb")
        self.num_keypoints = num_keypoints
        self.count = 0

    def append(self, keypoints: np.ndarray) -> None:
        """keypoints: (N, K, 3) float32 in the result convention."""
        self._file.write(np.ascontiguousarray(keypoints, dtype=np.float32).tobytes())
        self.count += len(keypoints)

    def read(self, start: int, count: int) -> np.ndarray:
        """Rows ``start : start + count`` as (count, K, 3) float32."""
        self._file.flush()
        row = self.num_keypoints * 3
        data = np.fromfile(self.path, dtype=np.float32, count=count * row, offset=start * row * 4)
        return data.reshape(count, self.num_keypoints, 3)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def detectron2_records(
    dets: CompactDetections, start: int, n: int, keypoints: Optional[np.ndarray]
) -> List[dict]:
    """Detectron2 COCO results (``instances_to_coco_json``) of detections ``start : start + n``
    with their (n, K, 3) ``keypoints`` (or None); ``dets.classes`` are the dataset's category
    ids."""
    sl = slice(start, start + n)
    image_ids = dets.image_ids[sl].tolist()
    classes = dets.classes[sl].tolist()
    boxes = dets.boxes[sl].tolist()
    scores = dets.scores[sl].tolist()
    records = []
    for k in range(n):
        record = {
            "image_id": image_ids[k],
            "category_id": classes[k],
            "bbox": boxes[k],
            "score": scores[k],
        }
        if keypoints is not None:
            record["keypoints"] = keypoints[k].reshape(-1).tolist()
        records.append(record)
    return records


class JsonListWriter:
    """Writes one JSON list to ``path`` in pieces, atomically (see the module docstring)."""

    def __init__(self, path: str):
        self.path = path
        self.count = 0
        self._context = atomic_output(path)
        self._file: Optional[IO[str]] = None

    def __enter__(self) -> "JsonListWriter":
        self._file = self._context.__enter__()
        self._file.write("[")
        return self

    def write(self, records: Sequence[dict]) -> None:
        if not records:
            return
        text = json.dumps(list(records))[1:-1]
        self._file.write(", " + text if self.count else text)
        self.count += len(records)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._file.write("]")
        return self._context.__exit__(exc_type, exc, tb)


def write_json_lists(
    paths: Dict[str, str], chunks: Iterable[Dict[str, Sequence[dict]]]
) -> Dict[str, int]:
    """Write several JSON lists at once from ``chunks`` (key -> records of that piece).

    Returns:
        key -> number of records written. All files are renamed into place only when every
        chunk was written.
    """
    with contextlib.ExitStack() as stack:
        writers = {key: stack.enter_context(JsonListWriter(path)) for key, path in paths.items()}
        for chunk in chunks:
            for key, records in chunk.items():
                if key in writers:
                    writers[key].write(records)
        counts = {key: w.count for key, w in writers.items()}
    return counts


def iter_chunks(total: int, size: int) -> Iterator[Tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(size, total - start)
