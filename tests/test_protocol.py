"""One protocol for every mode: a mode yields (event, bytes) and returns a typed Result; the stream
gives TokenEvents whose texts add up to Done.text, whatever the mode (paper mode's trim included)."""

from __future__ import annotations

import pytest

from conftest import load, run_engine
from nudge_local.engine.events import MODES, Done, DraftResult, PaperResult, Result, TokenEvent
from nudge_local.engine.paper_mode import trim_repeated_suffix
from nudge_local.engine.stream import stream
from pairs import vocab, write_pair

EOS = Result("eos")


def fake_steps(pieces: list[tuple[str, bytes]], result: Result):
    """A mode writing the given (source, bytes) pieces, then returning `result`."""
    for i, (source, piece) in enumerate(pieces):
        yield TokenEvent("", source, i, 0.5, 0.5), piece
    return result


def run(pieces, result: Result = EOS, **kw) -> tuple[list[TokenEvent], Done]:
    *events, done = stream(fake_steps(pieces, result), {}, {}, **kw)
    assert isinstance(done, Done)
    return events, done


def test_a_character_split_across_tokens_appears_on_the_token_that_completes_it():
    euro = "€".encode()
    events, done = run([("base", b"a"), ("nudge", euro[:1]), ("nudge", euro[1:]), ("base", b"b")])
    assert [e.text for e in events] == ["a", "", "€", "b"]
    assert done.text == "a€b" and done.stop_reason == "eos"
    assert (done.stats.tokens, done.stats.nudge_tokens) == (4, 2)


def test_stop_string_cuts_inside_a_token_and_keeps_the_events_summing_to_the_text():
    pieces = [("base", b" one"), ("nudge", b" two\nQue"), ("base", b"stion: x")]
    events, done = run(pieces, stop_strings=["\nQuestion:"])
    assert done.stop_reason == "stop_string"
    assert done.text == "one two" == "".join(e.text for e in events)  # the leading space is not shown
    assert [e.source for e in events] == ["base", "nudge"]


def test_text_that_only_looked_like_a_stop_string_is_released():
    events, done = run([("base", b"a\nQu"), ("base", b"iet")], stop_strings=["\nQuestion:"])
    assert done.text == "a\nQuiet" == "".join(e.text for e in events)
    assert done.stop_reason == "eos"


def test_paper_trim_is_applied_by_the_stream():
    repeat = "0123456789abcdefghijklmnopqrstuvwxyz!"  # >= 30 characters, and one the search finds
    pieces = [("nudge", b"  \n"), ("nudge", b"Sure"), *[("base", repeat.encode())] * 4, ("nudge", b" \n")]
    result = PaperResult("round", 3, ("Sure",))
    events, done = run(pieces, result, trim=trim_repeated_suffix)
    raw = "".join(p.decode() for _, p in pieces)
    assert done.text == trim_repeated_suffix(raw) == "Sure" + 3 * repeat  # ends stripped, one repeat dropped
    assert "".join(e.text for e in events) == done.text
    assert [e.text for e in events] == ["Sure", repeat, repeat, repeat]
    assert done.result is result and done.stop_reason == "round"


def test_a_trim_cuts_edge_tokens_to_the_kept_text():
    events, done = run([("nudge", b" \t A"), ("base", b"b c "), ("base", b"\n")], trim=str.strip)
    assert [e.text for e in events] == ["A", "b c"]
    assert done.text == "Ab c"


def test_speculative_counters_reach_the_stats():
    _, done = run([("base", b"x")], DraftResult("length", draft_proposed=7, draft_accepted=5))
    assert (done.stats.draft_proposed, done.stats.draft_accepted) == (7, 5)
    assert done.stats.as_dict()["draft_accepted"] == 5


def test_closing_the_stream_closes_the_mode():
    closed = []

    def steps():
        try:
            for i in range(100):
                yield TokenEvent("", "base", i, 1.0, 1.0), b"x"
        finally:
            closed.append(True)
        return Result("length")

    for stops in ((), ("zz",)):
        closed.clear()
        it = stream(steps(), {}, {}, stop_strings=stops)
        next(it)
        it.close()
        assert closed == [True], stops


@pytest.mark.parametrize(
    "mode,kw,result_type",
    [
        ("nudged", {"speculative": False}, Result),
        ("nudged", {"speculative": True}, DraftResult),
        ("base", {}, Result),
        ("nudger", {}, Result),
        ("paper", {"max_rounds": 6}, PaperResult),
    ],
    ids=["token", "speculative", "base", "nudger", "paper"],
)
def test_every_mode_returns_its_result_and_events_add_up_to_the_text(tmp_path, mode, kw, result_type):
    assert mode in MODES
    base_path, nudger_path = write_pair(tmp_path, vocab("bpe0"), vocab("bpe0"), 5, eos_weight=0.0)
    with load(base_path, "base") as base, load(nudger_path, "nudger") as nudger:
        for stop in ((), (" ",)):
            _, events, done = run_engine(base, nudger, mode=mode, gamma=0.7, max_tokens=30, stop_strings=stop, **kw)
            assert type(done.result) is (Result if done.stop_reason == "stop_string" else result_type)
            assert "".join(e.text for e in events) == done.text
            assert done.stats.tokens == len(events)
            assert events or stop
            assert {e.source for e in events} <= {"base", "nudge"}
            if mode == "nudged" and not stop:
                assert {e.source for e in events} == {"base", "nudge"}, "a pair that exercises both sources"
