"""POST /v1/embeddings: tokenize each input, run the serving pipeline with `embed` as its last stage (so keys, model
permissions, rate limits and the audit row apply as to generations), shape OpenAI's list."""

from __future__ import annotations

import base64
import struct

from server.engine.base import ContextOverflowError, Engine
from server.protocol.openai import EmbeddingRequest
from server.protocol.openai_replies import Embedding, EmbeddingList, EmbeddingUsage
from server.serving.endpoints.reply import Reply
from server.serving.pipeline.admission import ServingContext, admit
from server.serving.pipeline.stages import embed


async def create(body: EmbeddingRequest, ctx: ServingContext) -> Reply[EmbeddingList]:
    # The same admission as generations: the lease (a hot swap frees the old engine only after its last request,
    # embeddings included), the stages, the model-version header.
    admitted = await admit(
        ctx, "embeddings", body, lambda engine: _tokens(engine, body), model=body.model, terminal=embed
    )
    await admitted.finish()
    job, served = admitted.job, admitted.job.model
    if job.embeddings is None:
        raise RuntimeError("the pipeline ended an embeddings request without its vectors")
    data = [
        Embedding(index=i, embedding=_base64(v) if body.encoding_format == "base64" else v)
        for i, v in enumerate(job.embeddings)
    ]
    usage = EmbeddingUsage(prompt_tokens=job.prompt_tokens, total_tokens=job.prompt_tokens)
    return Reply(job.response_headers, body=EmbeddingList(data=data, model=served.model_id, usage=usage))


def _tokens(engine: Engine, body: EmbeddingRequest) -> list[list[int]]:
    """Each input's tokens. An input must fit the embeddings batch, so one certainly longer is refused before any
    input is tokenized, and one found longer once tokenized is refused before the next is: a request of many inputs
    each just under the context (a body-limit's worth in all) is not tokenized whole to be refused afterwards."""
    inputs = body.token_lists()
    most = engine.embedding_max_tokens
    for i, text in enumerate(inputs):
        if isinstance(text, str) and (least := engine.token_bound.at_least(text)) > most:
            raise _too_long(i, f"at least {least}", most)
    tokens: list[list[int]] = []
    for i, text in enumerate(inputs):
        item = engine.tokenize(text, add_special=True) if isinstance(text, str) else text
        if len(item) > most:
            raise _too_long(i, str(len(item)), most)
        tokens.append(item)
    return tokens


def _too_long(i: int, held: str, most: int) -> ContextOverflowError:
    return ContextOverflowError(
        f"input {i} has {held} tokens; at most {most} can be embedded", param="input", code="context_length_exceeded"
    )


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
