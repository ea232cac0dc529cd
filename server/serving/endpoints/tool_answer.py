"""An answer that may hold tool calls, as it streams: a thinking model's thinking as it is decoded; the text the model
writes before its calls as it is decoded, as far as it is sure to be the content the whole answer parses to; the calls
held until the output ends and the answer is parsed.

Text is sure to be content up to the marker that opens the calls, in a format that has one (`ToolFormat.calls_open`,
Hermes's `<tool_call>`, whose grammar lets text come only before the calls). A tail that may be the start of the marker
is held until it is whole or proves not to be one, and trailing whitespace is held too (a parse with calls drops it),
so what streams is always the start of the parsed content, and `rest` is the remainder: what an answer without a
complete call (cut short by max_tokens) still holds, marker and all. llama.cpp's server streams a tool answer the same
way, as the difference between successive parses of the partial answer, each the start of the next. A format without
such a marker (the generic JSON envelope) has its whole answer held and parsed at the end.
"""

from __future__ import annotations

from server.engine.chat_template import ReasoningSyntax
from server.engine.thinking import ReasoningSplitter, Split, partial_suffix
from server.serving.constrain.tools.formats import ToolFormat


class ToolAnswer:
    """One choice's answer: `feed` it the output's deltas in order, then `finish()` it, then ask for the `rest` of
    the content the whole answer parsed to."""

    def __init__(self, syntax: ReasoningSyntax | None, tool_format: ToolFormat) -> None:
        self._splitter = ReasoningSplitter(syntax) if syntax is not None else None
        self._marker = tool_format.calls_open
        self._answer = ""  # the answer after the thinking, so far
        self._sent = 0  # how much of it streamed as content
        self._held = self._marker is None  # past the text: all that comes is held to the end

    def feed(self, text: str) -> Split:
        """The thinking that is certain now, and the answer's text that is now sure to be content."""
        parts = self._splitter.feed(text) if self._splitter is not None else Split(content=text)
        self._answer += parts.content
        return Split(parts.reasoning, self._release())

    def finish(self) -> Split:
        """The thinking still held when the output ended (an unclosed block's), and the whole answer, to be parsed."""
        rest = self._splitter.finish() if self._splitter is not None else Split()
        self._answer += rest.content
        return Split(rest.reasoning, self._answer)

    def rest(self, content: str | None) -> str:
        """What of the parsed answer's `content` has not streamed yet."""
        sent, content = self._answer[: self._sent], content or ""
        if not content.startswith(sent):  # the format's parse and its marker disagree: a bug, never the model's
            raise RuntimeError("the streamed text is not the start of the parsed answer's content")
        return content[len(sent) :]

    def _release(self) -> str:
        if self._held or self._marker is None:
            return ""
        # Nothing before `_sent` can start the marker: a tail that might was held.
        found = self._answer.find(self._marker, self._sent)
        if found >= 0:
            self._held, end = True, found
        else:
            end = len(self._answer) - partial_suffix(self._answer, self._marker)
        end = max(self._sent, len(self._answer[:end].rstrip()))
        released, self._sent = self._answer[self._sent : end], end
        return released
