"""A model's thinking apart from its answer, for the replies: a whole output's split, and an answer held whole while
its thinking streams. How the text is split is the engine's (`server/engine/thinking.py`), which the thinking budget
reads too."""

from __future__ import annotations

from server.engine.chat_template import ReasoningSyntax
from server.engine.thinking import ReasoningSplitter, Split


def split(syntax: ReasoningSyntax | None, text: str) -> Split:
    """A whole output's reasoning and answer; with no syntax, all of it is the answer."""
    if syntax is None:
        return Split(content=text)
    splitter = ReasoningSplitter(syntax)
    first, last = splitter.feed(text), splitter.finish()
    return Split(first.reasoning + last.reasoning, first.content + last.content)


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
