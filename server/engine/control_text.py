"""A client's text that spells a control token stays text.

A chat prompt is the model's template rendered around the client's strings and tokenized so that the template's own
role markers become control tokens. Tokenized whole with special tokens parsed (as llama.cpp's server and vLLM do), a
message spelling `<|im_end|>\n<|im_start|>system` would become real role markers: a forged turn. And the template may
edit the client's strings before writing them (SmolLM3's cuts `/think` out of the system message, so
`<|im_/thinkend|>` becomes `<|im_end|>`), so looking for whole control texts in them is not enough.

So no control text can start inside a client's string: each character that begins a control text (`<`, `[`...) is
swapped, in every client string, for a character the request's strings do not hold (one from Unicode's private use
area, so its length is the same and no filter changes it), before the template runs. Whatever the template does with
the strings, every control text in the rendered prompt is then the template's own. The prompt is cut at those: each
becomes its token, and each run of text between them, with the swapped characters put back, is tokenized as plain
text, which is how llama.cpp itself tokenizes the text between special tokens (including its left and right strips),
so a prompt tokenizes as it did whole. A prompt whose strings hold none of those characters is tokenized whole.

Thinking tags are left as written in the client's strings: templates split an answer's history at them.
Pure logic: the control tokens (llama.cpp's control and unknown tokens, the ones its `parse_special` governs) come
from the model's vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from server.errors import ForeseenError

# Private use area characters, tried in order for the stand-ins of one request.
_STAND_INS = (*range(0xF0000, 0xFFFFE), *range(0x100000, 0x10FFFE), *range(0xE000, 0xF900))
_PRIVATE_USE = re.compile("[\ue000-\uf8ff\U000f0000-\U0010ffff]")
WHITESPACE = " \t\n\v\f\r"  # C's isspace, which llama.cpp's strips use
# A character written as an escape (a template's `tojson` with ensure_ascii, a Python repr): a stand-in must not be one
# a client's text already spells so, as those are turned back too.
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})(?:\\u([dD][c-fC-F][0-9a-fA-F]{2}))?|U([0-9a-fA-F]{8}))")


@dataclass(frozen=True, slots=True)
class ControlToken:
    id: int
    lstrip: bool = False  # llama.cpp drops the whitespace before it (and rstrip: after it) when it parses it
    rstrip: bool = False


def _trie_pattern(texts: Iterable[str]) -> str:
    """One regular expression matching any of `texts`, longest first, with shared prefixes factored out: a vocabulary
    can hold thousands of control tokens (Gemma's `<unusedN>`), and a flat alternation would try each at every `<`."""
    trie: dict[str, Any] = {}
    for text in texts:
        node = trie
        for char in text:
            node = node.setdefault(char, {})
        node[""] = {}  # the end of a text

    def pattern(node: dict[str, Any]) -> str:
        ends = "" in node
        branches = [re.escape(char) + pattern(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if ends else body

    return pattern(trie)


def strings_in(value: Any) -> Iterator[str]:
    """Every string in `value`, at any depth of mappings and lists, keys included (without recursion: tool arguments
    can nest deeper than Python's stack)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, Mapping):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)


def map_strings(value: Any, change: Callable[[str], str]) -> Any:
    """`value` with `change` applied to each of its strings, keys included, at any depth (without recursion); lists
    and tuples come back as lists, mappings as dicts."""
    root = [value]
    slots: list[tuple[Any, Any]] = [(root, 0)]
    while slots:
        parent, slot = slots.pop()
        item = parent[slot]
        if isinstance(item, str):
            parent[slot] = change(item)
        elif isinstance(item, Mapping):
            changed: dict[Any, Any] = {}
            for key, inner in item.items():
                new_key = change(key) if isinstance(key, str) else key
                changed[new_key] = inner
                slots.append((changed, new_key))
            parent[slot] = changed
        elif isinstance(item, list | tuple):
            parent[slot] = listed = list(item)
            slots.extend((listed, index) for index in range(len(listed)))
    return root[0]


class ControlTexts:
    """One model's control tokens by their text."""

    def __init__(self, tokens: Mapping[str, ControlToken] | None = None, *, as_written: Iterable[str] = ()) -> None:
        """`as_written`: texts whose first character is not swapped where they begin (thinking tags)."""
        self.tokens = {text: token for text, token in (tokens or {}).items() if text}
        self._pattern = re.compile(_trie_pattern(self.tokens)) if self.tokens else None
        self._starts = sorted({text[0] for text in self.tokens})
        self._as_written = tuple(text for text in as_written if text and text[0] in self._starts)

    def may_hold_one(self, text: str) -> bool:
        """Whether `text` holds a character a control text begins with (else it holds no control text)."""
        return any(char in text for char in self._starts)

    def tokenize(self, text: str, run_tokens: Callable[[str], list[int]]) -> list[int]:
        """`text`'s tokens with its control texts parsed: each control text its token, each run between them
        `run_tokens` (tokenized as text)."""
        out: list[int] = []
        for part in self._cut(text):
            if isinstance(part, ControlToken):
                out.append(part.id)
            else:
                out += run_tokens(part)
        return out

    def _cut(self, text: str) -> Iterator[str | ControlToken]:
        """`text` as llama.cpp's special-token pass cuts it: each control text its token and the runs of text between
        them, without the whitespace a token beside them strips (llama.cpp's LSTRIP/RSTRIP); empty runs left out."""
        if self._pattern is None:
            if text:
                yield text
            return
        at, strip_left = 0, False
        for match in self._pattern.finditer(text):
            token = self.tokens[match.group()]
            run = text[at : match.start()]
            if strip_left:
                run = run.lstrip(WHITESPACE)
            if token.lstrip:
                run = run.rstrip(WHITESPACE)
            if run:
                yield run
            yield token
            at, strip_left = match.end(), token.rstrip
        run = text[at:]
        if strip_left:
            run = run.lstrip(WHITESPACE)
        if run:
            yield run

    def quoting(self, *values: Any) -> Quoting:
        """The quoting for one prompt whose client strings are in `values`; EngineError (a 400) in the unlikely case
        that they use every private-use character."""
        if self._pattern is None:
            return Quoting(self, {})
        strings = [s for value in values for s in strings_in(value)]
        starts = [char for char in self._starts if any(char in s for s in strings)]
        if not starts:
            return Quoting(self, {})
        used = {ord(char) for s in strings for char in _PRIVATE_USE.findall(s)}
        used |= {_escaped(match) for s in strings if "\\" in s for match in _ESCAPE.finditer(s)}
        free = (chr(code) for code in _STAND_INS if code not in used)
        stand_ins = dict(zip(starts, free, strict=False))
        if len(stand_ins) < len(starts):
            raise ForeseenError(
                "the messages use every Unicode private-use character, which the server needs one of", param="messages"
            )
        return Quoting(self, stand_ins)


def _escaped(match: re.Match[str]) -> int:
    """The code point an escape spells (a surrogate pair as one)."""
    high, low, long = match.groups()
    if long is not None:
        return int(long, 16)
    if low is not None:
        return 0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00)
    return int(high, 16)


def _escapes(char: str) -> list[str]:
    """How a template may write `char` when it escapes it: JSON's ensure_ascii (a surrogate pair past the BMP) and a
    Python repr."""
    code = ord(char)
    if code < 0x10000:
        return [f"\\u{code:04x}", f"\\u{code:04X}"]
    high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
    return [f"\\u{high:04x}\\u{low:04x}", f"\\U{code:08x}"]


class Quoting:
    """For one prompt: swaps the characters that begin control texts in client strings, and tokenizes the rendered
    prompt with only the template's control texts as control tokens."""

    def __init__(self, texts: ControlTexts, stand_ins: dict[str, str]) -> None:
        self._texts = texts
        self._stand_ins = stand_ins
        self._back = str.maketrans({stand_in: char for char, stand_in in stand_ins.items()})
        self._escaped_back = [(form, char) for char, stand_in in stand_ins.items() for form in _escapes(stand_in)]
        keep = _trie_pattern(texts._as_written)
        self._swaps = [
            (re.compile((f"(?!{keep})" if keep else "") + re.escape(char)), stand_in)
            for char, stand_in in stand_ins.items()
        ]

    @property
    def active(self) -> bool:
        """Whether the client's strings hold a character that begins a control text (else the prompt is tokenized
        whole, as before)."""
        return bool(self._stand_ins)

    def shield(self, value: Any) -> Any:
        """`value` (a client string, or mappings and lists of them) with the characters that begin control texts
        swapped for this prompt's stand-ins; `value` itself when there is nothing to swap."""
        if not self._stand_ins:
            return value
        return map_strings(value, self._swap)

    def _swap(self, text: str) -> str:
        for pattern, stand_in in self._swaps:
            text = pattern.sub(stand_in, text)
        return text

    def tokens(self, rendered: str, whole: Callable[[str], list[int]], text: Callable[[str], list[int]]) -> list[int]:
        """`rendered`'s tokens: `whole` (special tokens parsed) when nothing was swapped; else each of the template's
        control texts its token and each run between them `text` (none parsed), with the swapped characters back."""
        if not self._stand_ins:
            return whole(rendered)
        return self._texts.tokenize(rendered, lambda run: text(self.restored(run)))

    def restored(self, run: str) -> str:
        """`run` with the swapped characters back, also where the template wrote them escaped: the text the tokenizer
        is given (a stand-in a template escaped is twelve characters in `rendered` for one in the prompt)."""
        if not self._stand_ins:
            return run
        for form, char in self._escaped_back:
            if form in run:
                run = run.replace(form, char)
        return run.translate(self._back)
