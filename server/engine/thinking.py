"""Thinking in generated text: where a model's `<think>…</think>` block is, and the budget that closes it.

The split: the block at the start of the output is reasoning (`reasoning_content`, a Responses reasoning item, an
Anthropic thinking block), the rest the answer. As llama.cpp's server and vLLM's reasoning parsers do: only a block
that opens the output counts (a `<think>` later in an answer is answer text); a block still open when the output ends
(max_tokens) is all reasoning; the whitespace between the block and the answer is dropped. Markers are found in the
text, not by token, so a marker split across two deltas is held back until it is whole or proves not to be one: it
never leaks into either part.

The budget: once a generation has spent its budget of tokens inside its thinking block, the engine writes the block's
close marker for it, so the answer (and the grammar's hold on it) starts there. Per request, as llama.cpp's server
(`thinking_budget_tokens`), vLLM (`thinking_token_budget`) and Anthropic's API (`thinking.budget_tokens`) take it.
Where the thinking is and ends is read with the same split, so a model that closes the block itself is never
interrupted and a model that answers at once is never given a marker.
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

    @property
    def thinking(self) -> bool:
        """Inside the block: what comes now is thinking."""
        return self._phase == "thinking"

    @property
    def ended(self) -> bool:
        """Past the block, or sure there is none: what comes now is answer."""
        return self._phase in ("after", "answer")

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
                keep = partial_suffix(self._held, self._syntax.close)
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


def partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a start of `marker`: what may yet become the marker."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


@dataclass(frozen=True, slots=True)
class ThinkingBudget:
    syntax: ReasoningSyntax  # the markers, and whether the prompt opened the block
    tokens: int  # generated tokens the thinking may take, the open marker not counted
    close_tokens: tuple[int, ...]  # the close marker, tokenized: what is written for the model once it is spent


class ThinkingTracker:
    """One sequence's place in its thinking: fed each generated token's text, it says when to write the close
    marker (`forced`), one token at a time."""

    def __init__(self, budget: ThinkingBudget) -> None:
        self._budget = budget
        self._splitter = ReasoningSplitter(budget.syntax)
        self._done = False
        self._spent = 0
        self._forcing: list[int] = []
        if budget.syntax.starts_inside and budget.tokens == 0:
            self._close()

    def forced(self) -> int | None:
        """The next token of the close marker being written for the model, if its budget is spent."""
        return self._forcing.pop(0) if self._forcing else None

    def push(self, text: str) -> None:
        """The text of the token just generated (forced or sampled)."""
        if self._done:
            return
        entered = not self._splitter.thinking
        self._splitter.feed(text)
        if self._splitter.ended:  # closed by the model, or an answer with no thinking
            self._done = True
        elif self._splitter.thinking:
            self._spent += 0 if entered else 1  # the token that opened the block is not thinking
            if self._spent >= self._budget.tokens:
                self._close()

    def stop_forcing(self) -> None:
        """The grammar refused a forced token: the model goes on as it would without a budget."""
        self._done, self._forcing = True, []

    def _close(self) -> None:
        # Done from here: the marker is written once, whatever text its tokens render as.
        self._done, self._forcing = True, list(self._budget.close_tokens)
