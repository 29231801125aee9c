"""Long conversations (nudge_local/engine/context.py): the oldest turns leave both prompts when they outgrow
a small context, in the engine, the chat (Pilot, twelve turns), `serve` (both behaviours) and `run`;
and an answer ends before the base format's own labels (next-turn and answer markers) by default."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from conftest import load
from nudge_local.bench.generated import make_pair
from nudge_local.bench.synthetic import CHATML, Table, write_model
from nudge_local.config import load_settings
from nudge_local.engine.context import fit_history, prompt_sizes
from nudge_local.engine.errors import ContextFull
from nudge_local.engine.prompts import Turn, answer_marker, base_prompt, format_stops, next_turn_marker, render_prompts
from pairs import vocab
from serving import Served

SHAPES = ((64, 2, 128), (32, 1, 64))
CTX = 256  # the chat's and the server's context: a few turns
CTX_E = 1024  # the engine tests': several turns of twenty
SYSTEM = "You are terse."


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("context-pair"), None, 0.7, shapes=SHAPES)


@pytest.fixture(scope="module")
def small(pair):
    base, nudger = load(pair[0], "base", CTX_E), load(pair[1], "nudger", CTX_E)
    yield base, nudger
    base.close()
    nudger.close()


def conversation(n: int) -> list[Turn]:
    return [Turn(f"Question number {i} about the sky?", f" The answer {i} is that light scatters in air.")
            for i in range(n)]  # fmt: skip


def fits(models, prompts, room):
    return all(n + room <= models[r].n_ctx for r, n in prompt_sizes(models, prompts).items())


# -- the engine ---------------------------------------------------------------------------------


def test_the_prompts_hold_the_most_recent_turns_that_fit_and_the_system_prompt(small):
    base, nudger = small
    models = {"base": base, "nudger": nudger}
    history = conversation(20)
    everything = render_prompts(base, nudger, "And now?", history=history, system=SYSTEM)
    assert not fits(models, everything, 32)  # twelve turns do not fit a 1024-token context
    f = fit_history(base, nudger, "And now?", history, system=SYSTEM, max_tokens=32)
    assert 0 < f.dropped < 18 and f.held == 20 - f.dropped
    assert f.prompts == render_prompts(base, nudger, "And now?", history=history[f.dropped :], system=SYSTEM)
    assert f.prompts.base.startswith(SYSTEM) and f.prompts.base.endswith("Question: And now?\nAnswer:")
    assert SYSTEM in f.prompts.nudge and "And now?" in f.prompts.nudge
    assert fits(models, f.prompts, 32)  # each prompt with room for the answer
    # coarse: a quarter of the context spare, and one turn fewer out would not leave it
    assert all(n + 32 + CTX_E // 4 <= CTX_E for n in f.tokens.values())
    fewer = render_prompts(base, nudger, "And now?", history=history[f.dropped - 1 :], system=SYSTEM)
    assert any(n + 32 + CTX_E // 4 > CTX_E for n in prompt_sizes(models, fewer).values())
    assert f.tokens == prompt_sizes(models, f.prompts)


def test_a_conversation_keeps_its_earlier_drop_and_a_short_one_drops_nothing(small):
    base, nudger = small
    history = conversation(20)
    first = fit_history(base, nudger, "Q?", history, max_tokens=32)
    again = fit_history(base, nudger, "Q?", history, max_tokens=32, dropped=first.dropped + 2)
    assert again.dropped == first.dropped + 2  # the prompts' prefix stays (the caches with it)
    short = fit_history(base, nudger, "Q?", conversation(2), max_tokens=32)
    assert short.dropped == 0 and short.held == 2


def test_stop_leaves_every_turn_in(small):
    base, nudger = small
    f = fit_history(base, nudger, "Q?", conversation(20), max_tokens=32, policy="stop")
    assert f.dropped == 0 and f.held == 20


def test_the_answer_keeps_a_quarter_of_the_context_where_max_tokens_cannot_fit(small):
    base, nudger = small
    models = {"base": base, "nudger": nudger}
    f = fit_history(base, nudger, "Q?", conversation(20), max_tokens=100000)
    assert fits(models, f.prompts, CTX_E // 4) and f.dropped > 0


def test_a_question_that_does_not_fit_alone_is_one_sentence(small):
    base, nudger = small
    with pytest.raises(ContextFull, match=r"^The question alone needs \d+ tokens of the \w+ model's 1024-token "
                                          r"context, with 256 kept for the answer; shorten it or raise the "
                                          r"context size\.$"):  # fmt: skip
        fit_history(base, nudger, "why " * 1200, conversation(3), max_tokens=32)


# -- the next-turn marker -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,marker",
    [
        ("{system}\nQuestion: {question}\nAnswer:", "\nQuestion:"),
        ("{system}\n\nQ: {question}\nA:", "\n\nQ:"),
        ("User: {question}\nBot:", "User:"),
        ("{question}", None),
        ("{system} {question} =", None),
    ],
)
def test_the_next_turn_marker_comes_from_the_base_format(fmt, marker):
    assert next_turn_marker(fmt) == marker


@pytest.mark.parametrize(
    "fmt,marker",
    [
        ("{system}\nQuestion: {question}\nAnswer:", "\nAnswer:"),
        ("{system}\nQuestion: {question}\nAnswer: ", "\nAnswer:"),  # trailing spaces dropped
        ("{system}\n\nQ: {question} \n\nA:", "\n\nA:"),  # spaces before its line too
        ("User: {question}\nBot:", "\nBot:"),
        ("{system} {question} =", None),  # " =" goes on on the question's line: no label
        ("Q: {question}\n", None),  # only whitespace
        ("{question}", None),
    ],
)
def test_the_answer_marker_is_the_label_that_begins_the_answer_line(fmt, marker):
    assert answer_marker(fmt) == marker


def test_the_format_stops_are_its_line_leading_labels():
    assert format_stops() == ["\nQuestion:", "\nAnswer:"]
    assert format_stops("{system}\n\nQ: {question}\nA:") == ["\n\nQ:", "\nA:"]
    assert format_stops("{question}\nAnswer:") == ["\nAnswer:"]  # no next-turn marker
    assert format_stops("{system} {question} =") == []


def test_the_default_stop_is_derived_replaced_by_a_setting_and_turned_off(monkeypatch):
    assert load_settings().stop_strings == ["\nQuestion:", "\nAnswer:"]
    assert load_settings({"base_format": "{system}\nQ: {question}\nA:"}).stop_strings == ["\nQ:", "\nA:"]
    assert load_settings({"stop": ["END"]}).stop_strings == ["END"]
    monkeypatch.setenv("NUDGE_LOCAL_STOP", "[]")
    assert load_settings().stop_strings == []


def test_config_shows_the_stop_and_where_it_comes_from():
    out = subprocess.run([sys.executable, "-m", "nudge_local.cli", "config"], capture_output=True, text=True,
                         timeout=60).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.strip().startswith("stop "))
    assert "['\\nQuestion:', '\\nAnswer:']" in line
    assert "(the next-turn and answer markers of base_format (default))" in line


@pytest.fixture(scope="module")
def chatty(tmp_path_factory):
    """A base that answers " ok" and goes on to write the next turn itself, "\nQuestion: ok ..."
    (spelled a character a token: the vocabulary has no "Question"); a nudger that is never needed
    (the base is sure of every token)."""
    v = vocab("bpe0")
    chain = [v.find(b) for b in (b" ok", b"\n", b"Q", b"u", b"e", b"s", b"t", b"i", b"o", b"n", b":")]
    rows = {a: {b: 8.0} for a, b in zip(chain, chain[1:], strict=False)}
    tmp = tmp_path_factory.mktemp("chatty")
    base = write_model(tmp / "chatty.gguf", v, Table(rows=rows, default={chain[0]: 8.0}))
    nudger = write_model(tmp / "n.gguf", v, Table(rows={}, default={chain[0]: 3.0}), chat_template=CHATML)
    return base, nudger


@pytest.fixture(scope="module")
def answering(tmp_path_factory):
    """A base that answers " ok" and goes on with another answer line of its own, "\nAnswer: ok"
    again and again (a character a token); its nudger is never needed."""
    v = vocab("bpe0")
    cycle = [v.find(b) for b in (b" ok", b"\n", b"A", b"n", b"s", b"w", b"e", b"r", b":")]
    rows = {a: {b: 8.0} for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True)}
    tmp = tmp_path_factory.mktemp("answering")
    base = write_model(tmp / "answering.gguf", v, Table(rows=rows, default={cycle[0]: 8.0}))
    nudger = write_model(tmp / "n.gguf", v, Table(rows={}, default={cycle[0]: 3.0}), chat_template=CHATML)
    return base, nudger


def run_cli(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "nudge_local.cli", "run", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})  # fmt: skip


ON = "ok\nQuestion: ok\nQuestion:"  # the answer's leading space is not shown


@pytest.mark.parametrize(
    "extra,env,check",
    [
        ((), {}, lambda out: out == "ok"),  # stops before the base's own "\nQuestion:"
        (("--stop", "zzz"), {}, lambda out: out.startswith(ON)),  # an explicit stop replaces it
        ((), {"NUDGE_LOCAL_STOP": "[]"}, lambda out: out.startswith(ON)),  # stop: [] turns it off
        (("--mode", "paper"), {}, lambda out: "\nQuestion:" in out),  # paper mode keeps the authors' (none)
    ],
    ids=["default", "explicit", "off", "paper"],
)
def test_an_answer_ends_where_the_base_starts_the_next_turn(chatty, extra, env, check):
    r = run_cli("Hi?", "--base", str(chatty[0]), "--nudge", str(chatty[1]), "--threads", "1", "--max-tokens", "30",
                *extra, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert check(r.stdout.rstrip("\n")), r.stdout


@pytest.mark.parametrize("mode", ["base", "nudged"])
def test_an_answer_ends_where_the_base_writes_another_answer_label(answering, mode):
    """The base format's answer marker is a stop too: "\nAnswer:" lines never fill an answer."""
    args = ("Hi?", "--base", str(answering[0]), "--nudge", str(answering[1]), "--threads", "1", "--max-tokens", "30")
    r = run_cli(*args, "--mode", mode)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == "ok"
    r = run_cli(*args, "--mode", mode, "--stop", "\nQuestion:")  # the old default alone
    assert r.stdout.startswith("ok\nAnswer: ok\nAnswer: ok"), r.stdout


