"""The chat app driven by Textual's Pilot on generated models: streaming, provenance marks, hover,
inspector, gamma, cancel, compare, history across restarts, export, errors, keys."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import replace

import pytest
from textual.widgets import Button, Input, Static

from nudge_local.bench.synthetic import CHATML, Table, write_model
from nudge_local.catalog import load_catalog
from nudge_local.choose import Choice
from nudge_local.config import load_settings
from nudge_local.engine.generate import generate
from nudge_local.engine.local import Model
from nudge_local.engine.prompts import render_prompts
from nudge_local.tui import session as session_module
from nudge_local.tui.app import ACTIONS, NudgeApp
from nudge_local.tui.history import History
from nudge_local.tui.screens.compare import CompareScreen
from nudge_local.tui.screens.inspector import InspectorScreen
from nudge_local.tui.screens.settings import SettingsScreen
from nudge_local.tui.session import ChatSession, Options
from nudge_local.tui.widgets.answer import AnswerView
from nudge_local.tui.widgets.prompt import PromptArea
from nudge_local.tui.widgets.token_view import TokenView
from pairs import vocab

V = vocab("bpe0")
THE, DOT, SURE, COMMA, OK = (V.find(b) for b in (b" the", b".", b" Sure", b",", b" ok"))
EOS = V.eos


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The base is sure of " the", then split three ways (p = 1/3): the nudger writes " Sure,",
    the base ends with " ok." A second base never ends, for cancelling."""
    tmp = tmp_path_factory.mktemp("tui")
    base = write_model(
        tmp / "b.gguf",
        V,
        Table(rows={THE: {DOT: 0.0, COMMA: 0.0, OK: 0.0}, COMMA: {OK: 6.0}, OK: {DOT: 6.0}, DOT: {EOS: 6.0}},
              default={THE: 6.0}),
    )  # fmt: skip
    endless = write_model(tmp / "endless.gguf", V, Table(rows={THE: {OK: 6.0}, OK: {THE: 6.0}}, default={THE: 6.0}))
    nudger = write_model(
        tmp / "n.gguf", V, Table(rows={THE: {SURE: 5.0}, SURE: {COMMA: 5.0}, COMMA: {OK: 5.0}}, default={OK: 3.0}),
        chat_template=CHATML,
    )  # fmt: skip
    return {"base": base, "endless": endless, "nudger": nudger}


def make_app(tmp_path, pair, base="base", **flags):
    settings = load_settings({"base": str(pair.get(base, base)), "nudge": str(pair["nudger"]), "threads": 1, **flags})
    return NudgeApp(settings, history=History(tmp_path / "history.sqlite3"), export_dir=tmp_path)


async def until(pilot, cond, timeout=20.0):
    end = time.monotonic() + timeout
    while not cond():
        app = pilot.app
        assert time.monotonic() < end, f"timed out: ready={app.ready}, loading={app.loading!r}, current={app.current!r}"
        await pilot.pause(0.02)


async def ask(app, pilot, text="Why?"):
    await until(pilot, lambda: app.ready)
    await pilot.press(*text)
    await pilot.press("enter")
    await until(pilot, lambda: app.current is None and app.query(AnswerView))
    return list(app.query("#chat AnswerView").results(AnswerView))[-1]


def run(coro):
    return asyncio.run(coro)


