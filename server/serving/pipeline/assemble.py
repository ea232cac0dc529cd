"""The serving pipeline the settings ask for: which stages run, in which order, around the engine."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from server.access.api_keys import KeyVerifier
from server.access.authenticate import KeyAuthenticator
from server.access.caller import Authenticator, open_access
from server.access.load_limit import LoadLimit
from server.access.throttle import Throttle
from server.config.settings import Settings
from server.serving.pipeline.stages import BodyGate, LoadGate, LoadWait, Pipeline, Recorder, Stage, prepare
from server.serving.stages.concurrency import ConcurrencyStage
from server.serving.stages.observe import observe
from server.serving.stages.permit import permit
from server.serving.stages.prompt_scope import scope_prompt_cache
from server.serving.stages.record import RecordStage
from server.store.conversations import ConversationStore
from server.store.keys import KeyStore
from server.store.outage import Outage
from server.store.responses import (
    ConversationBound,
    MemoryResponseStore,
    NoResponseStore,
    ResponseStore,
)
from server.store.responses_postgres import PostgresResponseStore
from server.store.services import entra_credential, open_database

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DataPlane:
    authenticator: Authenticator
    pipeline: Pipeline
    responses: ResponseStore
    keys: KeyStore | None = None
    verifier: KeyVerifier | None = None
    conversations: ConversationStore | None = None
    admin_key: str | None = None
    # Failed admin-key attempts per client address: the admin API refuses an address that keeps guessing.
    admin_attempts: Throttle = field(default_factory=Throttle)


async def assemble(settings: Settings, resources: AsyncExitStack) -> DataPlane:
    """Open what the stages need (closed with `resources`) and compose them: observe → record → permit → cap a
    key's requests in flight → limit requests → prepare → scope the prompt cache → limit tokens → cache → generate,
    each only when its store
    (or setting) is configured. Everything that may refuse a request cheaply comes before `prepare`, which renders
    and tokenizes."""
    credential = await entra_credential(settings, resources)
    admin_key = settings.admin_api_key.get_secret_value() if settings.admin_api_key else None
    stages: list[Stage] = [observe]
    load_gates: list[LoadGate] = []
    body_gates: list[BodyGate] = []
    load_waits: list[LoadWait] = []
    recorders: list[Recorder] = []
    keys = verifier = conversations = None
    bound = ConversationBound(items=settings.max_messages, bytes=settings.responses_max_conversation_bytes)
    responses: ResponseStore = MemoryResponseStore(
        max_items=settings.responses_memory_max, retention_s=settings.responses_retention_s, bound=bound
    )
    if settings.database_url is not None:
        database = await open_database(settings, resources, credential)
        keys = KeyStore(database.pool)
        # Its own outage state: the audit writer's troubles must not switch key checks to outage mode.
        verifier = KeyVerifier(keys, cache_ttl_s=settings.key_cache_ttl_s, outage_grace_s=settings.key_outage_grace_s)
        conversations = ConversationStore(database.pool)
        responses = PostgresResponseStore(
            database.pool,
            retention_s=settings.responses_retention_s,
            bound=bound,
            max_bytes_per_key_per_day=settings.responses_max_bytes_per_key_per_day,
        )
        record = RecordStage(database.writer, store_conversations=settings.store_conversations)
        stages.append(record)
        recorders.append(record.errand)
    if not settings.responses_store:
        responses = NoResponseStore(bound)
    if keys is None and admin_key is None:
        log.warning(
            "no database and no admin key configured: authentication is off, the API is open to anyone who can reach "
            "%s",
            settings.host,
        )
        authenticator: Authenticator = open_access
    else:
        authenticator = KeyAuthenticator(verifier, admin_key)
        stages.append(permit)
        if settings.max_concurrent_per_key > 0:
            concurrency = ConcurrencyStage(settings.max_concurrent_per_key)
            stages.append(concurrency)
            load_waits.append(concurrency.waiting_for_load)
            body_gates.append(concurrency.before_body)
    # Right after the preparation, which makes the generation: whose cached prompts it may reuse. Only keys from the
    # database make tenants; without them every request is one caller's (everyone's, or the admin key's).
    tenants = keys is not None and settings.cache_scope == "key"
    prepared: list[Stage] = [prepare, scope_prompt_cache] if tenants else [prepare]
    if settings.redis_url is None:
        stages.extend(prepared)
    else:
        # Imported here: redis-py loads the OpenTelemetry SDK, which a server without Redis should not carry.
        from server.access.ratelimit import RateLimiter
        from server.serving.stages.cache import CacheStage
        from server.serving.stages.ratelimit import RequestLimitStage, TokenLimitStage
        from server.store.redis import open_redis
        from server.store.response_cache import ResponseCache

        redis = await open_redis(settings, resources, credential)
        limiter = RateLimiter(redis.client, fail_closed=settings.ratelimit_fail_closed, outage=redis.outage)
        request_limit = RequestLimitStage(limiter)
        load_gates.append(request_limit.before_load)
        body_gates.append(request_limit.before_body)
        stages.extend([request_limit, *prepared, TokenLimitStage(limiter)])
        if settings.cache_ttl_s > 0:
            cache = ResponseCache(
                redis.client,
                ttl_s=settings.cache_ttl_s,
                max_bytes_per_key=settings.cache_max_bytes_per_key,
                max_entry_bytes=settings.cache_max_entry_bytes,
                # Its own health: a failure the cache meets (a large entry timing out) must not switch the rate
                # limits to their outage behaviour, open for every key unless they fail closed.
                outage=Outage("redis", use="response cache"),
            )
            stages.append(CacheStage(cache, scope=settings.cache_scope, n_batch=settings.n_batch))
    log.info("serving pipeline: %s", " → ".join(_name(s) for s in stages))
    return DataPlane(
        authenticator,
        Pipeline(
            stages,
            load_gates=load_gates,
            load_waits=load_waits,
            body_gates=body_gates,
            recorders=recorders,
            load_limit=LoadLimit(settings.model_loads_per_key_per_minute),
        ),
        responses,
        keys,
        verifier,
        conversations,
        admin_key,
    )


def _name(stage: Stage) -> str:
    return getattr(stage, "__name__", type(stage).__name__)
