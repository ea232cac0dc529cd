"""Threat: a stop sequence that costs quadratic time. The old matcher rescanned every prefix of every stop string
against the held-back text at each token, so one long stop string of repeated characters (`"a" * L + "b"`) made each
token cost O(L²) on the event loop's engine thread. Stop strings are now capped by GGUFSTACK_MAX_STOP_CHARS (checked
at validation: see test_body_limits.py) and matched by a streaming Knuth-Morris-Pratt scan, linear in the text.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest

from server.engine.text import StopMatcher


def _stream(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        out.append(matcher.push(piece))
        if matcher.stopped:
            break
    return "".join(out) + matcher.flush(), matcher.stopped


def _reference(stops: list[str], text: str) -> tuple[str, bool]:
    """The text before the stop string that ends first (the longest one, where two end together)."""
    ends = [(text.find(s) + len(s), -len(s)) for s in stops if s in text]
    if not ends:
        return text, False
    end, minus_length = min(ends)
    return text[: end + minus_length], True


def _split(text: str, rng: random.Random) -> list[str]:
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, 5)
        pieces.append(text[i : i + n])
        i += n
    return pieces


def test_any_split_of_the_text_gives_the_same_answer_as_a_plain_search() -> None:
    rng = random.Random(19)
    for _ in range(3000):
        text = "".join(rng.choice("ab") for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 4))]
        assert _stream(stops, _split(text, rng)) == _reference(stops, text), (stops, text)


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        (["aab"], ["a", "a", "a", "b", "tail"], ("a", True)),  # a partial match that restarts inside itself
        (["abab"], ["aba", "bab"], ("", True)),
        (["STOP"], ["ST", "OW ST"], ("STOW ST", False)),  # held back, then released at the end
        (["—end—"], ["done—", "en", "d—more"], ("done", True)),
    ],
)
def test_stop_strings_across_tokens(stops: list[str], pieces: list[str], expected: tuple[str, bool]) -> None:
    assert _stream(stops, pieces) == expected


def test_a_long_repetitive_stop_string_costs_linear_time() -> None:
    """A stop string of three million repetitions of one character, text that almost matches it and then breaks
    off (logit_bias can force such text): the old matcher tried every prefix of the stop string at the breaking
    token, copying each, about 4.5·10¹² character steps for that one token; a linear one takes seconds for all of
    it. The generous timeout only catches the quadratic one."""
    program = textwrap.dedent(
        """
        from server.engine.text import StopMatcher
        length = 3_000_000
        matcher = StopMatcher(["a" * length + "b"])
        emitted = "".join(matcher.push("a" * 1000) for _ in range(length // 1000))
        emitted += matcher.push("c")
        assert not matcher.stopped and emitted == "a" * length + "c", len(emitted)
        """
    )
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)
