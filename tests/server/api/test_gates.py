"""Every route that needs a key checks it before its body is read: a router added without the gate's route class
would let keyless clients make the server parse their bodies again (tests/server/security/test_key_before_body.py
shows the threat against a running server)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi.dependencies.models import Dependant

from server.api import deps
from server.api.gates import BODY_ENDPOINTS, AdminKeyFirstRoute, KeyFirstRoute
from tests.support.routes import server_routes


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)


def test_routes_that_need_a_key_check_it_before_the_body() -> None:
    keyed = [route for route in server_routes() if deps._caller in set(_calls(route.dependant))]
    assert {"/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/embeddings", "/tokenize"} <= {
        route.path for route in keyed
    }
    assert [route.path for route in keyed if not isinstance(route, KeyFirstRoute)] == []


def test_routes_that_need_the_admin_key_check_it_before_the_body() -> None:
    admin = [route for route in server_routes() if {deps._admin, deps._admin_keys} & set(_calls(route.dependant))]
    assert "/admin/keys" in {route.path for route in admin}
    assert [route.path for route in admin if not isinstance(route, AdminKeyFirstRoute)] == []


def test_open_routes_stay_open() -> None:
    open_paths = {route.path for route in server_routes() if not isinstance(route, KeyFirstRoute | AdminKeyFirstRoute)}
    assert {"/health/live", "/health/ready", "/metrics"} <= open_paths
    assert not any(path.startswith(("/v1/", "/admin/")) for path in open_paths)


def test_every_keyed_route_with_a_body_names_the_endpoint_its_refusal_before_the_body_is_audited_as() -> None:
    """A route missing from BODY_ENDPOINTS would parse every body of a key its rate limit already refuses."""
    with_body = {route.path for route in server_routes() if isinstance(route, KeyFirstRoute) and route.body_field}
    assert with_body == set(BODY_ENDPOINTS)
