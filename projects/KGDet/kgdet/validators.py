"""Field validators shared by the dataset checks, the converters and the result-file checks.

JSON numbers arrive as Python ``int`` / ``float``; ``bool`` is an ``int`` subclass in Python but
never a valid count, id or coordinate, so it is rejected everywhere.
"""

import json
import math
from typing import Any

__all__ = ["is_int", "is_number", "short_repr"]


def is_int(value: Any) -> bool:
    """True for a Python ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a finite ``int`` / ``float`` (numpy floats included), never for a ``bool``."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def short_repr(value: Any, limit: int = 60) -> str:
    """``value`` as JSON (``repr`` where JSON cannot hold it), cut to ``limit`` characters with a
    trailing ``...``; for quoting bad field values in error messages."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
