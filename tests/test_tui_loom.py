"""The loom in the chat (Pilot, generated models): an answer taken another way from the inspector (a
token of either model's top 5, or the position handed to the other model), every branch kept and
switched with a key, later turns following the branch shown, a restart, export, regenerate as a
branch, the user's tokens marked without colour, and the Markdown view keeping provenance."""

from __future__ import annotations

import json

from textual.widgets import Markdown

import test_tui
from nudge_local.engine.events import TokenEvent
from nudge_local.tui.screens.inspector import Alternatives, InspectorScreen
from nudge_local.tui.widgets.answer import AnswerView, marked_markdown
from nudge_local.tui.widgets.token_view import TokenView, describe
from test_tui import ask, make_app, run, until

pair = test_tui.pair  # the fixture: the pair of test_tui.py

# What the pair writes to any question: the base is sure of "the", then split three ways (p = 1/3), so
# the nudger writes " Sure,"; the base ends with " ok.".
ANSWER = [("the", "base"), (" Sure", "nudge"), (",", "nudge"), (" ok", "base"), (".", "base")]


def answers(app) -> list[AnswerView]:
    return list(app.query("#chat AnswerView").results(AnswerView))


def summary_of(view: AnswerView) -> str:
    return str(view._summary.render())


def written(view: AnswerView) -> list[tuple[str, str]]:
    return [(t.text, t.source) for t in view.tokens]


async def inspect(app, pilot, view: AnswerView, index: int) -> InspectorScreen:
    block = view.query_one(TokenView)
    block.post_message(TokenView.Inspect(block, index))
    await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
    await pilot.pause(0.05)
    return app.screen


async def written_out(app, pilot, count: int) -> None:
    """The branch (or regenerated answer) being written has been written, and is on screen."""
    await until(pilot, lambda: app.current is None and len(answers(app)) == count and all(v.done for v in answers(app)))
    await pilot.pause(0.05)


async def take(app, pilot, view: AnswerView, index: int, role: str, text: str) -> AnswerView:
    """In the inspector on token `index`, the row of `role`'s table whose token is `text`, taken with
    the keys (Down gives the table its cursor, Enter takes the row): the branch written, on screen."""
    screen = await inspect(app, pilot, view, index)
    table = screen.query_one(f"#top-{role}", Alternatives)
    row = [a.text for a in table.alternatives].index(text)
    table.focus()
    await pilot.press("down")  # the cursor appears on the first row
    assert table.show_cursor and table.cursor_row == 0
    await pilot.press(*["down"] * row, "enter")
    count = len(answers(app))
    await written_out(app, pilot, count)
    return answers(app)[-1]


