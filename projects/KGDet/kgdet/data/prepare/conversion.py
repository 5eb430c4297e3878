"""Helpers shared by the DeepFashion2 and FLD converters: issue report, atomic writes, image check.

Every bad input record is reported with the file, the field and the expected value, counted by
kind, and listed in a text report written next to the output (``<output stem>.report.txt``).
Errors skip the record; warnings keep it. Outputs are written to a temporary file in the target
folder and moved into place with ``os.replace``, so a failed run never leaves a partial file.
"""

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ...file_io import atomic_output
from ...validators import is_int, is_number
from ..image_io import ImageInfo, ImageReadError, inspect_image

__all__ = [
    "coco_categories",
    "ConversionIssue",
    "ConversionReport",
    "ConversionSummary",
    "atomic_output",
    "report_path_for",
    "check_image_file",
    "is_int",
    "is_number",
]


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


def check_image_file(
    path: str, report: "ConversionReport", *, decode: bool = True
) -> Optional[ImageInfo]:
    """Check one image as Detectron2's ``read_image`` will give it to the model.

    With ``decode`` (the default) the pixels are decoded, so truncated or corrupt files are
    caught; ``decode=False`` reads only the header (fast, misses truncation). Reports, and
    returns None for, an unreadable image (kind ``unreadable_image``) and an image whose EXIF
    orientation is anything but 1 (kind ``exif_orientation``): Detectron2 mirrors or rotates such
    pixels while the annotations describe the stored ones. Otherwise returns its
    :class:`~kgdet.data.image_io.ImageInfo` (decoded size = stored size).
    """
    try:
        info = inspect_image(path, decode=decode)
    except ImageReadError as e:
        report.error(
            "unreadable_image",
            path,
            "(file)",
            f"{e.problem}; expected an image that decodes completely",
            "image skipped",
        )
        return None
    if info.orientation_changes_pixels:
        report.error(
            "exif_orientation",
            path,
            "EXIF Orientation",
            f"{info.describe_orientation()}: Detectron2's read_image turns the stored "
            f"{info.stored_width}x{info.stored_height} pixels into a {info.width}x{info.height} "
            "image that the annotations (stored frame) do not describe; expected no orientation "
            "tag or 1 (remove the tag, e.g. exiftool -Orientation= FILE, to keep the stored "
            "pixels)",
            "image skipped",
        )
        return None
    return info
