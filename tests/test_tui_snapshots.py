"""Snapshots of the chat with provenance, the inspector, compare, the history's filter and the loom (the
inspector choosing a token, an answer with its branch) (Textual pinned in pyproject)."""

from __future__ import annotations

import sqlite3
import time

import pytest
from textual.widgets import Input

from nudge_local.engine.events import Stats, TokenEvent
from nudge_local.tui.history import History
from nudge_local.tui.screens.compare import CompareScreen
from nudge_local.tui.screens.history import HistoryScreen
from nudge_local.tui.screens.inspector import InspectorScreen
from nudge_local.tui.session import ChatSession
from nudge_local.tui.widgets.answer import AnswerView
from nudge_local.tui.widgets.prompt import PromptArea
from nudge_local.tui.widgets.token_view import TokenView
from test_tui import make_app, pair, until  # noqa: F401 - `pair` is a fixture

SIZE = (110, 26)


@pytest.fixture(autouse=True)
def fixed_speed_and_backend(monkeypatch):
    """Tokens per second differs run to run: show it as 0. The status line's backend differs by
    build (Metal on Apple Silicon, CUDA, CPU): show it as CPU, as the pictures were drawn."""
    monkeypatch.setattr(Stats, "tokens_per_second", property(lambda self: 0.0))
    monkeypatch.setattr(ChatSession, "backend", property(lambda self: "CPU"))


async def _ready(app, pilot):
    await until(pilot, lambda: app.ready)
    # A blinking cursor is drawn or not depending on how long the answer took (it failed CI once).
    app.query_one(PromptArea).cursor_blink = False


async def _answered(app, pilot):
    await _ready(app, pilot)
    await pilot.press(*"Why is the sky blue?")
    await pilot.press("enter")
    await until(pilot, lambda: app.current is None and app.query(AnswerView))
    await pilot.pause(0.1)


def test_chat_with_provenance(snap_compare, tmp_path, pair):  # noqa: F811
    app = make_app(tmp_path, pair)

    async def run_before(pilot):
        await _answered(app, pilot)
        await pilot.press("ctrl+b")  # brackets as well, so both marks are in the picture
        await _answered(app, pilot)
        await pilot.pause(0.6)  # past a blink: the picture must not depend on timing

    assert snap_compare(app, run_before=run_before, terminal_size=SIZE)


def test_inspector(snap_compare, tmp_path, pair):  # noqa: F811
    app = make_app(tmp_path, pair)

    async def run_before(pilot):
        await _answered(app, pilot)
        await pilot.click(app.query_one(TokenView), offset=(6, 0))
        await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
        await pilot.pause(0.1)

    assert snap_compare(app, run_before=run_before, terminal_size=SIZE)


def test_compare(snap_compare, tmp_path, pair):  # noqa: F811
    app = make_app(tmp_path, pair)

    async def run_before(pilot):
        await _ready(app, pilot)
        await pilot.press(*"Why is the sky blue?")
        await pilot.press("f4")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        await until(pilot, lambda: all(v.done for v in app.screen.views.values()))
        await pilot.pause(0.1)

    assert snap_compare(app, run_before=run_before, terminal_size=SIZE)


SAVED = [  # title, question, answer
    ("Sky talk", "Why is the sky blue?", "Rayleigh scattering."),
    ("Boiling eggs", "How long to boil an egg?", "About seven minutes."),
    ("Duck eggs", "Should I boil a duck egg longer?", "A little longer than a hen's egg."),
    ("Tea", "How hot for green tea?", "Below boiling, about 80 degrees."),
]


def test_history_filtered(snap_compare, tmp_path, pair, monkeypatch):  # noqa: F811
    path = tmp_path / "history.sqlite3"
    with History(path) as h:
        for title, question, answer in SAVED:
            msg = h.start_answer(h.new_conversation(title, {}), question, mode="nudged", settings={})
            h.append_tokens(msg, [TokenEvent(" " + answer, "base", 1, 0.5, 0.5)])
            h.finish_answer(msg, stop_reason="eos", stats={})
    with sqlite3.connect(path) as raw:  # the list shows when each was updated: fixed times, read as UTC
        raw.execute("UPDATE conversations SET created = 1.75e9 + id * 3600, updated = 1.75e9 + id * 3600 + 60")
    monkeypatch.setattr(time, "localtime", time.gmtime)
    app = make_app(tmp_path, pair)

    async def run_before(pilot):
        await _ready(app, pilot)
        await pilot.press("f3")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen))
        app.screen.query_one("#filter", Input).cursor_blink = False
        await pilot.press("/", *"boil eg")  # both egg conversations (the last word as a prefix), not the tea
        await pilot.pause(0.1)

    assert snap_compare(app, run_before=run_before, terminal_size=SIZE)


async def _branched(app, pilot):
    """The answer taken another way at " Sure" with the base's " ok" there (the keys: Down gives the
    base's table its cursor on its first row, two more go to " ok", Enter takes it), written and on screen."""
    await pilot.click(app.query_one(TokenView), offset=(6, 0))
    await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
    await pilot.press("down", "down", "down", "enter")
    await until(pilot, lambda: app.current is None and not isinstance(app.screen, InspectorScreen))
    await until(pilot, lambda: all(v.done and v.branch == (2, 2) for v in app.query(AnswerView).results(AnswerView)))


def test_inspector_choosing(snap_compare, tmp_path, pair):  # noqa: F811
    """The inspector once its base table has a row cursor: the row to take, and what Enter and h do."""
    app = make_app(tmp_path, pair)

    async def run_before(pilot):
        await _answered(app, pilot)
        await pilot.click(app.query_one(TokenView), offset=(6, 0))
        await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
        await pilot.press("down", "down")
        await pilot.pause(0.1)

    assert snap_compare(app, run_before=run_before, terminal_size=SIZE)


def test_chat_with_a_branch(snap_compare, tmp_path, pair):  # noqa: F811
    """An answer taken another way at " Sure": "branch 2/2", and the token chosen in braces and reverse."""
    app = make_app(tmp_path, pair)

    async def run_before(pilot):
        await _answered(app, pilot)
        await _branched(app, pilot)
        await pilot.press("ctrl+b")
        await pilot.hover("#status")  # no tooltip in the picture
        await pilot.pause(0.6)

    assert snap_compare(app, run_before=run_before, terminal_size=SIZE)
