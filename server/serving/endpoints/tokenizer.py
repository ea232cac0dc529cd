"""POST /tokenize and /detokenize through the serving pipeline: the same key, model permission and request limit as
a generation (they run the tokenizer, not the model, so they count against RPM only), the tokenizing in a worker
thread, and an audit row."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

from server.engine.base import Engine
from server.protocol.ops import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.serving.endpoints.reply import Reply
from server.serving.pipeline.admission import ServingContext, admit
from server.serving.pipeline.job import Endpoint, ServingJob
from server.serving.pipeline.stages import answer_prepared


async def tokenize(body: TokenizeRequest, ctx: ServingContext) -> Reply[TokenizeResponse]:
    """A TokenizeResponse, written as JSON in the worker thread that tokenizes: a short input can be many tokens (an
    emoji is three byte tokens in many vocabularies), and as pydantic objects a million of them took the replica's
    memory up by most of a gigabyte and its event loop for seconds."""

    def run(engine: Engine) -> bytes:
        tokens = engine.tokenize(body.content, add_special=body.add_special)
        if not body.with_pieces:
            return json.dumps({"tokens": tokens}, separators=(",", ":")).encode()
        return _with_pieces(engine, tokens)

    job = await _run(ctx, "tokenize", body, run)
    if not isinstance(job.prepared, bytes):
        raise RuntimeError("the pipeline ended a tokenize request without its tokens")
    return Reply(job.response_headers, rendered=job.prepared)


def _with_pieces(engine: Engine, tokens: list[int]) -> bytes:
    """`{"tokens": [{"id": ..., "piece": ...}, ...]}` (TokenizeResponse with TokenPiece items), each distinct token's
    piece decoded once, written as UTF-8 bytes from the start (a str buffer holding one non-ASCII character takes
    four bytes for every character)."""
    pieces: dict[int, bytes] = {}
    out = io.BytesIO()
    out.write(b'{"tokens":[')
    for i, token in enumerate(tokens):
        piece = pieces.get(token)
        if piece is None:
            text = engine.token_piece(token).decode(errors="replace")
            piece = pieces[token] = json.dumps(text, ensure_ascii=False).encode()
        out.write(b'%s{"id":%d,"piece":%s}' % (b"," if i else b"", token, piece))
    out.write(b"]}")
    return out.getvalue()


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
