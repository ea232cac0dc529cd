"""Per-request context as pure ASGI middleware (so streamed responses pass through unbuffered): the request ids,
HTTP metrics, the access line, and the model version header.

Every request gets a server-generated id, the only one used as an identity (the audit row's key, the rate limiter's
entries, the log lines). A client's own `X-Request-Id` is kept beside it for tracing (its own audit column, the
access line) and echoed back, but never trusted to be unique: a repeated or guessed id must not merge requests.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.request_arrival import ANSWERED_STATUS
from server.config.settings import Settings
from server.lifecycle.holder import ServedModel
from server.lifecycle.registry import ModelRegistry
from server.protocol.base import RequestLimits, request_limits
from server.serving.pipeline.admission import MODEL_VERSION_HEADER
from server.telemetry import prometheus
from server.telemetry.logging import AccessRecord, access_record_var, log_access, request_id_var

REQUEST_ID_HEADER = "x-request-id"
# A client's id is kept only if it is short and plain, so it can't forge log lines or blow up a log store.
ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Probes and scrapes arrive every few seconds; their access lines are debug-level noise.
_QUIET_PREFIXES = ("/health/", "/metrics")


def client_request_id_from(scope: Scope) -> str | None:
    """The client's X-Request-Id, if it is acceptable; one that is not is ignored (never an error: it only traces)."""
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1")
            return candidate if ACCEPTABLE_ID.fullmatch(candidate) else None
    return None


def _installed(scope: Scope) -> ServedModel | None:
    """The model a response that ran none is about: the one of a one-model catalogue; none among many."""
    models: ModelRegistry | None = getattr(scope["app"].state, "registry", None) if "app" in scope else None
    sole = models.sole if models is not None else None
    return sole.holder.current if sole is not None else None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        client_request_id = client_request_id_from(scope)
        record = AccessRecord(method=scope["method"], path=scope["path"], client_request_id=client_request_id)
        id_token = request_id_var.set(request_id)
        record_token = access_record_var.set(record)
        state = scope.setdefault("state", {})
        state["request_id"], state["client_request_id"] = request_id, client_request_id
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append(REQUEST_ID_HEADER, client_request_id or request_id)
                # A generation names the model that ran it; any other response the one model installed now.
                if MODEL_VERSION_HEADER not in headers and (served := _installed(scope)) is not None:
                    headers.append(MODEL_VERSION_HEADER, served.sha256)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            record.duration_s = round(time.perf_counter() - started, 4)
            route = scope.get("route")
            record.route = getattr(route, "path", "unmatched")
            # A body the protocol refused was answered there; the app's own answer never went out.
            record.status = status = scope.get(ANSWERED_STATUS) or record.status or 500
            prometheus.http_requests.labels(record.route, scope["method"], str(status)).inc()
            prometheus.http_request_duration.labels(record.route).observe(record.duration_s)
            quiet = scope["path"].startswith(_QUIET_PREFIXES) and status < 400
            log_access(record, level=logging.DEBUG if quiet else logging.INFO)
            access_record_var.reset(record_token)
            request_id_var.reset(id_token)


def request_limits_of(settings: Settings) -> RequestLimits:
    """The caps `settings` put on one request's body."""
    return RequestLimits(**{name: getattr(settings, name) for name in RequestLimits.__dataclass_fields__})


class RequestLimitsMiddleware:
    """Makes the server's request limits the ones this request's body is validated against."""

    def __init__(self, app: ASGIApp, limits: RequestLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = request_limits.set(self.limits)
        try:
            await self.app(scope, receive, send)
        finally:
            request_limits.reset(token)
