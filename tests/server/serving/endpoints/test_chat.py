"""Chat completions from a scripted engine that writes one character per delta: a thinking model's output split
into `reasoning_content` and `content`, whole and streamed, with every marker arriving in pieces; a reply that cannot
be shaped after generating is the request's recorded outcome."""

from __future__ import annotations

import pytest

from server.access.caller import ANONYMOUS
from server.engine.chat_template import ReasoningSyntax
from server.protocol.openai import ChatCompletionRequest
from server.protocol.openai_replies import ChatCompletion, ChatCompletionChunk
from server.serving.endpoints import chat
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.stages import Pipeline, prepare
from server.serving.stages.record import RecordStage
from tests.support.audit import AuditRows
from tests.support.fake_engine import FakeEngine, registry_serving


def _context(reply: str, reasoning: ReasoningSyntax | None) -> ServingContext:
    engine = FakeEngine(reply=reply, reasoning=reasoning)
    pipeline = Pipeline([prepare])  # type: ignore[list-item]  # stages are plain async generator functions
    return ServingContext(registry_serving(engine), pipeline, ANONYMOUS, request_id="r1")


def _request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "fake", "messages": [{"role": "user", "content": "q"}], **fields}
    )


async def _streamed(ctx: ServingContext, **fields: object) -> list[dict[str, object]]:
    reply = await chat.create(_request(stream=True, **fields), ctx)
    assert reply.chunks is not None
    deltas = []
    async for chunk in reply.chunks:
        assert isinstance(chunk, ChatCompletionChunk)
        deltas.extend(c.delta.model_dump() | {"finish": c.finish_reason} for c in chunk.choices)
    return deltas


async def test_the_thinking_and_the_answer_are_told_apart() -> None:
    reply = await chat.create(_request(), _context("<think>\nplan\n</think>\n\nanswer", ReasoningSyntax()))
    assert isinstance(reply.body, ChatCompletion)
    message = reply.body.choices[0].message
    assert (message.reasoning_content, message.content) == ("\nplan\n", "answer")


async def test_a_model_that_does_not_think_keeps_its_markers_and_sends_no_reasoning_key() -> None:
    reply = await chat.create(_request(), _context("<think>x</think>y", None))
    assert isinstance(reply.body, ChatCompletion)
    message = reply.body.choices[0].message
    assert message.content == "<think>x</think>y"
    assert "reasoning_content" not in message.model_dump()


async def test_streamed_character_by_character_no_marker_leaks() -> None:
    deltas = await _streamed(_context("<think>ab</think>\n\ncd", ReasoningSyntax()))
    assert deltas[0]["role"] == "assistant"
    assert [d.get("reasoning_content") for d in deltas if "reasoning_content" in d] == ["a", "b"]
    assert [d.get("content") for d in deltas if "content" in d] == ["c", "d"]
    assert deltas[-1]["finish"] == "stop"


async def test_a_stream_cut_inside_a_marker_sends_what_was_held_before_it_finishes() -> None:
    deltas = await _streamed(_context("<think>ab</thi", ReasoningSyntax()))
    assert "".join(str(d.get("reasoning_content", "")) for d in deltas) == "ab</thi"
    assert deltas[-1] == {"finish": "stop"}


WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
THEN_CALL = '<think>ab</think>\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'


async def test_a_tool_answer_streams_its_thinking_as_decoded_then_the_calls_parsed_from_the_rest() -> None:
    ctx = _context(THEN_CALL, ReasoningSyntax())
    deltas = await _streamed(ctx, tools=[WEATHER], tool_choice="required")
    thinking = [d["reasoning_content"] for d in deltas if d.get("reasoning_content")]
    assert thinking == ["a", "b"], "the thinking is not held until the answer is parsed"
    calls = [d["tool_calls"] for d in deltas if d.get("tool_calls")]
    assert calls[0][0]["function"]["name"] == "get_weather"  # type: ignore[index]  # a list of tool call deltas
    assert deltas[0]["role"] == "assistant" and deltas[-1]["finish"] == "tool_calls"
    whole = await chat.create(_request(tools=[WEATHER], tool_choice="required"), ctx)
    assert isinstance(whole.body, ChatCompletion)
    message = whole.body.choices[0].message
    assert message.reasoning_content == "ab" and message.tool_calls and message.content is None


HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _hermes(reply: str, reasoning: ReasoningSyntax | None = None) -> ServingContext:
    engine = FakeEngine(reply=reply, reasoning=reasoning, tool_syntax="hermes")
    pipeline = Pipeline([prepare])  # type: ignore[list-item]  # stages are plain async generator functions
    return ServingContext(registry_serving(engine), pipeline, ANONYMOUS, request_id="r1")


@pytest.mark.parametrize(
    ("reply", "reasoning", "content"),
    [
        ("Let me check.\n" + HERMES_CALL, None, "Let me check."),
        ("<think>ab</think>\n\nOn it. " + HERMES_CALL, ReasoningSyntax(), "On it."),
        ('Checking <tool_call>\n{"name": "get_we', None, 'Checking <tool_call>\n{"name": "get_we'),  # cut short
    ],
)
async def test_a_hermes_answer_streams_its_text_before_the_call_as_it_is_decoded(
    reply: str, reasoning: ReasoningSyntax | None, content: str
) -> None:
    ctx = _hermes(reply, reasoning)
    deltas = await _streamed(ctx, tools=[WEATHER])
    order = ["role", "reasoning_content", "content", "tool_calls", "finish"]
    kinds = [next((k for k in reversed(order) if d.get(k)), "role") for d in deltas]
    texts = [d["content"] for d in deltas if d.get("content")]
    assert len(texts) > 1 and kinds.index("content") < kinds.index("finish")
    assert "".join(map(str, texts)) == content
    assert kinds == sorted(kinds, key=order.index)
    whole = await chat.create(_request(tools=[WEATHER]), ctx)
    assert isinstance(whole.body, ChatCompletion)
    message = whole.body.choices[0].message
    assert message.content == content and bool(message.tool_calls) == ("</tool_call>" in reply)
    assert deltas[-1]["finish"] == whole.body.choices[0].finish_reason


