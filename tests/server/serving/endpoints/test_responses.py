"""The Responses endpoint on a scripted engine: input items become the chat messages the preparation renders, a
conversation chained by previous_response_id is prepended, a stream that fails after its first event ends with
response.failed, a store that cannot save fails the request it was asked to keep, and nothing is kept with store
false."""

from __future__ import annotations

from typing import Any

import pytest

from server.access.caller import ANONYMOUS, Caller
from server.engine.chat_template import ReasoningSyntax
from server.errors import APIError
from server.protocol.responses import InputItemsQuery, ResponseRequest
from server.protocol.responses_replies import LifecycleEvent
from server.serving.endpoints import responses, responses_stored
from server.serving.endpoints.responses_items import chat_body, owner_of, stored_input
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.job import ServingJob
from server.serving.pipeline.stages import Events, Next, Pipeline, prepare
from server.serving.stages.record import RecordStage
from server.store.errors import StoreUnavailableError
from server.store.responses import MemoryResponseStore, NoResponseStore, StoredResponse
from tests.support.audit import AuditRows
from tests.support.fake_engine import FakeEngine, registry_serving


def _request(**fields: object) -> ResponseRequest:
    return ResponseRequest.model_validate({"model": "fake", "input": "hi", **fields})


def _context(
    *stages: object, reply: str = "hello", caller: Caller = ANONYMOUS, **engine_fields: Any
) -> tuple[ServingContext, FakeEngine]:
    engine = FakeEngine(reply=reply, **engine_fields)
    pipeline = Pipeline([*stages, prepare])  # type: ignore[list-item]  # stages are plain async generator functions
    return ServingContext(registry_serving(engine), pipeline, caller, request_id="r1"), engine


def test_items_become_chat_messages_calls_joining_their_turn() -> None:
    body = _request(
        instructions="Be brief.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
    )
    items = stored_input(body)
    assert [i["id"][:3] for i in items] == ["msg", "msg", "fc_", "fc_", "fco"]
    chat = chat_body(body, items)
    assert [(m.role, m.text()) for m in chat.messages] == [
        ("system", "Be brief."),
        ("user", "weather?"),
        ("assistant", "Checking."),
        ("tool", "sunny"),
    ]
    assert [c.id for c in chat.messages[2].tool_calls or []] == ["c1", "c2"]


def test_a_chained_conversation_past_the_message_cap_is_a_400_naming_input() -> None:
    body = _request()
    too_many = [{"type": "message", "id": f"m{i}", "role": "user", "content": "x"} for i in range(1100)]
    with pytest.raises(APIError) as refused:
        chat_body(body, too_many)
    assert refused.value.status == 400 and refused.value.param == "input"


def test_owners() -> None:
    assert owner_of(Caller(key_id="k1")) == "key:k1"
    assert owner_of(Caller(name="admin")) == "admin"
    assert owner_of(ANONYMOUS) == "anonymous"


async def test_previous_response_is_prepended_and_store_false_keeps_nothing() -> None:
    ctx, engine = _context()
    store = MemoryResponseStore(max_items=10, retention_s=60)
    first = await responses.create(_request(input="one"), ctx, store)
    assert first.body is not None and first.body.output[0].content[0].text == "hello"  # type: ignore[union-attr]  # a message
    second = await responses.create(_request(input="two", previous_response_id=first.body.id, store=False), ctx, store)
    assert second.body is not None and second.body.previous_response_id == first.body.id
    assert engine.detokenize(engine.requests[1].prompt_tokens) == "<user>one<assistant>hello<user>two<assistant>"
    with pytest.raises(APIError) as gone:
        await responses_stored.retrieve(second.body.id, ctx, store)
    assert gone.value.status == 404


async def test_a_server_that_keeps_no_responses_says_so_and_keeps_none() -> None:
    # GGUFSTACK_RESPONSES_STORE=false: a request's `store: true` (the API's default) keeps nothing, and the reply
    # does not claim it did.
    ctx, _ = _context()
    store = NoResponseStore()
    reply = await responses.create(_request(input="one"), ctx, store)
    assert reply.body is not None and reply.body.store is False
    with pytest.raises(APIError) as gone:
        await responses_stored.retrieve(reply.body.id, ctx, store)
    assert gone.value.status == 404
    with pytest.raises(APIError) as unknown:
        await responses.create(_request(input="two", previous_response_id=reply.body.id), ctx, store)
    assert (unknown.value.status, unknown.value.param) == (404, "previous_response_id")


