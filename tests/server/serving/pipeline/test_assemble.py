"""The pipeline the settings ask for: with no store configured, only the stages that need none."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

from server.access.caller import open_access
from server.config.settings import Settings
from server.serving.pipeline.assemble import assemble
from server.serving.pipeline.stages import prepare
from server.serving.stages.cache import CacheStage
from server.serving.stages.observe import observe
from server.serving.stages.permit import permit
from server.serving.stages.prompt_scope import scope_prompt_cache
from server.serving.stages.ratelimit import RequestLimitStage
from server.store.responses import MemoryResponseStore, NoResponseStore


async def test_no_store_and_no_admin_key_is_an_open_pipeline_of_observe_and_prepare() -> None:
    async with AsyncExitStack() as resources:
        plane = await assemble(Settings(), resources)
    assert plane.pipeline.stages == (observe, prepare)
    assert plane.authenticator is open_access


async def test_an_admin_key_alone_turns_authentication_and_the_permit_stage_on() -> None:
    async with AsyncExitStack() as resources:
        plane = await assemble(Settings(admin_api_key="k" * 32), resources)
    assert plane.pipeline.stages == (observe, permit, prepare)
    assert plane.authenticator is not open_access


async def test_responses_are_kept_in_memory_unless_the_server_keeps_none() -> None:
    async with AsyncExitStack() as resources:
        kept = await assemble(Settings(), resources)
        none = await assemble(Settings(responses_store=False), resources)
    assert kept.responses.keeps is True and isinstance(kept.responses, MemoryResponseStore)
    assert none.responses.keeps is False and isinstance(none.responses, NoResponseStore)


async def test_the_cache_and_the_rate_limits_keep_their_own_redis_health(redis_server) -> None:
    """A failure the cache meets (a large entry timing out) must not switch the rate limits to their outage
    behaviour, fail-open for every key: each use of Redis keeps its own health (`server/store/outage.py`)."""
    async with AsyncExitStack() as resources:
        plane = await assemble(Settings(redis_url=redis_server.url()), resources)
        cache = next(s for s in plane.pipeline.stages if isinstance(s, CacheStage))
        limits = next(s for s in plane.pipeline.stages if isinstance(s, RequestLimitStage))
        cache._cache._outage.failed(ConnectionError("a cache read timed out"), "responses are not cached")
        assert cache._cache._outage.down and not limits._limiter._outage.down


async def test_keys_from_a_database_scope_the_prompt_cache_per_key_unless_it_is_shared(postgres) -> None:
    """Right after the preparation, which makes the engine request the scope goes on."""
    url = postgres.create_database("assemble_" + uuid.uuid4().hex[:8])
    async with AsyncExitStack() as resources:
        per_key = await assemble(Settings(database_url=url), resources)
        shared = await assemble(Settings(database_url=url, cache_scope="shared"), resources)
    stages = list(per_key.pipeline.stages)
    assert stages[stages.index(prepare) + 1] is scope_prompt_cache
    assert scope_prompt_cache not in shared.pipeline.stages
