"""The telemetry stage: time to first token, time per output token and token counts into Prometheus, the access
record and a trace span. It wraps every other stage, so it also sees cache hits and refusals."""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import Any

from server.engine.base import EngineOverloadedError, Finished
from server.serving.pipeline.job import ServingJob
from server.serving.pipeline.stages import Events, Next
from server.telemetry import prometheus
from server.telemetry.logging import access_record_var, request_id_var
from server.telemetry.tracing import generation_span


async def observe(job: ServingJob, call_next: Next) -> Events:
    record = access_record_var.get()
    if record is not None:
        record.model = job.model.model_id
    with generation_span(job.model.model_id, request_id_var.get()) as span:
        try:
            async with aclosing(call_next(job)) as events:
                async for event in events:
                    if job.first_token_at is None and job.generation is not None:
                        job.first_token_at = time.monotonic()
                    if isinstance(event, Finished):
                        job.finished = event
                        _finished(job, event, span)
                    yield event
        except EngineOverloadedError:
            prometheus.requests_refused.labels("overloaded").inc()
            raise
        finally:
            if job.finished is None and job.generated_tokens and record is not None:
                # Ended early (a client gone, a drain, a failure): the access line still says what it cost.
                record.prompt_tokens, record.completion_tokens = job.prompt_tokens, job.generated_tokens


def _finished(job: ServingJob, finished: Finished, span: Any) -> None:
    ttft = (job.first_token_at or time.monotonic()) - job.arrived_at
    record = access_record_var.get()
    if record is not None:
        record.prompt_tokens = finished.prompt_tokens
        record.completion_tokens = finished.completion_tokens
        record.ttft_s = round(ttft, 4) if job.generation is not None else None
        record.cache_hit = job.cache_hit
    if span is not None:
        span.set_attributes(
            {
                "gen_ai.usage.input_tokens": finished.prompt_tokens,
                "gen_ai.usage.output_tokens": finished.completion_tokens,
                "gen_ai.response.finish_reasons": [finished.finish_reason],
                "ggufstack.cache_hit": job.cache_hit,
            }
        )
    # The token metrics describe generations; an embeddings request shows in the HTTP metrics and its audit row.
    if job.cache_hit or job.generation is None:
        return
    model = job.model.model_id
    prometheus.time_to_first_token.labels(model).observe(ttft)
    prometheus.prompt_tokens.labels(model).inc(finished.prompt_tokens)
    prometheus.completion_tokens.labels(model).inc(finished.completion_tokens)
    if finished.completion_tokens > 1 and job.first_token_at is not None:
        decode_s = time.monotonic() - job.first_token_at
        prometheus.time_per_output_token.labels(model).observe(decode_s / (finished.completion_tokens - 1))
