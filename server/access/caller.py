"""Who is calling: what authentication found out about a request, and the shape of an authenticator."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as authentication found out; `key_id` None means no key was needed (auth is off)."""

    key_id: str | None = None
    name: str | None = None
    models: tuple[str, ...] | None = None  # None: every model
    rpm: int | None = None
    tpm: int | None = None

    def may_use(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models

    @property
    def tenant(self) -> str:
        """Whose cached answers and prompts this caller's are: its key's (the admin key, and everyone while
        authentication is off, are one tenant each)."""
        if self.key_id is not None:
            return f"key:{self.key_id}"
        return "admin" if self.name == "admin" else "anonymous"


ANONYMOUS = Caller()

# Authentication: the Authorization header (or None) in, the caller out; raises APIError (401) to refuse.
Authenticator = Callable[[str | None], Awaitable[Caller]]


async def open_access(_: str | None) -> Caller:
    """The authenticator when no key store is configured: everyone may call."""
    return ANONYMOUS
