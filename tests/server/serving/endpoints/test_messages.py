"""Anthropic's message from a scripted thinking model (one character per delta): a thinking block before the text,
whole and streamed as `thinking_delta`s closed by an empty `signature_delta`; a reply that cannot be shaped after
generating is the request's recorded outcome."""

from __future__ import annotations

from typing import Any

import pytest

from server.access.caller import ANONYMOUS
from server.engine.chat_template import ReasoningSyntax
from server.protocol.anthropic import Message, MessagesRequest
from server.serving.endpoints import messages
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.stages import Pipeline, prepare
from server.serving.stages.record import RecordStage
from tests.support.audit import AuditRows
from tests.support.fake_engine import FakeEngine, registry_serving

THOUGHT = "<think>ab</think>\n\ncd"
THINKS = ReasoningSyntax()


def _context(reply: str, reasoning: ReasoningSyntax | None = THINKS) -> ServingContext:
    engine = FakeEngine(reply=reply, reasoning=reasoning)
    pipeline = Pipeline([prepare])  # type: ignore[list-item]  # stages are plain async generator functions
    return ServingContext(registry_serving(engine), pipeline, ANONYMOUS, request_id="r1")


def _request(**fields: Any) -> MessagesRequest:
    body = {"model": "fake", "max_tokens": 64, "messages": [{"role": "user", "content": "q"}]}
    return MessagesRequest.model_validate(body | {"thinking": {"type": "enabled", "budget_tokens": 1024}} | fields)


async def test_the_thinking_is_a_block_before_the_text() -> None:
    reply = await messages.create(_request(), _context(THOUGHT))
    assert isinstance(reply.body, Message)
    assert [b.model_dump() for b in reply.body.content] == [
        {"type": "thinking", "thinking": "ab", "signature": ""},
        {"type": "text", "text": "cd"},
    ]


async def test_a_model_that_does_not_think_answers_in_text_only() -> None:
    reply = await messages.create(_request(), _context(THOUGHT, None))
    assert isinstance(reply.body, Message)
    assert [b.model_dump() for b in reply.body.content] == [{"type": "text", "text": THOUGHT}]


async def test_the_stream_sends_thinking_deltas_then_closes_the_block_before_the_text() -> None:
    reply = await messages.create(_request(stream=True), _context(THOUGHT))
    assert reply.chunks is not None
    events = [e.model_dump() async for e in reply.chunks]
    blocks = [(e["type"], e.get("index"), e.get("delta") or e.get("content_block")) for e in events[2:-2]]
    assert blocks == [
        ("content_block_start", 0, {"type": "thinking", "thinking": "", "signature": ""}),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "a"}),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "b"}),
        ("content_block_delta", 0, {"type": "signature_delta", "signature": ""}),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, {"type": "text", "text": ""}),
        ("content_block_delta", 1, {"type": "text_delta", "text": "c"}),
        ("content_block_delta", 1, {"type": "text_delta", "text": "d"}),
        ("content_block_stop", 1, None),
    ]


async def test_a_stream_cut_inside_the_thinking_closes_its_block() -> None:
    reply = await messages.create(_request(stream=True), _context("<think>ab</th"))
    assert reply.chunks is not None
    events = [e.model_dump() async for e in reply.chunks]
    thinking = "".join(e["delta"].get("thinking", "") for e in events if e["type"] == "content_block_delta")
    assert thinking == "ab</th"
    assert [e["type"] for e in events][-4:] == [
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


WEATHER = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def _kinds(events: list[dict]) -> list[tuple[object, object, object]]:
    """Each event's type, block index and delta (or block) type: a stream's shape."""
    return [(e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {}).get("type")) for e in events]


THEN_CALL = '<think>ab</think>\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'


