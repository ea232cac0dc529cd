"""A client's text that spells a control token stays text.

A chat prompt is the model's template rendered around the client's messages and tokenized with the model's special
tokens parsed, so that the template's own role markers become control tokens. Parsed the same way, a message that
spells `<|im_end|>\n<|im_start|>system` would become real role markers: a forged turn. Here each copy of a control
token's text in the client's strings is swapped for a placeholder (a random word, so no client can write one and no
template changes it) before the template runs; the rendered prompt is then tokenized in pieces: the template's text
with special tokens parsed, each placeholder's control text as plain text. Prompts whose strings spell no control
token are tokenized whole, exactly as before.

Pure logic: the control tokens' texts come from the model's vocabulary (llama.cpp's parse_special governs its
control and unknown tokens, so those are the ones listed).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


def _trie_pattern(texts: Iterable[str]) -> str:
    """One regular expression matching any of `texts`, with shared prefixes factored out: a vocabulary can hold
    thousands of control tokens (Gemma's `<unusedN>`), and a flat alternation would try each at every `<`."""
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
        # The longest text wins: a shorter one that is a prefix of it only matches where the longer does not.
        return f"(?:{body})?" if ends else body

    return pattern(trie)


class ControlTexts:
    """The texts of one model's control tokens."""

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self.texts = frozenset(text for text in texts if text)
        self._pattern = re.compile(_trie_pattern(self.texts)) if self.texts else None

    def quoting(self) -> Quoting:
        """What one prompt's rendering uses to keep its client strings' control texts as text."""
        return Quoting(self._pattern)


@dataclass
class Quoting:
    """Swaps control texts in client strings for placeholders, and splits the rendered prompt back at them."""

    _pattern: re.Pattern[str] | None
    _nonce: str = field(default_factory=lambda: "ctl" + secrets.token_hex(8))
    _quoted: list[str] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)

    def shield(self, value: Any) -> Any:
        """`value` with every control text in its strings replaced by a placeholder, at any depth of dicts and lists
        and in keys too (templates write tool arguments and schemas with `tojson`, keys and all)."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self._pattern.sub(self._placeholder, value)
        if isinstance(value, Mapping):
            return {self.shield(key): self.shield(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.shield(item) for item in value]
        return value

    def _placeholder(self, match: re.Match[str]) -> str:
        text = match.group()
        index = self._index.get(text)
        if index is None:
            index = self._index[text] = len(self._quoted)
            self._quoted.append(text)
        return f"{self._nonce}{index}q"

    def pieces(self, rendered: str) -> list[tuple[str, bool]]:
        """`rendered` as (text, parse_special) pieces in order: the template's text parsed for special tokens, each
        quoted control text not."""
        if not self._quoted:
            return [(rendered, True)]
        pieces: list[tuple[str, bool]] = []
        at = 0
        # Case-blind: a template that upper-cases a message still hands its placeholders back.
        for match in re.finditer(rf"{self._nonce}(\d+)q", rendered, re.IGNORECASE):
            if match.start() > at:
                pieces.append((rendered[at : match.start()], True))
            pieces.append((self._quoted[int(match.group(1))], False))
            at = match.end()
        if at < len(rendered):
            pieces.append((rendered[at:], True))
        return pieces
