"""A model's thinking apart from its answer, for the replies: a whole output's split (a streamed tool answer's is
`tool_answer.py`'s). How the text is split is the engine's (`server/engine/thinking.py`), which the thinking budget
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
