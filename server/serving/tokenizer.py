"""POST /tokenize and /detokenize through the serving pipeline: the same key, model permission and request limit as
a generation (they run the tokenizer, not the model, so they count against RPM only), the tokenizing in a worker
thread, and an audit row."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing

from server.api.protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse, TokenPiece
from server.engine.base import Engine
from server.lifecycle.holder import ModelHolder
from server.serving.job import Endpoint, ServingJob
from server.serving.run import MODEL_VERSION_HEADER, ServingContext, lease_model
from server.serving.shape import Reply
from server.serving.stages import answer_prepared


async def tokenize(body: TokenizeRequest, ctx: ServingContext) -> Reply[TokenizeResponse]:
    def run(engine: Engine) -> TokenizeResponse:
        tokens = engine.tokenize(body.content, add_special=body.add_special)
        if not body.with_pieces:
            return TokenizeResponse(tokens=tokens)
        pieces = [TokenPiece(id=t, piece=engine.token_piece(t).decode(errors="replace")) for t in tokens]
        return TokenizeResponse(tokens=pieces)

    job = await _run(ctx, "tokenize", body, run)
    if not isinstance(job.prepared, TokenizeResponse):
        raise RuntimeError("the pipeline ended a tokenize request without its tokens")
    return Reply(job.response_headers, body=job.prepared)


async def detokenize(body: DetokenizeRequest, ctx: ServingContext) -> Reply[DetokenizeResponse]:
    job = await _run(ctx, "detokenize", body, lambda engine: DetokenizeResponse(content=engine.detokenize(body.tokens)))
    if not isinstance(job.prepared, DetokenizeResponse):
        raise RuntimeError("the pipeline ended a detokenize request without its text")
    return Reply(job.response_headers, body=job.prepared)


async def _run(
    ctx: ServingContext,
    endpoint: Endpoint,
    body: TokenizeRequest | DetokenizeRequest,
    run: Callable[[Engine], object],
) -> ServingJob:
    async with lease_model(ctx.holder, _serving_id(ctx.holder)) as served:
        job = ServingJob(ctx.request_id, endpoint, body, served, run, ctx.caller)
        job.response_headers[MODEL_VERSION_HEADER] = served.sha256
        async with aclosing(ctx.pipeline.run(job, terminal=answer_prepared)) as events:
            async for _ in events:
                pass
    return job


def _serving_id(holder: ModelHolder) -> str:
    """The tokenizer requests name no model: they use the serving one's."""
    return holder.serving().model_id
