"""The prompt-cache scope stage: a generation reuses the cached prompts of its own key only.

The engine keeps each slot's last prompt in its KV cache, and a request that starts the same way skips computing that
part, so its first token comes sooner by the time the skipped part takes. Shared between keys, that time tells one
key whether another recently sent a given prompt (a system prompt, a document, a record), as shared prompt caches did
on hosted APIs; vLLM closes it with a per-request `cache_salt`. With `GGUFSTACK_CACHE_SCOPE=key` (the default), as a
key's cached answers are its own, so are its cached prompts; `shared` lets every key reuse every prompt.
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import replace

from server.serving.pipeline.job import ServingJob
from server.serving.pipeline.stages import Events, Next


async def scope_prompt_cache(job: ServingJob, call_next: Next) -> Events:
    """After `prepare`: the prepared generation reuses only what its caller's own prompts left in the engine."""
    if job.generation is not None:
        job.generation = replace(job.generation, cache_scope=job.caller.tenant)
    async with aclosing(call_next(job)) as events:
        async for event in events:
            yield event
