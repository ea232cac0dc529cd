"""The record stage: one audit row per request, generations and embeddings alike (and, when history is kept, a
generation's messages), handed to the background writer after the last event, so PostgreSQL never slows a response.

It sits outside the limit and cache stages, so it also records refusals (their status) and cache hits.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from datetime import UTC, datetime

from server.engine.base import Finished, TextDelta
from server.errors import known_error
from server.protocol.openai import ChatCompletionRequest, CompletionRequest
from server.serving.pipeline.job import Errand, ServingJob
from server.serving.pipeline.stages import Events, Next
from server.store.writer import AuditRow, AuditWriter, ConversationMessage, Record

CLIENT_CLOSED = 499  # nginx's code for a client that went away before the answer ended


def failed_status(exc: BaseException) -> int:
    """The status an audit row gives a request that ended with `exc`: its API error's, 500 for an unexpected one,
    499 for a client gone (a cancellation)."""
    if not isinstance(exc, Exception):
        return CLIENT_CLOSED
    known = known_error(exc)
    return known.status if known is not None else 500


class RecordStage:
    def __init__(self, writer: AuditWriter, *, store_conversations: bool) -> None:
        self._writer = writer
        self._store_conversations = store_conversations

    async def __call__(self, job: ServingJob, call_next: Next) -> Events:
        status: int | None = None
        keep_text = self._store_conversations and job.conversation_id is not None
        parts: list[str] = []
        finished: Finished | None = None
        try:
            async with aclosing(call_next(job)) as events:
                async for event in events:
                    # The history goes on from the first choice, as a client that asked for n > 1 answers picks one.
                    if keep_text and isinstance(event, TextDelta) and event.index == 0:
                        parts.append(event.text)
                    elif isinstance(event, Finished):
                        finished = event
                    yield event
        except Exception as exc:
            status = failed_status(exc)
            raise
        finally:
            # A caller that stops reading after the Finished event (a non-streamed reply) closes this generator: the
            # request succeeded all the same.
            if status is None and job.reply_error is not None:
                known = known_error(job.reply_error)
                status = known.status if known is not None else 500
            if status is None:
                status = 200 if finished is not None else CLIENT_CLOSED
            self._writer.submit(self._record(job, finished, status, "".join(parts) if keep_text else None))

    def errand(self, errand: Errand) -> None:
        """The audit row of a request that ran no model (Pipeline.record): no model, no tokens."""
        row = AuditRow(
            request_id=errand.request_id,
            key_id=errand.caller.key_id,
            created_at=datetime.now(UTC),
            endpoint=errand.endpoint,
            model=None,
            model_version=None,
            prompt_tokens=0,
            completion_tokens=0,
            latency_ms=errand.latency_ms,
            ttft_ms=None,
            status=errand.status,
            cache_hit=False,
            client_request_id=errand.client_request_id,
        )
        self._writer.submit(Record(row))

    def _record(self, job: ServingJob, finished: Finished | None, status: int, answer: str | None) -> Record:
        now = time.monotonic()
        created = datetime.now(UTC)
        row = AuditRow(
            request_id=job.request_id,
            key_id=job.caller.key_id,
            created_at=created,
            endpoint=job.endpoint,
            model=job.model.model_id,
            model_version=job.model.sha256,
            prompt_tokens=finished.prompt_tokens if finished else job.prompt_tokens,
            completion_tokens=finished.completion_tokens if finished else job.generated_tokens,
            latency_ms=(now - job.arrived_at) * 1000,
            ttft_ms=(job.first_token_at - job.arrived_at) * 1000 if job.first_token_at else None,
            status=status,
            cache_hit=job.cache_hit,
            client_request_id=job.client_request_id,
        )
        prompt = _prompt_messages(job)
        if answer is None or prompt is None or job.conversation_id is None or status != 200:
            return Record(row)
        turns = [*prompt, ("assistant", answer)]
        messages = [
            ConversationMessage(
                job.conversation_id, job.caller.key_id, job.request_id, i, role, _storable(text), created
            )
            for i, (role, text) in enumerate(turns)
        ]
        return Record(row, messages)


def _prompt_messages(job: ServingJob) -> list[tuple[str, str]] | None:
    """The turns a generation's prompt adds to its conversation; None for embeddings and the tokenizer, which add
    none whatever X-Conversation-Id says."""
    if not job.runs_model:  # count_tokens carries a chat body, and generates nothing
        return None
    if isinstance(job.body, ChatCompletionRequest):
        return [(m.role, m.text()) for m in job.body.messages]
    if isinstance(job.body, CompletionRequest):
        prompt = job.body.prompt
        return [("user", prompt if isinstance(prompt, str) else str(prompt))]
    return None


def _storable(text: str) -> str:
    """PostgreSQL text cannot hold NUL; one such character must not cost a whole batch of records."""
    return text.replace("\x00", "\ufffd")
