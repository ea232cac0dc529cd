"""The tool answer's splitter on scripted output: the text before a Hermes call streams as content, however the
marker falls across deltas, and what streamed plus the rest is always the content the whole answer parses to; each
call streams its name, then its arguments, which add up to the calls the whole answer parses to."""

from __future__ import annotations

import json

import pytest

from server.engine.chat_template import ReasoningSyntax
from server.serving.constrain.tools.formats import GENERIC, HERMES, ToolFormat
from server.serving.constrain.tools.plan import ArgumentsWritten, CallBegun, CallEvent, ParsedCall
from server.serving.endpoints.tool_answer import ToolAnswer

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _streamed(
    deltas: list[str], tool_format: ToolFormat = HERMES, syntax: ReasoningSyntax | None = None
) -> tuple[list[str], str, str | None]:
    """The content each delta released (empty ones left out), the rest at the end, and the parsed content."""
    answer = ToolAnswer(syntax, tool_format)
    sent = [part for d in deltas if (part := answer.feed(d).content)]
    ending = answer.finish()
    content = ending.answer.content if ending.answer is not None else ending.whole
    return sent, ending.content, content


def _calls_streamed(deltas: list[str], tool_format: ToolFormat = HERMES) -> tuple[list[CallEvent], list[ParsedCall]]:
    """The call events the deltas released, and the calls the whole answer parsed to."""
    answer = ToolAnswer(None, tool_format)
    events = [event for d in deltas for event in answer.feed(d).calls]
    ending = answer.finish()
    events += ending.calls
    return events, list(ending.answer.calls) if ending.answer is not None else []


def _as_calls(events: list[CallEvent]) -> list[ParsedCall]:
    """What a client makes of the events: each call's id, name and the arguments its pieces add up to."""
    calls: list[ParsedCall] = []
    for event in events:
        if isinstance(event, CallBegun):
            assert event.index == len(calls)
            calls.append(ParsedCall(event.id, event.name, ""))
        else:
            assert isinstance(event, ArgumentsWritten) and event.index == len(calls) - 1
            last = calls[-1]
            calls[-1] = ParsedCall(last.id, last.name, last.arguments + event.text)
    return calls


def _chars(text: str) -> list[str]:
    return list(text)


def test_text_then_a_call_streams_the_text_as_it_comes_and_holds_the_call() -> None:
    sent, rest, content = _streamed(_chars("Let me check." + "\n" + CALL))
    assert sent == ["L", "e", "t", " m", "e", " c", "h", "e", "c", "k", "."]  # a space waits for what follows it
    assert (rest, content) == ("", "Let me check.")


def test_a_marker_split_across_deltas_never_leaks() -> None:
    sent, rest, content = _streamed(["Hi <tool", "_ca", "ll>", CALL.removeprefix("<tool_call>")])
    assert sent == ["Hi"] and rest == "" and content == "Hi"


def test_a_partial_marker_that_turns_out_to_be_text_is_sent_once_it_proves_so() -> None:
    answer = ToolAnswer(None, HERMES)
    assert answer.feed("a <tool_").content == "a"
    assert answer.feed("x").content == " <tool_x"
    assert answer.feed(" b").content == " b"
    assert answer.finish().content == ""


def test_trailing_whitespace_is_held_and_dropped_before_a_call() -> None:
    sent, rest, content = _streamed(["Hi", " \n", "\n", CALL])
    assert (sent, rest, content) == (["Hi"], "", "Hi")


def test_trailing_whitespace_of_a_text_answer_comes_at_the_end() -> None:
    sent, rest, content = _streamed(["It is", " sunny.", " \n"])
    assert (sent, rest, content) == (["It is", " sunny."], " \n", "It is sunny. \n")


def test_leading_whitespace_is_content_with_or_without_a_call() -> None:
    sent, _, content = _streamed(_chars("\n Hi" + CALL))
    assert (sent, content) == (["\n H", "i"], "\n Hi")
    assert _streamed(_chars("\n Hi"))[2] == "\n Hi"


def test_only_a_call_sends_no_content() -> None:
    sent, rest, content = _streamed(_chars(" \n" + CALL + "\n"))
    assert (sent, rest, content) == ([], "", None)


def test_text_only_streams_all_of_it() -> None:
    sent, rest, content = _streamed(["Paris ", "is ", "sunny."])
    assert ("".join(sent), rest, content) == ("Paris is sunny.", "", "Paris is sunny.")


def test_a_block_cut_off_by_max_tokens_before_its_name_is_whole_comes_back_as_text_at_the_end() -> None:
    cut = 'Checking. <tool_call>\n{"name": "get_wea'
    sent, rest, content = _streamed(_chars(cut))
    assert "".join(sent) == "Checking."
    assert rest == ' <tool_call>\n{"name": "get_wea' and content == cut


def test_the_generic_formats_content_string_streams_as_it_is_written() -> None:
    envelope = json.dumps({"content": "Paris is sunny."})
    sent, rest, content = _streamed(_chars(envelope), GENERIC)
    assert sent == list("Paris is sunny.") and (rest, content) == ("", "Paris is sunny.")


def test_an_escape_split_across_deltas_is_sent_once_whole() -> None:
    answer = ToolAnswer(None, GENERIC)
    assert [answer.feed(d).content for d in ['{"content": "a', "\\", "n", "b\\u00", "e9", '"}']] == [
        "a", "", "\n", "b", "é", ""
    ]  # fmt: skip
    ending = answer.finish()
    assert ending.answer is not None and ending.answer.content == "a\nbé" and ending.content == ""


