"""A key may start at most so many model loads a minute; the admin key and servers without keys are not limited."""

from __future__ import annotations

import pytest

from server.access.caller import Caller
from server.access.load_limit import LoadLimit
from server.errors import APIError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


KEY = Caller(key_id="k1", name="team")


def test_a_key_starts_its_loads_then_waits_for_the_minute_to_end() -> None:
    clock = Clock()
    limit = LoadLimit(2, clock=clock)
    limit.starting(KEY, "a")
    clock.now += 10
    limit.starting(KEY, "b")
    with pytest.raises(APIError) as refused:
        limit.starting(KEY, "a")
    error = refused.value
    assert error.status == 429 and error.code == "too_many_model_loads" and error.param == "model"
    assert error.headers == {"Retry-After": "50"}
    assert "GGUFSTACK_MODEL_LOADS_PER_KEY_PER_MINUTE" in str(error) and "'a'" in str(error)
    limit.starting(Caller(key_id="k2"), "a")  # another key has its own loads
    clock.now += 50
    limit.starting(KEY, "a")


@pytest.mark.parametrize("caller", [Caller(key_id=None, name="admin"), Caller()])
def test_the_admin_key_and_a_server_without_keys_are_not_limited(caller: Caller) -> None:
    limit = LoadLimit(1, clock=Clock())
    for _ in range(5):
        limit.starting(caller, "a")


def test_zero_turns_the_limit_off() -> None:
    limit = LoadLimit(0, clock=Clock())
    for _ in range(100):
        limit.starting(KEY, "a")
