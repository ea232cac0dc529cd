"""An engine that answers from a script, for the serving layer's unit tests: the pipeline, admission and stages run
for real, nothing is decoded, and nothing waits on a clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.config.settings import Settings
from server.engine.base import (
    ChoiceFinished,
    EngineStats,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    Grammar,
    TextDelta,
)
from server.engine.chat_template import ReasoningSyntax, TemplateMessage, TemplateTool, TemplateVariables, ToolSyntax
from server.engine.control_text import ControlTexts
from server.engine.token_bound import TokenBound
from server.lifecycle.budget import Budget
from server.lifecycle.catalogue import ModelSpec
from server.lifecycle.holder import ModelHolder, ServedModel
from server.lifecycle.registry import ModelRegistry
from server.model_source.base import FetchResult
from server.model_source.local import FileModelSource


class FakeStream:
    """The scripted answer: one TextDelta per piece, then Finished; counts what it yielded as completion tokens.
    With n > 1, each choice's pieces (`choices`) take turns, and a choice that runs out ends (ChoiceFinished)."""

    def __init__(
        self,
        request: GenerationRequest,
        pieces: Sequence[str],
        choices: Sequence[str] = (),
        reason: FinishReason = "stop",
    ) -> None:
        self._request = request
        self._reason = reason
        self._pieces = list(pieces)
        self.completion_tokens = 0
        self.closed = False
        self._events = self._choices(list(choices)) if request.n > 1 else None

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self

    async def __anext__(self) -> GenerationEvent:
        if self.closed:
            raise StopAsyncIteration
        if self._events is not None:
            event = next(self._events)
            self.closed = isinstance(event, Finished)
            return event
        if self.completion_tokens < len(self._pieces):
            self.completion_tokens += 1
            return TextDelta(self._pieces[self.completion_tokens - 1])
        self.closed = True
        return Finished(self._reason, len(self._request.prompt_tokens), self.completion_tokens)

    def _choices(self, replies: list[str]) -> Iterator[GenerationEvent]:
        replies = replies or ["".join(self._pieces)] * self._request.n
        at = [0] * self._request.n
        while any(position <= len(reply) for position, reply in zip(at, replies, strict=False)):
            for index in range(self._request.n):
                reply = replies[index]
                if at[index] < len(reply):
                    self.completion_tokens += 1
                    yield TextDelta(reply[at[index]], index=index)
                elif at[index] == len(reply):
                    yield ChoiceFinished(index, "stop", len(reply))
                at[index] += 1
        yield Finished("stop", len(self._request.prompt_tokens), self.completion_tokens)

    async def aclose(self) -> None:
        self.closed = True


@dataclass(eq=False)
class FakeEngine:
    """Tokens are characters (their code points); the answer is `reply`, one token per character."""

    reply: str = "hi"
    choices: tuple[str, ...] = ()  # with n > 1, choice i's reply (else `reply` for each)
    finish_reason: FinishReason = "stop"  # "length": the reply is where max_tokens cut it
    model_id: str = "fake"
    n_ctx: int = 4096
    embedding_max_tokens: int = 512
    gpu_offload: bool = False
    tool_syntax: ToolSyntax | None = None
    reasoning: ReasoningSyntax | None = None
    variables: dict[str, object] = field(default_factory=dict)  # what the last rendering gave the template
    requests: list[GenerationRequest] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)
    grammars: list[tuple[str, str]] = field(default_factory=list)  # (GBNF, start rule) of every compiled grammar
    closed: bool = False

    control_texts: ControlTexts = field(default_factory=ControlTexts)
    token_bound: TokenBound = field(default_factory=TokenBound)

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return "".join(chr(t) for t in tokens)

    def token_piece(self, token: int) -> bytes:
        return chr(token).encode()

    def render_chat(
        self,
        messages: Sequence[TemplateMessage],
        tools: Sequence[TemplateTool] | None = None,
        variables: TemplateVariables | None = None,
    ) -> str:
        self.variables = dict(variables or {})
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def compile_grammar(self, gbnf: str, *, param: str, root: str = "root") -> Grammar:
        """A grammar that holds nothing: the scripted reply is what the test says the grammar let through."""
        self.grammars.append((gbnf, root))
        return Grammar(gbnf, lambda handle: None, param=param)

    def generate(self, request: GenerationRequest) -> FakeStream:
        if request.grammar is not None:
            request.grammar.take()
        self.requests.append(request)
        stream = FakeStream(request, list(self.reply), self.choices, self.finish_reason)
        self.streams.append(stream)
        return stream

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        return [[1.0, 0.0] for _ in inputs]

    def stats(self) -> EngineStats:
        return EngineStats(1, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0, 1)

    async def close(self) -> None:
        self.closed = True


class NoLoading:
    """The registry's loading, for models that must never load: records every attempt."""

    def __init__(self) -> None:
        self.loads: list[str] = []

    async def fetch(self, spec: ModelSpec, *, beside_serving: bool) -> FetchResult:
        self.loads.append(spec.id)
        raise AssertionError(f"{spec.id} was loaded")

    async def estimate(self, spec: ModelSpec, fetched: FetchResult) -> int:
        raise AssertionError("nothing loads")

    async def load(self, spec: ModelSpec, fetched: FetchResult, report: object) -> ServedModel:
        raise AssertionError("nothing loads")

    async def watch(
        self, spec: ModelSpec, holder: ModelHolder, fetched: FetchResult, on_swapped: object = None
    ) -> None:
        return None


def registry_serving(engine: FakeEngine, sha256: str = "f" * 64, *, unloaded: tuple[str, ...] = ()) -> ModelRegistry:
    """A registry whose first model is `engine`, loaded and ready; the `unloaded` models never load (`NoLoading`)."""
    specs = [
        ModelSpec(name, (), FileModelSource(Path(f"/models/{name}.gguf")), Settings(), pin=(name == engine.model_id))
        for name in (engine.model_id, *unloaded)
    ]
    models = ModelRegistry(specs, Budget(None), loading=NoLoading())  # type: ignore[arg-type]
    models.default.holder.install(ServedModel(engine, sha256=sha256, source_version=None, loaded_at=0))
    return models