def test_run_says_a_question_too_long_for_the_context_in_one_sentence(pair):
    r = run_cli("why " * 400, "--base", str(pair[0]), "--nudge", str(pair[1]), "--threads", "1", "--ctx", "256")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("nudge-local: error: The ") and "context holds 256" in r.stderr
    assert r.stderr.count("\n") == 1


# -- the server ---------------------------------------------------------------------------------


def long_chat(n: int = 12, **kw) -> dict:
    messages = [{"role": "system", "content": SYSTEM}]
    for t in conversation(n):
        messages += [{"role": "user", "content": t.question}, {"role": "assistant", "content": t.answer}]
    return {"messages": [*messages, {"role": "user", "content": "And now?"}], "max_tokens": 16, **kw}


def test_serve_refuses_messages_that_do_not_fit_unless_asked_to_drop(pair):
    served = Served(*pair, "--ctx", str(CTX))
    try:
        with served.client() as http:
            r = http.post("/v1/chat/completions", json=long_chat())
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
            r = http.post("/v1/chat/completions", json=long_chat(context_overflow="drop_oldest"))
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["nudge"]["turns_dropped"] > 0
            r = http.post("/v1/chat/completions", json=long_chat(2))
            assert r.status_code == 200 and r.json()["choices"][0]["nudge"]["turns_dropped"] == 0
            r = http.post("/v1/chat/completions", json=long_chat(context_overflow="sometimes"))
            assert r.status_code == 400 and r.json()["error"]["param"] == "context_overflow"
    finally:
        served.stop()


