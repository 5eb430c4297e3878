"""The command-line boundary shared by ``train_net.py``, ``demo.py`` and ``tools/*.py``.

Ordinary user mistakes (a missing config file, an unknown config key, a missing weights or input
file, an unregistered dataset) end in **one line** on stderr naming the thing and what was
expected, and exit status 2 (argparse's status for usage errors)::

    train_net.py: error: unknown config key SOLVER.MAX_ITERS on the command line; did you mean
    SOLVER.MAX_ITER? (--debug or KGDET_DEBUG=1 shows the traceback)

``--debug`` (every entry point accepts it) or ``KGDET_DEBUG=1`` re-raises the error with its
traceback instead. Anything that is not a usage error keeps its normal traceback.

:func:`filter_third_party_warnings` hides, by message and category, the third-party deprecation
warnings a user of the scripts cannot act on. Only the entry points call it; importing ``kgdet``
as a library changes no warning filter.
"""

import argparse
import difflib
import logging
import os
import re
import sys
import warnings
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Type

from detectron2.config import CfgNode

from .config import ConfigError

__all__ = [
    "DEBUG_ENV",
    "THIRD_PARTY_WARNINGS",
    "UsageError",
    "add_conversion_arguments",
    "add_debug_argument",
    "check_datasets",
    "check_input_paths",
    "check_weights",
    "debug_requested",
    "filter_third_party_warnings",
    "parse_args_and_overrides",
    "pop_debug_flag",
    "run_conversion",
    "run_main",
]

DEBUG_ENV = "KGDET_DEBUG"

# (message regex, category) of third-party warnings shown to every user of the scripts that
# nobody but the third party can fix.
THIRD_PARTY_WARNINGS: Tuple[Tuple[str, Type[Warning]], ...] = (
    # fvcore scripts its focal losses with torch.jit.script at import (Detectron2 imports fvcore);
    # torch >= 2.10 deprecates torch.jit.script.
    (r"`torch\.jit\.script` is deprecated", FutureWarning),
)


class UsageError(Exception):
    """A mistake in a command line (file, key, dataset or value), reported as one line."""


def filter_third_party_warnings(
    replay: Sequence[warnings.WarningMessage] = (),
) -> None:
    """Ignore :data:`THIRD_PARTY_WARNINGS` (by message and category) for the rest of the process.

    Importing this module imports Detectron2, which already emits some of them, so an entry point
    records the warnings of its first import and passes them as ``replay``: each one not in the
    list is issued again (once per message and place), so a warning from this project's own code
    or any other is never lost::

        with warnings.catch_warnings(record=True) as import_warnings:
            warnings.simplefilter("always")
            from kgdet import cli
        cli.filter_third_party_warnings(replay=import_warnings)
    """
    for message, category in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    seen = set()
    for w in replay:
        key = (str(w.message), w.category, w.filename, w.lineno)
        if key in seen:
            continue
        seen.add(key)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def add_debug_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--debug``: show tracebacks of usage errors (also ``KGDET_DEBUG=1``)."""
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the full traceback of command-line errors (same as {DEBUG_ENV}=1)",
    )
    return parser


# A config key on the command line (``SOLVER.MAX_ITER``, ``MODEL.KGDET.AGG``).
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Za-z0-9_]+)+$")


def add_overrides_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--debug`` and ``--opts KEY VALUE ...`` (the overrides may also follow the other
    arguments without ``--opts``; see :func:`parse_args_and_overrides`)."""
    add_debug_argument(parser)
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ..."
    )
    return parser


