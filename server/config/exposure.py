"""Whether the server may start where it is told to listen: an API with no keys must not be open to the network by
accident."""

from __future__ import annotations

import ipaddress

from server.config.settings import ENV_PREFIX, Settings


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def open_to_the_network(settings: Settings) -> str | None:
    """Why the server must not start with `settings`: the API would be open to anyone on a non-loopback address
    (no database for keys, no admin key) without GGUFSTACK_ALLOW_UNAUTHENTICATED saying so; None when it may."""
    if settings.database_url is not None or settings.admin_api_key is not None or settings.allow_unauthenticated:
        return None
    if is_loopback(settings.host):
        return None
    return (
        f"{ENV_PREFIX}HOST={settings.host} is reachable from the network, but no {ENV_PREFIX}DATABASE_URL or "
        f"{ENV_PREFIX}ADMIN_API_KEY is set, so anyone could use the API; configure one, bind 127.0.0.1, or set "
        f"{ENV_PREFIX}ALLOW_UNAUTHENTICATED=true to serve it open on purpose"
    )
