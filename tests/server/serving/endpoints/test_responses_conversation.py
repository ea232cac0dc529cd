"""The conversation a Responses request continues is bounded: every item counts (reasoning items, which never reach
the prompt, too) and so does every byte (ids, logprobs, reasoning text). A chain used to grow with each request
(every row keeping the whole chain again) while being charged a few prompt tokens; now it stops at the bound with a
400 naming previous_response_id, or input when the input alone is over it. And it is read as part of the request's
preparation: after the limits, parsed off the event loop, its refusals recorded."""

from __future__ import annotations

import threading

import pytest

from server.access.caller import ANONYMOUS
from server.errors import APIError
from server.protocol.responses import ResponseRequest
from server.serving.endpoints import responses
from server.serving.endpoints.responses_conversation import bounded
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.job import ServingJob
from server.serving.pipeline.stages import Events, Next, Pipeline, prepare
from server.serving.stages.record import RecordStage
from server.store.responses import NO_CONVERSATION, ConversationBound, MemoryResponseStore, StoredConversation
from tests.support.audit import AuditRows
from tests.support.fake_engine import FakeEngine, registry_serving


def _reasoning(n: int, text: str = "thought") -> list[dict]:
    return [
        {"type": "reasoning", "id": f"rs_{i}", "summary": [], "content": [{"type": "reasoning_text", "text": text}]}
        for i in range(n)
    ]


def _message(text: str) -> dict:
    return {"type": "message", "id": "msg_1", "role": "user", "content": [{"type": "input_text", "text": text}]}


def test_reasoning_items_count_towards_the_items_bound() -> None:
    bound = ConversationBound(items=4, bytes=1 << 20)
    prior = StoredConversation(3, 300, _reasoning(3))
    assert len(bounded(bound, prior, [_message("hi")]).items()) == 4
    with pytest.raises(APIError) as refused:
        bounded(bound, prior, [*_reasoning(1), _message("hi")])
    assert (refused.value.status, refused.value.param, refused.value.code) == (
        400,
        "previous_response_id",
        "conversation_too_large",
    )


def test_the_bytes_of_what_never_reaches_the_prompt_count() -> None:
    bound = ConversationBound(items=1024, bytes=2048)
    with pytest.raises(APIError) as over:
        bounded(bound, StoredConversation(2, 2000, _reasoning(2)), [_message("hi")])
    assert over.value.param == "previous_response_id" and "2048 bytes" in over.value.message
    # Over the bound as stored: the store did not even read it.
    with pytest.raises(APIError) as unread:
        bounded(bound, StoredConversation(1, 4096, None), [_message("hi")])
    assert unread.value.param == "previous_response_id"
    with pytest.raises(APIError) as alone:
        bounded(bound, NO_CONVERSATION, [*_reasoning(1, "x" * 3000), _message("hi")])
    assert alone.value.param == "input"


async def test_a_chain_stops_at_the_bound_and_no_row_outgrows_it() -> None:
    engine = FakeEngine(reply="ok")
    ctx = ServingContext(registry_serving(engine), Pipeline([prepare]), ANONYMOUS, request_id="r1")
    bound = ConversationBound(items=1024, bytes=16 * 1024)
    store = MemoryResponseStore(max_items=100, retention_s=60, bound=bound)
    previous, refused, turns = None, None, 0
    for _ in range(20):
        body = ResponseRequest.model_validate(
            {
                "model": "fake",
                "input": [*_reasoning(4, "x" * 1000), _message("go on")],
                "previous_response_id": previous,
            }
        )
        try:
            reply = await responses.create(body, ctx, store)
        except APIError as exc:
            refused = exc
            break
        assert reply.body is not None
        previous, turns = reply.body.id, turns + 1
        kept = await store.conversation(previous, "anonymous")
        assert kept is not None and kept.size <= bound.bytes + 1024  # the bound, and one answer
    assert refused is not None and (refused.status, refused.param) == (400, "previous_response_id")
    assert turns == 3  # 3 turns of 4 KB of reasoning fit in 16 KB; the fourth did not


class _CountingStore(MemoryResponseStore):
    """Counts its reads of a conversation, and says where the items were parsed."""

    def __init__(self) -> None:
        super().__init__(max_items=10, retention_s=60)
        self.reads = 0
        self.parsed_in: list[str] = []

    async def conversation(self, response_id: str, owner: str) -> StoredConversation | None:
        self.reads += 1
        found = await super().conversation(response_id, owner)
        if found is None:
            return None
        parsed_in = self.parsed_in

        class _Watched(StoredConversation):
            __slots__ = ()

            def load(self) -> list[dict]:
                parsed_in.append(threading.current_thread().name)
                return StoredConversation.load(self)

        return _Watched(found.items, found.size, found.content)


async def _over_rpm(job: ServingJob, call_next: Next) -> Events:
    raise APIError(429, "rate limit reached", code="rate_limit_exceeded")
    yield  # an async generator, as stages are


def _serving(*stages: object) -> tuple[ServingContext, AuditRows]:
    rows = AuditRows()
    record = RecordStage(rows, store_conversations=False)  # type: ignore[arg-type]  # the stand-in writer
    pipeline = Pipeline([record, *stages, prepare])  # type: ignore[list-item]  # stages are async generator functions
    return ServingContext(registry_serving(FakeEngine(reply="ok")), pipeline, ANONYMOUS, request_id="r1"), rows


async def test_a_continuation_is_read_after_the_limits_off_the_event_loop_and_its_refusals_are_recorded() -> None:
    """The stored conversation was read (and parsed, and converted) before admission: a key over its RPM got 404 for
    an unknown id, after the read, and no refusal of the read had an audit row."""
    store = _CountingStore()
    ctx, rows = _serving()
    first = await responses.create(_request("one"), ctx, store)
    assert first.body is not None
    await responses.create(_request("two", previous=first.body.id), ctx, store)
    assert store.reads == 1 and store.parsed_in and threading.main_thread().name not in store.parsed_in
    with pytest.raises(APIError) as unknown:
        await responses.create(_request("three", previous="resp_unknown"), ctx, store)
    assert (unknown.value.status, unknown.value.param) == (404, "previous_response_id")

    limited, limited_rows = _serving(_over_rpm)
    with pytest.raises(APIError) as refused:
        await responses.create(_request("four", previous=first.body.id), limited, store)
    assert refused.value.status == 429 and store.reads == 2  # the unknown id's read, none for the refused one
    assert [r.audit.status for r in [*rows.records, *limited_rows.records]] == [200, 200, 404, 429]
    assert [r.audit.endpoint for r in rows.records] == ["responses"] * 3
    assert ctx.models.in_flight == limited.models.in_flight == 0


def _request(text: str, previous: str | None = None) -> ResponseRequest:
    return ResponseRequest.model_validate({"model": "fake", "input": text, "previous_response_id": previous})