def test_send_streams_the_engines_answer(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            view = await ask(app, pilot)
            got = [(t.text, t.source) for t in view.tokens]
            assert view.stop_reason == "eos" and "5 tokens" in str(view._summary.render())
            assert "40% nudged" in str(view._summary.render())
            return got

    got = run(go())
    with Model(pair["base"], n_threads=1) as b, Model(pair["nudger"], n_threads=1) as n:
        events = list(generate(render_prompts(b, n, "Why?"), base=b, nudger=n, gamma=0.4))[:-1]
    assert got == [(e.text, e.source) for e in events] == [
        ("the", "base"), (" Sure", "nudge"), (",", "nudge"), (" ok", "base"), (".", "base")
    ]  # fmt: skip


def test_provenance_marks_do_not_rely_on_colour(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            view = await ask(app, pilot)
            block = view.query_one(TokenView)
            content = block.build()
            styled = {content.plain[s.start : s.end]: s.style for s in content.spans}
            assert list(styled) == [" Sure,"]  # the nudged word, and nothing the base wrote
            assert styled[" Sure,"].underline and styled[" Sure,"].foreground
            await pilot.press("ctrl+b")  # brackets instead of underline
            assert block.build().plain == "the [Sure,] ok."
            assert not any(s.style.underline for s in block.build().spans)

    run(go())


def test_hover_and_click_inspector(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30), tooltips=True) as pilot:
            view = await ask(app, pilot)
            block = view.query_one(TokenView)
            await pilot.hover(block, offset=(6, 0))  # inside " Sure"
            assert "written by the nudger" in block.tooltip and "below gamma 0.40" in block.tooltip
            assert "p=0.333" in block.tooltip
            await pilot.hover(block, offset=(2, 0))  # inside " the"
            assert "written by the base" in block.tooltip
            await pilot.click(block, offset=(6, 0))
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            base_rows = [app.screen.query_one("#top-base").get_row_at(i) for i in range(3)]
            nudger_row = app.screen.query_one("#top-nudger").get_row_at(0)
            assert sorted(r[0] for r in base_rows) == ["' ok'", "','", "'.'"]
            assert all(r[1] == "0.333" for r in base_rows)
            assert nudger_row[0] == "' Sure'"
            await pilot.press("escape")
            assert not isinstance(app.screen, InspectorScreen)

    run(go())


def test_gamma_change_takes_effect_on_the_next_answer(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            first = await ask(app, pilot)
            assert any(t.source == "nudge" for t in first.tokens)
            written, shown = list(first.tokens), first.query_one(TokenView).build().plain
            await pilot.press("alt+down", "alt+down")  # 0.40 -> 0.30, below the planted 1/3
            assert "gamma 0.30" in str(app.query_one("#status").render())
            second = await ask(app, pilot, "Again?")
            assert second is not first and second.gamma == 0.3
            assert second.tokens and all(t.source == "base" for t in second.tokens)
            # the finished answer stays as written, with the gamma it was written with
            assert first.tokens == written and first.query_one(TokenView).build().plain == shown
            assert first.gamma == 0.4

    run(go())


def test_escape_cancels_within_200ms_and_keeps_the_partial_answer(tmp_path, pair):
    async def go():
        # a context of 65536 keeps the answer going for tens of seconds (4096 ran out in about
        # one): Pilot's key presses can take seconds on a loaded machine
        app = make_app(tmp_path, pair, base="endless", max_tokens=100000, context_size=65536)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await pilot.press(*"Go", "enter")
            await until(pilot, lambda: app.current is not None and len(app.current.tokens) > 20)
            view = app.current
            t0 = time.monotonic()
            await pilot.press("escape")
            await until(pilot, lambda: view.cancelled, timeout=1)
            assert view.cancelled_at - t0 < 0.2  # the app's own reaction, not Pilot's redraw wait
            shown = len(view.tokens)
            await pilot.pause(0.3)
            assert len(view.tokens) == shown > 20  # nothing appended after the cancel
            assert "cancelled" in str(view._summary.render())
            msgs = app.history.messages(app.conversation)
            assert msgs[-1].cancelled and len(msgs[-1].tokens) == shown
            app.options.max_tokens = 50  # as the settings screen sets it: the next answer ends
            second = await ask(app, pilot, "x")  # the engine is free again
            assert second is not view

    run(go())


def test_compare_shows_three_columns_with_stats(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(150, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await pilot.press(*"Why?")
            await pilot.press("f4")
            await until(pilot, lambda: isinstance(app.screen, CompareScreen))
            screen = app.screen
            await until(pilot, lambda: all(v.done for v in screen.views.values()))
            cols = {m: [(t.text, t.source) for t in v.tokens] for m, v in screen.views.items()}
            assert {s for _, s in cols["base"]} == {"base"} and {s for _, s in cols["nudger"]} == {"nudge"}
            assert cols["nudged"] == [("the", "base"), (" Sure", "nudge"), (",", "nudge"), (" ok", "base"),
                                      (".", "base")]  # fmt: skip
            for v in screen.views.values():
                assert "tokens" in str(v._summary.render()) and "tok/s" in str(v._summary.render())
            await pilot.press("escape")
            assert not isinstance(app.screen, CompareScreen)

    run(go())


def test_history_survives_a_restart_and_export(tmp_path, pair):
    async def first():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            await ask(app, pilot)
            await pilot.press("ctrl+s")
            return app.conversation

    conv = run(first())
    md = (tmp_path / f"nudge-local-{conv}.md").read_text()
    assert "Why?" in md and "the [Sure,] ok." in md
    data = json.loads((tmp_path / f"nudge-local-{conv}.json").read_text())
    assert [(t["text"], t["source"]) for t in data["messages"][0]["tokens"]][:2] == [
        ("the", "base"),
        (" Sure", "nudge"),
    ]

    async def second():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await pilot.press("f3")
            await pilot.pause(0.1)
            await pilot.press("enter")
            await until(pilot, lambda: app.query("#chat AnswerView"))
            view = app.query_one("#chat AnswerView", AnswerView)
            assert [(t.text, t.source) for t in view.tokens][1] == (" Sure", "nudge")
            assert view.question == "Why?" and "eos" in str(view._summary.render())
            # its inspector works from the stored settings
            await pilot.click(view.query_one(TokenView), offset=(6, 0))
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))

    run(second())


@pytest.mark.parametrize(
    "base,phrase", [("/nonexistent/b.gguf", "does not exist"), ("org/absent-GGUF:b.gguf", "nudge-local pull")]
)
def test_model_errors_show_in_the_app_as_one_sentence(tmp_path, pair, monkeypatch, base, phrase):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))

    async def go():
        app = make_app(tmp_path, pair, base=base)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.loading == "no models")
            text = str(app.query_one("#error").render())
            assert phrase in text and "Traceback" not in text and text.count("\n") == 0

    run(go())


