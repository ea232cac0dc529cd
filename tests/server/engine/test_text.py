from server.engine.text import StopMatcher, TextAssembler


def feed(assembler: TextAssembler, pieces: list[bytes]) -> str:
    out = "".join(assembler.push(p) for p in pieces if not assembler.stopped)
    return out + assembler.finish()


def test_stop_string_spanning_tokens_is_cut_and_never_emitted() -> None:
    a = TextAssembler(["###"])
    emitted = [a.push(p) for p in [b"Hello #", b"#", b"# world"]]
    assert "".join(emitted) == "Hello "
    assert a.stopped
    assert a.finish() == ""


def test_partial_stop_that_turns_out_not_to_be_one_is_released() -> None:
    a = TextAssembler(["STOP"])
    assert a.push(b"ST") == ""
    assert a.push(b"OW") == "STOW"
    assert a.push(b" ST") == " "
    assert a.finish() == "ST"


def test_earliest_of_several_stops_wins() -> None:
    a = TextAssembler(["b", "a"])
    assert a.push(b"xxab") == "xx"
    assert a.stopped


def test_utf8_character_split_across_tokens_is_emitted_whole() -> None:
    euro = "€".encode()
    a = TextAssembler([])
    assert a.push(b"price: " + euro[:1]) == "price: "
    assert a.push(euro[1:2]) == ""
    assert a.push(euro[2:] + b"5") == "€5"


def test_stop_made_of_multibyte_characters() -> None:
    stop = "—end—"
    data = f"done{stop}more".encode()
    pieces = [data[i : i + 1] for i in range(len(data))]
    assert feed(TextAssembler([stop]), pieces) == "done"


def test_invalid_utf8_becomes_replacement_character_not_an_exception() -> None:
    assert feed(TextAssembler([]), [b"ok\xff", b"\xfe"]) == "ok\ufffd\ufffd"


def test_truncated_character_at_end_is_flushed() -> None:
    assert feed(TextAssembler([]), ["é".encode()[:1]]) == "\ufffd"


def test_no_stops_emits_immediately() -> None:
    m = StopMatcher([])
    assert m.push("abc") == "abc"
    assert m.flush() == ""


def test_empty_stop_strings_are_ignored() -> None:
    m = StopMatcher([""])
    assert m.push("abc") == "abc"
    assert not m.stopped


def test_the_stop_string_that_ended_the_text_is_named() -> None:
    m = StopMatcher(["b", "xyz", "yz"])
    assert m.matched is None
    assert m.push("axy") == "a"
    assert m.push("z!") == ""
    assert m.stopped and m.matched == "xyz"  # both end here; the longer one is what was cut
