"""Helpers shared by the DeepFashion2 and FLD converters: issue report, atomic writes, image size.

Every bad input record is reported with the file, the field and the expected value, counted by
kind, and listed in a text report written next to the output (``<output stem>.report.txt``).
Errors skip the record; warnings keep it. Outputs are written to a temporary file in the target
folder and moved into place with ``os.replace``, so a failed run never leaves a partial file.
"""

import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from PIL import Image, UnidentifiedImageError

from ..file_io import atomic_output

__all__ = [
    "coco_categories",
    "ConversionIssue",
    "ConversionReport",
    "ConversionSummary",
    "atomic_output",
    "report_path_for",
    "read_image_size",
    "exif_transposes",
    "is_int",
    "is_number",
]

# Detectron2's read_image applies these EXIF orientations, 5-8 swap width and height.
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass
class ConversionIssue:
    level: str  # "ERROR" (record skipped) or "WARNING" (record kept)
    kind: str  # short category used for counting, e.g. "keypoint_length"
    file: str  # input file (relative to the input root) the record comes from
    field: str  # offending field, e.g. "item2.landmarks"
    message: str  # what is wrong, including the expected value
    action: str  # what the converter did about it

    def line(self) -> str:
        return "\t".join(
            (self.level, self.kind, self.file, self.field, self.message, self.action)
        ).replace("\n", " ")


class ConversionReport:
    """Collects issues of one conversion and writes them as a tab-separated text report."""

    def __init__(self, title: str):
        self.title = title
        self.issues: List[ConversionIssue] = []
        self.num_errors = 0
        self.num_warnings = 0

    def error(self, kind: str, file: str, field: str, message: str, action: str) -> None:
        self.issues.append(ConversionIssue("ERROR", kind, file, field, message, action))
        self.num_errors += 1

    def warning(self, kind: str, file: str, field: str, message: str, action: str) -> None:
        self.issues.append(ConversionIssue("WARNING", kind, file, field, message, action))
        self.num_warnings += 1

    def counts(self) -> Counter:
        """Counter over (level, kind)."""
        return Counter((i.level, i.kind) for i in self.issues)

    def render(self, summary_lines: List[str]) -> str:
        lines = [f"# {self.title}"]
        lines += [f"# {s}" for s in summary_lines]
        lines.append(
            f"# {self.num_errors} error(s) (record skipped), {self.num_warnings} warning(s)"
        )
        for (level, kind), n in sorted(self.counts().items()):
            lines.append(f"#   {level} {kind}: {n}")
        lines.append("# level\tkind\tfile\tfield\tproblem (expected)\taction")
        lines += [i.line() for i in self.issues]
        return "\n".join(lines) + "\n"


@dataclass
class ConversionSummary:
    output: str
    report: str
    num_inputs: int  # annotation files (DF2) or split images (FLD) read
    num_images: int
    num_annotations: int
    num_errors: int
    num_warnings: int

    def __str__(self) -> str:
        return (
            f"wrote {self.num_images} images / {self.num_annotations} annotations to "
            f"{self.output} from {self.num_inputs} input records; {self.num_errors} error(s) "
            f"(records skipped), {self.num_warnings} warning(s); report: {self.report}"
        )


def report_path_for(output: str) -> str:
    """``dir/name.json`` -> ``dir/name.report.txt``."""
    return os.path.splitext(output)[0] + ".report.txt"


def coco_categories(
    class_names: Sequence[str], keypoint_names: Sequence[str]
) -> List[Dict[str, Any]]:
    """COCO-style category records (ids from 1) that all share one global keypoint list, the way
    the official DeepFashion2 files write them."""
    return [
        {
            "id": i + 1,
            "name": name,
            "supercategory": "clothes",
            "keypoints": list(keypoint_names),
            "skeleton": [],
        }
        for i, name in enumerate(class_names)
    ]


def read_image_size(path: str) -> Tuple[int, int, Optional[int]]:
    """(width, height, EXIF orientation or None) from the file header; no pixel decoding.

    Raises OSError if the file is not a readable image.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            try:
                orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
            except Exception:  # Detectron2 ignores unreadable EXIF too
                orientation = None
    except UnidentifiedImageError as e:
        raise OSError(f"not a readable image: {e}") from e
    return width, height, orientation


def exif_transposes(orientation: Optional[int]) -> bool:
    """Whether Detectron2's ``read_image`` swaps width and height for this EXIF orientation."""
    return orientation in _TRANSPOSING_ORIENTATIONS
