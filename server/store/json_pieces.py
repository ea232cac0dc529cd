"""JSON text of large arrays and objects, made and read a piece at a time.

A stored conversation is up to GGUFSTACK_RESPONSES_MAX_CONVERSATION_BYTES of JSON. The json module makes or reads it
in one C call that holds the GIL throughout, so even in a worker thread the event loop, and every stream on it,
waits for the whole document. Here each top-level item (an array's element, an object's value) is its own call:
between two of them the interpreter may hand the GIL to the event loop, which then waits for one item at most.

The text is what `json.dumps` makes of the same value with the same separators, and `loads` accepts what
`json.loads` accepts of an array or object (any whitespace between tokens, PostgreSQL's `jsonb::text` included).
"""

from __future__ import annotations

import json
import re
from typing import Any

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def dumps(value: Any, *, separators: tuple[str, str] = (", ", ": "), ensure_ascii: bool = True) -> str:
    """`json.dumps(value, separators=..., ensure_ascii=...)`, one top-level item per call."""
    item_separator, key_separator = separators

    def one(item: Any) -> str:
        return json.dumps(item, separators=separators, ensure_ascii=ensure_ascii)

    if isinstance(value, list):
        return "[" + item_separator.join(one(item) for item in value) + "]"
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        members = (one(key) + key_separator + one(item) for key, item in value.items())
        return "{" + item_separator.join(members) + "}"
    return one(value)


def compact_size(value: Any) -> int:
    """The bytes of `value` as compact JSON in UTF-8 (non-ASCII as itself, lone surrogates as themselves)."""
    return len(dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))


def loads(text: str) -> Any:
    """`json.loads(text)`, one top-level item per call when `text` is an array or an object."""
    start = _skip(text, 0)
    opening = text[start : start + 1]
    if opening not in ("[", "{"):
        return json.loads(text)
    closing = "]" if opening == "[" else "}"
    container: list[Any] | dict[str, Any] = [] if opening == "[" else {}
    at = _skip(text, start + 1)
    if text[at : at + 1] == closing:
        return _end(text, at + 1, container)
    while True:
        if isinstance(container, list):
            item, at = _DECODER.raw_decode(text, at)
            container.append(item)
        else:
            key, at = _DECODER.raw_decode(text, at)
            at = _skip(text, at)
            if not isinstance(key, str) or text[at : at + 1] != ":":
                raise json.JSONDecodeError("Expecting a string key and ':'", text, at)
            container[key], at = _DECODER.raw_decode(text, _skip(text, at + 1))
        at = _skip(text, at)
        separator = text[at : at + 1]
        if separator == closing:
            return _end(text, at + 1, container)
        if separator != ",":
            raise json.JSONDecodeError(f"Expecting ',' or '{closing}'", text, at)
        at = _skip(text, at + 1)


def _skip(text: str, at: int) -> int:
    found = _WHITESPACE.match(text, at)
    return found.end() if found else at


def _end(text: str, at: int, container: Any) -> Any:
    if _skip(text, at) != len(text):
        raise json.JSONDecodeError("Extra data", text, at)
    return container