@pytest.mark.parametrize("where", ["at the call", "after two tokens"])
def test_a_bug_in_one_answer_shows_an_error_and_the_chat_goes_on(tmp_path, pair, monkeypatch, where):
    """An exception in the generation worker (here from the engine bridge) ends that answer with
    an error line; the app keeps running and answers the next question."""
    real, calls = ChatSession.answer, []

    def answer(self, *args):
        calls.append(args)
        if len(calls) > 1:
            return real(self, *args)
        if where == "at the call":
            raise RuntimeError("boom")

        def events():
            yield from list(real(self, *args))[:2]
            raise RuntimeError("boom")

        return events()

    monkeypatch.setattr(ChatSession, "answer", answer)

    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            failed = await ask(app, pilot)
            error = str(app.query_one("#error").render())
            assert "RuntimeError: boom" in error and "\n" not in error
            assert failed.done and failed.stop_reason == "error" and "error" in str(failed._summary.render())
            assert app.is_running and app.return_code is None and app.current is None
            assert app.history.messages(app.conversation)[-1].stop_reason == "error"
            second = await ask(app, pilot, "Again?")
            assert second is not failed and second.stop_reason == "eos" and len(second.tokens) == 5
            assert str(app.query_one("#error").render()) == ""  # the next answer clears the line
            assert len(calls) == 2

    run(go())


def test_a_bug_while_loading_leaves_the_app_running_with_an_error_line(tmp_path, pair, monkeypatch):
    def load(self, progress):
        raise RuntimeError("load bug")

    monkeypatch.setattr(ChatSession, "load", load)

    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.loading == "no models")
            assert "RuntimeError: load bug" in str(app.query_one("#error").render())
            assert app.is_running and app.return_code is None and not app.ready

    run(go())


