"""Gates and gamma auto in the chat (issue 28; Pilot, generated models): gamma auto settled once the
pair is loaded (progress on the status line, once per load, the answers written with it); the gate
chosen in the settings screen changes who writes, as the engine does at the same settings; "auto"
typed there calibrates in a worker (progress shown, the UI free, Esc stops it); a gamma out of the
gate's range is refused; the gate recorded with each answer and the entropy gate's value in the
inspector, also after a restart."""

from __future__ import annotations

import threading
import time

import pytest
from textual.widgets import Button, Input, Select, Static

import test_tui
from nudge_local import calibrate as cal
from nudge_local.engine.generate import generate
from nudge_local.engine.local import Model
from nudge_local.engine.prompts import render_prompts
from nudge_local.tui.screens.settings import SettingsScreen, parse_gamma
from nudge_local.tui.session import Options, Stopped
from nudge_local.tui.widgets.answer import AnswerView
from nudge_local.tui.widgets.token_view import TokenView, describe
from test_tui import ask, make_app, run, until

pair = test_tui.pair  # the fixture: the pair of test_tui.py (the base split three ways after " the")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Calibrations cached in the test's own folder, never the user's."""
    monkeypatch.setenv("NUDGE_LOCAL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


class FakeCalibrate:
    """calibrate, quickly: two measurements told to `progress`, then (once `release` is set, or after
    30 seconds: a test that fails never hangs on it) `gamma`. Each call is recorded with its gate and
    thread."""

    def __init__(self, gamma: float, *, hold: bool = False) -> None:
        self.gamma, self.calls, self.stopped = gamma, [], False
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, base, nudger, *, gate="top1", target=cal.TARGET, progress=None, **kw) -> cal.Calibration:
        self.calls.append((gate, threading.current_thread()))
        try:
            progress(1, 0.5, 0.2)
            progress(2, self.gamma, 0.12)
            end = time.monotonic() + 30
            while not self.release.wait(0.02) and time.monotonic() < end:
                progress(2, self.gamma, 0.12)  # as calibrate tells of each measurement (and may be stopped)
        except Stopped:
            self.stopped = True
            raise
        return cal.Calibration(self.gamma, 0.12, target, gate, 40, 2)


def status(app) -> str:
    return str(app.query_one("#status").render())


def engine_answer(pair, **kw) -> list[tuple[str, str]]:
    """What the engine writes to "Why?" at these settings, outside the chat."""
    with Model(pair["base"], n_threads=1) as b, Model(pair["nudger"], n_threads=1) as n:
        events = list(generate(render_prompts(b, n, "Why?"), base=b, nudger=n, **kw))[:-1]
    return [(e.text, e.source) for e in events]


def written(view: AnswerView) -> list[tuple[str, str]]:
    return [(t.text, t.source) for t in view.tokens]


async def settings(app, pilot) -> SettingsScreen:
    await pilot.press("f2")
    await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
    return app.screen


def test_gamma_auto_is_calibrated_once_while_loading_and_the_answers_use_it(tmp_path, pair, monkeypatch):
    fake = FakeCalibrate(0.3, hold=True)  # below the base's 1/3 after " the": the base writes every token
    monkeypatch.setattr(cal, "calibrate", fake)

    async def go():
        app = make_app(tmp_path, pair, gamma="auto")
        async with app.run_test(size=(140, 30)) as pilot:
            assert app.options.gamma is None and "gamma auto" in status(app)
            progress = "calibrating gamma for this pair (step 2: gamma 0.3 nudges 12.0%)"
            await until(pilot, lambda: progress in status(app))
            assert not app.ready
            fake.release.set()
            await until(pilot, lambda: app.ready)
            assert len(fake.calls) == 1 and fake.calls[0][0] == "top1"
            assert fake.calls[0][1] is not threading.main_thread()  # in the loading worker
            assert app.session.calibration.gamma == 0.3
            assert (app.options.gamma, app.options.gamma_auto, app.options.gate) == (0.3, True, "top1")
            assert "gamma 0.30 (auto) · nudged" in status(app)
            view = await ask(app, pilot)
            assert view.gamma == 0.3 and view.settings["gamma"] == 0.3 and view.settings["gamma_auto"]
            stored = app.history.messages(app.conversation)[0].settings
            assert (stored["gamma"], stored["gate"], stored["gamma_auto"]) == (0.3, "top1", True)
            await ask(app, pilot, "Again?")
            assert len(fake.calls) == 1  # once per load, not per answer
            return written(view)

    got = run(go())
    assert got == engine_answer(pair, gamma=0.3) and all(source == "base" for _, source in got)


