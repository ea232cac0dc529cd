"""A model's thinking split from its answer, as text arrives: the `<think>…</think>` block at the start of the output
is reasoning (`reasoning_content`, a Responses reasoning item, an Anthropic thinking block), the rest the answer.

As llama.cpp's server and vLLM's reasoning parsers do: only a block that opens the output counts (a `<think>` later
in an answer is answer text); a block still open when the output ends (max_tokens) is all reasoning; the whitespace
between the block and the answer is dropped. Markers are found in the text, not by token, so a marker split across
two deltas is held back until it is whole or proves not to be one: it never leaks into either part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from server.engine.chat_template import ReasoningSyntax

_Phase = Literal["start", "thinking", "after", "answer"]


@dataclass(frozen=True, slots=True)
class Split:
    reasoning: str = ""
    content: str = ""


class ReasoningSplitter:
    """Feed it the output's deltas in order, then `finish()`; each call returns the reasoning and answer text that
    is certain by then."""

    def __init__(self, syntax: ReasoningSyntax) -> None:
        self._syntax = syntax
        self._phase: _Phase = "thinking" if syntax.starts_inside else "start"
        self._held = ""

    def feed(self, text: str) -> Split:
        self._held += text
        reasoning = content = ""
        if self._phase == "start":
            lead = self._held.lstrip()
            if lead.startswith(self._syntax.open):
                self._phase, self._held = "thinking", lead[len(self._syntax.open) :]
            elif not self._syntax.open.startswith(lead):  # not a block: the whole output is the answer
                self._phase = "answer"
        if self._phase == "thinking":
            end = self._held.find(self._syntax.close)
            if end >= 0:
                reasoning, self._held = self._held[:end], self._held[end + len(self._syntax.close) :]
                self._phase = "after"
            else:
                keep = _partial_suffix(self._held, self._syntax.close)
                reasoning, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        if self._phase == "after":
            self._held = self._held.lstrip()
            if self._held:
                self._phase = "answer"
        if self._phase == "answer":
            content, self._held = self._held, ""
        return Split(reasoning, content)

    def finish(self) -> Split:
        held, self._held = self._held, ""
        if self._phase == "thinking":  # cut short inside the block: what it wrote is thinking
            return Split(reasoning=held)
        return Split(content=held if self._phase == "start" else "")


def split(syntax: ReasoningSyntax | None, text: str) -> Split:
    """A whole output's reasoning and answer; with no syntax, all of it is the answer."""
    if syntax is None:
        return Split(content=text)
    splitter = ReasoningSplitter(syntax)
    first, last = splitter.feed(text), splitter.finish()
    return Split(first.reasoning + last.reasoning, first.content + last.content)


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a start of `marker`: what may yet become the marker."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class HeldAnswer:
    """For an answer parsed whole (one that may hold tool calls): its thinking is let through as it arrives, so a
    stream shows it as the model thinks, and the answer after it is held until the output ends."""

    def __init__(self, syntax: ReasoningSyntax | None) -> None:
        self._splitter = ReasoningSplitter(syntax) if syntax is not None else None
        self._answer: list[str] = []

    def feed(self, text: str) -> str:
        """The thinking that is certain now; the answer's text is kept."""
        if self._splitter is None:
            self._answer.append(text)
            return ""
        parts = self._splitter.feed(text)
        self._answer.append(parts.content)
        return parts.reasoning

    def finish(self) -> Split:
        """The thinking still held when the output ended (an unclosed block's end), and the whole answer."""
        rest = self._splitter.finish() if self._splitter is not None else Split()
        return Split(rest.reasoning, "".join(self._answer) + rest.content)