async def test_a_stream_that_fails_after_its_first_event_ends_with_response_failed() -> None:
    async def fail_midway(job: ServingJob, call_next: Next) -> Events:
        events = call_next(job)
        yield await anext(events)
        await events.aclose()
        raise RuntimeError("the engine died")

    ctx, _ = _context(fail_midway)
    store = MemoryResponseStore(max_items=10, retention_s=60)
    reply = await responses.create(_request(stream=True), ctx, store)
    assert reply.chunks is not None and reply.event_names
    events = [event async for event in reply.chunks]
    last = events[-1]
    assert isinstance(last, LifecycleEvent) and last.type == "response.failed"
    assert last.response.status == "failed" and last.response.error is not None
    assert "the engine died" not in last.response.error.message  # an unforeseen failure names no internals
    assert [e.sequence_number for e in events] == list(range(len(events)))  # type: ignore[attr-defined]  # every event has one
    assert ctx.models.in_flight == 0


class _DownStore(MemoryResponseStore):
    async def save(self, stored: StoredResponse) -> None:
        raise StoreUnavailableError("PostgreSQL is unreachable (OperationalError)")


async def test_a_response_that_cannot_be_kept_is_a_503() -> None:
    ctx, _ = _context()
    store = _DownStore(max_items=10, retention_s=60)
    with pytest.raises(APIError) as refused:
        await responses.create(_request(), ctx, store)
    assert refused.value.status == 503 and refused.value.code == "database_unavailable"
    kept_nothing = await responses.create(_request(store=False), ctx, store)
    assert kept_nothing.body is not None and kept_nothing.body.status == "completed"


@pytest.mark.parametrize("stream", [False, True])
async def test_the_audit_row_of_a_response_that_could_not_be_kept_says_what_the_client_heard(stream: bool) -> None:
    rows = AuditRows()
    ctx, _ = _context(RecordStage(rows, store_conversations=False))  # type: ignore[arg-type]  # the stand-in writer
    kept = await responses.create(_request(stream=stream), ctx, MemoryResponseStore(max_items=10, retention_s=60))
    if stream:
        assert kept.chunks is not None and [event async for event in kept.chunks][-1].type == "response.completed"  # type: ignore[attr-defined]  # a lifecycle event
    if stream:
        reply = await responses.create(_request(stream=True), ctx, _DownStore(max_items=10, retention_s=60))
        assert reply.chunks is not None
        last = [event async for event in reply.chunks][-1]
        assert isinstance(last, LifecycleEvent) and last.type == "response.failed"
    else:
        with pytest.raises(APIError):
            await responses.create(_request(), ctx, _DownStore(max_items=10, retention_s=60))
    assert [record.audit.status for record in rows.records] == [200, 503]
    assert ctx.models.in_flight == 0


async def test_a_client_that_leaves_after_response_created_returns_the_lease() -> None:
    ctx, engine = _context(reply="a long answer")
    reply = await responses.create(_request(stream=True), ctx, MemoryResponseStore(max_items=1, retention_s=1))
    assert reply.chunks is not None
    created = await anext(reply.chunks)
    assert isinstance(created, LifecycleEvent) and created.type == "response.created"
    assert ctx.models.in_flight == 1
    await reply.chunks.aclose()
    assert ctx.models.in_flight == 0
    assert engine.streams[0].closed


async def test_input_items_page_newest_first_unless_asked() -> None:
    ctx, _ = _context()
    store = MemoryResponseStore(max_items=10, retention_s=60)
    said = [{"role": "user", "content": text} for text in ("a", "b", "c")]
    created = await responses.create(_request(input=said), ctx, store)
    assert created.body is not None
    newest = (await responses_stored.input_items(created.body.id, InputItemsQuery(), ctx, store)).body
    assert newest is not None and [i.content[0].text for i in newest.data] == ["c", "b", "a"]  # type: ignore[union-attr]  # messages
    asc = InputItemsQuery(order="asc", limit=2)
    page = (await responses_stored.input_items(created.body.id, asc, ctx, store)).body
    assert page is not None and [i.content[0].text for i in page.data] == ["a", "b"] and page.has_more  # type: ignore[union-attr]  # messages
    after = InputItemsQuery(order="asc", after=page.last_id)
    rest = (await responses_stored.input_items(created.body.id, after, ctx, store)).body
    assert rest is not None and [i.content[0].text for i in rest.data] == ["c"] and not rest.has_more  # type: ignore[union-attr]  # messages
    someone, _ = _context(caller=Caller(key_id="someone"))
    with pytest.raises(APIError):
        await responses_stored.input_items(created.body.id, InputItemsQuery(), someone, store)


