"""GET /metrics in Prometheus' text format, unauthenticated like llama.cpp's and vLLM's (GGUFSTACK_METRICS_PORT
moves it to a port of its own that never leaves the cluster)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.telemetry.prometheus import REGISTRY

router = APIRouter()

METRICS_PATH = "/metrics"


@router.get(
    METRICS_PATH,
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "Metrics."}},
)
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
