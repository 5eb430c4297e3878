"""The output folder of ``tools/predict.py``: which files are its own, and never an input's.

The tool writes only these names in its folder: the shards
``predictions.rank{r}-of-{w}.jsonl`` / ``failed.rank{r}-of-{w}.jsonl``, ``failed.json``,
``summary.json``, ``coco_results.json``, ``image_ids.json``, the two DeepFashion2 submission
files, the ``drawings/`` folder and a hidden marker ``.kgdet-predict``. The folder may be (or
lie inside) the input folder: these files are never listed as inputs, and a run refuses to
start when one of them exists in a folder the tool did not create (it would be a user's file).
"""

import os
from typing import List

from ..cli import UsageError
from ..evaluation.submission import SUBMISSION_FILES
from .formats import COCO_RESULTS_FILE, IMAGE_IDS_FILE
from .records import is_shard_name

__all__ = ["DRAWINGS_DIR", "FAILED_FILE", "MARKER_FILE", "SUMMARY_FILE", "OutputFolder"]

DRAWINGS_DIR = "drawings"
FAILED_FILE = "failed.json"
SUMMARY_FILE = "summary.json"
MARKER_FILE = ".kgdet-predict"
OUTPUT_FILES = frozenset(
    (FAILED_FILE, SUMMARY_FILE, COCO_RESULTS_FILE, IMAGE_IDS_FILE, DRAWINGS_DIR, MARKER_FILE)
    + tuple(SUBMISSION_FILES.values())
)


class OutputFolder:
    """``tools/predict.py``'s ``--output`` folder (see the module docstring)."""

    def __init__(self, path: str):
        self.path = path
        self.real = os.path.realpath(path)

    def is_output(self, path: str) -> bool:
        """True for the tool's own files in this folder (and anything under ``drawings/``)."""
        real = os.path.realpath(path)
        parent, name = os.path.split(real)
        if parent == self.real:
            return name in OUTPUT_FILES or is_shard_name(name)
        return real.startswith(os.path.join(self.real, DRAWINGS_DIR) + os.sep)

    def own_files(self) -> List[str]:
        """Names of the tool's files present in the folder."""
        if not os.path.isdir(self.path):
            return []
        return sorted(n for n in os.listdir(self.path) if n in OUTPUT_FILES or is_shard_name(n))

    def prepare(self) -> None:
        """Create the folder (and its marker). Raises :class:`~kgdet.cli.UsageError` if it is a
        file, or holds files with the tool's output names that the tool did not write."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UsageError(f"--output '{self.path}' is a file: expected a folder")
        marker = os.path.join(self.path, MARKER_FILE)
        if not os.path.exists(marker):
            foreign = [n for n in self.own_files() if n != MARKER_FILE]
            if foreign:
                raise UsageError(
                    f"--output '{self.path}' holds {', '.join(foreign)}, not written by "
                    "tools/predict.py (no .kgdet-predict marker); they would be overwritten: "
                    "choose another folder"
                )
            os.makedirs(self.path, exist_ok=True)
            with open(marker, "w", encoding="utf-8") as f:
                f.write("Output folder of KGDet's tools/predict.py\n")