@pytest.mark.parametrize(
    ("reasoning", "effort"), [(None, None), ({"effort": "none"}, "none"), ({"summary": "auto"}, None)]
)
def test_reasoning_effort_carries_over_to_chat(reasoning: dict | None, effort: str | None) -> None:
    body = _request(**({"reasoning": reasoning} if reasoning else {}))
    assert chat_body(body, stored_input(body)).reasoning_effort == effort


async def test_a_thinking_models_stream_opens_the_message_after_the_reasoning_item() -> None:
    ctx, engine = _context(reply="<think>ab</think>\n\ncd")
    engine.reasoning = ReasoningSyntax()
    reply = await responses.create(
        _request(stream=True, store=False), ctx, MemoryResponseStore(max_items=1, retention_s=1)
    )
    assert reply.chunks is not None
    events = [e.model_dump() async for e in reply.chunks]
    kinds = [(e["type"], e.get("output_index"), e.get("delta")) for e in events[2:-1]]
    assert kinds == [
        ("response.output_item.added", 0, None),
        ("response.reasoning_text.delta", 0, "a"),
        ("response.reasoning_text.delta", 0, "b"),
        ("response.reasoning_text.done", 0, None),
        ("response.output_item.done", 0, None),
        ("response.output_item.added", 1, None),
        ("response.content_part.added", 1, None),
        ("response.output_text.delta", 1, "c"),
        ("response.output_text.delta", 1, "d"),
        ("response.output_text.done", 1, None),
        ("response.content_part.done", 1, None),
        ("response.output_item.done", 1, None),
    ]
    final = events[-1]["response"]["output"]
    assert [item["type"] for item in final] == ["reasoning", "message"]
    assert final[0]["content"] == [{"type": "reasoning_text", "text": "ab"}]


@pytest.mark.parametrize(
    ("reply", "statuses"),
    [
        ("<think>ab</think>\n\ncd", [("reasoning", "completed"), ("message", "incomplete")]),
        ("<think>ab", [("reasoning", "incomplete"), ("message", "incomplete")]),
    ],
)
async def test_a_cut_answer_says_the_same_of_its_reasoning_streamed_or_not(
    reply: str, statuses: list[tuple[str, str]]
) -> None:
    """max_tokens cut the answer: thinking the model closed before it is complete, thinking it was writing is not."""
    ctx, engine = _context(reply=reply, finish_reason="length")
    engine.reasoning = ReasoningSyntax()
    store = MemoryResponseStore(max_items=10, retention_s=60)
    streamed = await responses.create(_request(stream=True, store=False), ctx, store)
    assert streamed.chunks is not None
    events = [event async for event in streamed.chunks]
    last = events[-1]
    assert isinstance(last, LifecycleEvent) and last.type == "response.incomplete"
    done = [e.item for e in events if e.type == "response.output_item.done"]  # type: ignore[attr-defined]  # item events
    assert [(i.type, i.status) for i in done] == statuses
    whole = await responses.create(_request(store=False), ctx, store)
    assert whole.body is not None
    assert [(i.type, i.status) for i in whole.body.output] == statuses


WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
THEN_CALL = '<think>ab</think>\n{"tool_calls": [{"name": "get_weather", "arguments": {}}]}'


async def test_a_tool_answer_streams_its_reasoning_item_as_decoded_then_the_call() -> None:
    engine = FakeEngine(reply=THEN_CALL, reasoning=ReasoningSyntax())
    pipeline = Pipeline([prepare])  # type: ignore[list-item]  # stages are plain async generator functions
    ctx = ServingContext(registry_serving(engine), pipeline, ANONYMOUS, request_id="r1")
    store = MemoryResponseStore(max_items=10, retention_s=60)
    reply = await responses.create(_request(stream=True, tools=[WEATHER], tool_choice="required"), ctx, store)
    assert reply.chunks is not None
    events = [event async for event in reply.chunks]
    kinds = [e.type for e in events]  # type: ignore[attr-defined]  # every event has its type
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
    ], "the reasoning streams before the answer is parsed"
    last = events[-1]
    assert isinstance(last, LifecycleEvent) and last.type == "response.completed"
    assert [item.type for item in last.response.output] == ["reasoning", "function_call"]
    assert [e.output_index for e in events if e.type == "response.output_item.added"] == [0, 1]  # type: ignore[attr-defined]  # item events


HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'


async def test_a_hermes_answer_streams_its_message_before_the_call_and_keeps_what_it_streamed() -> None:
    ctx, _ = _context(reply="Let me check. " + HERMES_CALL, tool_syntax="hermes")
    store = MemoryResponseStore(max_items=10, retention_s=60)
    reply = await responses.create(_request(stream=True, tools=[WEATHER]), ctx, store)
    assert reply.chunks is not None
    events = [event async for event in reply.chunks]
    kinds = [e.type for e in events]  # type: ignore[attr-defined]  # every event has its type
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]  # type: ignore[attr-defined]  # text deltas
    assert len(deltas) > 1 and "".join(deltas) == "Let me check."
    assert kinds.index("response.output_text.delta") < kinds.index("response.function_call_arguments.delta")
    assert [e.sequence_number for e in events] == list(range(len(events)))  # type: ignore[attr-defined]  # every event has one
    last = events[-1]
    assert isinstance(last, LifecycleEvent) and last.type == "response.completed"
    assert [item.type for item in last.response.output] == ["message", "function_call"]
    added = [e.item.id for e in events if e.type == "response.output_item.added"]  # type: ignore[attr-defined]  # item events
    assert added == [item.id for item in last.response.output]
    stored = await store.response(last.response.id, owner_of(ANONYMOUS))
    assert stored is not None and stored["output"] == last.response.model_dump(mode="json", by_alias=True)["output"]
    whole = await responses.create(_request(tools=[WEATHER]), ctx, store)
    assert whole.body is not None
    assert [i.model_dump(exclude={"id"}) for i in whole.body.output][:1] == [
        i.model_dump(exclude={"id"}) for i in last.response.output
    ][:1]


TWO_CALLS_CUT = (
    'On it. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Ro'
)


async def test_calls_stream_as_they_are_written_and_one_cut_short_is_an_incomplete_item() -> None:
    """Each function call's item opens once its name is written and its arguments stream in pieces; a call max_tokens
    cut is an incomplete item with its arguments so far, streamed or not (OpenAI's shape for a cut answer)."""
    ctx, _ = _context(reply=TWO_CALLS_CUT, tool_syntax="hermes", finish_reason="length")
    store = MemoryResponseStore(max_items=10, retention_s=60)
    reply = await responses.create(_request(stream=True, tools=[WEATHER]), ctx, store)
    assert reply.chunks is not None
    events = [event async for event in reply.chunks]
    args: dict[int, list[str]] = {}
    for e in events:
        if e.type == "response.function_call_arguments.delta":  # type: ignore[attr-defined]  # every event has a type
            args.setdefault(e.output_index, []).append(e.delta)  # type: ignore[attr-defined]  # argument deltas
    assert {i: "".join(pieces) for i, pieces in args.items()} == {1: '{"city": "Paris"}', 2: '{"city": "Ro'}
    assert len(args[1]) > 1, "the arguments stream in pieces, not whole at the end"
    kinds = [e.type for e in events]  # type: ignore[attr-defined]  # every event has a type
    first_arguments = kinds.index("response.function_call_arguments.delta")
    assert first_arguments < kinds.index("response.function_call_arguments.done")
    done = [e.item for e in events if e.type == "response.output_item.done"]  # type: ignore[attr-defined]  # item events
    assert [(i.type, i.status) for i in done] == [
        ("message", "completed"), ("function_call", "completed"), ("function_call", "incomplete")
    ]  # fmt: skip
    last = events[-1]
    assert isinstance(last, LifecycleEvent) and last.type == "response.incomplete"
    assert [i.model_dump() for i in last.response.output] == [i.model_dump() for i in done]
    whole = await responses.create(_request(tools=[WEATHER]), ctx, store)
    assert whole.body is not None
    assert [i.model_dump(exclude={"id", "call_id"}) for i in whole.body.output] == [
        i.model_dump(exclude={"id", "call_id"}) for i in done
    ]
