"""The files a prediction run reads: folders (optionally recursive), glob patterns, path lists.

Every file met is either returned as an input or listed with the reason it is left out (hidden,
not a regular file, a folder without ``recursive``, not an image extension when an extension
filter is given, or one of the tool's own output files), so a run can account for each one.
Inputs are judged by content later (:mod:`kgdet.predict.decoding`), not by extension: a JPEG
saved as ``.jfif`` or ``.jpe``, a GIF or an AVIF is tried like any other file.
"""

import glob
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from PIL import Image

__all__ = ["InputListing", "is_hidden", "list_inputs", "pil_image_extensions"]

_GLOB_CHARS = "*?["
LIST_FILE_EXTENSIONS = (".txt", ".lst")


@dataclass
class InputListing:
    """Result of :func:`list_inputs`.

    ``files``: the input paths in listing order, each once (as given or joined to the folder it
    was found in); ``skipped``: ``{"file_name", "reason"}`` for every path met but left out.
    """

    files: List[str] = field(default_factory=list)
    skipped: List[Dict[str, str]] = field(default_factory=list)

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append({"file_name": path, "reason": reason})


def is_hidden(name: str) -> bool:
    """True for a file or folder name starting with "." (hidden on POSIX systems)."""
    return os.path.basename(os.path.normpath(name)).startswith(".")


def pil_image_extensions() -> frozenset:
    """Lower-case extensions (with the dot) Pillow knows an image format for (.jfif, .gif, ...)."""
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def list_inputs(
    inputs: Sequence[str],
    recursive: bool = False,
    extensions: Optional[Iterable[str]] = None,
    path_lists: bool = False,
    is_output: Optional[Callable[[str], bool]] = None,
    sort: bool = False,
) -> InputListing:
    """List the files of ``inputs``.

    Args:
        inputs: folders, glob patterns (``**`` with ``recursive``), single files, or (with
            ``path_lists``) ``.txt`` / ``.lst`` files holding one path per line (blank lines and
            lines starting with "#" ignored; relative paths are relative to the list file's
            folder).
        recursive: walk sub-folders of folder inputs (hidden ones are listed as skipped).
            Without it sub-folders are listed as skipped.
        extensions: if given, files of a folder whose lower-case extension is not among them are
            listed as skipped; files named explicitly or by a pattern are always inputs.
        path_lists: read ``.txt`` / ``.lst`` inputs as lists of paths.
        is_output: files (and folders) for which it returns True are the tool's own outputs:
            listed as skipped, never inputs.
        sort: sort all files by path (else: in the order of ``inputs``, each input's files
            sorted).

    Returns:
        :class:`InputListing`. Paths that do not exist are returned as inputs (reading them
        fails with "file not found" and is reported there).
    """
    allowed = None if extensions is None else frozenset(e.lower() for e in extensions)
    listing = InputListing()
    seen = set()

    def add(path: str, from_folder: bool) -> None:
        if _key(path) in seen:
            return
        seen.add(_key(path))
        if is_output is not None and is_output(path):
            listing.skip(path, "an output file of this tool")
        elif os.path.isdir(path):
            listing.skip(path, "a folder" + ("" if recursive else " (--recursive lists it)"))
        elif os.path.exists(path) and not os.path.isfile(path):
            listing.skip(path, "not a regular file")
        elif from_folder and is_hidden(path):
            listing.skip(path, "hidden file")
        elif (
            from_folder
            and allowed is not None
            and os.path.splitext(path)[1].lower() not in (allowed)
        ):
            listing.skip(path, "not an image file extension")
        else:
            listing.files.append(path)

    for item in inputs:
        if os.path.isdir(item):
            for path in _walk(item, recursive, listing, is_output):
                add(path, from_folder=True)
        elif any(ch in item for ch in _GLOB_CHARS):
            for path in sorted(glob.glob(os.path.expanduser(item), recursive=recursive)):
                add(path, from_folder=False)
        elif path_lists and item.lower().endswith(LIST_FILE_EXTENSIONS) and os.path.isfile(item):
            for path in _read_path_list(item):
                add(path, from_folder=False)
        else:
            add(item, from_folder=False)
    if sort:
        listing.files.sort()
    return listing


def _walk(
    folder: str,
    recursive: bool,
    listing: InputListing,
    is_output: Optional[Callable[[str], bool]],
) -> List[str]:
    """Files of ``folder`` (sorted; sub-folders walked when ``recursive``). Hidden and output
    sub-folders are recorded in ``listing.skipped`` and not entered."""
    if not recursive:
        return sorted(os.path.join(folder, name) for name in os.listdir(folder))
    files = []
    for root, dirs, names in os.walk(folder):
        kept = []
        for d in sorted(dirs):
            path = os.path.join(root, d)
            if is_hidden(d):
                listing.skip(path, "hidden folder")
            elif is_output is not None and is_output(path):
                listing.skip(path, "an output folder of this tool")
            else:
                kept.append(d)
        dirs[:] = kept
        files.extend(os.path.join(root, n) for n in names)
    return sorted(files)


def _read_path_list(list_file: str) -> List[str]:
    base = os.path.dirname(os.path.abspath(list_file))
    paths = []
    with open(list_file, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                path = os.path.expanduser(line)
                paths.append(path if os.path.isabs(path) else os.path.join(base, path))
    return paths
