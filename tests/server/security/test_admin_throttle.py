"""Threat: guessing the admin key at full speed. Failed admin-key attempts are counted per client address (in a
bounded map); after 10 in a minute that address gets 429 with Retry-After, even with the right key, until the minute
is over. Other addresses are not affected."""

from __future__ import annotations

import httpx

from server.access.throttle import Throttle
from tests.server.security.conftest import ADMIN_KEY, Plane


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_refused_after_its_failures_until_the_window_ends() -> None:
    clock = Clock()
    throttle = Throttle(max_events=3, window_s=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after_s("10.0.0.1") is None
        throttle.count("10.0.0.1")
    clock.now += 15
    assert throttle.retry_after_s("10.0.0.1") == 45
    assert throttle.retry_after_s("10.0.0.2") is None
    clock.now += 45
    assert throttle.retry_after_s("10.0.0.1") is None


def test_the_memory_of_addresses_is_bounded() -> None:
    throttle = Throttle(max_events=1, window_s=60, max_identities=2, clock=Clock())
    for address in ("a", "b", "c"):
        throttle.count(address)
    assert throttle.retry_after_s("a") is None, "forgotten: the oldest of three, with room for two"
    assert throttle.retry_after_s("b") and throttle.retry_after_s("c")


def test_the_admin_api_throttles_an_address_that_keeps_guessing(plane: Plane) -> None:
    # From another loopback address, so the shared server's admin calls from 127.0.0.1 go on unthrottled.
    guesser = httpx.Client(base_url=plane.url, transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30)
    with guesser:
        statuses = [
            guesser.get("/admin/keys", headers={"Authorization": f"Bearer wrong-{i}"}).status_code for i in range(10)
        ]
        assert statuses == [401] * 10
        refused = guesser.get("/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"]["code"] == "too_many_failed_attempts"
    with plane.admin() as admin:
        assert admin.get("/admin/keys").status_code == 200, "another address is not affected"
