"""GBNF for the JSON numbers within bounds (`minimum`, `maximum` and their exclusive forms on a number schema).

llama-cpp-python's converter drops a number's bounds as it drops an integer's (`integer_range`). A bounded number is
written without an exponent: an integer part of at most 16 digits (the converter's own limit), then optionally a
fraction of at most 16 digits, or one more than a bound's decimal places where a bound has more. The fraction after an
integer part at a bound is matched digit by digit against the bound's decimals, as strings are compared: while each
digit equals the bound's the next stays bounded, and once one differs the rest is free.

Bounds are read as exact decimals (`0.1` is one tenth, as written). Clients read the answer as binary floating point
(Python's json, JavaScript's JSON.parse), which rounds: a number just below an exclusive maximum of 10 can read as 10.
So an exclusive bound other than 0 is taken as the inclusive bound at the nearest double on its inner side, and every
number the grammar allows is within the bounds read either way. Zero needs no such step: no decimal this grammar
writes is close enough to zero to read as it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from server.serving.constrain.integer_range import MAX_DIGITS, whole_number_patterns

FRACTION_DIGITS = 16
# A bound with more decimal places than this (1e-40) is refused rather than written as that many digit patterns.
MAX_BOUND_PLACES = 32


@dataclass(frozen=True)
class Bound:
    value: Decimal
    exclusive: bool


def number_bounds(schema: dict[str, Any]) -> tuple[Bound | None, Bound | None]:
    """The tightest lower and upper bounds `schema` sets on a number (None: that side is open), an exclusive one
    other than 0 moved to the nearest double inside it. ValueError for a bound that is not a number, and for bounds
    no number meets."""
    lows = [b for b in (_bound(schema, "minimum", +1), _bound(schema, "exclusiveMinimum", +1)) if b]
    highs = [b for b in (_bound(schema, "maximum", -1), _bound(schema, "exclusiveMaximum", -1)) if b]
    low = max(lows, key=lambda b: (b.value, b.exclusive), default=None)
    high = min(highs, key=lambda b: (b.value, not b.exclusive), default=None)
    if low and high and (low.value > high.value or (low.value == high.value and (low.exclusive or high.exclusive))):
        raise ValueError(f"no number is {_describe(low, *_ABOVE)} and {_describe(high, *_BELOW)}")
    return (low and _nearest_inside(low, +1)), (high and _nearest_inside(high, -1))


def _bound(schema: dict[str, Any], keyword: str, inward: int) -> Bound | None:
    """`schema[keyword]` as a bound; `inward` is the direction the allowed numbers lie in (+1 for a minimum)."""
    if keyword not in schema:
        return None
    raw = schema[keyword]
    if isinstance(raw, float) and math.isnan(raw):
        raise ValueError(f"{keyword} is not a number")
    if isinstance(raw, float) and math.isinf(raw):
        if (raw > 0) == (inward > 0):
            raise ValueError(f"no finite number meets {keyword} {raw}")
        return None  # a minimum of -Infinity bounds nothing
    value = Decimal(raw) if isinstance(raw, int) else Decimal(repr(raw))
    return Bound(value, exclusive=keyword.startswith("exclusive"))


def _nearest_inside(bound: Bound, inward: int) -> Bound:
    """An exclusive bound other than 0 as the inclusive bound at the nearest double on its inner side."""
    if not bound.exclusive or bound.value == 0:
        return bound
    nearest = math.nextafter(float(bound.value), math.inf * inward)
    if not math.isfinite(nearest):  # past the largest double: far beyond the 16 digits the grammar writes
        return bound
    return Bound(Decimal(repr(nearest)), exclusive=False)


def number_range_gbnf(low: Bound | None, high: Bound | None) -> str:
    """A GBNF expression matching JSON numbers (without exponent) from `low` to `high` (None: open). ValueError when
    there are none, or a bound has more than MAX_BOUND_PLACES decimal places."""
    places = max([_places(b.value) + 1 for b in (low, high) if b is not None], default=0)
    if places - 1 > MAX_BOUND_PLACES:
        raise ValueError(f"a bound has more than {MAX_BOUND_PLACES} decimal places")
    room = max(FRACTION_DIGITS, places)
    alternatives = []
    if low is None or low.value < 0:  # negative numbers: "-" and a magnitude above 0
        magnitude_low = Bound(Decimal(0), exclusive=True)
        if high is not None and high.value < 0:
            magnitude_low = Bound(high.value.copy_negate(), high.exclusive)
        magnitude_high = None if low is None else Bound(low.value.copy_negate(), low.exclusive)
        alternatives += [f'"-" {p}' for p in _magnitudes(magnitude_low, magnitude_high, room)]
    if high is None or high.value >= 0:
        at_least = low if low is not None and low.value >= 0 else Bound(Decimal(0), exclusive=False)
        alternatives += _magnitudes(at_least, high, room)
    if not alternatives:
        within = " and ".join(_describe(b, *words) for b, words in ((low, _ABOVE), (high, _BELOW)) if b is not None)
        raise ValueError(f"no number of at most {MAX_DIGITS} digits before the point is {within}")
    return "(" + " | ".join(f"({a})" for a in alternatives) + ")"


_ABOVE, _BELOW = ("above", "at least"), ("below", "at most")


def _describe(bound: Bound, exclusive: str, inclusive: str) -> str:
    return f"{exclusive if bound.exclusive else inclusive} {bound.value}"


def _magnitudes(low: Bound, high: Bound | None, room: int) -> list[str]:
    """Patterns for the non-negative decimals from `low` to `high` (None: up to MAX_DIGITS integer digits)."""
    top = Decimal(10) ** MAX_DIGITS
    if low.value >= top:
        return []
    if high is not None and high.value >= top:
        high = None
    low_whole, low_fraction = _split(low.value)
    if high is not None:
        high_whole, high_fraction = _split(high.value)
        if high_whole == low_whole:
            fractions = _fractions(low_fraction, low.exclusive, high_fraction, high.exclusive, room)
            return _with_fraction(low_whole, fractions)
    patterns = _with_fraction(low_whole, _fractions(low_fraction, low.exclusive, None, False, room))
    between_high = None if high is None else high_whole - 1
    if between_high is None or low_whole + 1 <= between_high:
        patterns += [f'{p} ("." [0-9]{{1,{room}}})?' for p in whole_number_patterns(low_whole + 1, between_high)]
    if high is not None:
        patterns += _with_fraction(high_whole, _fractions(None, False, high_fraction, high.exclusive, room))
    return patterns


def _with_fraction(whole: int, fractions: tuple[bool, str | None]) -> list[str]:
    bare, tail = fractions
    if tail is None:
        return [f'"{whole}"'] if bare else []
    return [f'"{whole}" ("." ({tail}))?' if bare else f'"{whole}." ({tail})']


def _fractions(
    low: str | None, low_exclusive: bool, high: str | None, high_exclusive: bool, room: int
) -> tuple[bool, str | None]:
    """The digit strings of at most `room` digits whose value as `0.digits` is at least `0.low` (above it when
    exclusive) and at most `0.high` (below it when exclusive), each bound given by its decimals without trailing
    zeros, None for an open side. Returns whether the empty string is one, and a GBNF expression for the others
    (None: there are none). A digit at a bound nests the rest's expression, so each digit is read once."""
    if low == "" and not low_exclusive:  # at least zero: no bound at all
        low = None
    empty = low is None and (high is None or high != "" or not high_exclusive)
    if room == 0:
        return empty, None
    if low is None and high is None:
        return empty, f"[0-9]{{1,{room}}}"
    if high == "" and low in (None, ""):  # only zeros reach a bound of zero
        return empty, (('"0"' if room == 1 else f'"0"{{1,{room}}}') if empty else None)
    first = int(low[0]) if low else 0
    last = int(high[0]) if high else (9 if high is None else 0)
    alternatives, free = [], []
    for digit in range(first, last + 1):
        low_rest = low[1:] if low is not None and digit == first else None
        high_rest = high[1:] if high is not None and digit == last else None
        if low_rest is None and high_rest is None:
            free.append(digit)
            continue
        rest_empty, rest = _fractions(low_rest, low_exclusive, high_rest, high_exclusive, room - 1)
        if rest is not None:
            alternatives.append(f'"{digit}" ({rest})' + ("?" if rest_empty else ""))
        elif rest_empty:
            alternatives.append(f'"{digit}"')
    if free:
        digits = f'"{free[0]}"' if len(free) == 1 else f"[{free[0]}-{free[-1]}]"
        alternatives.append(digits + (f" [0-9]{{0,{room - 1}}}" if room > 1 else ""))
    return empty, " | ".join(alternatives) or None


def _split(value: Decimal) -> tuple[int, str]:
    """A non-negative decimal's integer part and its fraction's digits without trailing zeros."""
    whole, _, fraction = format(value, "f").partition(".")
    return int(whole), fraction.rstrip("0")


def _places(value: Decimal) -> int:
    return len(_split(value.copy_abs())[1])
