"""Which free slot a new request takes: packing the active sequences against reusing a cached prompt prefix, and when
a cached prefix is copied into the packed slot instead."""

from __future__ import annotations

import math
import random

from server.engine.slots import (
    Placement,
    Prompt,
    Slot,
    cached_alone,
    common_prefix,
    gaps_added,
    pick_packed,
    place,
    reserve,
)

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
    assert place(slots, PROMPT[:50], [], max_tokens=100, copy_cost=1) == Placement(slots[6], 40)


def test_a_short_prefix_is_not_worth_a_gap_between_active_sequences() -> None:
    slots = _slots(8, cached={6: 40})
    free = [s for s in slots if s.seq_id >= 2]
    assert place(free, PROMPT[:50], [0, 1], max_tokens=100, copy_cost=math.inf) == Placement(slots[2], 0)


def test_a_long_prefix_is_worth_the_gaps_of_a_short_answer() -> None:
    slots = _slots(8, cached={6: 590})
    free = [s for s in slots if s.seq_id >= 2]
    assert place(free, PROMPT, [0, 1], 100, math.inf).slot.seq_id == 6  # saves 590, slows 3 gaps x 100 steps
    assert place(free, PROMPT, [0, 1], 1000, math.inf).slot.seq_id == 2  # 3 gaps x 256 expected steps


def test_gaps_that_waiting_requests_will_fill_cost_nothing() -> None:
    slots = _slots(8, cached={4: 40})
    free = [s for s in slots if s.seq_id >= 2]
    assert place(free, PROMPT[:50], [0, 1], max_tokens=100, copy_cost=math.inf, waiting=1).slot.seq_id == 2
    assert place(free, PROMPT[:50], [0, 1], max_tokens=100, copy_cost=math.inf, waiting=2).slot.seq_id == 4


def test_a_slot_inside_the_active_range_is_taken_first_and_the_prefix_decides_among_packed_ones() -> None:
    slots = _slots(8, cached={3: 30, 5: 20})
    free = [slots[i] for i in (1, 3, 5, 6, 7)]
    assert place(free, PROMPT[:50], [0, 2], max_tokens=50, copy_cost=1) == Placement(slots[1], 30, source=slots[3])
    assert place(free[1:], PROMPT[:50], [0, 1, 2, 4], max_tokens=50, copy_cost=1) == Placement(slots[3], 30)


def test_the_prompt_s_last_token_is_always_recomputed() -> None:
    slots = _slots(2, cached={0: 20})
    assert place(slots, PROMPT[:20], [], max_tokens=10, copy_cost=1) == Placement(slots[0], 19)


def test_packing_takes_the_fewest_gaps_then_the_least_recently_used() -> None:
    slots = _slots(8, used={2: 5.0, 5: 1.0})
    assert pick_packed([slots[2], slots[5]], [3, 4]).seq_id == 5
    assert pick_packed([slots[1], slots[2], slots[7]], [3, 4]).seq_id == 2


def test_a_prefix_cached_where_it_would_leave_a_gap_is_copied_into_the_packed_slot() -> None:
    slots = _slots(8, cached={6: 40})
    free = [s for s in slots if s.seq_id >= 2]
    assert place(free, PROMPT[:50], [0, 1], max_tokens=100, copy_cost=3) == Placement(slots[2], 40, source=slots[6])


def test_a_copy_must_save_more_than_it_costs() -> None:
    slots = _slots(8, cached={6: 40, 2: 37})
    free = [s for s in slots if s.seq_id >= 2]
    assert place(free, PROMPT[:50], [0, 1], max_tokens=100, copy_cost=3) == Placement(slots[2], 37)
    assert place(free, PROMPT[:50], [0, 1], max_tokens=100, copy_cost=2.5) == Placement(slots[2], 40, source=slots[6])