async def test_a_tool_answer_streams_its_thinking_block_as_decoded_then_the_tool_use() -> None:
    reply = await messages.create(
        _request(stream=True, tools=[WEATHER], tool_choice={"type": "any"}), _context(THEN_CALL)
    )
    assert reply.chunks is not None
    events = [event.model_dump() async for event in reply.chunks]
    kinds = _kinds(events)
    assert kinds == [
        ("message_start", None, None),
        ("ping", None, None),
        ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "tool_use"),
        *[("content_block_delta", 1, "input_json_delta")] * len('{"city": "Paris"}'),  # as the model writes it
        ("content_block_stop", 1, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    streamed = "".join(e["delta"].get("partial_json", "") for e in events if e["type"] == "content_block_delta")
    assert streamed == '{"city": "Paris"}'


HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


async def test_a_hermes_answer_streams_its_text_block_before_the_tool_use() -> None:
    engine = FakeEngine(reply="<think>ab</think>\nOn it. " + HERMES_CALL, reasoning=THINKS, tool_syntax="hermes")
    pipeline = Pipeline([prepare])  # type: ignore[list-item]  # stages are plain async generator functions
    ctx = ServingContext(registry_serving(engine), pipeline, ANONYMOUS, request_id="r1")
    reply = await messages.create(_request(stream=True, tools=[WEATHER]), ctx)
    assert reply.chunks is not None
    events = [event.model_dump() async for event in reply.chunks]
    kinds = _kinds(events)
    assert kinds == [
        ("message_start", None, None),
        ("ping", None, None),
        ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"),
        *[("content_block_delta", 1, "text_delta")] * 5,  # "O", "n", " i", "t", "." (a space waits for the next)
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"),
        *[("content_block_delta", 2, "input_json_delta")] * len('{"city": "Paris"}'),
        ("content_block_stop", 2, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    assert "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta") == "On it."
    whole = await messages.create(_request(tools=[WEATHER]), ctx)
    assert isinstance(whole.body, Message)
    assert [b.type for b in whole.body.content] == ["thinking", "text", "tool_use"]
    assert whole.body.content[1].model_dump()["text"] == "On it." and events[-2]["delta"]["stop_reason"] == "tool_use"


def _recorded(reply: str) -> tuple[ServingContext, AuditRows]:
    rows = AuditRows()
    engine = FakeEngine(reply=reply)
    pipeline = Pipeline([RecordStage(rows, store_conversations=False), prepare])  # type: ignore[list-item, arg-type]  # stages are plain async generator functions; the stand-in writer
    return ServingContext(registry_serving(engine), pipeline, ANONYMOUS, request_id="r1"), rows


def _unparsable(*args: object) -> object:
    raise RuntimeError("the answer could not be shaped")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_reply_that_cannot_be_shaped_after_generating_is_recorded_as_failed(
    stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is shaped before the generation closes, so its audit row says 500, what the client heard."""
    monkeypatch.setattr(messages, "_stop_reason", _unparsable)
    ctx, rows = _recorded('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}')
    body = _request(stream=stream, tools=[WEATHER], tool_choice={"type": "any"}, thinking={"type": "disabled"})
    with pytest.raises(RuntimeError, match="could not be shaped"):
        if stream:
            reply = await messages.create(body, ctx)
            assert reply.chunks is not None
            [event async for event in reply.chunks]
        else:
            await messages.create(body, ctx)
    assert rows.statuses == [500]
    assert ctx.models.in_flight == 0


CUT_CALL = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "cel'


@pytest.mark.parametrize("stream", [False, True])
async def test_a_call_cut_short_by_max_tokens_keeps_the_input_written_so_far(stream: bool) -> None:
    """Its input streamed as it was written; unstreamed, it is what the SDK's stream accumulator reads that partial
    JSON as (jiter's partial mode: the values that are whole); the stop reason says it was cut."""
    engine = FakeEngine(reply=CUT_CALL, finish_reason="length")
    pipeline = Pipeline([prepare])  # type: ignore[list-item]  # stages are plain async generator functions
    ctx = ServingContext(registry_serving(engine), pipeline, ANONYMOUS, request_id="r1")
    body = _request(stream=stream, tools=[WEATHER], tool_choice={"type": "any"}, thinking={"type": "disabled"})
    reply = await messages.create(body, ctx)
    if not stream:
        assert isinstance(reply.body, Message)
        (block,) = reply.body.content
        assert block.type == "tool_use" and block.input == {"city": "Paris"} and reply.body.stop_reason == "max_tokens"
        return
    assert reply.chunks is not None
    events = [e.model_dump() async for e in reply.chunks]
    streamed = "".join(e["delta"].get("partial_json", "") for e in events if e["type"] == "content_block_delta")
    assert streamed == '{"city": "Paris", "unit": "cel' and events[-2]["delta"]["stop_reason"] == "max_tokens"
