"""Integer bounds as GBNF: every pattern is checked against the integers it must and must not match, by reading the
GBNF (digits, quoted literals, classes and repetitions only) as a regular expression."""

from __future__ import annotations

import random
import re

import pytest

from server.serving.constrain.integer_range import MAX_DIGITS, integer_bounds, integer_range_gbnf


def _matcher(low: int | None, high: int | None) -> re.Pattern[str]:
    return re.compile(integer_range_gbnf(low, high).replace('"', "").replace(" ", ""))


@pytest.mark.parametrize(
    ("low", "high"),
    [(0, 0), (1, 9), (0, 120), (17, 342), (-19, 342), (-342, -17), (-5, 5), (100, 999), (99, 1000), (-1, -1)],
)
def test_a_closed_range_matches_exactly_its_integers(low: int, high: int) -> None:
    matches = _matcher(low, high)
    for n in range(-1200, 1201):
        assert bool(matches.fullmatch(str(n))) == (low <= n <= high), n


def test_random_ranges_match_exactly_their_integers() -> None:
    rng = random.Random(5)
    for _ in range(150):
        low, high = sorted(rng.randint(-3000, 3000) for _ in range(2))
        matches = _matcher(low, high)
        for n in range(low - 40, high + 41, max(1, (high - low) // 200)):
            assert bool(matches.fullmatch(str(n))) == (low <= n <= high), (low, high, n)
        assert matches.fullmatch(str(low)) and matches.fullmatch(str(high))


@pytest.mark.parametrize(("low", "high"), [(5, None), (None, 5), (-30, None), (None, -30), (None, None), (0, None)])
def test_an_open_side_reaches_the_longest_integer_the_converter_writes(low: int | None, high: int | None) -> None:
    matches = _matcher(low, high)
    for n in range(-500, 501):
        within = (low is None or n >= low) and (high is None or n <= high)
        assert bool(matches.fullmatch(str(n))) == within, n
    longest = "9" * MAX_DIGITS
    assert bool(matches.fullmatch(longest)) == (high is None)
    assert bool(matches.fullmatch("-" + longest)) == (low is None)
    assert not matches.fullmatch("1" + longest)
    assert not matches.fullmatch("-0") and not matches.fullmatch("007")


def test_bounds_read_like_json_schema() -> None:
    assert integer_bounds({"minimum": 1, "maximum": 9}) == (1, 9)
    assert integer_bounds({"exclusiveMinimum": 1, "exclusiveMaximum": 9}) == (2, 8)
    assert integer_bounds({"minimum": 1.5, "maximum": 8.5}) == (2, 8)
    assert integer_bounds({"exclusiveMinimum": 1.5, "exclusiveMaximum": 8.5}) == (2, 8)
    assert integer_bounds({"minimum": 3, "exclusiveMinimum": 5}) == (6, None)
    assert integer_bounds({}) == (None, None)


def test_bounds_no_integer_meets_are_an_error() -> None:
    with pytest.raises(ValueError, match="no integer"):
        integer_range_gbnf(5, 3)
    with pytest.raises(ValueError, match="no integer"):
        integer_range_gbnf(10**MAX_DIGITS, None)