def test_an_alternative_taken_in_the_inspector_is_a_branch_kept_beside_the_answer(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            original = await ask(app, pilot)
            assert written(original) == ANSWER and "branch" not in summary_of(original)
            branch = await take(app, pilot, original, 1, "base", " ok")  # where the nudger wrote " Sure"
            assert not original.is_attached and answers(app) == [branch]
            assert branch.tokens[:1] == original.tokens[:1]
            chosen = branch.tokens[1]
            assert (chosen.text, chosen.source, chosen.base_p, chosen.p) == (" ok", "user", None, 1.0)
            assert written(branch) == [("the", "base"), (" ok", "user"), (".", "base")]  # then the base is sure
            assert summary_of(branch).startswith("branch 2/2 · nudged") and "1 chosen by you" in summary_of(branch)
            stored = app.history.messages(app.conversation)
            assert [m.id for m in stored] == [branch.msg_id] and stored[0].tokens == branch.tokens
            assert (stored[0].parent_id, stored[0].branch_at) == (original.msg_id, 1)
            assert app.history.branches(branch.msg_id) == [original.msg_id, branch.msg_id]

            await pilot.press("alt+left")  # the original comes back, as it was
            (shown,) = answers(app)
            assert shown.msg_id == original.msg_id and written(shown) == ANSWER
            assert summary_of(shown).startswith("branch 1/2 · nudged")
            await pilot.press("alt+left")  # round the branches
            (shown,) = answers(app)
            assert shown.msg_id == branch.msg_id and shown.tokens == branch.tokens
            await pilot.press("alt+right")
            assert answers(app)[0].msg_id == original.msg_id
            await pilot.press("alt+right")
            assert answers(app)[0].msg_id == branch.msg_id
            await pilot.press("ctrl+s")
            return app.conversation, branch.msg_id, branch.text

    conv, branch_id, text = run(go())
    md = (tmp_path / f"nudge-local-{conv}.md").read_text()
    assert "the {ok}." in md and "(branch 2 of 2)" in md and "chosen by the user" in md
    data = json.loads((tmp_path / f"nudge-local-{conv}.json").read_text())
    (message,) = data["messages"]
    assert message["id"] == branch_id and message["text"] == text
    assert [(t["text"], t["source"]) for t in message["tokens"]][1] == (" ok", "user")

    async def again():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await pilot.press("f3")
            await pilot.pause(0.1)
            await pilot.press("enter")
            await until(pilot, lambda: answers(app))
            (view,) = answers(app)
            assert view.msg_id == branch_id and view.text == text and view.tokens[1].source == "user"
            assert summary_of(view).startswith("branch 2/2 · nudged")
            await pilot.press("alt+left")
            assert written(answers(app)[0]) == ANSWER

    run(again())


def test_a_position_handed_to_the_other_model(tmp_path, pair):
    """A base token handed to the nudger: it writes a word there (no gate asked, base_p None); a
    nudged token handed to the base: it writes one token whatever its top-1 probability."""

    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            original = await ask(app, pilot)
            screen = await inspect(app, pilot, original, 0)
            await pilot.press("h")
            await written_out(app, pilot, 1)
            (to_nudger,) = answers(app)
            first = to_nudger.tokens[0]
            assert (first.source, first.base_p) == ("nudge", None) and first.text.strip() == "ok"
            assert to_nudger.msg_id != original.msg_id and summary_of(to_nudger).startswith("branch 2/2")
            assert not screen.is_attached

            await inspect(app, pilot, to_nudger, 0)
            await pilot.press("escape")  # closing the inspector takes nothing
            assert answers(app) == [to_nudger] and len(app.history.branches(to_nudger.msg_id)) == 2

            await pilot.press("alt+right")  # the original again; its nudged " Sure" to the base
            (shown,) = answers(app)
            await inspect(app, pilot, shown, 1)
            await pilot.press("h")
            await written_out(app, pilot, 1)
            (to_base,) = answers(app)
            handed = to_base.tokens[1]
            assert to_base.tokens[:1] == shown.tokens[:1]
            assert handed.source == "base" and round(handed.base_p, 3) == 0.333 and handed.text in (" ok", ",", ".")
            assert summary_of(to_base).startswith("branch 3/3")

    run(go())


def test_a_base_only_answer_takes_a_token_but_not_a_handed_position(tmp_path, pair):
    """The nudger has no view of a base-only answer: the engine's sentence, and nothing stored."""

    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await pilot.press("ctrl+o")  # base only
            original = await ask(app, pilot)
            assert original.mode == "base"
            screen = await inspect(app, pilot, original, 1)
            assert not screen.query("#top-nudger")
            await pilot.press("h")
            await until(pilot, lambda: app.current is None and app.query_one("#error").has_class("shown"))
            error = str(app.query_one("#error").render())
            assert "A base-only answer takes only a token you choose" in error
            assert answers(app) == [original] and app.history.branches(original.msg_id) == [original.msg_id]
            branch = await take(app, pilot, original, 1, "base", " ok")
            assert branch.mode == "base" and branch.tokens[1].source == "user"
            assert summary_of(branch).startswith("branch 2/2 · base")
            assert not app.query_one("#error").has_class("shown")

    run(go())


def test_later_turns_follow_the_branch_shown(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            first = await ask(app, pilot, "One?")
            second = await ask(app, pilot, "Two?")
            branch = await take(app, pilot, first, 1, "base", " ok")  # the first answer, another way
            assert answers(app) == [branch]  # its own conversation goes on from here
            third = await ask(app, pilot, "Three?")
            assert [v.question for v in answers(app)] == ["One?", "Three?"]
            assert third.settings["turns_held"] == 1
            await pilot.hover(branch.query_one(TokenView), offset=(1, 0))
            await pilot.press("alt+left")  # the first answer's first branch, and the turn that followed it
            assert [(v.msg_id, v.question) for v in answers(app)] == [(first.msg_id, "One?"), (second.msg_id, "Two?")]
            await pilot.press("alt+left")  # the mouse is over the first answer again: its other branch
            assert [(v.msg_id, v.question) for v in answers(app)] == [(branch.msg_id, "One?"), (third.msg_id, "Three?")]

    run(go())


def test_regenerate_keeps_the_old_answer_as_a_branch(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            original = await ask(app, pilot)
            await pilot.press("ctrl+r")
            await until(pilot, lambda: not original.is_attached)
            await written_out(app, pilot, 1)
            (again,) = answers(app)
            assert again.msg_id != original.msg_id and summary_of(again).startswith("branch 2/2")
            assert app.history.branches(again.msg_id) == [original.msg_id, again.msg_id]
            assert app.history.message(again.msg_id).branch_at == 0
            await pilot.press("alt+left")
            (shown,) = answers(app)
            assert shown.msg_id == original.msg_id and shown.tokens == original.tokens
            assert summary_of(shown).startswith("branch 1/2")
            await pilot.press("alt+right")
            assert answers(app)[0].tokens == again.tokens

    run(go())


def test_the_users_tokens_are_marked_without_colour(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            original = await ask(app, pilot)
            branch = await take(app, pilot, original, 3, "base", " ok")  # the base's own token, chosen
            assert written(branch) == [*ANSWER[:3], (" ok", "user"), (".", "base")]
            block = branch.query_one(TokenView)
            content = block.build()
            styled = {content.plain[s.start : s.end]: s.style for s in content.spans}
            assert styled[" ok"].reverse and not styled[" ok"].foreground  # the user's: reverse video, no colour
            assert styled[" Sure,"].underline and not styled[" Sure,"].reverse
            await pilot.press("ctrl+b")
            assert block.build().plain == "the [Sure,] {ok}."
            assert describe(branch.tokens[3], 0.4).startswith("' ok' chosen by you")
            screen = await inspect(app, pilot, branch, 3)
            assert "chosen by you" in " ".join(str(s.render()) for s in screen.query("Static").results())

    run(go())


def test_the_inspector_says_what_enter_and_h_do_once_a_table_has_a_cursor(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            original = await ask(app, pilot)
            screen = await inspect(app, pilot, original, 1)
            help_line = screen.query_one("#branch-help")
            assert not help_line.display and not screen.query_one("#top-base", Alternatives).show_cursor
            await pilot.press("enter")  # no cursor yet: Enter only shows it, nothing is taken
            assert isinstance(app.screen, InspectorScreen) and help_line.display
            table = screen.query_one("#top-base", Alternatives)
            text = str(help_line.render())
            assert f"Enter: branch with {table.alternatives[0].text!r} (the base's)" in text
            assert "h: the base writes here" in text  # " Sure" was the nudger's
            await pilot.press("down")
            assert repr(table.alternatives[1].text) in str(help_line.render())
            await pilot.press("escape")
            assert answers(app) == [original] and app.current is None

    run(go())


def test_a_click_on_a_row_points_at_it_and_a_second_click_takes_it(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            original = await ask(app, pilot)
            await pilot.click(original.query_one(TokenView), offset=(6, 0))  # " Sure"
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            table = app.screen.query_one("#top-base", Alternatives)
            row = [a.text for a in table.alternatives].index(" ok")
            await pilot.click(table, offset=(2, 1 + row))  # below the header
            assert isinstance(app.screen, InspectorScreen) and table.show_cursor and table.cursor_row == row
            await pilot.click(table, offset=(2, 1 + row))
            await written_out(app, pilot, 1)
            assert written(answers(app)[0]) == [("the", "base"), (" ok", "user"), (".", "base")]

    run(go())


def test_the_markdown_view_marks_nudged_words(tmp_path, pair):
    async def go():
        app = make_app(tmp_path, pair)
        async with app.run_test(size=(100, 30)) as pilot:
            view = await ask(app, pilot)
            await pilot.press("ctrl+t")
            markdown = view.query_one(Markdown)
            await pilot.pause(0.1)
            assert markdown.source == "the \\[Sure,\\] ok."
            rendered = " ".join(str(block._content) for block in markdown.query("MarkdownBlock").results())
            assert "the [Sure,] ok." in rendered

    run(go())


def tokens(*pieces: tuple[str, str]) -> list[TokenEvent]:
    return [TokenEvent(text, source, 1, None, 1.0) for text, source in pieces]


def test_marked_markdown_keeps_code_and_block_syntax_whole():
    """Escaped brackets outside code, plain ones inside it; fences, rules and block markers stay as
    written; a code span one writer wrote is marked around it; the user's tokens in braces."""
    assert marked_markdown(tokens(("the", "base"), (" Sure", "nudge"), (",", "nudge"), (" ok", "base"))) == (
        "the \\[Sure,\\] ok"
    )
    code = tokens(("```py\n", "nudge"), ("x = ", "base"), ("f(1)", "nudge"), ("\n```\n", "base"))
    assert marked_markdown(code) == "```py\nx = [f(1)]\n```\n"
    listed = tokens(("- ", "nudge"), ("one", "nudge"), ("\n", "base"), ("## Two", "nudge"), ("\n---\n", "nudge"))
    assert marked_markdown(listed) == "- \\[one\\]\n## \\[Two\\]\n---\n"
    spans = tokens(("Use", "base"), (" `foo`", "nudge"), (" and", "base"), (" `a", "base"), ("b`", "nudge"))
    assert marked_markdown(spans) == "Use \\[`foo`\\] and `a[b]`"
    assert marked_markdown(tokens(("a", "base"), (" pick", "user"), (" [link](x)", "nudge"))) == (
        "a {pick} \\[[link](x)\\]"
    )
