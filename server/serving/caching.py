"""The response-cache stage: deterministic requests are answered from Redis when the same request already ran on
the same model (same GGUF sha256); otherwise the generation runs and its events are stored once it finished.
`x-ggufstack-cache` says hit or miss on cacheable requests."""

from __future__ import annotations

from contextlib import aclosing

from server.api.protocol import EmbeddingRequest
from server.engine.base import Finished, GenerationEvent
from server.serving.job import ServingJob
from server.serving.response_cache import ResponseCache, cache_key, is_deterministic
from server.serving.stages import Events, Next

CACHE_HEADER = "x-ggufstack-cache"


class CacheStage:
    def __init__(self, cache: ResponseCache) -> None:
        self._cache = cache

    async def __call__(self, job: ServingJob, call_next: Next) -> Events:
        # Embeddings are not cached: their vectors are not events, and the engine batches them cheaply.
        body = job.body
        if isinstance(body, EmbeddingRequest) or not is_deterministic(body.temperature, body.seed):
            async with aclosing(call_next(job)) as events:
                async for event in events:
                    yield event
            return
        key = cache_key(job.endpoint, job.body.model_dump(mode="json"), job.model.sha256)
        cached = await self._cache.get(key)
        if cached is not None:
            job.cache_hit = True
            job.response_headers[CACHE_HEADER] = "hit"
            for event in cached:
                yield event
            return
        job.response_headers[CACHE_HEADER] = "miss"
        seen: list[GenerationEvent] = []
        async with aclosing(call_next(job)) as events:
            async for event in events:
                seen.append(event)
                if isinstance(event, Finished):
                    await self._cache.put(key, seen)
                yield event
