"""The FastAPI application: middleware, routers and error handlers, with the model registry loading beside them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import start_http_server

from server.api.body_limit import BodyLimitMiddleware
from server.api.disconnect import DisconnectWatcher
from server.api.errors import install_error_handlers
from server.api.middleware import RequestContextMiddleware, RequestLimitsMiddleware, request_limits_of
from server.api.routes import admin, anthropic, conversations, health, metrics, openai, responses, tokenizer
from server.api.streaming import component_schemas
from server.config.settings import Settings
from server.lifecycle.build import build_registry
from server.serving.pipeline.assemble import assemble
from server.telemetry import prometheus, tracing

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    if settings.applicationinsights_connection_string is not None:
        tracing.configure_azure_monitor(settings.applicationinsights_connection_string.get_secret_value())
    models = build_registry(settings)
    prometheus.bind(
        engine_stats=models.engine_stats,
        in_flight=lambda: models.in_flight,
        ready=lambda: models.readiness().ready,
        memory=models.memory,
        budget=lambda: models.budget.total_bytes,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as resources:
            plane = await assemble(settings, resources)
            app.state.authenticator = plane.authenticator
            app.state.pipeline = plane.pipeline
            app.state.plane = plane
            if settings.metrics_port is not None:
                server, thread = start_http_server(settings.metrics_port, settings.host, registry=prometheus.REGISTRY)
                resources.callback(thread.join, 5)
                resources.callback(server.shutdown)
                log.info("metrics on http://%s:%d%s", settings.host, settings.metrics_port, metrics.METRICS_PATH)
            # The pinned models load beside the server so the probes answer (503 with a reason) while they download.
            models.start()
            try:
                yield
            finally:
                await models.close()

    app = _API(title="ggufstack", version="0.1.0", lifespan=lifespan)
    app.state.registry = models
    app.state.holder = models.default.holder  # the first model's: what tools and tests of one model look at
    app.state.settings = settings
    app.add_middleware(DisconnectWatcher, paths=("/v1/",))
    app.add_middleware(RequestLimitsMiddleware, limits=request_limits_of(settings))
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(responses.router)
    app.include_router(anthropic.router)
    if settings.embeddings:
        app.include_router(openai.embeddings_router())
    app.include_router(tokenizer.router)
    app.include_router(conversations.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    if settings.metrics_port is None:
        app.include_router(metrics.router)
    return app


class _API(FastAPI):
    def openapi(self) -> dict[str, Any]:
        return _openapi(self)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI documents 422 for every body; this API answers 400 with its error JSON instead. Stream chunks
    join the components, for the event-stream schemas that refer to them."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path in schema["paths"].values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        components.update(component_schemas(*openai.STREAM_CHUNKS, *responses.STREAM_EVENTS, *anthropic.STREAM_EVENTS))
        app.openapi_schema = schema
    return app.openapi_schema