def test_serve_with_the_flag_drops_the_oldest_turns(pair):
    served = Served(*pair, "--ctx", str(CTX), "--context-overflow", "drop_oldest")
    try:
        with served.client() as http:
            r = http.post("/v1/chat/completions", json=long_chat())
            assert r.status_code == 200, r.text
            dropped = r.json()["choices"][0]["nudge"]["turns_dropped"]
            assert 0 < dropped < 12
            r = http.post("/v1/chat/completions", json=long_chat(context_overflow="stop"))
            assert r.status_code == 400  # a request may still ask for the error
    finally:
        served.stop()


# -- the chat -----------------------------------------------------------------------------------


def test_twelve_turns_in_a_small_context_all_answer_and_say_what_was_left_out(pair, tmp_path):
    from nudge_local.tui.app import NudgeApp
    from nudge_local.tui.history import History
    from nudge_local.tui.widgets.answer import AnswerView

    settings = load_settings({"base": str(pair[0]), "nudge": str(pair[1]), "threads": 1, "context_size": CTX,
                              "max_tokens": 24, "system": SYSTEM})  # fmt: skip
    app = NudgeApp(settings, history=History(tmp_path / "history.sqlite3"), export_dir=tmp_path)

    async def until(pilot, cond, timeout=30.0):
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, "timed out"
            await pilot.pause(0.02)

    def status() -> str:
        return str(app.query_one("#status").render())

    statuses = []

    async def go():
        async with app.run_test(size=(110, 40)) as pilot:
            await until(pilot, lambda: app.ready)
            for i in range(12):
                await pilot.press(*f"Question {i} about the sky and the sea?", "enter")
                await until(pilot, lambda n=i + 1: app.current is None and len(app.query(AnswerView)) == n)
                statuses.append(status())
            views = list(app.query(AnswerView).results(AnswerView))
            assert all(v.tokens and v.stop_reason in ("length", "eos") for v in views)  # every turn answered
            assert str(app.query_one("#error").render()) == ""
            dropped = [v.dropped for v in views]
            first = next(i for i, d in enumerate(dropped) if d)
            assert dropped[:first] == [0] * first and all(d > 0 for d in dropped[first:])
            assert dropped == sorted(dropped)  # a drop stays: the prefix changes only at a new drop
            notice = views[first].query_one(".notice").render()
            n = dropped[first]
            assert str(notice) == f"{n} earlier turn{'s are' if n != 1 else ' is'} outside the models' context"
            assert not views[first - 1].query(".notice")
            # the last answer's prompts: exactly the most recent turns that fit, and the system prompt
            last = views[-1]
            turns = [Turn(v.question, "".join(t.text for t in v.tokens)) for v in views[:-1]]
            assert last.prompts.base == base_prompt(last.question, history=turns[last.dropped :], system=SYSTEM)
            stored = app.history.messages(app.conversation)
            assert len(stored) == 12 and [m.settings["turns_held"] for m in stored] == [
                i - d for i, d in enumerate(dropped)
            ]
            return first

    first = asyncio.run(go())
    for s in statuses:
        used, total = (int(x) for x in s.split("ctx ")[1].split(" ")[0].split("/"))
        assert total == CTX and used <= total
    print(f"status before the first drop: {statuses[first - 1]}\nstatus after it: {statuses[first]}")


def test_with_stop_the_chat_says_the_context_is_full(pair, tmp_path):
    from nudge_local.tui.app import NudgeApp
    from nudge_local.tui.history import History
    from nudge_local.tui.widgets.answer import AnswerView

    settings = load_settings({"base": str(pair[0]), "nudge": str(pair[1]), "threads": 1, "context_size": CTX,
                              "max_tokens": 24, "context_overflow": "stop"})  # fmt: skip
    app = NudgeApp(settings, history=History(tmp_path / "history.sqlite3"), export_dir=tmp_path)

    async def go():
        async with app.run_test(size=(110, 40)) as pilot:
            end = time.monotonic() + 60
            while not app.ready:
                await pilot.pause(0.02)
            for i in range(16):
                await pilot.press(*f"Question {i} about the sky and the sea?", "enter")
                while app.current is not None or len(app.query(AnswerView)) < i + 1:
                    assert time.monotonic() < end, "timed out"
                    await pilot.pause(0.02)
                    if "context holds" in str(app.query_one("#error").render()):
                        break
                if "context holds" in str(app.query_one("#error").render()):
                    return i
            return None

    stopped_at = asyncio.run(go())
    assert stopped_at is not None, "sixteen turns fitted a 256-token context with stop"
