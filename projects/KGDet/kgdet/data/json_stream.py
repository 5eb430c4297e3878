"""Streaming reader of a COCO-style json: one record at a time, never the whole file.

:func:`iter_top_level` walks the top-level object of a json file and yields every element of its
top-level arrays (``images``, ``annotations``, ...) as soon as it is parsed, and every other
top-level value whole (``info``, ``categories`` are small). Each record is decoded by the standard
library's C decoder (``json.JSONDecoder.raw_decode``, the parser of ``json.load``) from a window
of the file, so a 1 GB DeepFashion2 json is read in one pass holding one record plus a 4 MB
window, in any key order. Flat records (every DeepFashion2 image and garment) are decoded by
``orjson`` when it is installed (about 5x faster; same values), anything else by ``json``.
"""

import json
import re
from typing import Any, Iterator, Optional, Tuple

from .validation import AnnotationFileError

try:  # optional: 4-5x faster decoding of flat records
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

__all__ = ["iter_top_level"]

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_CHUNK_CHARS = 1 << 22
# A record that does not parse after this much text is read past its start is an error
# (records of COCO-style jsons are a few KB).
_MAX_RECORD_CHARS = 1 << 26


class _Window:
    """A moving window of the file's text with the parse position in it."""

    def __init__(self, f, json_file: str):
        self.f = f
        self.json_file = json_file
        self.text = ""
        self.pos = 0
        self.base = 0  # file character offset of text[0]
        self.eof = False
        self.decoder = json.JSONDecoder()

    def _read_more(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.f.read(_CHUNK_CHARS)
        except UnicodeDecodeError as e:
            raise AnnotationFileError(f"{self.json_file}: not valid JSON ({e})") from e
        if not data:
            self.eof = True
            return False
        self.base += self.pos
        self.text = self.text[self.pos :] + data
        self.pos = 0
        return True

    def error(self, expected: str) -> AnnotationFileError:
        found = self.text[self.pos : self.pos + 20] if self.pos < len(self.text) else "end of file"
        return AnnotationFileError(
            f"{self.json_file}: not valid JSON (character {self.base + self.pos}): expected "
            f"{expected}, found {found!r}"
        )

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the file), not consumed."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text) or not self._read_more():
                return self.text[self.pos : self.pos + 1]

    def expect(self, char: str, what: str) -> None:
        if self.peek() != char:
            raise self.error(what)
        self.pos += 1

    def record(self) -> Any:
        """Decode the next array element. A flat object (no nested object) ends at its first
        '}' (a '}' inside a string would leave that string open: invalid, so never accepted);
        it is decoded by orjson when installed. Anything else, and anything orjson refuses
        (NaN, huge integers, errors), is decoded by :meth:`value` with the json module's
        semantics and messages."""
        if orjson is not None and self.peek() == "{":
            end = self.text.find("}", self.pos)
            if end != -1 and self.text.find("{", self.pos + 1, end) == -1:
                try:
                    obj = orjson.loads(self.text[self.pos : end + 1])
                except orjson.JSONDecodeError:
                    pass
                else:
                    self.pos = end + 1
                    return obj
        return self.value()

    def value(self) -> Any:
        """Decode the next json value (of any size; more text is read as needed)."""
        self.peek()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                if len(self.text) - self.pos < _MAX_RECORD_CHARS and self._read_more():
                    continue
                raise AnnotationFileError(
                    f"{self.json_file}: not valid JSON (character " f"{self.base + e.pos}): {e.msg}"
                ) from e
            # A number or literal may continue in the next chunk: decode again with more text.
            if end == len(self.text) and self._read_more():
                continue
            self.pos = end
            return obj


def iter_top_level(json_file: str) -> Iterator[Tuple[str, Optional[int], Any]]:
    """Yield ``(key, index, item)`` for each element of each top-level array of ``json_file``
    (index 0, 1, ... within its array) and ``(key, None, value)`` for other top-level values
    (an empty array gives ``(key, None, [])``), in file order.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        AnnotationFileError: the file is not valid JSON or its top level is not an object; the
            message names the file and the character offset.
    """
    try:
        f = open(json_file, "r", encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {json_file} not found") from None
    with f:
        w = _Window(f, json_file)
        first = w.peek()
        if first != "{":
            if first in ("[", '"') or first.isdigit():
                kind = {"[": "list", '"': "str"}.get(first, "number")
                raise AnnotationFileError(f"{json_file}: got a {kind}; expected an object")
            raise w.error("'{' (a json object)")
        w.pos += 1
        if w.peek() == "}":
            w.pos += 1
        else:
            while True:
                if w.peek() != '"':
                    raise w.error("a key string")
                key = w.value()
                w.expect(":", "':'")
                if w.peek() == "[":
                    w.pos += 1
                    if w.peek() == "]":
                        w.pos += 1
                        yield key, None, []
                    else:
                        index = 0
                        while True:
                            yield key, index, w.record()
                            index += 1
                            c = w.peek()
                            w.pos += 1
                            if c == "]":
                                break
                            if c != ",":
                                w.pos -= 1
                                raise w.error(f"',' or ']' after element {index - 1} of '{key}'")
                else:
                    yield key, None, w.value()
                c = w.peek()
                w.pos += 1
                if c == "}":
                    break
                if c != ",":
                    w.pos -= 1
                    raise w.error("',' or '}'")
        if w.peek() != "":
            raise w.error("end of file")
