"""A key may start at most so many model loads in any minute; reloading a model another key's load evicted is that
key's charge; the admin key and servers without keys are not limited."""

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
    limit.starting(KEY, "a", None)
    clock.now += 10
    limit.starting(KEY, "b", None)
    with pytest.raises(APIError) as refused:
        limit.starting(KEY, "a", None)
    error = refused.value
    assert error.status == 429 and error.code == "too_many_model_loads" and error.param == "model"
    assert error.headers == {"Retry-After": "50"}, "until the first of the two is a minute old"
    assert "GGUFSTACK_MODEL_LOADS_PER_KEY_PER_MINUTE" in str(error) and "'a'" in str(error)
    limit.starting(Caller(key_id="k2"), "a", None)  # another key has its own loads
    clock.now += 50
    limit.starting(KEY, "a", None)
    with pytest.raises(APIError):  # the one 10 s after the first still counts: a sliding minute
        limit.starting(KEY, "b", None)


def test_no_burst_of_twice_the_limit_across_a_minutes_edge() -> None:
    clock = Clock()
    limit = LoadLimit(10, clock=clock)
    clock.now += 59.9
    for _ in range(10):
        limit.starting(KEY, "a", None)
    clock.now += 0.2
    with pytest.raises(APIError):
        limit.starting(KEY, "a", None)


def test_a_model_another_keys_load_evicted_comes_back_at_that_keys_charge() -> None:
    limit = LoadLimit(2, clock=Clock())
    victim, pusher = Caller(key_id="victim"), Caller(key_id="pusher")
    for _ in range(2):  # the victim's model, evicted by the pusher's loads each time
        assert limit.starting(victim, "y", "pusher") == "victim"
    with pytest.raises(APIError):
        limit.starting(pusher, "x", None)  # its two loads were spent bringing y back
    for _ in range(3):
        assert limit.starting(victim, "y", "") == "victim", "evicted by the admin key: nobody's charge"
    limit.starting(victim, "y", None)
    limit.starting(victim, "y", "victim")
    with pytest.raises(APIError):  # its own load evicted it: its own charge
        limit.starting(victim, "y", "victim")


def test_a_restore_past_the_evicting_keys_loads_is_the_requesters_own() -> None:
    limit = LoadLimit(2, clock=Clock())
    victim = Caller(key_id="victim")
    for _ in range(2):
        limit.starting(Caller(key_id="pusher"), "x", None)
    limit.starting(victim, "y", "pusher")  # counted as the victim's own: the pusher's loads are spent
    limit.starting(victim, "y", "pusher")
    with pytest.raises(APIError):
        limit.starting(victim, "y", "pusher")


def test_two_keys_taking_turns_evicting_each_others_models_are_held_to_their_limits() -> None:
    """Each load restores the model the other key's load evicted: at the other's charge while it has loads left, so
    each key's own count fills, and then each restore is checked against its requester. Before, every load was the
    other's charge and checked against neither: seven loads of each model under a limit of 2, no 429."""
    limit = LoadLimit(2, clock=Clock())
    a, b = Caller(key_id="a"), Caller(key_id="b")
    limit.starting(a, "x", None)  # a's first load, its own, evicts b's y
    turns = [(b, "y", "a"), (a, "x", "b"), (b, "y", "a"), (a, "x", "b"), (b, "y", "a"), (a, "x", "b")]
    refused = []
    for caller, model, evicted_by in turns:
        try:
            limit.starting(caller, model, evicted_by)
        except APIError:
            refused.append(caller.key_id)
    assert refused == ["a", "b", "a"], "once both keys' loads are spent, every turn is refused"


@pytest.mark.parametrize("caller", [Caller(key_id=None, name="admin"), Caller()])
def test_the_admin_key_and_a_server_without_keys_are_not_limited(caller: Caller) -> None:
    limit = LoadLimit(1, clock=Clock())
    for _ in range(5):
        limit.starting(caller, "a", None)


def test_zero_turns_the_limit_off() -> None:
    limit = LoadLimit(0, clock=Clock())
    for _ in range(100):
        limit.starting(KEY, "a", None)
