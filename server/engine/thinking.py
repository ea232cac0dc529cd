"""A thinking budget: once a generation has spent its budget of tokens inside its thinking block, the engine writes
the block's close marker for it, so the answer (and the grammar's hold on it) starts there.

Per request, as llama.cpp's server (`thinking_budget_tokens`), vLLM (`thinking_token_budget`) and Anthropic's API
(`thinking.budget_tokens`) take it. Where the thinking is and ends is read from the generated text, as the serving
layer splits it (a block opened by the prompt, or by the output's first non-blank text), so a model that closes the
block itself is never interrupted and a model that answers at once is never given a marker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from server.engine.chat_template import ReasoningSyntax

_Phase = Literal["start", "thinking", "done"]


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
        self._phase: _Phase = "start"
        self._tail = ""  # generated text that may still hold a marker
        self._spent = 0
        self._forcing: list[int] = []
        if budget.syntax.starts_inside:
            self._enter()

    def forced(self) -> int | None:
        """The next token of the close marker being written for the model, if its budget is spent."""
        return self._forcing.pop(0) if self._forcing else None

    def push(self, text: str) -> None:
        """The text of the token just generated (forced or sampled)."""
        if self._phase == "done":
            return
        self._tail += text
        if self._phase == "start":
            lead = self._tail.lstrip()
            if lead.startswith(self._budget.syntax.open):
                self._tail = lead[len(self._budget.syntax.open) :]
                self._enter()
            elif not self._budget.syntax.open.startswith(lead):  # the output is an answer, no thinking
                self._phase = "done"
            return
        close = self._budget.syntax.close
        if close in self._tail:
            self._phase, self._forcing = "done", []
            return
        self._tail = self._tail[-(len(close) - 1) :]
        self._spent += 1
        if self._spent >= self._budget.tokens:
            self._close()

    def stop_forcing(self) -> None:
        """The grammar refused a forced token: the model goes on as it would without a budget."""
        self._phase, self._forcing = "done", []

    def _enter(self) -> None:
        self._phase = "thinking"
        if self._budget.tokens == 0:
            self._close()

    def _close(self) -> None:
        # Done from here: the marker is written once, whatever text its tokens render as.
        self._phase, self._forcing = "done", list(self._budget.close_tokens)
