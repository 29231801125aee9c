"""The chat's input as people use it (Pilot, generated models): Enter sends in a burst of keys or
after a paste, questions sent while an answer is written queue up, Esc and Esc again, Up/Down
recall, copying an answer or a code block, and compare asking as the chat asks."""

from __future__ import annotations

import threading

import pytest
from textual import events
from textual.keys import _character_to_key
from textual.widgets import Static

import test_tui
from nudge_local.engine.events import TokenEvent
from nudge_local.tui.screens.compare import CompareScreen
from nudge_local.tui.session import ChatSession
from nudge_local.tui.widgets.answer import AnswerView, code_block_at
from nudge_local.tui.widgets.prompt import PromptArea
from nudge_local.tui.widgets.token_view import TokenView
from test_tui import ask, make_app, run, until

pair = test_tui.pair  # the fixture: the pair of test_tui.py

ANSWER = "the Sure, ok."  # what the pair writes to any question


def burst(app, *keys) -> None:
    """Keys (a character, a key name, or a Paste event) as a terminal delivers a paste or
    `tmux send-keys 'text' Enter`: all read at once, before the app handles the first."""
    for k in keys:
        if isinstance(k, events.Paste):
            app.post_message(k)
        elif len(k) == 1:
            app.post_message(events.Key(_character_to_key(k), k))
        else:
            app.post_message(events.Key(k, {"enter": "\r", "ctrl+j": "\n"}.get(k)))


def answers(app) -> list[AnswerView]:
    return list(app.query("#chat AnswerView").results(AnswerView))


def asked(app) -> list[str]:
    return [v.question for v in answers(app)]


async def all_done(app, pilot, n: int) -> None:
    await until(pilot, lambda: app.current is None and len(answers(app)) == n and all(v.done for v in answers(app)))


@pytest.fixture
def gate(monkeypatch):
    """Holds the first question's worker (in fit, under the models' lock) until set: an answer that
    is being written for as long as a test needs."""
    gate, real = threading.Event(), ChatSession.fit

    def fit(self, *args, **kwargs):
        assert gate.wait(20)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ChatSession, "fit", fit)
    return gate


# -- Enter ----------------------------------------------------------------------------------------


