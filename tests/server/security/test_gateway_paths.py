"""Threat: reaching the admin API through the AKS gateway, whose route forwards only `/v1/...`, `/tokenize` and
`/detokenize` (infra/ingress.py). A path that starts with `/v1` but names `/admin` after dot segments or encoded
slashes must not be the admin API here: the server routes the path as sent, it does not resolve it."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import pytest

from tests.server.security.conftest import ADMIN_KEY, Plane

DISGUISED = [
    "/v1/../admin/keys",
    "/v1/%2e%2e/admin/keys",
    "/v1/..%2fadmin/keys",
    "/v1/%2E%2E%2Fadmin%2Fkeys",
    "/v1/./../admin/keys",
    "/tokenize/../admin/keys",
]


def _get_as_sent(plane: Plane, path: str) -> tuple[int, bytes]:
    address = urlsplit(plane.url)
    # http.client sends the path as given; httpx would resolve the dot segments before sending.
    connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_admin_api_answers_its_own_path(plane: Plane) -> None:
    # The control: the same request on the plain path is the admin API, so a 404 below is the path's doing.
    assert _get_as_sent(plane, "/admin/keys")[0] == 200


@pytest.mark.parametrize("path", DISGUISED)
def test_a_path_under_v1_is_never_the_admin_api(plane: Plane, path: str) -> None:
    status, body = _get_as_sent(plane, path)
    assert status == 404, (status, body[:300])
