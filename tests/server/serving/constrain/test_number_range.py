"""Number bounds as GBNF: every pattern is read as a regular expression and checked against decimals in and around
random ranges, each judged twice, as an exact decimal and as the double a JSON client reads."""

from __future__ import annotations

import math
import random
import re
from decimal import Decimal, localcontext

import pytest

from server.serving.constrain.integer_range import MAX_DIGITS
from server.serving.constrain.number_range import (
    FRACTION_DIGITS,
    MAX_BOUND_PLACES,
    Bound,
    number_bounds,
    number_range_gbnf,
)

# GBNF's quoted literals, character classes, counts and operators, the only parts these patterns use.
_PART = re.compile(r'"((?:[^"\\]|\\.)*)"|(\[[^\]]*\])|(\{\d+(?:,\d*)?\})|([()|?])|\s+')


def _matcher(schema: dict) -> re.Pattern[str]:
    gbnf, parts, at = number_range_gbnf(*number_bounds(schema)), [], 0
    while at < len(gbnf):
        part = _PART.match(gbnf, at)
        assert part, f"not read: {gbnf[at : at + 40]!r}"
        literal, klass, count, operator = part.groups()
        if literal is not None:
            parts.append(f"(?:{re.escape(literal)})")
        elif operator == "(":
            parts.append("(?:")
        else:
            parts.append(klass or count or operator or "")
        at = part.end()
    return re.compile("".join(parts))


def _within(text: str, schema: dict) -> bool:
    """Whether the number `text` meets the schema's bounds read exactly and read as a double (as jsonschema does)."""
    exact, double = Decimal(text), float(text)
    checks = {
        "minimum": lambda b: exact >= Decimal(repr(b)) and double >= b,
        "maximum": lambda b: exact <= Decimal(repr(b)) and double <= b,
        "exclusiveMinimum": lambda b: exact > Decimal(repr(b)) and double > b,
        "exclusiveMaximum": lambda b: exact < Decimal(repr(b)) and double < b,
    }
    return all(checks[keyword](bound) for keyword, bound in schema.items())


# Never written (the grammar's negative numbers are above zero in magnitude); formatting a small negative makes them.
NEGATIVE_ZEROS = {"-0", "-0.0", "-0.00", "-0.000", "-0.0000", "-0.00000"}


def _around(value: float) -> list[str]:
    """Decimals at and near a bound, written as a model might: trailing zeros, a bare integer, steps of 10^-k."""
    exact = Decimal(repr(value))
    texts = {format(exact, "f"), f"{exact:.3f}", f"{exact:.0f}"}
    for places in range(1, 8):
        step = Decimal(1).scaleb(-places)
        texts |= {format(exact + step, "f"), format(exact - step, "f")}
    return sorted(texts)


