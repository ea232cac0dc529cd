"""A key the rate limiter refused whatever it asked stays refused, on this replica, until the wait it was told ends."""

from __future__ import annotations

from server.access.ratelimit import Decision
from server.access.standing_refusals import StandingRefusals


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


REFUSED = Decision(
    False,
    "requests",
    30,
    {"x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"},
)


def test_a_refusal_stands_with_its_wait_counted_down_then_lapses() -> None:
    clock = Clock()
    refusals = StandingRefusals(clock)
    assert refusals.standing("k") is None
    refusals.note("k", REFUSED)
    clock.now += 10.5
    standing = refusals.standing("k")
    assert standing is not None and not standing.allowed and standing.limited_by == "requests"
    assert standing.retry_after_s == 20 and standing.headers["x-ratelimit-reset-requests"] == "20s"
    assert standing.headers["x-ratelimit-remaining-requests"] == "0"
    assert refusals.standing("another") is None
    clock.now += 19.5
    assert refusals.standing("k") is None


def test_a_refusal_for_spent_tokens_counts_down_its_own_reset() -> None:
    clock = Clock()
    refusals = StandingRefusals(clock)
    refusals.note(
        "k", Decision(False, "tokens", 8, {"x-ratelimit-reset-tokens": "8s", "x-ratelimit-reset-requests": "0ms"})
    )
    clock.now += 2
    standing = refusals.standing("k")
    assert standing is not None and standing.headers == {
        "x-ratelimit-reset-tokens": "6s",
        "x-ratelimit-reset-requests": "0ms",
    }


def test_a_refusal_stands_for_the_exact_wait_not_retry_afters_whole_seconds() -> None:
    """Retry-After is whole seconds, at least 1: a window freeing in 5 ms used to refuse the key for a second."""
    clock = Clock()
    refusals = StandingRefusals(clock)
    refusals.note("k", Decision(False, "requests", 1, {"x-ratelimit-reset-requests": "5ms"}, wait_s=0.005))
    clock.now += 0.004
    standing = refusals.standing("k")
    assert standing is not None and standing.retry_after_s == 1
    assert standing.headers["x-ratelimit-reset-requests"] in {"0ms", "1ms"}
    clock.now += 0.002
    assert refusals.standing("k") is None
    refusals.note("k", Decision(False, "requests", 1, {}, wait_s=0.0))  # freed already: nothing to stand on
    assert refusals.standing("k") is None


def test_lapsed_refusals_are_swept_out_as_keys_pile_up() -> None:
    clock = Clock()
    refusals = StandingRefusals(clock)
    for i in range(2000):
        refusals.note(f"k{i}", REFUSED)
        clock.now += 0.1  # each lapses 30 s after it was noted
    assert len(refusals._until) < 1400
    assert refusals.standing("k1999") is not None