def test_gamma_auto_really_measures_the_pair_once_then_reads_its_cache(tmp_path, pair):
    async def load():
        app = make_app(tmp_path, pair, gamma="auto", gate="margin")
        async with app.run_test(size=(140, 30)) as pilot:
            await until(pilot, lambda: app.ready or app.loaded, timeout=120)
            assert app.ready, app.query_one("#error").render()
            c = app.session.calibration
            assert (app.options.gamma, app.options.gamma_auto, app.options.gate) == (c.gamma, True, "margin")
            assert f"gamma {c.gamma:.2f} (auto) · margin" in status(app)
            view = await ask(app, pilot)
            return c, written(view)

    first, got = run(load())
    assert not first.cached and first.steps >= 2 and first.gate == "margin" and 0 < first.gamma < 1
    assert got == engine_answer(pair, gamma=first.gamma, gate="margin")
    again, _ = run(load())  # a restart: the same pair's calibration, from the cache
    assert again.cached and again.gamma == first.gamma
    assert [(c.gate, c.gamma) for c in cal.cached_for_files(pair["base"], pair["nudger"])] == [("margin", first.gamma)]


def test_the_margin_gate_chosen_in_settings_changes_who_writes(tmp_path, pair):
    """After " the" the base's top-1 is 1/3 (above gamma 0.3: top1 lets the base write) and its margin
    0 (below it: margin hands the word to the nudger)."""

    async def go():
        app = make_app(tmp_path, pair, gamma=0.3)
        async with app.run_test(size=(140, 40)) as pilot:
            before = await ask(app, pilot)
            screen = await settings(app, pilot)
            assert screen.query_one("#gate", Select).value == "top1"
            assert screen.query_one("#gamma", Input).value == "0.3"
            screen.query_one("#gate", Select).value = "margin"
            screen.query_one("#apply", Button).press()
            await until(pilot, lambda: app.screen is not screen)
            assert (app.options.gate, app.options.gamma) == ("margin", 0.3)
            assert "gamma 0.30 · margin · nudged" in status(app)
            old = AnswerView("Why?", mode="nudged", gamma=0.4, brackets=False)
            old.settings = {"gamma": 0.4, "mode": "nudged"}  # stored before the chat had gates: top1's
            assert (app.options_of(old).gate, app.options_of(before).gate) == ("top1", "top1")
            after = await ask(app, pilot, "Why?")
            assert after.gate == "margin" and after.settings["gate"] == "margin"
            nudged = [t for t in after.tokens if t.source == "nudge"]
            assert nudged and "margin gate" in describe(nudged[0], after.gamma, after.gate)
            return written(before), written(after)

    before, after = run(go())
    assert before == engine_answer(pair, gamma=0.3) and all(s == "base" for _, s in before)
    assert after == engine_answer(pair, gamma=0.3, gate="margin") and ("Sure", "nudge") in [
        (t.strip(), s) for t, s in after
    ]


def test_auto_typed_in_settings_calibrates_for_the_chosen_gate_in_a_worker(tmp_path, pair, monkeypatch):
    """The entropy gate at gamma 0.25 nats: after " the" the base's entropy is ln 3 (1.10), so the nudger
    writes (where top1 at 0.25 would let the base write, its top-1 being 1/3); the inspector says the
    entropy, and a restart shows it again."""
    fake = FakeCalibrate(0.25, hold=True)
    monkeypatch.setattr(cal, "calibrate", fake)

    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(140, 40), tooltips=True) as pilot:
            await until(pilot, lambda: app.ready)
            screen = await settings(app, pilot)
            screen.query_one("#gate", Select).value = "entropy"
            screen.query_one("#gamma", Input).value = "auto"
            screen.query_one("#apply", Button).press()
            line = screen.query_one("#calibrating", Static)
            await until(pilot, lambda: "calibrating gamma for the entropy gate (step 2: gamma 0.25 nudges 12.0%)"
                        in str(line.render()))  # fmt: skip
            assert line.display and screen.query_one("#apply", Button).disabled and app.screen is screen
            assert fake.calls == [("entropy", fake.calls[0][1])] and fake.calls[0][1] is not threading.main_thread()
            await pilot.press("tab")  # the UI answers keys while the worker measures
            fake.release.set()
            await until(pilot, lambda: app.screen is not screen)
            assert (app.options.gate, app.options.gamma, app.options.gamma_auto) == ("entropy", 0.25, True)
            assert "gamma 0.25 (auto) · entropy" in status(app)
            view = await ask(app, pilot)
            nudged = [t for t in view.tokens if t.source == "nudge"]
            assert nudged and nudged[0].base_entropy == pytest.approx(1.0986, abs=1e-3)
            block = view.query_one(TokenView)
            await pilot.hover(block, offset=(6, 0))  # inside " Sure"
            assert "the base's entropy 1.10 nats > gamma 0.25" in block.tooltip
            await pilot.press(*["alt+up"] * 5)  # 0.25 nats a step, past 1
            assert (app.options.gamma, app.options.gamma_auto) == (1.5, False)
            assert "gamma 1.50 · entropy" in status(app)
            return app.conversation, written(view), [t.base_entropy for t in view.tokens]

    conv, got, entropies = run(go())
    assert got == engine_answer(pair, gamma=0.25, gate="entropy") and len(fake.calls) == 1
    assert got != engine_answer(pair, gamma=0.25)  # the top1 gate's at the same gamma

    async def reopened():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.ready)
            app.open_conversation(conv)
            await until(pilot, lambda: app.query("#chat AnswerView"))
            view = app.query_one("#chat AnswerView", AnswerView)
            assert view.gate == "entropy" and [t.base_entropy for t in view.tokens] == entropies
            nudged = [t for t in view.tokens if t.source == "nudge"]
            assert nudged and "the base's entropy 1.10 nats > gamma 0.25" in describe(nudged[0], view.gamma, view.gate)
            assert app.options_of(view).gate == "entropy"

    run(reopened())