SCHEMAS = [
    {"minimum": 0, "maximum": 1},
    {"exclusiveMinimum": 0},
    {"minimum": -40.5, "maximum": 60},
    {"minimum": 9.99, "exclusiveMaximum": 10},
    {"minimum": 0.25, "exclusiveMaximum": 0.75},
    {"maximum": -0.001},
    {"exclusiveMinimum": -1.5, "exclusiveMaximum": -1.25},
    {"minimum": 0.1, "maximum": 0.1},
    {"minimum": 123.456, "maximum": 123.4567},
    {"exclusiveMinimum": 0.999, "maximum": 1.001},
    {"minimum": -0.5, "exclusiveMaximum": 0},
    {"exclusiveMinimum": 3, "minimum": 3},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_a_range_matches_exactly_its_numbers(schema: dict) -> None:
    matches = _matcher(schema)
    texts = {t for bound in schema.values() for t in _around(bound)}
    texts |= {f"{i / 4:g}" for i in range(-200, 500)} | {"0", "0.0", "1", "1.0", "-1", "10", "60.0", "-40.50"}
    for text in sorted(texts - NEGATIVE_ZEROS):
        assert bool(matches.fullmatch(text)) == _within(text, schema), (schema, text)


def _random_bound(rng: random.Random) -> float | int:
    whole = rng.randint(-300, 300)
    return whole if rng.random() < 0.3 else round(whole / rng.choice([1, 7, 13]) + rng.random(), rng.randint(1, 4))


def test_random_ranges_match_exactly_their_numbers() -> None:
    rng = random.Random(11)
    for _ in range(120):
        low, high = sorted((_random_bound(rng), _random_bound(rng)))
        schema = {
            "exclusiveMinimum" if rng.random() < 0.4 else "minimum": low,
            "exclusiveMaximum" if rng.random() < 0.4 else "maximum": high,
        }
        if low == high and {"exclusiveMinimum", "exclusiveMaximum"} & schema.keys():
            continue  # no number: refused, tested below
        matches = _matcher(schema)
        texts = set(_around(low) + _around(high))
        texts |= {f"{rng.uniform(low - 5, high + 5):.{rng.randint(0, 5)}f}" for _ in range(60)}
        for text in texts - NEGATIVE_ZEROS:
            assert bool(matches.fullmatch(text)) == _within(text, schema), (schema, text)


@pytest.mark.parametrize("bound", [10, 1, 0.1, 123.456, -2.5, 1e15])
def test_no_number_below_an_exclusive_maximum_reads_as_the_bound(bound: float) -> None:
    """A decimal a hair under the bound reads as the bound as a double (9.9999999999999999 as 10): none is written,
    and up to the nearest double below it, every decimal a double tells apart from the bound (15 digits) is."""
    below, above = _matcher({"exclusiveMaximum": bound}), _matcher({"exclusiveMinimum": -bound})
    with localcontext() as exact:
        exact.prec = 64
        nearest = [Decimal(repr(bound)) - Decimal(1).scaleb(-places) for places in range(1, FRACTION_DIGITS + 3)]
    assert any(float(value) == bound for value in nearest)  # some of them do read as the bound
    for value in nearest:
        text, mirrored = format(value, "f"), format(value.copy_negate(), "f")
        if below.fullmatch(text):
            assert float(text) < bound, text
        if value != 0 and above.fullmatch(mirrored):
            assert float(mirrored) > -bound, mirrored
        if len(text.replace(".", "").replace("-", "").strip("0")) <= 15:
            assert below.fullmatch(text) and (value == 0 or above.fullmatch(mirrored)), text
    edge = math.nextafter(bound, -math.inf)
    assert below.fullmatch(repr(edge)) and above.fullmatch(repr(-edge))


@pytest.mark.parametrize("schema", [{"minimum": 5}, {"maximum": -5}, {"exclusiveMinimum": 0}, {"maximum": 1e300}])
def test_an_open_side_reaches_the_longest_number_the_converter_writes(schema: dict) -> None:
    matches = _matcher(schema)
    longest = "9" * MAX_DIGITS + "." + "9" * FRACTION_DIGITS
    assert bool(matches.fullmatch(longest)) == ("maximum" not in schema or schema["maximum"] > 1e16)
    assert bool(matches.fullmatch("-" + longest)) == ("minimum" not in schema and "exclusiveMinimum" not in schema)
    assert not matches.fullmatch("1" + longest)
    assert not matches.fullmatch("9." + "9" * (FRACTION_DIGITS + 1))


def test_the_answer_is_plain_json_without_exponent_or_leading_zeros() -> None:
    matches = _matcher({"minimum": -100, "maximum": 100})
    for text in ["1e1", "1E1", "01", "00.5", "-0", "-0.0", ".5", "5.", "+5", "1_0", " 5"]:
        assert not matches.fullmatch(text), text
    for text in ["0", "0.0", "0.5", "-0.5", "100", "-100.000", "99.99"]:
        assert matches.fullmatch(text), text


def test_a_bound_with_more_places_than_the_fraction_takes_them_all() -> None:
    schema = {"minimum": 0.12345678901234567, "maximum": 0.12345678901234568}
    matches = _matcher(schema)
    assert matches.fullmatch(repr(schema["minimum"])) and matches.fullmatch(repr(schema["maximum"]))
    assert not matches.fullmatch("0.1234567890123456")


def test_bounds_read_like_json_schema() -> None:
    assert number_bounds({"minimum": 1, "maximum": 9.5}) == (Bound(Decimal(1), False), Bound(Decimal("9.5"), False))
    low, _ = number_bounds({"minimum": 3, "exclusiveMinimum": 3})
    assert low is not None and low.value > 3  # the exclusive one is the tighter
    assert number_bounds({"exclusiveMinimum": 0}) == (Bound(Decimal(0), True), None)  # zero needs no nearest double
    assert number_bounds({"exclusiveMaximum": 10})[1] == Bound(Decimal(repr(math.nextafter(10, 0))), False)
    assert number_bounds({"minimum": -math.inf, "maximum": math.inf}) == (None, None)
    assert number_bounds({}) == (None, None)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"minimum": 2, "maximum": 1}, "is at least 2 and at most 1"),
        ({"exclusiveMinimum": 0, "exclusiveMaximum": 0}, "is above 0 and below 0"),
        ({"minimum": 1e17}, "no number of at most 16 digits before the point is at least 1E+17"),
        ({"minimum": math.inf}, "no finite number meets minimum inf"),
        ({"maximum": math.nan}, "maximum is not a number"),
        ({"minimum": 1e-40}, f"more than {MAX_BOUND_PLACES} decimal places"),
    ],
)
def test_bounds_no_number_meets_are_an_error(schema: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        number_range_gbnf(*number_bounds(schema))