def test_regenerate_markdown_keymap_palette_and_theme(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair, keymap={"compare": "f9", "regenerate": "ctrl+l"})
        async with app.run_test(size=(100, 30)) as pilot:
            original = await ask(app, pilot)
            await pilot.press("ctrl+l")  # remapped regenerate

            def shown():
                return list(app.query("#chat AnswerView").results(AnswerView))

            await until(pilot, lambda: shown() and shown()[-1] is not original and shown()[-1].done)
            views = shown()
            assert len(views) == 1 and views[0].question == original.question and original.parent is None
            msgs = app.history.messages(app.conversation)  # the first answer's row gave way to the new one
            assert [m.id for m in msgs] == [views[0].msg_id] and msgs[0].tokens == views[0].tokens
            await pilot.press("ctrl+t")
            assert views[0].query("Markdown")
            titles = {c.title for c in app.get_system_commands(app.screen)}
            assert {desc for _, _, _, desc, _ in ACTIONS} <= titles
            await pilot.press("f9")
            await until(pilot, lambda: isinstance(app.screen, CompareScreen))
            app.theme = "nord"

    run(go())

    async def again():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)):
            assert app.theme == "nord"

    run(again())


def test_answer_blocks_draw_every_token_and_hold_their_height_while_live():
    """Tokens that close a block mid-batch are drawn in it, with no empty line before the next
    block; the live block grows LIVE_STEP lines at a time (fewer screen reflows) and takes its
    exact height once the answer ends."""
    from textual.app import App

    from nudge_local.engine.events import TokenEvent
    from nudge_local.tui.widgets.token_view import BLOCK, LIVE_STEP

    class One(App):
        def compose(self):
            yield AnswerView("q", mode="nudged", gamma=0.4, brackets=False)

    def line(i):
        return [TokenEvent(f" w{i}", "base", 1, 0.9, 0.9) for _ in range(3)] + [TokenEvent("\n", "base", 2, 0.9, 0.9)]

    async def run():
        app = One()
        async with app.run_test(size=(80, 60)) as pilot:
            view = app.query_one(AnswerView)
            await pilot.pause()
            view.add([t for i in range(BLOCK // 4 + 3) for t in line(i)])  # one batch crossing a block's end
            await pilot.pause()
            first, live = list(view.query(TokenView).results(TokenView))
            text = str(first.render())
            assert len(first.tokens) == BLOCK and text.count("\n") == BLOCK // 4 - 1 and text.endswith("w15")
            assert not first.live and first.size.height == BLOCK // 4  # closed: its exact height, no empty line
            assert live.live and live.size.height == LIVE_STEP  # 3 lines written, LIVE_STEP held
            view.finish(stop_reason="length", stats=None)
            await pilot.pause()
            assert not live.live and live.size.height == 3

    asyncio.run(run())


def test_the_mouse_finds_the_token_under_it_in_wrapped_text():
    """Every drawn cell maps to the token whose text is drawn there, across wrapped lines, line
    breaks, wide characters and brackets."""
    from rich.cells import cell_len
    from textual.app import App
    from textual.geometry import Region

    from nudge_local.engine.events import TokenEvent

    texts = ["Hello", " wide", " 日本語", " text", ",", " a", " long", " word", "\n", "next", " line", " ok", "."]
    texts += [" more", " words", " to", " wrap", " again", " and", " again", "\n", "\n", "end"]
    tokens = [TokenEvent(t, "nudge" if i % 3 == 1 else "base", i, 0.5, 0.5) for i, t in enumerate(texts)]

    class One(App):
        def compose(self):
            yield TokenView(first_index=100, brackets=True)

    async def go():
        app = One()
        async with app.run_test(size=(14, 30)) as pilot:
            block = app.query_one(TokenView)
            block.add(tokens, live=False)
            await pilot.pause()
            w, h = block.size
            assert h > texts.count("\n") + 2  # the text wraps
            strips = block.render_lines(Region(0, 0, w, h))
            found = set()
            for y, strip in enumerate(strips):
                x = 0
                for ch in strip.text:
                    index = block.index_at(x, y)
                    if ch.strip():
                        assert index is not None, (x, y, ch)
                        found.add(index)
                        assert ch in tokens[index - 100].text + "[]", (x, y, ch, tokens[index - 100].text)
                    x += cell_len(ch)
            short = [y for y, strip in enumerate(strips) if cell_len(strip.text.rstrip()) < w - 1]
            assert short and all(block.index_at(w - 1, y) is None for y in short)  # past a line's text: none
            assert block.index_at(0, h) is None  # below the text
            assert {100 + i for i, t in enumerate(texts) if t.strip()} <= found  # every written token is found

    run(go())


def test_a_block_closed_by_one_batch_takes_its_exact_height_when_the_next_batch_opens_a_block():
    from textual.app import App

    from nudge_local.engine.events import TokenEvent
    from nudge_local.tui.widgets.token_view import BLOCK, LIVE_STEP

    class One(App):
        def compose(self):
            yield AnswerView("q", mode="nudged", gamma=0.4, brackets=False)

    line = [TokenEvent(" w", "base", 1, 0.9, 0.9)] * 5 + [TokenEvent("\n", "base", 2, 0.9, 0.9)]
    lines = -(-BLOCK // len(line))  # the block closes at the first line end at or past BLOCK tokens
    assert lines % LIVE_STEP, "a height that a live block would round up"

    async def run():
        app = One()
        async with app.run_test(size=(80, 60)) as pilot:
            view = app.query_one(AnswerView)
            await pilot.pause()
            view.add(line * lines)  # this batch ends exactly where the block closes
            await pilot.pause()
            view.set_summary(len(view.tokens), view.nudged, 0.0)  # as the app does while tokens arrive
            live = str(view._summary.render())
            assert live.endswith("writing…") and "tok/s" not in live
            view.add(line)  # the next batch opens a new block
            await pilot.pause()
            first = view.query(TokenView).first()
            assert not first.live and first.size.height == lines

    asyncio.run(run())


def test_prompts_are_made_in_the_worker_under_the_lock(tmp_path, pair, monkeypatch):
    """Fitting the history and rendering prompts tokenize (over HTTP for a served model): never on
    the UI thread, for a question, a regenerated answer, compare and a reopened answer's inspector."""
    calls = []

    def record(name):
        real = getattr(ChatSession, name)

        def wrapped(self, *args, **kwargs):
            calls.append((name, threading.current_thread() is threading.main_thread(), self.lock.locked()))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(ChatSession, name, wrapped)

    record("fit")
    record("prompts")

    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(150, 30)) as pilot:

            def regenerated():
                return original.parent is None and [v.done for v in app.query("#chat AnswerView").results(AnswerView)]

            original = await ask(app, pilot)
            await pilot.press("ctrl+r")
            await until(pilot, lambda: regenerated() == [True])
            await pilot.press("f4")
            await until(pilot, lambda: isinstance(app.screen, CompareScreen))
            await until(pilot, lambda: all(v.done for v in app.screen.views.values()))
            await pilot.press("escape")
            app.open_conversation(app.conversation)
            await pilot.pause()
            view = app.query_one("#chat AnswerView", AnswerView)
            assert view.prompts is None
            await pilot.click(view.query_one(TokenView), offset=(6, 0))
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            assert view.prompts is not None  # made once, kept for the next click

    run(go())
    assert [name for name, _, _ in calls] == ["fit", "fit", "prompts", "prompts"]
    assert all(not on_ui and locked for _, on_ui, locked in calls), calls


def endless_app(tmp_path, pair):
    """An answer that goes on for tens of seconds (see the cancel test)."""
    return make_app(tmp_path, pair, base="endless", max_tokens=100000, context_size=65536)


def test_escape_puts_the_question_back_unless_the_user_typed_a_new_one(tmp_path, pair):
    async def go():
        app = endless_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            prompt = app.query_one(PromptArea)
            await until(pilot, lambda: app.ready)
            await pilot.press(*"Go", "enter")
            await until(pilot, lambda: app.current is not None and len(app.current.tokens) > 3)
            assert prompt.text == ""
            await pilot.press("escape")
            assert prompt.text == "Go" and prompt.cursor_location == (0, 2)  # to edit and send again
            await pilot.press("backspace", "backspace", *"Again", "enter")
            await until(pilot, lambda: app.current is not None and len(app.current.tokens) > 3)
            assert app.current.question == "Again"
            await pilot.press(*"mine")  # typed while the answer is written
            await pilot.press("escape")
            assert app.current is None and prompt.text == "mine"
            asked = [m.question for m in app.history.messages(app.conversation)]
            assert asked == ["Go", "Again"]

    run(go())


def test_escape_before_the_prompts_are_made_asks_nothing(tmp_path, pair, monkeypatch):
    """Esc while the worker still fits the prompts: no answer is shown or stored, the question goes
    back to the input, and the next question is answered."""
    gate, real = threading.Event(), ChatSession.fit

    def fit(self, *args, **kwargs):
        assert gate.wait(20)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ChatSession, "fit", fit)

    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await pilot.press(*"Why?", "enter")
            assert app.current is not None and "writing" in str(app.query_one("#status").render())
            await pilot.press("escape")
            assert app.current is None and app.query_one(PromptArea).text == "Why?"
            gate.set()
            await pilot.pause(0.3)
            assert not app.query("#chat AnswerView") and app.conversation is None
            view = await ask(app, pilot, "")  # the question put back, sent as it is
            assert view.question == "Why?" and view.stop_reason == "eos"
            assert [m.question for m in app.history.messages(app.conversation)] == ["Why?"]

    run(go())


@pytest.mark.parametrize("key", [None, "ctrl+o", "alt+down"])
def test_the_options_take_the_pairs_defaults_once_loaded(tmp_path, pair, monkeypatch, key):
    """A catalog pair's gamma reaches the chat's options once the models are loaded; an option the
    user changed while they loaded stays as the user set it."""
    gate, real = threading.Event(), session_module.choose_models

    def choose(settings, mode):
        assert gate.wait(20)
        chosen = real(settings, mode)
        planted = replace(load_catalog().pair("tiny"), alias="planted", gamma=0.25, base_format=None, stop=None,
                          context_size=None)  # fmt: skip
        return Choice(chosen.base, chosen.nudger, planted)

    monkeypatch.setattr(session_module, "choose_models", choose)

    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            assert app.options == Options.from_settings(app.settings) and app.options.gamma == 0.4
            if key:
                await pilot.press(key)
            gate.set()
            await until(pilot, lambda: app.ready)
            expected = Options.from_settings(app.session.settings)
            assert expected.gamma == 0.25
            if key == "ctrl+o":
                expected.mode = "base"
            if key == "alt+down":
                expected.gamma = 0.35
            assert app.options == expected
            assert f"gamma {expected.gamma:.2f} · {expected.mode}" in str(app.query_one("#status").render())

    run(go())


def test_the_settings_screen_shows_why_a_value_is_refused(tmp_path, pair):
    """Its error line is its own, not the chat's (which the app hides until there is an error)."""

    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
            screen = app.screen
            invalid = screen.query_one("#invalid", Static)
            assert not invalid.display  # no empty line while every value is fine
            screen.query_one("#gamma", Input).value = "abc"
            screen.query_one("#apply", Button).press()
            await pilot.pause()
            assert app.screen is screen and app.options.gamma == 0.4
            assert invalid.display and invalid.size.height == 1 and "gamma must be" in str(invalid.render())

    run(go())
