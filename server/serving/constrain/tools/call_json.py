"""One call object, `{"name": ..., "arguments": ...}`, read as the model writes it: its name once the name's string
closes, then the arguments' JSON text as it comes, up to the end of their value.

Both tool-call formats write each call as such an object, and their grammars put the name first
(`ToolPlan.call_schema` lists it first; llama.cpp's schema converter keeps that order), so the call is certain, and
can be streamed, from the moment its name is whole. The arguments are sent as the model wrote them, whitespace and
all, so what a stream sends adds up to the arguments of the same answer unstreamed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from server.serving.constrain.tools.plan import ArgumentsWritten, CallBegun, CallEvent, ParsedCall, new_call_id

_SPACE = " \t\n\r"
_NAME = ""  # the name's string, where the head's literals are
_HEAD = ("{", '"name"', ":", _NAME, ",", '"arguments"', ":")
_SCALAR_END = ",}]" + _SPACE


class CallJson:
    """Feed it the text from where a call object may start (whitespace first is fine), in pieces."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.failed = False  # the text is not a call in this shape (no name will come)
        self.done = False  # the arguments' value ended
        self._step = 0  # which of _HEAD is being read
        self._matched = 0  # characters of the current literal matched
        self._name: list[str] | None = None  # the name's string literal while it is read
        self._value: str | None = None  # "container", "string" or "scalar" once the arguments' value began
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, text: str) -> tuple[bool, str, int]:
        """Read `text`: whether the name became whole in it, the arguments' text it holds, and how much of it was
        used (all of it unless the arguments' value ended, or the call failed, in it)."""
        named, start = False, None
        for at, char in enumerate(text):
            if self.done or self.failed:
                return named, text[start:at] if start is not None else "", at
            if self._step < len(_HEAD):
                named |= self._head(char)
            elif self._value is not None or char not in _SPACE:  # the value's text, from its first character
                start = at if start is None else start
                if self._arguments(char):  # a container or a string ends with this character, a scalar just before it
                    end = at if self._value == "scalar" else at + 1
                    return named, text[start:end], end
        return named, text[start:] if start is not None else "", len(text)

    def _head(self, char: str) -> bool:
        expected = _HEAD[self._step]
        if expected == _NAME:
            if self._name is None:
                if char == '"':
                    self._name = [char]
                elif char not in _SPACE:
                    self.failed = True
                return False
            self._name.append(char)
            if not self._string_ended(char):
                return False
            try:
                name = json.loads("".join(self._name))
            except json.JSONDecodeError:  # an escape no JSON has: not a call the grammar wrote
                self.failed = True
                return False
            self.name, self._step = name, self._step + 1
            return True
        if self._matched == 0 and char in _SPACE:
            return False
        if char != expected[self._matched]:
            self.failed = True
            return False
        self._matched += 1
        if self._matched == len(expected):
            self._step, self._matched = self._step + 1, 0
        return False

    def _arguments(self, char: str) -> bool:
        """Read one character of the arguments' value: whether the value ended with it."""
        if self._value is None:
            if char in "{[":
                self._value, self._depth = "container", 1
            elif char == '"':
                self._value, self._in_string = "string", True
            else:
                self._value = "scalar"
            return False
        if self._value == "scalar":
            self.done = char in _SCALAR_END
        elif self._in_string:
            self._in_string = not self._string_ended(char)
            self.done = self._value == "string" and not self._in_string
        elif char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1
            self.done = self._depth == 0
        return self.done

    def _string_ended(self, char: str) -> bool:
        """Within a string: whether `char` is its closing quote (not one an escape makes a character)."""
        if self._escaped:
            self._escaped = False
            return False
        if char == "\\":
            self._escaped = True
            return False
        return char == '"'


@dataclass(slots=True)
class _ReadCall:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)
    complete: bool = False  # its arguments' value ended


class Calls:
    """An answer's calls as a format's reader finds them: `start()` where a call object may begin, then `feed` it
    the text that follows until it is no longer `reading` (the call's arguments ended, or it is not a call)."""

    def __init__(self) -> None:
        self.failed = False  # a call object was not one: no grammar writes such, and the reader stops there
        self._read: list[_ReadCall] = []
        self._current: CallJson | None = None

    @property
    def reading(self) -> bool:
        return self._current is not None

    def __len__(self) -> int:
        return len(self._read)

    def start(self) -> None:
        self._current = CallJson()

    def feed(self, text: str) -> tuple[list[CallEvent], int]:
        """What `text` made certain of the call being read, and how much of it the call used."""
        current = self._current
        if current is None:
            raise RuntimeError("no call object is being read")
        named, arguments, used = current.feed(text)
        events: list[CallEvent] = []
        if named and current.name is not None:
            self._read.append(_ReadCall(new_call_id(), current.name))
            events.append(CallBegun(len(self._read) - 1, self._read[-1].id, current.name))
        if arguments:
            self._read[-1].arguments.append(arguments)
            events.append(ArgumentsWritten(len(self._read) - 1, arguments))
        if current.failed:
            self.failed, self._current = True, None
        elif current.done:
            self._read[-1].complete, self._current = True, None
        return events, used

    def parsed(self) -> tuple[ParsedCall, ...]:
        return tuple(ParsedCall(c.id, c.name, "".join(c.arguments), c.complete) for c in self._read)
