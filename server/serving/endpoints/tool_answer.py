"""An answer that may hold tool calls, as it streams: a thinking model's thinking as it is decoded; the answer's
content as far as what is written makes it certain; each call once its name is written, then its arguments as the
model writes them.

What is certain is the format's to say. Content (`ToolFormat.content_stream`): in the model's own format the text
before `<tool_call>`, whose grammar lets text come only before the calls; in the generic format the JSON string of a
`{"content": ...}` answer as its characters complete. Calls (`ToolFormat.call_reader`): the call objects of either
format, read as they are written (`call_json.py`). The same reader then parses the whole answer, so what streams is
always the start of the content the whole answer parses to, and exactly its calls: `Ending.content` is what is left
of the content (a trailing space, a block cut short before its call's name, which is content after all). OpenAI,
vLLM and llama.cpp's server stream calls the same way: the name first, then the arguments in pieces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.engine.chat_template import ReasoningSyntax
from server.engine.thinking import ReasoningSplitter
from server.serving.constrain.tools.formats import ToolFormat
from server.serving.constrain.tools.plan import CallEvent, ParsedAnswer


@dataclass(frozen=True, slots=True)
class Pieces:
    """What one delta of the output made certain: thinking, content, then calls' names and arguments."""

    reasoning: str = ""
    content: str = ""
    calls: list[CallEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Ending:
    """What is left to send when the output ends, and the answer it parsed to (its calls are those streamed)."""

    reasoning: str  # the thinking still held (an unclosed block's)
    content: str  # the parsed content not streamed yet
    calls: list[CallEvent]  # call pieces the held text made certain
    answer: ParsedAnswer | None  # None: not in the format at all (all content, unparsed)
    whole: str  # the answer after the thinking, as written


class ToolAnswer:
    """One choice's answer: `feed` it the output's deltas in order, then `finish()` it."""

    def __init__(self, syntax: ReasoningSyntax | None, tool_format: ToolFormat) -> None:
        self._splitter = ReasoningSplitter(syntax) if syntax is not None else None
        self._content = tool_format.content_stream()
        self._calls = tool_format.call_reader()
        self._answer: list[str] = []  # the answer after the thinking, so far
        self._sent: list[str] = []  # what of its content streamed

    def feed(self, text: str) -> Pieces:
        """The thinking that is certain now, and the content and calls the answer so far makes certain."""
        if self._splitter is None:
            return self._take(text)
        parts = self._splitter.feed(text)
        taken = self._take(parts.content)
        return Pieces(parts.reasoning, taken.content, taken.calls)

    def finish(self) -> Ending:
        sent = "".join(self._sent)  # the content made certain now is sent with the rest, in `Ending.content`
        rest = self._splitter.finish() if self._splitter is not None else None
        taken = self._take(rest.content if rest is not None else "")
        whole = "".join(self._answer)
        answer = self._calls.answer(whole)
        content = (answer.content if answer is not None else whole) or ""
        if not content.startswith(sent):  # the format's parse and its stream disagree: a bug, never the model's
            raise RuntimeError("the streamed text is not the start of the parsed answer's content")
        return Ending(rest.reasoning if rest is not None else "", content[len(sent) :], taken.calls, answer, whole)

    def _take(self, text: str) -> Pieces:
        """Read more of the answer; the content it makes certain is recorded as sent (the caller sends it)."""
        if not text:
            return Pieces()
        self._answer.append(text)
        certain = self._content.feed(text)
        if certain:
            self._sent.append(certain)
        return Pieces(content=certain, calls=self._calls.feed(text))