def test_a_surrogate_pair_waits_for_its_second_half() -> None:
    answer = ToolAnswer(None, GENERIC)
    deltas = ['{"content": "', "\\ud83d", "\\ude00", ' ok"}']
    assert [answer.feed(d).content for d in deltas] == ["", "", "\U0001f600", " ok"]


def test_a_generic_call_sends_no_content() -> None:
    envelope = json.dumps({"tool_calls": [{"name": "get_weather", "arguments": {"content": "x"}}]})
    sent, rest, content = _streamed(_chars(envelope), GENERIC)
    assert (sent, rest, content) == ([], "", None)


@pytest.mark.parametrize(
    "answer",
    [
        json.dumps({"content": 'Say "hi"\n\tto C:\\ \u00e9 \U0001f600 </tool_call>'}),
        json.dumps({"content": "\U0001f600\U0001f600"}, ensure_ascii=True),
        json.dumps({"content": "cut \\ short \u00e9"})[:-8],  # max_tokens ended it mid-escape
        '  {\n  "content" :  "spaced out"  }  ',
        json.dumps({"tool_calls": [{"name": "f", "arguments": {"content": "not this"}}]}),
        json.dumps({"tool_calls": [{"name": "f", "arguments": {}}]})[:20],
    ],
)
def test_whatever_the_deltas_the_generic_content_streamed_and_the_rest_are_the_parsed_content(answer: str) -> None:
    for cut in range(1, len(answer)):
        for deltas in ([answer[:cut], answer[cut:]], _chars(answer)):
            sent, rest, content = _streamed(deltas, GENERIC)
            assert "".join(sent) + rest == (content or ""), deltas


def test_thinking_streams_then_the_text_then_the_call_is_held() -> None:
    answer = ToolAnswer(ReasoningSyntax(), HERMES)
    parts = [answer.feed(c) for c in "<think>ab</think>\n\nHi " + CALL]
    assert "".join(p.reasoning for p in parts) == "ab" and "".join(p.content for p in parts) == "Hi"
    assert [type(e) for p in parts for e in p.calls][:2] == [CallBegun, ArgumentsWritten]
    assert answer.finish().whole == "Hi " + CALL


@pytest.mark.parametrize(
    "answer",
    [
        "Let me check. " + CALL,
        "  a <tool_x> b <tool_call",
        "a\n" + CALL + "\n" + CALL,
        "a " + CALL + '\n<tool_call>\n{"name": "x',  # a second block cut short before its name is dropped
        "a " + CALL + '\n<tool_call>\n{"name": "x", "arguments": {"k": [1, "]}',  # cut in its arguments: a call
        "<tool_call>\nnot json\n</tool_call> then " + CALL,
        "<<tool_call>" + CALL.removeprefix("<tool_call>"),
    ],
)
def test_whatever_the_deltas_the_streamed_text_and_the_rest_are_the_parsed_content(answer: str) -> None:
    for cut in range(1, len(answer)):
        for deltas in ([answer[:cut], answer[cut:]], _chars(answer)):
            sent, rest, content = _streamed(deltas)
            assert "".join(sent) + rest == (content or "")


def test_a_call_streams_its_name_then_its_arguments_as_they_are_written() -> None:
    events, calls = _calls_streamed(_chars("Hi " + CALL))
    assert events[0] == CallBegun(0, calls[0].id, "get_weather")
    pieces = [e.text for e in events[1:] if isinstance(e, ArgumentsWritten)]
    assert len(pieces) == len('{"city": "Paris"}') and "".join(pieces) == '{"city": "Paris"}'
    assert _as_calls(events) == [ParsedCall(calls[0].id, "get_weather", '{"city": "Paris"}')]


@pytest.mark.parametrize(
    ("answer", "tool_format"),
    [
        ("Let me check. " + CALL + "\n" + CALL.replace("Paris", 'Rome \\"}{['), HERMES),
        ('<tool_call>{"name":"f","arguments":{"a":{"b":[1,2,{"c":"}"}]},"d":-1.5e3}}</tool_call>', HERMES),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', HERMES),  # cut in the arguments
        ('<tool_call>\n{"name": "get_w', HERMES),  # cut in the name: no call
        (
            json.dumps({"tool_calls": [{"name": "f", "arguments": {"x": "}]"}}, {"name": "g", "arguments": {}}]}),
            GENERIC,
        ),
        ('  {\n "tool_calls" : [ {"name" : "f" , "arguments" : { "x" : 1 } } ,\n {"name": "g", "argu', GENERIC),
        (json.dumps({"content": "not a call"}), GENERIC),
    ],
)
def test_whatever_the_deltas_the_streamed_calls_are_the_parsed_calls(answer: str, tool_format: ToolFormat) -> None:
    unstreamed = tool_format.parse(answer)
    expected = [(c.name, c.arguments, c.complete) for c in (unstreamed.calls if unstreamed is not None else ())]
    for cut in range(1, len(answer)):
        for deltas in ([answer[:cut], answer[cut:]], _chars(answer)):
            events, calls = _calls_streamed(deltas, tool_format)
            assert _as_calls(events) == [ParsedCall(c.id, c.name, c.arguments) for c in calls], deltas
            assert [(c.name, c.arguments, c.complete) for c in calls] == expected, deltas
