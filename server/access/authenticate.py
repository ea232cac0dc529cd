"""The authenticator the app uses when keys are configured: `Authorization: Bearer <key>` (or `x-api-key: <key>`) in, a
`Caller` out.

The admin key (when set) is accepted everywhere, without limits; with no key store it is the only key accepted.
"""

from __future__ import annotations

from server.access.api_keys import InvalidKeyError, KeyCheckBusyError, KeyCheckUnavailableError, KeyVerifier
from server.access.caller import Caller
from server.errors import APIError
from server.store.keys import same_secret

ADMIN = Caller(key_id=None, name="admin")


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": 'Bearer realm="ggufstack"'})


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def authorization_of(authorizations: list[str], api_keys: list[str]) -> str | None:
    """The Authorization the authenticator checks, from the request's Authorization and x-api-key headers (Anthropic's
    clients send the key as x-api-key). A key presented more than once must be the same key each time: two different
    ones are refused, not one of them picked, so no header can stand in for, or shadow, the key another carries."""
    if len(authorizations) > 1:
        raise _unauthorized("Send one Authorization header.")
    authorization = authorizations[0] if authorizations else None
    presented = {key.strip() for key in api_keys} - {""}  # an empty header presents no key (as without it)
    if not presented:
        return authorization
    if len(presented) > 1:
        raise _unauthorized("Send one API key: the x-api-key headers differ.")
    (key,) = presented
    if authorization is None:
        return f"Bearer {key}"
    bearer = bearer_token(authorization)
    if bearer is None or not same_secret(bearer, key):
        raise _unauthorized("Authorization and x-api-key carry different keys; send one of them.")
    return authorization


class KeyAuthenticator:
    def __init__(self, verifier: KeyVerifier | None, admin_key: str | None) -> None:
        self._verifier = verifier
        self._admin_key = admin_key

    async def __call__(self, authorization: str | None) -> Caller:
        key = bearer_token(authorization)
        if key is None:
            raise _unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.")
        if self._admin_key is not None and same_secret(key, self._admin_key):
            return ADMIN
        if self._verifier is None:
            raise _unauthorized("Incorrect API key provided.")
        try:
            record = await self._verifier.verify(key)
        except InvalidKeyError:
            raise _unauthorized("Incorrect API key provided.") from None
        except KeyCheckBusyError:
            raise APIError(
                503,
                "API keys cannot be checked right now (the key store is busy); try again shortly",
                type="service_unavailable",
                code="key_store_busy",
                headers={"Retry-After": "1"},
            ) from None
        except KeyCheckUnavailableError:
            raise APIError(
                503,
                "API keys cannot be checked right now (the key store is unreachable); try again shortly",
                type="service_unavailable",
                code="key_store_unavailable",
                headers={"Retry-After": "5"},
            ) from None
        models = tuple(record.models) if record.models is not None else None
        return Caller(key_id=record.id, name=record.name, models=models, rpm=record.rpm, tpm=record.tpm)
