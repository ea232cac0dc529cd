"""The thinking budget's tracker, on text alone: where the thinking is, when the close marker is written for the
model, and that a model which closes its block itself, or never opens one, is left alone."""

from __future__ import annotations

from server.engine.chat_template import ReasoningSyntax
from server.engine.thinking import ThinkingBudget, ThinkingTracker

CLOSE = (7, 8, 9)  # the close marker's tokens, as the model's tokenizer writes it


def _tracker(tokens: int, *, inside: bool) -> ThinkingTracker:
    return ThinkingTracker(ThinkingBudget(ReasoningSyntax(starts_inside=inside), tokens, CLOSE))


def _written(tracker: ThinkingTracker) -> list[int]:
    forced = []
    while (token := tracker.forced()) is not None:
        forced.append(token)
        tracker.push("</think>"[len(forced) * 3 - 3 : len(forced) * 3])  # what each forced token renders as
    return forced


def test_the_marker_is_written_once_the_budget_is_spent_inside_a_block_the_prompt_opened() -> None:
    tracker = _tracker(3, inside=True)
    for piece in ("a", "b"):
        tracker.push(piece)
        assert tracker.forced() is None
    tracker.push("c")
    assert _written(tracker) == list(CLOSE)
    tracker.push("the answer, as long as it likes")
    assert tracker.forced() is None, "the marker is written once"


def test_a_block_the_output_opens_counts_from_its_open_marker() -> None:
    tracker = _tracker(2, inside=False)
    for piece in ("\n", "<thi", "nk>"):
        tracker.push(piece)
        assert tracker.forced() is None
    tracker.push("x")
    assert tracker.forced() is None
    tracker.push("y")
    assert _written(tracker) == list(CLOSE)


def test_an_answer_without_thinking_is_never_given_a_marker() -> None:
    tracker = _tracker(1, inside=False)
    for piece in ("{", '"a"', ": 1}", "<think>"):
        tracker.push(piece)
        assert tracker.forced() is None


def test_a_model_that_closes_its_block_itself_is_not_interrupted() -> None:
    tracker = _tracker(4, inside=True)
    for piece in ("short", "</th", "ink>", "answer", "more", "answer"):
        tracker.push(piece)
        assert tracker.forced() is None


def test_a_zero_budget_closes_the_block_at_once_and_a_refused_marker_stops_the_forcing() -> None:
    assert _written(_tracker(0, inside=True)) == list(CLOSE)
    tracker = _tracker(0, inside=True)
    assert tracker.forced() == CLOSE[0]
    tracker.stop_forcing()  # the grammar refused it: the model goes on as it would without a budget
    tracker.push("anything")
    assert tracker.forced() is None