def parse_args_and_overrides(
    parser: argparse.ArgumentParser,
    argv: Optional[Sequence[str]] = None,
    multi_value: Sequence[str] = (),
) -> argparse.Namespace:
    """Parse options in any order; the remaining ``KEY VALUE`` pairs become ``args.opts``
    (followed by those given with ``--opts``, if the parser has it).

    Args:
        multi_value: destinations of options taking several values (``nargs="+"``): the first
            config key among their values (:data:`CONFIG_KEY`) starts the overrides.

    Raises:
        SystemExit: (argparse's usage error, status 2) for an unknown ``--option``.
    """
    args, rest = parser.parse_known_args(argv)
    for name in multi_value:
        values = list(getattr(args, name, None) or [])
        for i, item in enumerate(values):
            if CONFIG_KEY.match(item):
                rest = values[i:] + rest
                setattr(args, name, values[:i])
                break
    unknown = [o for o in rest if o.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.opts = list(rest) + list(getattr(args, "opts", None) or [])
    return args


def add_conversion_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--output``, ``--no-progress`` and ``--no-decode`` of the dataset converters."""
    parser.add_argument("--output", required=True, help="COCO-style json to write")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--no-decode",
        action="store_true",
        help="check images by their header only (faster; truncated images are not caught)",
    )
    return parser


def run_conversion(prog: str, args: argparse.Namespace, convert: Callable[..., Any]) -> int:
    """Run ``convert(output, progress=..., decode=...)`` with INFO logging, from the options of
    :func:`add_conversion_arguments`. ``OSError`` / ``ValueError`` (unreadable or malformed
    input) end in ``<prog>: error: <message>`` on stderr and status 1. Bad records do not raise:
    the converter logs their count and lists them in its report."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        convert(args.output, progress=not args.no_progress, decode=not args.no_decode)
    except (OSError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


def pop_debug_flag(opts: List[str]) -> bool:
    """Remove ``--debug`` from trailing config overrides (argparse's REMAINDER swallows it).

    Returns True if it was there; ``opts`` is changed in place.
    """
    found = "--debug" in opts
    while "--debug" in opts:
        opts.remove("--debug")
    return found


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """True if ``--debug`` is among ``argv`` (default ``sys.argv``) or ``KGDET_DEBUG=1``."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_main(
    main: Callable[[], Optional[int]], prog: str, argv: Optional[Sequence[str]] = None
) -> int:
    """Run ``main()``; a :class:`UsageError` or ``ConfigError`` becomes one line and status 2.

    Args:
        main: the entry point's work; its return value (None = 0) is the exit status.
        prog: the script name used as the message prefix (e.g. "train_net.py").
        argv: the command line, only to look for ``--debug`` (default ``sys.argv[1:]``).
    """
    try:
        status = main()
    except (UsageError, ConfigError) as e:
        if debug_requested(argv):
            raise
        message = " ".join(str(e).split())  # one line, whatever the message held
        print(
            f"{prog}: error: {message} (--debug or {DEBUG_ENV}=1 shows the traceback)",
            file=sys.stderr,
        )
        return 2
    return 0 if status is None else int(status)


def _is_remote(path: str) -> bool:
    return "://" in path


def check_weights(cfg: CfgNode, required: bool = False, hint: str = "") -> None:
    """Raise :class:`UsageError` if ``MODEL.WEIGHTS`` names a local file that does not exist.

    Args:
        cfg: the config; URLs and ``detectron2://`` paths are not checked (Detectron2 fetches
            them).
        required: also refuse an empty ``MODEL.WEIGHTS``.
        hint: appended to the message, e.g. how to produce the checkpoint.
    """
    weights = cfg.MODEL.WEIGHTS
    suffix = f"; {hint}" if hint else ""
    if not weights:
        if required:
            raise UsageError(f"MODEL.WEIGHTS is empty: expected a checkpoint file{suffix}")
        return
    if not _is_remote(weights) and not os.path.isfile(os.path.expanduser(weights)):
        raise UsageError(
            f"MODEL.WEIGHTS '{weights}' not found: expected a checkpoint file (.pth or .pkl)"
            + suffix
        )


def check_datasets(names: Iterable[str], option: str) -> None:
    """Raise :class:`UsageError` for a dataset name that is not registered (nearest suggested).

    Args:
        names: dataset names, e.g. ``cfg.DATASETS.TRAIN``.
        option: where they came from, for the message (e.g. "DATASETS.TRAIN").
    """
    from detectron2.data import DatasetCatalog

    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            near = difflib.get_close_matches(name, registered, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise UsageError(f"{option}: dataset '{name}' is not registered{hint}")


def check_input_paths(paths: Iterable[str], option: str) -> None:
    """Raise :class:`UsageError` for a path that does not exist (globs are not checked here)."""
    for path in paths:
        if any(ch in path for ch in "*?["):
            continue
        if not os.path.exists(os.path.expanduser(path)):
            raise UsageError(f"{option} '{path}' not found: expected an existing file or directory")