def test_gaps_cheaper_than_a_copy_are_taken_instead() -> None:
    slots = _slots(8, cached={2: 40})
    # Taking slot 2 leaves one gap (slot 1) for a 2-token answer: 2 against a copy worth 3 tokens.
    assert place(slots[1:], PROMPT[:50], [0], max_tokens=2, copy_cost=3) == Placement(slots[2], 40)
    assert place(slots[1:], PROMPT[:50], [0], max_tokens=10, copy_cost=3) == Placement(slots[1], 40, source=slots[2])


def test_a_cache_held_twice_is_overwritten_before_one_held_once() -> None:
    slots = _slots(8, cached={1: 40, 3: 40, 5: 30}, used={1: 1.0, 3: 5.0, 5: 9.0})
    other = list(range(900, 940))
    slots[3].tokens, slots[5].tokens = [*other, 7], [*other, 8]  # slots 3 and 5 share 40 tokens; slot 1 is alone
    # Slot 1 (alone, least recently used) and slot 3 (shared) both keep {2, 4} packed around a new prompt.
    assert place([slots[1], slots[3], slots[5]], [5, 6, 7], [2], max_tokens=10, copy_cost=1).slot.seq_id == 3


def test_a_waiting_request_keeps_the_slot_that_alone_caches_its_prompt() -> None:
    slots = _slots(4, cached={1: 40, 2: 20, 3: 20})
    assert reserve(slots, [Prompt(PROMPT[:50])]) == {1}
    assert reserve(slots, [Prompt(PROMPT[:10])]) == set(), "every cached slot holds all of it: nothing to keep"
    assert reserve(slots, [Prompt(PROMPT[:50]), Prompt(PROMPT[:50])]) == {1}, "the second's best: slots 2 and 3"


def test_a_slot_kept_for_a_waiting_request_is_copied_from_but_not_taken() -> None:
    slots = _slots(8, cached={5: 40})
    assert place(slots, [1, 2, 3], [], max_tokens=10, copy_cost=1, waiting=1, reserved={5}).slot.seq_id != 5
    placement = place(slots, PROMPT[:50], [], max_tokens=10, copy_cost=1, waiting=1, reserved={5})
    assert placement.source is slots[5] and placement.slot.seq_id != 5 and placement.reused == 40
    assert place(slots[5:6], [1, 2, 3], [], max_tokens=10, copy_cost=1, reserved={5}).slot.seq_id == 5, "no other"


def test_a_prompt_cached_for_one_scope_is_reused_by_that_scope_only() -> None:
    """One tenant's cached prompt, reused by another, would answer that other's first token sooner: a timing that
    tells whether the prompt was sent. Another scope's request is placed as if nothing were cached."""
    slots = _slots(4, cached={2: 40})
    slots[2].scope = "key:a"
    assert place(slots, PROMPT[:50], [], max_tokens=100, copy_cost=1, scope="key:a") == Placement(slots[2], 40)
    elsewhere = place(slots, PROMPT[:50], [], max_tokens=100, copy_cost=1, scope="key:b")
    assert elsewhere.reused == 0 and elsewhere.source is None
    assert place(slots, PROMPT[:50], [], max_tokens=100, copy_cost=1).reused == 0, "the default scope is another"
    assert reserve(slots, [Prompt(PROMPT[:50], "key:a")]) == {2}
    assert reserve(slots, [Prompt(PROMPT[:50], "key:b")]) == set()


def test_a_cache_is_held_alone_unless_a_slot_of_its_own_scope_holds_it_too() -> None:
    slots = _slots(3, cached={0: 40, 1: 40})
    slots[0].scope = slots[2].scope = "key:a"
    slots[1].scope = "key:b"
    assert cached_alone(slots[0], slots) == 43, "slot 1 holds the same tokens for another key"
    slots[2].tokens, slots[2].n_past = list(slots[0].tokens), len(slots[0].tokens)
    assert cached_alone(slots[0], slots) == 0


def test_common_prefix_counts_the_leading_tokens_two_sequences_share() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        a = [rng.randrange(3) for _ in range(rng.randrange(12))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(12))]
        expected = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        assert common_prefix(a, b) == expected == common_prefix(b, a), (a, b)