@pytest.mark.parametrize(
    ("reply", "content"),
    [
        ('{"content": "It is \\"sunny\\" \\u00e9\\n"}', 'It is "sunny" é\n'),
        ('<think>ab</think>\n{"content": "Sunny."}', "Sunny."),
        ('{"content": "Cut sh', "Cut sh"),  # max_tokens ended it
    ],
)
async def test_a_generic_answer_streams_its_content_string_as_it_is_decoded(reply: str, content: str) -> None:
    ctx = _context(reply, ReasoningSyntax() if reply.startswith("<think>") else None)
    deltas = await _streamed(ctx, tools=[WEATHER])
    texts = [d["content"] for d in deltas if d.get("content")]
    assert len(texts) > 1 and "".join(map(str, texts)) == content
    assert deltas[-1]["finish"] == "stop" and not any(d.get("tool_calls") for d in deltas)
    whole = await chat.create(_request(tools=[WEATHER]), ctx)
    assert isinstance(whole.body, ChatCompletion) and whole.body.choices[0].message.content == content


def _unparsable(*args: object) -> object:
    raise RuntimeError("the answer could not be shaped")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_reply_that_cannot_be_shaped_after_generating_is_recorded_as_failed(
    stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is shaped before the generation closes (a tool answer's stream too, on its Finished event), so the
    audit row says 500, what the client heard, not 200."""
    monkeypatch.setattr(chat, "_parsed_message", _unparsable)
    rows = AuditRows()
    engine = FakeEngine(reply=THEN_CALL)
    pipeline = Pipeline([RecordStage(rows, store_conversations=False), prepare])  # type: ignore[list-item, arg-type]  # stages are plain async generator functions; the stand-in writer
    ctx = ServingContext(registry_serving(engine), pipeline, ANONYMOUS, request_id="r1")
    with pytest.raises(RuntimeError, match="could not be shaped"):
        if stream:
            await _streamed(ctx, tools=[WEATHER], tool_choice="required")
        else:
            await chat.create(_request(tools=[WEATHER], tool_choice="required"), ctx)
    assert rows.statuses == [500]
    assert ctx.models.in_flight == 0


async def test_with_n_choices_each_choice_s_calls_go_out_when_that_choice_ends() -> None:
    """They used to wait for the last choice: a short call sat behind another choice's long answer."""
    engine = FakeEngine(choices=(HERMES_CALL, "A much longer answer that goes on and on. " * 4), tool_syntax="hermes")
    pipeline = Pipeline([prepare])  # type: ignore[list-item]  # stages are plain async generator functions
    ctx = ServingContext(registry_serving(engine), pipeline, ANONYMOUS, request_id="r1")
    reply = await chat.create(_request(stream=True, n=2, tools=[WEATHER]), ctx)
    assert reply.chunks is not None
    order: list[tuple[int, str]] = []
    async for chunk in reply.chunks:
        assert isinstance(chunk, ChatCompletionChunk)
        for c in chunk.choices:
            kind = "finish" if c.finish_reason else "call" if c.delta.tool_calls else "text" if c.delta.content else ""
            order.append((c.index, kind))
    second = [i for i, step in enumerate(order) if step == (1, "text")]
    assert order.index((0, "finish")) < second[len(second) // 2], "the first choice's call waited for the second"
    assert (0, "call") in order and order[-1] == (1, "finish")
    whole = await chat.create(_request(n=2, tools=[WEATHER]), ctx)
    assert isinstance(whole.body, ChatCompletion)
    assert [c.finish_reason for c in whole.body.choices] == ["tool_calls", "stop"]


async def test_a_call_cut_short_by_max_tokens_is_a_call_with_its_arguments_so_far_streamed_or_not() -> None:
    """As OpenAI answers: finish_reason "length", the last call's arguments as far as they got. Its name and
    arguments streamed as they were written, so the stream adds up to the same calls."""
    cut = 'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n'
    cut += '{"name": "get_weather", "arguments": {"city": "Ro'
    engine = FakeEngine(reply=cut, tool_syntax="hermes", finish_reason="length")
    pipeline = Pipeline([prepare])  # type: ignore[list-item]  # stages are plain async generator functions
    ctx = ServingContext(registry_serving(engine), pipeline, ANONYMOUS, request_id="r1")
    deltas = await _streamed(ctx, tools=[WEATHER])
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        for call in d.get("tool_calls") or []:  # type: ignore[attr-defined]  # a list of tool call deltas
            entry = calls.setdefault(call["index"], {"name": "", "arguments": ""})
            entry["name"] += call["function"].get("name") or ""
            entry["arguments"] += call["function"]["arguments"] or ""
    assert sum(1 for d in deltas if d.get("tool_calls")) > 4, "the arguments stream in pieces"
    assert deltas[-1]["finish"] == "length"
    whole = await chat.create(_request(tools=[WEATHER]), ctx)
    assert isinstance(whole.body, ChatCompletion)
    choice = whole.body.choices[0]
    assert choice.finish_reason == "length" and choice.message.content == "Sure." and choice.message.tool_calls
    assert (
        [{"name": c.function.name, "arguments": c.function.arguments} for c in choice.message.tool_calls]
        == [calls[0], calls[1]]
        == [
            {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"name": "get_weather", "arguments": '{"city": "Ro'},
        ]
    )