def test_text_and_enter_in_one_burst_send_the_text(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            prompt = app.query_one(PromptArea)
            await until(pilot, lambda: app.ready)
            burst(app, *"Why?", "enter")
            await all_done(app, pilot, 1)
            assert asked(app) == ["Why?"] and answers(app)[0].text == ANSWER and prompt.text == ""
            # keys after Enter in the same burst start the next question, and none is lost
            burst(app, *"Two?", "enter", *"Three")
            await all_done(app, pilot, 2)
            assert asked(app) == ["Why?", "Two?"] and prompt.text == "Three"
            await pilot.press("enter")
            await pilot.press(*"Four?", "enter")  # Pilot's keys, one at a time
            await all_done(app, pilot, 4)
            assert asked(app) == ["Why?", "Two?", "Three", "Four?"] and prompt.text == ""

    run(go())


def test_a_paste_inserts_its_lines_and_enter_after_it_sends(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            prompt = app.query_one(PromptArea)
            await until(pilot, lambda: app.ready)
            burst(app, events.Paste("first line\nsecond line\n"))
            await pilot.pause(0.2)
            assert prompt.text == "first line\nsecond line\n" and not answers(app) and not app.queue
            burst(app, events.Paste("third line"), "enter")  # a paste and Enter read at once
            await all_done(app, pilot, 1)
            assert asked(app) == ["first line\nsecond line\nthird line"] and prompt.text == ""
            # a new line in a burst lands between the keys around it; Shift+Enter adds one too
            burst(app, *"a", "ctrl+j", *"b")
            await pilot.pause(0.2)
            await pilot.press("shift+enter", "c")
            assert prompt.text == "a\nb\nc" and len(answers(app)) == 1

    run(go())


# -- the queue and Esc ----------------------------------------------------------------------------


def test_questions_sent_while_an_answer_is_written_are_answered_next_in_order(tmp_path, pair, gate):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            prompt, box = app.query_one(PromptArea), app.query_one("#queue", Static)
            await until(pilot, lambda: app.ready)
            await pilot.press(*"First?", "enter")
            assert app.current is not None and app.current.question == "First?"
            await pilot.press(*"Second?", "enter")
            burst(app, *"Third?", "enter")
            await until(pilot, lambda: len(app.queue) == 2)
            assert prompt.text == "" and app.queue == ["Second?", "Third?"]
            assert box.display and str(box.render()) == "queued: Second?\nqueued: Third?"
            gate.set()
            await all_done(app, pilot, 3)
            assert asked(app) == ["First?", "Second?", "Third?"] and all(v.text == ANSWER for v in answers(app))
            assert [m.question for m in app.history.messages(app.conversation)] == asked(app)
            assert [v.settings["turns_held"] for v in answers(app)] == [0, 1, 2]  # each after the one before
            assert not box.display and not app.queue

    run(go())


def test_esc_stops_the_answer_and_holds_the_queue_and_esc_again_clears_it(tmp_path, pair, gate):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            prompt, box = app.query_one(PromptArea), app.query_one("#queue", Static)
            await until(pilot, lambda: app.ready)
            await pilot.press(*"First?", "enter", *"Second?", "enter", *"Third?", "enter")
            assert app.current is not None and app.queue == ["Second?", "Third?"]
            await pilot.press("escape")  # the answer stops, its question comes back, the queue waits
            assert app.current is None and prompt.text == "First?"
            assert app.queue == ["Second?", "Third?"] and app.held and box.has_class("held")
            assert str(box.render()).startswith("held after Esc: Enter goes on, Esc clears\nqueued: Second?")
            gate.set()
            await pilot.pause(0.3)
            assert app.current is None and not answers(app)  # held: nothing is asked meanwhile
            await pilot.press("escape")  # nothing being written: the queue is cleared
            assert app.queue == [] and not box.display and prompt.text == "First?"
            await pilot.press("enter")
            await all_done(app, pilot, 1)
            assert asked(app) == ["First?"]

    run(go())


def test_enter_goes_on_with_a_held_queue_in_order(tmp_path, pair, gate):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await pilot.press(*"First?", "enter", *"Second?", "enter", "escape")
            assert app.held and app.query_one(PromptArea).text == "First?"
            gate.set()
            await pilot.press("enter")  # the question put back joins the queue behind the one waiting
            await all_done(app, pilot, 2)
            assert asked(app) == ["Second?", "First?"] and not app.held

    run(go())


# -- Up and Down ----------------------------------------------------------------------------------


def test_up_and_down_recall_the_conversations_questions(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            prompt = app.query_one(PromptArea)
            await ask(app, pilot, "One?")
            await ask(app, pilot, "Two?")
            await pilot.press(*"dra", "shift+enter", *"ft")  # two lines: Up on the second moves the cursor
            await pilot.press("up")
            assert prompt.text == "dra\nft" and prompt.cursor_location[0] == 0
            shown = []
            for key in ("up", "up", "up", "down", "down", "down"):
                await pilot.press(key)
                shown.append(prompt.text)
            assert shown == ["Two?", "One?", "One?", "Two?", "dra\nft", "dra\nft"]
            prompt.clear()
            await pilot.press("up", "backspace", *"!", "enter")  # an edited question is sent as edited
            await until(pilot, lambda: app.current is None and len(answers(app)) == 3)
            assert asked(app)[-1] == "Two!"
            await pilot.press("up")
            assert prompt.text == "Two!"
            conversation = app.conversation
            await pilot.press("ctrl+n", "up")  # a new conversation recalls nothing
            assert prompt.text == "Two!"
            await pilot.press("down")
            assert prompt.text == "Two!"
            prompt.clear()
            app.open_conversation(conversation)  # a saved one recalls its own
            await pilot.press("up", "up")
            assert prompt.text == "Two?"

    run(go())


# -- copy -----------------------------------------------------------------------------------------

CODE_ANSWER = "Run this:\n```python\nprint('hi')\nprint(2)\n```\nThen stop."


def test_code_block_at_finds_the_fenced_block_around_an_offset():
    at = CODE_ANSWER.index
    assert code_block_at(CODE_ANSWER, at("Run")) is None and code_block_at(CODE_ANSWER, at("Then")) is None
    for where in ("```python", "print(2)", "```\nThen"):
        assert code_block_at(CODE_ANSWER, at(where)) == "print('hi')\nprint(2)"
    assert code_block_at("a\n~~~~\nx\n```\ny", 7) == "x\n```\ny"  # another fence inside; unclosed runs on


async def _answer_with_code(app, pilot) -> AnswerView:
    """An answer with a code block, as the chat shows one."""
    view = AnswerView("Code?", mode="nudged", gamma=0.4, brackets=False)
    await app.query_one("#chat").mount(view)
    pieces = ["Run", " this", ":\n", "```", "python\n", "print", "('hi')\n", "print", "(2)\n", "```\n", "Then",
              " stop."]  # fmt: skip
    view.add([TokenEvent(p, "nudge" if i % 3 else "base", i, 0.9, 0.9) for i, p in enumerate(pieces)])
    view.finish(stop_reason="eos", stats=None)
    await pilot.pause()
    assert view.text == CODE_ANSWER
    return view


def test_copy_takes_the_answer_or_the_code_block_under_the_mouse(tmp_path, pair, monkeypatch):
    copied = []
    notes = []

    async def go():
        app = make_app(tmp_path, pair)
        monkeypatch.setattr(app, "copy_to_clipboard", copied.append)
        monkeypatch.setattr(app, "notify", lambda text, **kw: notes.append(text))
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await pilot.press("f5")
            assert copied == [] and notes == ["No answer to copy yet."]
            first = await ask(app, pilot, "Why?")
            await pilot.press("f5")  # the mouse is over no answer: the last one
            assert copied[-1] == ANSWER and "Copied the answer to “Why?” (13 characters)." in notes[-1]
            view = await _answer_with_code(app, pilot)
            block = view.query_one(TokenView)
            await pilot.hover(block, offset=(2, 2))  # on "print('hi')"
            await pilot.press("f5")
            assert copied[-1] == "print('hi')\nprint(2)" and notes[-1] == "Copied the code block (2 lines)."
            await pilot.hover(block, offset=(2, 5))  # "Then stop.": outside the block
            await pilot.press("f5")
            assert copied[-1] == CODE_ANSWER
            await pilot.hover(first.query_one(TokenView), offset=(1, 0))  # an earlier answer
            await pilot.press("f5")
            assert copied[-1] == ANSWER
            command = next(c for c in app.get_system_commands(app.screen) if c.title == "Copy")  # the palette's
            await pilot.hover(block, offset=(3, 3))
            await command.callback()
            assert copied[-1] == "print('hi')\nprint(2)"

    run(go())


def test_copy_reaches_the_clipboard(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            await ask(app, pilot, "Why?")
            await pilot.press("f5")
            assert app.clipboard == ANSWER

    run(go())


# -- compare --------------------------------------------------------------------------------------


async def _compare(app, pilot) -> CompareScreen:
    await pilot.press("f4")
    await until(pilot, lambda: isinstance(app.screen, CompareScreen))
    screen = app.screen
    await until(pilot, lambda: all(v.done for v in screen.views.values()))
    await pilot.pause(0.05)
    return screen


def context_line(screen) -> str:
    return " ".join(str(s.render()) for s in screen.query(".context").results(Static))


def test_compare_asks_after_the_conversation_as_the_chat_does(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(150, 30)) as pilot:
            await ask(app, pilot, "Why?")
            second = await ask(app, pilot, "And then?")
            screen = await _compare(app, pilot)  # the last question, as its answer was written
            nudged = screen.views["nudged"]
            assert nudged.prompts == second.prompts and "Why?" in nudged.prompts.base
            assert [(t.text, t.source) for t in nudged.tokens] == [(t.text, t.source) for t in second.tokens]
            assert context_line(screen) == "With the conversation's 1 earlier turn, as the chat's answer was written."
            await pilot.press("escape")
            await pilot.press(*"Third?")
            screen = await _compare(app, pilot)  # a new question, as the chat would ask it now
            compared = screen.views["nudged"]
            assert context_line(screen) == "With the conversation's 2 earlier turns, as the chat would ask it now."
            await pilot.press("escape", "enter")
            await until(pilot, lambda: app.current is None and len(answers(app)) == 3)
            third = answers(app)[-1]
            assert compared.prompts == third.prompts and compared.text == third.text

    run(go())


def test_compare_leaves_out_the_turns_the_answer_left_out(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair, context_size=256, max_tokens=24)
        async with app.run_test(size=(150, 40)) as pilot:
            for i in range(30):
                last = await ask(app, pilot, f"Question {i} about the sky and the sea and the long road home?")
                if last.dropped:
                    break
            assert last.dropped, "no turn was left out"
            screen = await _compare(app, pilot)
            assert screen.views["nudged"].prompts == last.prompts
            held = len(answers(app)) - 1 - last.dropped
            assert context_line(screen) == (f"With the conversation's {held} earlier turn{'s' * (held != 1)} "
                                            f"({last.dropped} older left out: outside the models' context), "
                                            "as the chat's answer was written.")  # fmt: skip

    run(go())
