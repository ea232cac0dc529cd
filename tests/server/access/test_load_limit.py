"""A key may start at most so many model loads in any minute, every load its own, restores included (but those of
a model the admin key's load evicted); the admin key and servers without keys are not limited."""

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


def test_a_restore_is_the_requesters_load_but_after_the_admin_keys_eviction() -> None:
    limit = LoadLimit(2, clock=Clock())
    victim = Caller(key_id="victim")
    for _ in range(3):
        assert limit.starting(victim, "y", "") == "victim", "evicted by the admin key: nobody's charge"
    limit.starting(victim, "y", "pusher")
    limit.starting(victim, "y", None)
    with pytest.raises(APIError):
        limit.starting(victim, "y", "pusher")
    limit.starting(Caller(key_id="pusher"), "x", None)  # the pusher's loads are its own, and still free


def _taking_turns(limit: LoadLimit, turns: list[tuple[str, str]], capacity: int = 1) -> list[str]:
    """The keys refused, in order, as each turn asks for its model, loaded (least recently used evicted first) within
    `capacity` models, with the registry's bookkeeping of whose load evicted what."""
    refused: list[str] = []
    loaded: list[str] = []  # least recently used first
    evicted_by: dict[str, str | None] = {}
    for key, model in turns:
        if model in loaded:
            loaded.remove(model)
            loaded.append(model)
            continue
        try:
            owner = limit.starting(Caller(key_id=key), model, evicted_by.get(model))
        except APIError:
            refused.append(key)
            continue
        if len(loaded) == capacity:
            evicted_by[loaded.pop(0)] = owner
        evicted_by[model] = None
        loaded.append(model)
    return refused


def test_two_keys_taking_turns_evicting_each_others_models_are_held_to_their_limits() -> None:
    """Before, every load was a restore at the other key's charge and checked against neither: seven loads of each
    model under a limit of 2, no 429."""
    refused = _taking_turns(LoadLimit(2, clock=Clock()), [("a", "x"), ("b", "y")] * 4)
    assert refused == ["a", "a"], "a's third and fourth loads are refused; b's y stays loaded and starts no load"


def test_a_key_that_uses_one_model_is_not_refused_by_one_key_pushing_it_out() -> None:
    """Found in review of the rule before: a key alternating two models arranged for the one-model key's own load to
    evict one of them first, and then every reload of its own was charged to that key until it was locked out."""
    turns = [("pusher", "x"), ("victim", "y")] * 8
    refused = _taking_turns(LoadLimit(4, clock=Clock()), turns)
    assert "victim" not in refused and "pusher" in refused
    turns = [("pusher", "x1"), ("pusher", "x2"), ("victim", "y")] * 8
    refused = _taking_turns(LoadLimit(4, clock=Clock()), turns, capacity=2)
    assert "victim" not in refused and "pusher" in refused


@pytest.mark.parametrize("caller", [Caller(key_id=None, name="admin"), Caller()])
def test_the_admin_key_and_a_server_without_keys_are_not_limited(caller: Caller) -> None:
    limit = LoadLimit(1, clock=Clock())
    for _ in range(5):
        limit.starting(caller, "a", None)


def test_zero_turns_the_limit_off() -> None:
    limit = LoadLimit(0, clock=Clock())
    for _ in range(100):
        limit.starting(KEY, "a", None)
