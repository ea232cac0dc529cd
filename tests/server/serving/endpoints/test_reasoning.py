"""The thinking splitter on scripted output: every way the markers can fall across deltas."""

from __future__ import annotations

import pytest

from server.engine.chat_template import ReasoningSyntax
from server.engine.thinking import ReasoningSplitter, Split
from server.serving.endpoints.reasoning import split

THINK = ReasoningSyntax()
OPENED = ReasoningSyntax(starts_inside=True)


def _stream(syntax: ReasoningSyntax, deltas: list[str]) -> list[Split]:
    splitter = ReasoningSplitter(syntax)
    parts = [splitter.feed(d) for d in deltas]
    parts.append(splitter.finish())
    return [p for p in parts if p.reasoning or p.content]


def _joined(parts: list[Split]) -> Split:
    return Split("".join(p.reasoning for p in parts), "".join(p.content for p in parts))


def test_a_whole_block_then_an_answer() -> None:
    assert split(THINK, "<think>\nLet me see.\n</think>\n\nParis.") == Split("\nLet me see.\n", "Paris.")


def test_without_a_syntax_everything_is_the_answer() -> None:
    assert split(None, "<think>x</think>y") == Split(content="<think>x</think>y")


def test_an_output_that_does_not_open_with_the_block_is_all_answer() -> None:
    assert split(THINK, "Paris. <think>not thinking</think>") == Split(content="Paris. <think>not thinking</think>")


def test_leading_whitespace_before_the_block_is_allowed() -> None:
    assert split(THINK, "\n <think>a</think>b") == Split("a", "b")


def test_an_unclosed_block_at_max_tokens_is_all_reasoning() -> None:
    assert split(THINK, "<think>still going") == Split(reasoning="still going")
    assert split(OPENED, "still going") == Split(reasoning="still going")


def test_a_template_that_opened_the_block_starts_inside_it() -> None:
    assert split(OPENED, "hmm\n</think>\n\nParis.") == Split("hmm\n", "Paris.")


def test_an_empty_block() -> None:
    assert split(THINK, "<think>\n\n</think>\n\nHi") == Split("\n\n", "Hi")
    assert split(OPENED, "</think>Hi") == Split("", "Hi")


def test_a_partial_open_marker_that_ends_the_output_is_answer() -> None:
    assert split(THINK, "<thi") == Split(content="<thi")


@pytest.mark.parametrize("at", range(1, len("<think>a</think>b")))
def test_a_marker_split_anywhere_across_two_deltas_never_leaks(at: int) -> None:
    text = "<think>a</think>b"
    parts = _stream(THINK, [text[:at], text[at:]])
    assert _joined(parts) == Split("a", "b")
    assert all("<" not in p.reasoning + p.content and ">" not in p.reasoning + p.content for p in parts)


def test_one_character_at_a_time_streams_each_character_once_it_is_certain() -> None:
    text = "<think>ab</think>\n\ncd"
    parts = _stream(THINK, list(text))
    assert _joined(parts) == Split("ab", "cd")
    assert [p.reasoning for p in parts if p.reasoning] == ["a", "b"]
    assert [p.content for p in parts if p.content] == ["c", "d"]


def test_a_close_marker_lookalike_inside_the_thinking_is_reasoning() -> None:
    parts = _stream(OPENED, ["a </thin", "g> b", "</think>c"])
    assert _joined(parts) == Split("a </thing> b", "c")


def test_an_answer_is_streamed_as_it_comes_not_held() -> None:
    splitter = ReasoningSplitter(THINK)
    assert splitter.feed("Hel") == Split(content="Hel")
    assert splitter.feed("lo") == Split(content="lo")


def test_the_open_marker_may_arrive_in_pieces() -> None:
    splitter = ReasoningSplitter(THINK)
    assert splitter.feed("<") == Split()
    assert splitter.feed("think") == Split()
    assert splitter.feed(">x") == Split(reasoning="x")


def test_a_start_that_only_looks_like_the_marker_is_released_as_answer() -> None:
    splitter = ReasoningSplitter(THINK)
    assert splitter.feed("<th") == Split()
    assert splitter.feed("e end") == Split(content="<the end")
