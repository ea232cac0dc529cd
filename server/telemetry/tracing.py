"""OpenTelemetry traces and metrics to Azure Monitor, only when a connection string is configured.

Without one nothing is imported or exported: `generation_span` then yields None and costs a function call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

_tracer: Any = None


def configure_azure_monitor(connection_string: str) -> None:
    """Export traces, metrics and logs to Application Insights; call before the FastAPI app is created, so the
    distro's FastAPI instrumentation sees it."""
    global _tracer
    from azure.monitor.opentelemetry import configure_azure_monitor as configure
    from opentelemetry import trace

    # Our loggers only ("server.*"): exporting the exporter's own HTTP logs would feed on itself.
    configure(connection_string=connection_string, logger_name="server")
    _tracer = trace.get_tracer("ggufstack")
    log.info("exporting traces, metrics and logs to Azure Monitor")


@contextmanager
def generation_span(model_id: str, request_id: str | None) -> Iterator[Any]:
    """A span around one generation. Not made current: a streaming generation resumes in other tasks, whose
    contexts could not detach it."""
    if _tracer is None:
        yield None
        return
    span = _tracer.start_span(
        "generate", attributes={"gen_ai.request.model": model_id, "ggufstack.request_id": request_id or ""}
    )
    try:
        yield span
    except BaseException as exc:
        span.record_exception(exc)
        raise
    finally:
        span.end()
