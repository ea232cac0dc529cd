"""POST /v1/embeddings: tokenize each input, embed them in the engine's batches, shape OpenAI's list."""

from __future__ import annotations

import base64
import struct

from server.api.protocol import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from server.lifecycle.holder import ModelHolder
from server.serving.job import Caller
from server.serving.permit import require_permitted
from server.serving.run import lease_model


async def create(body: EmbeddingRequest, holder: ModelHolder, caller: Caller) -> EmbeddingList:
    # A lease, as for generations: a hot swap frees the old engine only after its last request, embeddings included.
    async with lease_model(holder, body.model) as served:
        require_permitted(caller, served.model_id)
        engine = served.engine
        inputs = [engine.tokenize(i, add_special=True) if isinstance(i, str) else i for i in body.token_lists()]
        vectors = await engine.embed(inputs)
    data = [
        Embedding(index=i, embedding=_base64(v) if body.encoding_format == "base64" else v)
        for i, v in enumerate(vectors)
    ]
    n_tokens = sum(len(i) for i in inputs)
    usage = EmbeddingUsage(prompt_tokens=n_tokens, total_tokens=n_tokens)
    return EmbeddingList(data=data, model=served.model_id, usage=usage)


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
