"""The server's route table as tests read it: every APIRoute of an app built with `create_app`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from server.api.app import create_app
from server.config.settings import load_settings


def _api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:  # FastAPI's included routers
            yield from _api_routes(included.routes)


def server_routes() -> list[APIRoute]:
    """Every route, embeddings and the main port's /metrics included."""
    return list(_api_routes(create_app(load_settings(embeddings=True, metrics_port=None)).routes))
