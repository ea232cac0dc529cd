"""Pure pieces of the data plane: token refresh timing and OpenAI's reset-time format."""

from __future__ import annotations

from azure.core.credentials import AccessToken

from server.access.ratelimit import reset_duration
from server.store.entra import refresh_delay


def test_a_token_is_replaced_well_before_it_expires() -> None:
    now = 1_000_000.0
    assert refresh_delay(AccessToken("t", int(now) + 3600), now) == 1800  # half its life
    assert refresh_delay(AccessToken("t", int(now) + 400), now) == 100  # five minutes before the end
    assert refresh_delay(AccessToken("t", int(now) + 1), now) == 1.0  # never a busy loop
    assert refresh_delay(AccessToken("t", int(now) - 10), now) == 1.0


def test_reset_durations_read_like_openais() -> None:
    assert reset_duration(0) == "0ms"
    assert reset_duration(250) == "250ms"
    assert reset_duration(1000) == "1s"
    assert reset_duration(1001) == "2s"
    assert reset_duration(59_000) == "59s"
    assert reset_duration(60_000) == "1m0s"
    assert reset_duration(61_500) == "1m2s"
