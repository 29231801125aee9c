"""The answer as shown (nudge_local/engine/stream.py `stripped`, docs/method.md#stop-strings): no whitespace
at either end, trailing whitespace held back until something non-blank follows, and the events'
texts still adding up to Done.text; staged modes, no models."""

from __future__ import annotations

from nudge_local.engine.events import Done, PaperResult, Result, TokenEvent
from nudge_local.engine.paper_mode import trim_repeated_suffix
from nudge_local.engine.stream import stream


def staged(pieces: list[tuple[str, bytes]], log: list, result: Result):
    """A mode writing the given (source, bytes) pieces; `log` records each piece as it is written."""
    for i, (source, piece) in enumerate(pieces):
        log.append(("written", piece))
        yield TokenEvent("", source, i, 0.5, 0.5), piece
    return result


def run(pieces, result: Result | None = None, **kw) -> tuple[list, list[TokenEvent], Done]:
    """The log of writes and passed-on events in the order they happened, the events, and Done."""
    log: list = []
    events = []
    for item in stream(staged(pieces, log, result or Result("eos")), {}, {}, **kw):
        if isinstance(item, Done):
            return log, events, item
        log.append(("shown", item.text))
        events.append(item)
    raise AssertionError("no Done")


def test_the_base_leading_space_and_trailing_newline_are_not_shown():
    _, events, done = run([("base", b" Boil"), ("base", b" the egg."), ("base", b"\n")])
    assert done.text == "Boil the egg." == "".join(e.text for e in events)


def test_tokens_cut_to_nothing_stay_events_so_the_counts_do_not_change():
    pieces = [("base", b" "), ("nudge", b"\n\n1."), ("nudge", b" Boil"), ("base", b"\n"), ("base", b" \n")]
    _, events, done = run(pieces)
    assert [e.text for e in events] == ["", "1.", " Boil", "", ""]
    assert [e.source for e in events] == ["base", "nudge", "nudge", "base", "base"]
    assert (done.stats.tokens, done.stats.nudge_tokens) == (5, 2)
    assert done.text == "1. Boil"


def test_whitespace_inside_the_answer_is_held_back_until_something_non_blank_follows():
    log, events, done = run([("base", b"One."), ("base", b"\n"), ("base", b"\n"), ("nudge", b"Two"), ("base", b" ")])
    assert done.text == "One.\n\nTwo" == "".join(e.text for e in events)
    # The newlines pass on only once "Two" is written; the trailing space never does.
    assert log == [("written", b"One."), ("shown", "One."), ("written", b"\n"), ("written", b"\n"),
                   ("written", b"Two"), ("shown", "\n"), ("shown", "\n"), ("shown", "Two"),
                   ("written", b" "), ("shown", "")]  # fmt: skip


def test_a_token_ending_in_whitespace_is_held_whole_and_cut_at_the_end():
    log, events, done = run([("nudge", b"Egg. \n"), ("base", b"Done\n")], Result("length"))
    assert [e.text for e in events] == ["Egg. \n", "Done"]
    assert log.index(("shown", "Egg. \n")) > log.index(("written", b"Done\n"))  # held until "Done" came
    assert done.text == "Egg. \nDone" and done.stop_reason == "length"


def test_an_answer_of_whitespace_alone_is_empty():
    _, events, done = run([("base", b" "), ("base", b"\n\t")])
    assert [e.text for e in events] == ["", ""] and done.text == ""


def test_a_stop_string_cuts_first_and_then_the_ends_go():
    pieces = [("base", b" Boil the egg."), ("base", b"\n"), ("base", b"Answer"), ("base", b": Boil")]
    _, events, done = run(pieces, stop_strings=["\nQuestion:", "\nAnswer:"])
    assert done.stop_reason == "stop_string"
    assert done.text == "Boil the egg." == "".join(e.text for e in events)


def test_a_stop_string_at_the_start_is_still_found_before_the_leading_whitespace_goes():
    _, _, done = run([("base", b"\nQuestion: next")], stop_strings=["\nQuestion:"])
    assert done.stop_reason == "stop_string" and done.text == ""


def test_a_split_character_after_leading_whitespace_keeps_its_empty_event():
    euro = "€".encode()
    _, events, done = run([("base", b" " + euro[:1]), ("base", euro[1:] + b"5 ")])
    assert [e.text for e in events] == ["", "€5"] and done.text == "€5"


def test_paper_mode_trimmed_text_is_unchanged():
    repeat = "0123456789abcdefghijklmnopqrstuvwxyz!"
    pieces = [("nudge", b"  \n"), ("nudge", b"Sure"), *[("base", repeat.encode())] * 4, ("nudge", b" \n")]
    _, events, done = run(pieces, PaperResult("round", 3, ("Sure",)), trim=trim_repeated_suffix)
    assert done.text == "Sure" + 3 * repeat == "".join(e.text for e in events)
