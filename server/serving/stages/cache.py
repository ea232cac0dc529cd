"""The response-cache stage: deterministic requests are answered from Redis when the same request already ran on
the same model (same GGUF sha256) and server settings, for the same API key unless the cache is shared; otherwise the
generation runs and its events are stored once it finished. `x-ggufstack-cache` says hit or miss on cacheable
requests: with a per-key cache it tells a key only about its own earlier requests."""

from __future__ import annotations

from contextlib import aclosing
from importlib.metadata import version
from typing import Literal

from server.access.caller import Caller
from server.engine.base import SAMPLER_VERSION, Finished, GenerationEvent
from server.protocol.openai import SamplingFields
from server.serving.pipeline.job import ServingJob
from server.serving.pipeline.stages import Events, Next
from server.store.response_cache import ResponseCache, cache_key, is_deterministic

CACHE_HEADER = "x-ggufstack-cache"


# Which llama.cpp computed an answer; read from the package's metadata, so serving needs no llama_cpp import.
_LLAMA_CPP_VERSION = version("llama-cpp-python")


def cache_scope(caller: Caller, scope: Literal["key", "shared"]) -> str:
    """Whose cached answers a request may see: its own key's (the admin key and open access are one caller each)."""
    return "shared" if scope == "shared" else caller.tenant


class CacheStage:
    def __init__(self, cache: ResponseCache, *, scope: Literal["key", "shared"] = "key", n_batch: int = 512) -> None:
        self._cache = cache
        self._scope = scope
        self._n_batch = n_batch

    def key(self, job: ServingJob) -> str:
        engine = job.model.engine
        server = {
            "n_ctx": engine.n_ctx,  # chat's default max_tokens is what the context leaves
            "n_batch": self._n_batch,
            "gpu_offload": engine.gpu_offload,
            "sampler": SAMPLER_VERSION,
            "llama_cpp": _LLAMA_CPP_VERSION,
        }
        # The model as resolved: a request by alias and one by id share their answers.
        body = {**job.body.model_dump(mode="json"), "model": job.model.model_id}
        return cache_key(
            job.endpoint, body, job.model.sha256, scope=cache_scope(job.caller, self._scope), server=server
        )

    async def __call__(self, job: ServingJob, call_next: Next) -> Events:
        # Only generations are cached: embeddings' vectors are not events, and the engine batches them cheaply.
        body = job.body
        if not isinstance(body, SamplingFields) or not is_deterministic(body.temperature, body.seed):
            async with aclosing(call_next(job)) as events:
                async for event in events:
                    yield event
            return
        key = self.key(job)
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
                    # Charged to the key that asked even in a shared cache: each key's answers have a budget.
                    await self._cache.put(key, seen, owner=cache_scope(job.caller, "key"))
                yield event
