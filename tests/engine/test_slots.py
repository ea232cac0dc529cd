"""Which free slot a new request takes: packing the active sequences against reusing a cached prompt prefix."""

from __future__ import annotations

from server.engine.slots import Slot, gaps_added, pick_packed, pick_slot

PROMPT = list(range(100, 700))  # 600 tokens


def _slots(n: int, cached: dict[int, int] | None = None, used: dict[int, float] | None = None) -> list[Slot]:
    """n idle slots; `cached` maps a slot to how many of PROMPT's tokens its sequence holds."""
    slots = [Slot(seq_id=i) for i in range(n)]
    for i, length in (cached or {}).items():
        slots[i].tokens = [*PROMPT[:length], 1, 2, 3]
        slots[i].n_past = len(slots[i].tokens)
    for i, when in (used or {}).items():
        slots[i].last_used = when
    return slots


def test_gaps_count_idle_sequences_between_the_lowest_and_highest_active_one() -> None:
    assert gaps_added([], 5) == 0
    assert gaps_added([0, 1], 2) == 0
    assert gaps_added([0, 1], 5) == 3
    assert gaps_added([0, 2], 1) == -1
    assert gaps_added([3, 4], 0) == 2


def test_with_nothing_active_the_longest_cached_prefix_wins() -> None:
    slots = _slots(8, cached={6: 40})
    chosen, reused = pick_slot(slots, PROMPT[:50], [], max_tokens=100)
    assert (chosen.seq_id, reused) == (6, 40)


def test_a_short_prefix_is_not_worth_a_gap_between_active_sequences() -> None:
    slots = _slots(8, cached={6: 40})
    free = [s for s in slots if s.seq_id >= 2]
    chosen, reused = pick_slot(free, PROMPT[:50], [0, 1], max_tokens=100)
    assert (chosen.seq_id, reused) == (2, 0)


def test_a_long_prefix_is_worth_the_gaps_of_a_short_answer() -> None:
    slots = _slots(8, cached={6: 590})
    free = [s for s in slots if s.seq_id >= 2]
    assert pick_slot(free, PROMPT, [0, 1], max_tokens=100)[0].seq_id == 6  # saves 590, slows 3 gaps x 100 steps
    assert pick_slot(free, PROMPT, [0, 1], max_tokens=1000)[0].seq_id == 2  # 3 gaps x 256 expected steps


def test_gaps_that_waiting_requests_will_fill_cost_nothing() -> None:
    slots = _slots(8, cached={4: 40})
    free = [s for s in slots if s.seq_id >= 2]
    assert pick_slot(free, PROMPT[:50], [0, 1], max_tokens=100, waiting=1)[0].seq_id == 2
    assert pick_slot(free, PROMPT[:50], [0, 1], max_tokens=100, waiting=2)[0].seq_id == 4


def test_a_slot_inside_the_active_range_is_taken_first_and_the_prefix_decides_among_packed_ones() -> None:
    slots = _slots(8, cached={3: 30, 5: 20})
    free = [slots[i] for i in (1, 3, 5, 6, 7)]
    assert pick_slot(free, PROMPT[:50], [0, 2], max_tokens=50)[0].seq_id == 1
    assert pick_slot(free[1:], PROMPT[:50], [0, 1, 2, 4], max_tokens=50)[0].seq_id == 3


def test_the_prompt_s_last_token_is_always_recomputed() -> None:
    chosen, reused = pick_slot(_slots(2, cached={0: 20}), PROMPT[:20], [], max_tokens=10)
    assert (chosen.seq_id, reused) == (0, 19)


def test_packing_takes_the_fewest_gaps_then_the_least_recently_used() -> None:
    slots = _slots(8, used={2: 5.0, 5: 1.0})
    assert pick_packed([slots[2], slots[5]], [3, 4]).seq_id == 5
    assert pick_packed([slots[1], slots[2], slots[7]], [3, 4]).seq_id == 2
