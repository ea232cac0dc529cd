"""The replica's budget for answers waiting on their clients: past it, the connections holding the most go first."""

from __future__ import annotations

from server.api.waiting_answers import WaitingAnswers


class _Connection:
    def __init__(self, held: int, key: str | None = None) -> None:
        self.held = held
        self.key = key
        self.dropped_for: str | None = None

    def waiting_bytes(self) -> int:
        return 0 if self.dropped_for else self.held

    def owner(self) -> str | None:
        return self.key

    def drop(self, reason: str) -> None:
        self.dropped_for = reason


def test_answers_within_the_budget_are_all_held() -> None:
    answers = WaitingAnswers(max_bytes=100)
    a, b = _Connection(60), _Connection(40)
    answers.waiting(a)
    answers.waiting(b)
    assert not a.dropped_for and not b.dropped_for
    assert answers.held_bytes() == 100


def test_past_the_budget_the_connection_holding_the_most_is_dropped_even_when_it_waited_first() -> None:
    answers = WaitingAnswers(max_bytes=100)
    large, small = _Connection(70), _Connection(40)
    answers.waiting(large)
    answers.waiting(small)
    assert large.dropped_for and "70 waiting bytes" in large.dropped_for
    assert "GGUFSTACK_MAX_WAITING_ANSWER_BYTES (100)" in large.dropped_for
    assert not small.dropped_for
    assert answers.held_bytes() == 40


def test_as_many_are_dropped_as_it_takes_to_fit() -> None:
    answers = WaitingAnswers(max_bytes=100)
    held = [_Connection(30), _Connection(35), _Connection(20)]
    for each in held:
        answers.waiting(each)
    newcomer = _Connection(90)
    answers.waiting(newcomer)  # 175: the newcomer (90) goes, then 85 fits
    assert newcomer.dropped_for and not any(each.dropped_for for each in held)
    answers.waiting(crowd := _Connection(60))  # 145: 60 goes first, then 85 fits again
    assert crowd.dropped_for
    answers.waiting(last := _Connection(50))  # 135: 50 goes... and 85 fits
    assert last.dropped_for and answers.held_bytes() == 85


def test_an_answer_larger_than_the_budget_is_never_held() -> None:
    answers = WaitingAnswers(max_bytes=100)
    answers.waiting(alone := _Connection(101))
    assert alone.dropped_for and answers.held_bytes() == 0


def test_a_connection_that_caught_up_or_closed_no_longer_counts() -> None:
    answers = WaitingAnswers(max_bytes=100)
    a, b = _Connection(80), _Connection(50)
    answers.waiting(a)
    answers.done(a)
    answers.waiting(b)
    assert not a.dropped_for and not b.dropped_for
    assert answers.held_bytes() == 50


def test_one_keys_answers_are_held_within_its_share_so_it_cannot_have_another_keys_dropped() -> None:
    """Largest first over the whole replica let one key, with answers slightly larger than another's, fill the budget
    and have the other key's answers dropped. Its own largest go first once it holds its share."""
    answers = WaitingAnswers(max_bytes=100, max_bytes_per_key=50)
    victim = _Connection(30, "b")
    answers.waiting(victim)
    hogs = [_Connection(31, "a") for _ in range(3)]
    for hog in hogs:
        answers.waiting(hog)
    assert not victim.dropped_for
    assert sum(1 for hog in hogs if hog.dropped_for) == 2
    assert "GGUFSTACK_MAX_WAITING_ANSWER_BYTES_PER_KEY (50)" in str(next(h.dropped_for for h in hogs if h.dropped_for))
    admin = _Connection(35)  # no key (the admin key): only the replica's budget
    answers.waiting(admin)
    assert not admin.dropped_for and answers.held_bytes() == 30 + 31 + 35
