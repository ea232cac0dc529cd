"""An answer that may hold tool calls, as it streams: a thinking model's thinking as it is decoded; the answer's
content as far as what is written makes it certain; the calls held until the output ends and the answer is parsed.

What is certain is the format's to say (`ToolFormat.content_stream`): in the model's own format the text before
`<tool_call>`, whose grammar lets text come only before the calls; in the generic format the JSON string of a
`{"content": ...}` answer as its characters complete. What streams is always the start of the content the whole
answer parses to, and `rest` is the remainder: what is held at the end (a trailing space, a call cut short by
max_tokens, which is content after all). llama.cpp's server streams a tool answer the same way, as the difference
between successive parses of the partial answer, each the start of the next.
"""

from __future__ import annotations

from server.engine.chat_template import ReasoningSyntax
from server.engine.thinking import ReasoningSplitter, Split
from server.serving.constrain.tools.formats import ToolFormat


class ToolAnswer:
    """One choice's answer: `feed` it the output's deltas in order, then `finish()` it, then ask for the `rest` of
    the content the whole answer parsed to."""

    def __init__(self, syntax: ReasoningSyntax | None, tool_format: ToolFormat) -> None:
        self._splitter = ReasoningSplitter(syntax) if syntax is not None else None
        self._content = tool_format.content_stream()
        self._answer: list[str] = []  # the answer after the thinking, so far
        self._sent: list[str] = []  # what of its content streamed

    def feed(self, text: str) -> Split:
        """The thinking that is certain now, and the content the answer so far makes certain."""
        parts = self._splitter.feed(text) if self._splitter is not None else Split(content=text)
        return Split(parts.reasoning, self._take(parts.content))

    def finish(self) -> Split:
        """The thinking still held when the output ended (an unclosed block's), and the whole answer, to be parsed."""
        rest = self._splitter.finish() if self._splitter is not None else Split()
        self._take(rest.content)
        return Split(rest.reasoning, "".join(self._answer))

    def rest(self, content: str | None) -> str:
        """What of the parsed answer's `content` has not streamed yet."""
        sent, content = "".join(self._sent), content or ""
        if not content.startswith(sent):  # the format's parse and its stream disagree: a bug, never the model's
            raise RuntimeError("the streamed text is not the start of the parsed answer's content")
        return content[len(sent) :]

    def _take(self, text: str) -> str:
        if not text:
            return ""
        self._answer.append(text)
        certain = self._content.feed(text)
        if certain:
            self._sent.append(certain)
        return certain
