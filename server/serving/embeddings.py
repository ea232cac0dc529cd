"""POST /v1/embeddings: tokenize each input, run the serving pipeline with `embed` as its last stage (so keys, model
permissions, rate limits and the audit row apply as to generations), shape OpenAI's list."""

from __future__ import annotations

import base64
import struct
from contextlib import aclosing

from server.api.protocol import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from server.engine.base import Engine
from server.serving.job import ServingJob
from server.serving.run import MODEL_VERSION_HEADER, ServingContext, lease_model
from server.serving.shape import Reply
from server.serving.stages import embed


async def create(body: EmbeddingRequest, ctx: ServingContext) -> Reply[EmbeddingList]:
    # A lease, as for generations: a hot swap frees the old engine only after its last request, embeddings included.
    async with lease_model(ctx.holder, body.model) as served:
        job = ServingJob(
            ctx.request_id,
            "embeddings",
            body,
            served,
            lambda engine: _tokens(engine, body),
            ctx.caller,
            client_request_id=ctx.client_request_id,
        )
        job.response_headers[MODEL_VERSION_HEADER] = served.sha256
        async with aclosing(ctx.pipeline.run(job, terminal=embed)) as events:
            async for _ in events:
                pass
    if job.embeddings is None:
        raise RuntimeError("the pipeline ended an embeddings request without its vectors")
    data = [
        Embedding(index=i, embedding=_base64(v) if body.encoding_format == "base64" else v)
        for i, v in enumerate(job.embeddings)
    ]
    usage = EmbeddingUsage(prompt_tokens=job.prompt_tokens, total_tokens=job.prompt_tokens)
    return Reply(job.response_headers, body=EmbeddingList(data=data, model=served.model_id, usage=usage))


def _tokens(engine: Engine, body: EmbeddingRequest) -> list[list[int]]:
    return [engine.tokenize(i, add_special=True) if isinstance(i, str) else i for i in body.token_lists()]


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