def test_closing_the_settings_stops_a_calibration(tmp_path, pair, monkeypatch):
    fake = FakeCalibrate(0.2, hold=True)
    monkeypatch.setattr(cal, "calibrate", fake)

    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.ready)
            screen = await settings(app, pilot)
            screen.query_one("#gate", Select).value = "margin"
            screen.query_one("#gamma", Input).value = "auto"
            screen.query_one("#apply", Button).press()
            await until(pilot, lambda: fake.calls)
            await pilot.press("escape")
            await until(pilot, lambda: fake.stopped)
            assert app.screen is not screen and app.options == Options.from_settings(app.session.settings)
            view = await ask(app, pilot)  # the lock is free again
            assert view.stop_reason == "eos"

    run(go())


@pytest.mark.parametrize(
    "gate,raw,refused",
    [
        ("top1", "1.5", "gamma must be 0 to 1 for the top1 gate, or auto (got '1.5')."),
        ("margin", "-0.1", "gamma must be 0 to 1 for the margin gate"),
        ("entropy", "-1", "gamma must be >= 0 nats for the entropy gate, or auto (got '-1')."),
        ("entropy", "nan", "gamma must be >= 0 nats"),
        ("top1", "abc", "or auto (got 'abc')"),
        ("entropy", "2.5", None),
        ("margin", "AUTO", None),
    ],
)
def test_a_gamma_out_of_the_gates_range_is_refused(tmp_path, pair, monkeypatch, gate, raw, refused):
    monkeypatch.setattr(cal, "calibrate", FakeCalibrate(0.05))

    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.ready)
            screen = await settings(app, pilot)
            screen.query_one("#gate", Select).value = gate
            screen.query_one("#gamma", Input).value = raw
            screen.query_one("#apply", Button).press()
            if refused is None:
                await until(pilot, lambda: app.screen is not screen)
                assert app.options.gate == gate and app.options.gamma == (2.5 if raw == "2.5" else 0.05)
                return
            await pilot.pause()
            invalid = screen.query_one("#invalid", Static)
            assert app.screen is screen and invalid.display and refused in str(invalid.render())
            assert (app.options.gate, app.options.gamma) == ("top1", 0.4)

    run(go())


def test_auto_before_the_models_are_loaded_is_refused_and_parse_gamma_by_gate():
    assert parse_gamma(" auto ", "top1") is None and parse_gamma("3", "entropy") == 3.0
    with pytest.raises(Exception, match="0 to 1 for the margin gate"):
        parse_gamma("1.01", "margin")

    async def go():
        from textual.app import App

        app = App()
        async with app.run_test(size=(140, 40)) as pilot:
            screen = SettingsScreen(Options(), None)  # no loaded pair to calibrate on
            app.push_screen(screen)
            await pilot.pause()
            screen.query_one("#gate", Select).value = "entropy"
            screen.query_one("#gamma", Input).value = "auto"
            screen.query_one("#apply", Button).press()
            await pilot.pause()
            assert app.screen is screen and "wait for the models" in str(screen.query_one("#invalid").render())

    run(go())
