"""Who gets in, by configuration: no store and no admin key (open, said loudly), the admin key alone, bad headers."""

from __future__ import annotations

import contextlib

import pytest

from server.access.authenticate import ADMIN, KeyAuthenticator, authorization_of, bearer_token
from server.access.caller import ANONYMOUS
from server.config.settings import Settings
from server.errors import APIError
from server.serving.pipeline.assemble import assemble

ADMIN_KEY = "admin-key-0123456789"


async def test_no_database_and_no_admin_key_is_open_and_says_so(caplog) -> None:
    async with contextlib.AsyncExitStack() as resources:
        with caplog.at_level("WARNING"):
            plane = await assemble(Settings(), resources)
        assert await plane.authenticator(None) == ANONYMOUS
        assert plane.keys is None
    assert any("authentication is off" in r.getMessage() for r in caplog.records)


async def test_only_the_admin_key_is_accepted_when_it_is_the_only_one() -> None:
    async with contextlib.AsyncExitStack() as resources:
        plane = await assemble(Settings(admin_api_key=ADMIN_KEY), resources)
        assert await plane.authenticator(f"Bearer {ADMIN_KEY}") == ADMIN
        for header in (None, "Bearer nope", f"Basic {ADMIN_KEY}", f"Bearer {ADMIN_KEY}x"):
            with pytest.raises(APIError) as refused:
                await plane.authenticator(header)
            assert refused.value.status == 401 and refused.value.code == "invalid_api_key"


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Bearer ") is None
    assert bearer_token("Token abc") is None
    assert bearer_token(None) is None


async def test_the_authenticator_without_a_store_refuses_other_keys() -> None:
    authenticate = KeyAuthenticator(None, None)
    with pytest.raises(APIError):
        await authenticate("Bearer gsk-anything")


def test_x_api_key_presents_the_same_key_as_bearer() -> None:
    assert authorization_of([], []) is None
    assert authorization_of(["Bearer k1"], []) == "Bearer k1"
    assert authorization_of([], ["k1"]) == "Bearer k1"
    assert authorization_of([], [" k1 ", "k1"]) == "Bearer k1"
    assert authorization_of(["Bearer k1"], ["k1"]) == "Bearer k1"
    assert authorization_of(["Bearer k1"], [" "]) == "Bearer k1"  # an empty header presents nothing


@pytest.mark.parametrize(
    ("authorizations", "api_keys"),
    [
        (["Bearer admin"], ["tenant"]),  # two different keys: neither is picked
        (["Bearer tenant"], ["admin"]),
        (["Basic k1"], ["k1"]),  # a scheme that carries no bearer key beside x-api-key
        ([], ["k1", "k2"]),  # repeated headers that disagree
        (["Bearer k1", "Bearer k2"], []),  # a proxy and the app might read different ones
    ],
)
def test_ambiguous_credentials_are_refused(authorizations: list[str], api_keys: list[str]) -> None:
    with pytest.raises(APIError) as refused:
        authorization_of(authorizations, api_keys)
    assert refused.value.status == 401 and refused.value.code == "invalid_api_key"
