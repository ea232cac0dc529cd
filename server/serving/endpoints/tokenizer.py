"""POST /tokenize and /detokenize through the serving pipeline: the same key, model permission and request limit as
a generation (they run the tokenizer, not the model, so they count against RPM only), the tokenizing in a worker
thread, and an audit row."""

from __future__ import annotations

from collections.abc import Callable

from server.engine.base import Engine
from server.protocol.ops import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse, TokenPiece
from server.serving.endpoints.reply import Reply
from server.serving.pipeline.admission import ServingContext, admit
from server.serving.pipeline.job import Endpoint, ServingJob
from server.serving.pipeline.stages import answer_prepared


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
    # A tokenizer request that names no model uses the catalogue's first.
    model = body.model or ctx.models.default.id
    admitted = await admit(ctx, endpoint, body, run, model=model, terminal=answer_prepared)
    await admitted.finish()
    job = admitted.job
    return job
