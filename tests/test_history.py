"""The chat-history store: real SQLite files, restarts, a real kill -9 mid-answer, schema versions, exports."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import Input, ListView, Static

import nudge_local.tui.app
import nudge_local.tui.history as history
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Stats, TokenEvent
from nudge_local.render import spans
from nudge_local.tui.history import SCHEMA_VERSION, ConversationInfo, History, Message
from nudge_local.tui.screens.history import ConversationItem, HistoryScreen

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"pair": "tiny", "base": "org/base-GGUF:base.Q4_K_M.gguf", "nudger": "org/chat-GGUF:chat.Q4_K_M.gguf"}
SETTINGS = {"gamma": 0.4, "temperature": 0.0, "max_tokens": 256, "system": "", "stop": ["Question:"]}

# The token planted at index i; a text so the crash subprocess can build the very same list.
TOKEN_AT = (
    "lambda i: TokenEvent(text=f' w{i}', source='nudge' if i % 3 == 1 else 'base', token=i * 7 + 1, "
    "base_p=None if i % 5 == 0 else 1 / (i + 3), p=(i % 11 + 1) / 13)"
)
token_at = eval(TOKEN_AT)

# Floats that lose bits when rounded through text or single precision; texts a naive store might mangle.
TRICKY = [
    TokenEvent("Hi", "base", 0, 0.1 + 0.2, 1 / 3),
    TokenEvent(",", "base", 11, 5e-324, 1.0),
    TokenEvent("", "nudge", 2**31 + 5, 0.39999999999999997, 2.220446049250313e-16),  # first half of a character
    TokenEvent(" é🙂", "nudge", 151_642, 0.39999999999999997, 0.9999999999999999),
    TokenEvent(" [x]\n\t'\"\\", "base", 7, None, 1e-300),
    TokenEvent("\x00nul", "base", 8, 0.5, 0.123456789012345678),
]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "history.sqlite3"


def _answer(h: History, conv: int, tokens: list[TokenEvent], batch: int = 2, **finish) -> int:
    msg = h.start_answer(conv, "Why?", mode="nudged", settings=SETTINGS)
    for i in range(0, len(tokens), batch):
        h.append_tokens(msg, tokens[i : i + batch])
    if finish:
        h.finish_answer(msg, **finish)
    return msg


def _dump(h: History) -> tuple[list[ConversationInfo], dict[int, list[Message]]]:
    convs = h.conversations()
    return convs, {c.id: h.messages(c.id) for c in convs}


def test_data_dir_env_override_and_default_path(tmp_path, monkeypatch):
    monkeypatch.setenv("NUDGE_LOCAL_DATA_DIR", str(tmp_path / "data"))
    assert history.data_dir() == tmp_path / "data"
    assert history.default_path() == tmp_path / "data" / "history.sqlite3"
    with History() as h:  # no path: the default, its folders created
        assert h.path == tmp_path / "data" / "history.sqlite3"
        h.new_conversation("x", {})
    assert (tmp_path / "data" / "history.sqlite3").is_file()
    monkeypatch.delenv("NUDGE_LOCAL_DATA_DIR")
    assert history.data_dir().name == "nudge-local"


def test_create_list_rename_delete(db_path):
    with History(db_path) as h:
        assert h.conversations() == []
        a = h.new_conversation("first", MODELS)
        b = h.new_conversation("second", {})
        assert [c.id for c in h.conversations()] == [b, a]  # newest first
        msg = _answer(h, a, TRICKY, stop_reason="eos", stats={})  # a question bumps a to the top
        convs = h.conversations()
        assert [(c.id, c.title, c.n_messages) for c in convs] == [(a, "first", 1), (b, "second", 0)]
        assert convs[0].updated > convs[1].updated >= convs[1].created and convs[0].models == MODELS

        h.rename(a, "renamed")
        h.rename(b, "also renamed")
        assert [(c.id, c.title) for c in h.conversations()] == [(a, "renamed"), (b, "also renamed")]
        with pytest.raises(KeyError):
            h.rename(999, "nothing")

        h.delete(a)
        assert [c.id for c in h.conversations()] == [b]
        assert h.messages(a) == []
        with pytest.raises(KeyError):
            h.message(msg)
        h.delete(a)  # deleting twice is harmless
    with sqlite3.connect(db_path) as raw:  # the cascade reached the tokens table too
        assert raw.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
        assert raw.execute("SELECT COUNT(*) FROM tokens").fetchone()[0] == 0


def test_round_trip_preserves_every_token_field_and_order(db_path):
    tokens = TRICKY + [token_at(i) for i in range(40)]
    stats = Stats(tokens=len(tokens), nudge_tokens=3, seconds=1.25, prompt_tokens={"base": 9}).as_dict()
    with History(db_path) as h:
        conv = h.new_conversation("t", MODELS)
        msg = _answer(h, conv, tokens, batch=3, stop_reason="length", stats=stats)
        h.append_tokens(msg, [])  # an empty batch is a no-op
        for m in (h.messages(conv)[0], h.message(msg)):
            assert m.tokens == tokens
            assert [(t.base_p, t.p) for t in m.tokens] == [(t.base_p, t.p) for t in tokens]
            assert [float.hex(t.p) for t in m.tokens] == [float.hex(t.p) for t in tokens]  # bit-exact
            assert m.text == "".join(t.text for t in tokens)
            assert (m.id, m.question, m.mode, m.settings) == (msg, "Why?", "nudged", SETTINGS)
            assert (m.stop_reason, m.stats, m.cancelled) == ("length", stats, False)
    with History(db_path) as h:  # a restart: the same file in a new History
        assert h.messages(conv)[0].tokens == tokens


def test_restart_returns_the_same_data(db_path):
    with History(db_path) as h:
        a = h.new_conversation("a", MODELS)
        b = h.new_conversation("b", {"base": "x.gguf"})
        _answer(h, a, TRICKY, stop_reason="eos", stats={"tokens": 6})
        _answer(h, b, [token_at(i) for i in range(9)], stop_reason="stop_string", stats={}, cancelled=True)
        _answer(h, a, [token_at(i) for i in range(4)])  # left unfinished
        h.set_state("theme", "dark")
        before, exports = _dump(h), (h.export_markdown(a), h.export_json(b))
    with History(db_path) as h:
        assert _dump(h) == before
        assert (h.export_markdown(a), h.export_json(b)) == exports
        assert h.get_state("theme") == "dark"
        assert [m.position for m in h.messages(a)] == [0, 1]


def test_unfinished_answer_comes_back_interrupted_with_every_token(db_path):
    tokens = [token_at(i) for i in range(25)]
    h = History(db_path)
    conv = h.new_conversation("t", {})
    msg = _answer(h, conv, tokens, batch=4)
    h.close()  # no finish_answer
    with History(db_path) as h:
        (m,) = h.messages(conv)
        assert (m.id, m.stop_reason, m.stats, m.cancelled) == (msg, None, {}, False)
        assert m.tokens == tokens
        h.append_tokens(msg, [token_at(25)])  # appending resumes after the stored tokens
        assert h.message(msg).tokens == tokens + [token_at(25)]


CRASH_CHILD = f"""
import os, signal, sys, threading
from pathlib import Path
from nudge_local.engine.events import TokenEvent
from nudge_local.tui.history import History

token_at = {TOKEN_AT}
h = History(Path(sys.argv[1]))
msg = h.start_answer(h.new_conversation("crash", {{}}), "q", mode="nudged", settings={{}})
# kill -9 from another thread, at whatever point the streaming loop has reached
threading.Timer(0.4, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
n = 0
while True:
    h.append_tokens(msg, [token_at(n + k) for k in range(3)])
    n += 3
    print(n, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL on this platform")
def test_kill_9_mid_answer_loses_no_appended_token(db_path):
    db_path.parent.mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(db_path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    lines = [line for line in proc.stdout.split("\n")[:-1] if line]  # complete lines only
    reported = int(lines[-1])  # append_tokens had returned for this many tokens
    assert reported >= 3
    assert db_path.with_name(db_path.name + "-wal").exists()  # it really died with the database open
    with History(db_path) as h:
        (conv,) = h.conversations()
        (m,) = h.messages(conv.id)
        assert m.stop_reason is None
        n = len(m.tokens)
        # Every acknowledged token; at most the one batch in flight beyond; never a partial batch.
        assert reported <= n <= reported + 3 and n % 3 == 0
        assert m.tokens == [token_at(i) for i in range(n)]


def test_schema_version_is_set_and_newer_database_refused(db_path):
    with History(db_path):
        pass
    with sqlite3.connect(db_path) as raw:
        assert SCHEMA_VERSION == len(history.MIGRATIONS) >= 1
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(NudgeError, match="newer nudge-local") as e:
        History(db_path)
    assert str(e.value).count(". ") == 0 and str(db_path) in str(e.value)  # one sentence naming the file
    with sqlite3.connect(db_path) as raw:  # refused, not downgraded
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_not_a_database_is_one_sentence(tmp_path):
    bad = tmp_path / "history.sqlite3"
    bad.write_bytes(b"this is not SQLite, just some text that is long enough " * 100)
    with pytest.raises(NudgeError, match="cannot be opened"):
        History(bad)


def test_migrations_are_idempotent_on_reopen(db_path):
    def schema() -> list:
        with sqlite3.connect(db_path) as raw:
            return raw.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()

    with History(db_path) as h:
        conv = h.new_conversation("keep", MODELS)
        _answer(h, conv, TRICKY, stop_reason="eos", stats={})
        data = _dump(h)
    first = schema()
    assert {"conversations", "messages", "tokens", "state"} <= {name for _, name, _ in first}
    for _ in range(3):
        with History(db_path) as h:
            assert _dump(h) == data
        assert schema() == first


def test_each_migration_runs_in_its_own_transaction(db_path, monkeypatch):
    with History(db_path) as h:
        conv = h.new_conversation("old", {})

    def broken(db):
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration failed")

    monkeypatch.setattr(history, "MIGRATIONS", [*history.MIGRATIONS, broken])
    with pytest.raises(RuntimeError):
        History(db_path)
    with sqlite3.connect(db_path) as raw:  # rolled back: old version, no half-made table
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None

    def add_pinned(db):
        db.execute("ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")

    monkeypatch.setattr(history, "MIGRATIONS", [*history.MIGRATIONS[:-1], add_pinned])
    for _ in range(2):  # upgraded once; the second open finds nothing to do (a re-run would fail on ALTER)
        with History(db_path) as h:
            assert [c.title for c in h.conversations()] == ["old"] and h.messages(conv) == []
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert raw.execute("SELECT pinned FROM conversations").fetchall() == [(0,)]


SURE = [
    TokenEvent("Hi,", "base", 1, 0.9, 0.8),
    TokenEvent(" the", "base", 2, 0.7, 0.6),
    TokenEvent(" Sure", "nudge", 3, 0.2, 0.5),
    TokenEvent(",", "nudge", 4, 0.2, 0.4),
    TokenEvent(" ok", "base", 5, 0.95, 0.9),
]


def test_export_markdown(db_path):
    with History(db_path) as h:
        conv = h.new_conversation("Sky talk", MODELS)
        _answer(h, conv, SURE, stop_reason="eos", stats={"tokens": 5, "tokens_per_second": 12.5})
        _answer(h, conv, SURE[:3])  # interrupted
        _answer(h, conv, SURE[:2], stop_reason="cancelled", stats={}, cancelled=True)
        md = h.export_markdown(conv)
        with pytest.raises(KeyError):
            h.export_markdown(999)
    lines = md.splitlines()
    assert lines[0] == "# Sky talk"
    assert f"- base: {MODELS['base']}" in lines and f"- nudger: {MODELS['nudger']}" in lines
    assert md.count("## Question") == 3 and "\nWhy?\n" in md
    assert " the [Sure,] ok" in md and "Hi, the [Sure,] ok" in lines
    assert "Hi, the [Sure]" in lines  # an interrupted answer's open bracket is closed
    summaries = [line for line in lines if line.startswith("*nudged")]
    assert summaries == [
        "*nudged · gamma 0.4 · temperature 0.0 · max_tokens 256 · 5 tokens, 2 nudged (40.0%) · 12.5 tok/s · stop: eos*",
        "*nudged · gamma 0.4 · temperature 0.0 · max_tokens 256 · 3 tokens, 1 nudged (33.3%) · interrupted*",
        "*nudged · gamma 0.4 · temperature 0.0 · max_tokens 256 · 2 tokens, 0 nudged (0.0%) · cancelled*",
    ]


def test_export_json_round_trips_tokens(db_path):
    tokens = SURE + TRICKY
    stats = {"tokens": len(tokens), "nudge_tokens": 4}
    with History(db_path) as h:
        conv = h.new_conversation("J", MODELS)
        msg = _answer(h, conv, tokens, stop_reason="eos", stats=stats)
        _answer(h, conv, SURE[:1])
        doc = json.loads(h.export_json(conv))
    assert doc["conversation"]["title"] == "J" and doc["conversation"]["models"] == MODELS
    first, second = doc["messages"]
    assert first["id"] == msg and first["question"] == "Why?" and first["mode"] == "nudged"
    assert (first["settings"], first["stop_reason"], first["cancelled"], first["stats"]) == (
        SETTINGS,
        "eos",
        False,
        stats,
    )
    assert [TokenEvent(**t) for t in first["tokens"]] == tokens
    assert first["spans"] == spans(tokens) and first["text"] == "".join(t.text for t in tokens)
    assert second["stop_reason"] is None and [TokenEvent(**t) for t in second["tokens"]] == SURE[:1]


def test_delete_last_answer_for_regenerate(db_path):
    with History(db_path) as h:
        conv = h.new_conversation("r", {})
        assert h.delete_last_answer(conv) is None
        first = _answer(h, conv, SURE, stop_reason="eos", stats={})
        last = _answer(h, conv, TRICKY, stop_reason="eos", stats={})
        gone = h.delete_last_answer(conv)
        assert gone is not None and gone.id == last and gone.tokens == TRICKY and gone.question == "Why?"
        assert [m.id for m in h.messages(conv)] == [first]
        again = _answer(h, conv, SURE[:2], stop_reason="eos", stats={})
        assert [(m.id, m.position) for m in h.messages(conv)] == [(first, 0), (again, 1)]
        assert h.messages(conv)[1].tokens == SURE[:2]  # no tokens left over from the deleted answer


def test_state_get_set(db_path):
    with History(db_path) as h:
        assert h.get_state("theme") is None and h.get_state("theme", "light") == "light"
        h.set_state("theme", "dark")
        h.set_state("panes", {"stats": True, "width": [40, 80]})
        h.set_state("theme", "solarized")
        assert h.get_state("theme", "light") == "solarized"
    with History(db_path) as h:
        assert h.get_state("panes") == {"stats": True, "width": [40, 80]}
        assert h.get_state("theme") == "solarized"


def test_errors_for_missing_ids(db_path):
    with History(db_path) as h:
        with pytest.raises(KeyError):
            h.start_answer(42, "q", mode="nudged", settings={})
        with pytest.raises(KeyError):
            h.append_tokens(42, SURE)
        with pytest.raises(KeyError):
            h.finish_answer(42, stop_reason="eos", stats={})
        conv = h.new_conversation("ok", {})  # the failed writes left the connection usable
        assert h.messages(conv) == []


def test_thread_appends_while_main_thread_reads(db_path):
    batches, size = 300, 2
    errors: list[BaseException] = []
    with History(db_path) as h:
        conv = h.new_conversation("busy", MODELS)
        other = h.new_conversation("other", {})
        msg = h.start_answer(conv, "q", mode="nudged", settings={})

        def worker() -> None:
            try:
                for b in range(batches):
                    h.append_tokens(msg, [token_at(b * size + k) for k in range(size)])
                h.finish_answer(msg, stop_reason="eos", stats={})
            except BaseException as e:  # reported to the main thread, which asserts
                errors.append(e)

        t = threading.Thread(target=worker)
        t.start()
        seen, reads = [], 0
        while t.is_alive() or reads < 5:
            assert {c.id for c in h.conversations()} == {conv, other}
            h.rename(other, f"other {reads}")  # the UI thread writes too
            seen.append(len(h.messages(conv)[0].tokens))
            reads += 1
        t.join()
        assert errors == []
        assert seen == sorted(seen) and all(n % size == 0 for n in seen)  # whole batches, never going back
        (m,) = h.messages(conv)
        assert m.stop_reason == "eos" and m.tokens == [token_at(i) for i in range(batches * size)]


# --- search ------------------------------------------------------------------------------------------


def _words(text: str) -> list[TokenEvent]:
    """An answer as a model streams it: a word may come in two tokens."""
    out = []
    for n, word in enumerate(text.split()):
        head, tail = word[: len(word) // 2 + 1], word[len(word) // 2 + 1 :]
        out.append(TokenEvent(" " + head, "nudge" if n % 2 else "base", n, 0.5, 0.5))
        if tail:
            out.append(TokenEvent(tail, "base", n + 100, None, 0.25))
    return out


def _asked(h: History, conv: int, question: str, answer: str) -> int:
    msg = h.start_answer(conv, question, mode="nudged", settings=SETTINGS)
    h.append_tokens(msg, _words(answer))
    h.finish_answer(msg, stop_reason="eos", stats={})
    return msg


def test_search_by_words_prefix_and_plain_text(db_path):
    with History(db_path) as h:
        eggs = h.new_conversation("Breakfast", {})
        _asked(h, eggs, "How long to boil an egg?", "About seven minutes for a firm yolk.")
        sky = h.new_conversation("Sky", {})
        _asked(h, sky, "Why is the sky blue?", 'Rayleigh scattering AND NEAR(dust) "quoted" col:umn -minus *star')
        both = h.new_conversation("Both", {})
        _asked(h, both, "Tell me about volcanoes", "Magma rises.")
        _asked(h, both, "And penguins?", "They live where it is cold, Café owners say.")
        h.new_conversation("Empty", {})
        every = h.conversations()

        def found(words: str) -> list[int]:
            return [c.id for c in h.search(words)]

        assert found("egg") == found("EGG") == found("yolk minutes") == [eggs]  # questions and answers
        assert found("boil eg") == [eggs]  # the last word as it is being typed
        assert found("boil eg ") == found("bo egg") == []  # a word ended by a space, or not the last one
        assert found("volcanoes penguins") == [both]  # the words may sit in different messages
        assert found("volcanoes yolk") == []  # every word, not any
        assert found("cafe") == found("café") == [both]
        assert found("the ") == [sky] and found("the") == [both, sky]  # "the", or a word starting so ("They")
        assert found("breakfast") == []  # titles are not searched
        assert h.search("") == h.search("   ") == h.search("?! --") == every  # nothing to search: all
        # What a user types is text, never FTS5 syntax: no error, and operators are words like any other.
        for typed in ['"', '"quoted', "AND", "NEAR(dust)", "col:umn", "-minus", "*star", "a OR", "(", ")", "^x", "'"]:
            h.search(typed)
        assert found("AND") == found("and") == [both, sky]  # "and" in the penguins question too
        assert found('"quoted"') == found("NEAR(dust)") == found("col:umn") == found("-minus") == [sky]
        assert found("scattering OR yolk") == []  # OR is a word here, and no answer holds it
        # the most recently updated first
        _asked(h, eggs, "And a duck egg?", "A little longer.")
        assert found("and") == [eggs, both, sky]
        before = {w: found(w) for w in ("egg", "boil eg", "rayleigh", "and")}
    with History(db_path) as h:  # a restart: the index is in the file
        assert {w: [c.id for c in h.search(w)] for w in before} == before


def test_a_long_answer_is_searched_in_pieces(db_path):
    """The index holds an answer in pieces, so an append re-indexes only the last: every word is found,
    those split across two batches where a piece ends too, and nothing is left of a deleted answer."""
    words = [TokenEvent(f" w{i}", "base", i, 0.5, 0.5) for i in range(3000)]  # about 17,000 characters
    with History(db_path) as h:
        conv = h.new_conversation("long", {})
        msg = h.start_answer(conv, "Count", mode="nudged", settings={})
        for i in range(0, len(words), 7):
            h.append_tokens(msg, words[i : i + 7])
            h.append_tokens(msg, [TokenEvent(" ome", "nudge", 1, 0.5, 0.5)])  # a word in two batches, each time
            h.append_tokens(msg, [TokenEvent(f"lette{i}", "base", 2, 0.5, 0.5)])
        with sqlite3.connect(db_path) as raw:
            sizes = [n for (n,) in raw.execute("SELECT length(answer) FROM message_text ORDER BY rowid")]
        assert len(sizes) > 8 and max(sizes) < 2100 and sum(sizes) == len(h.message(msg).text)
        found = lambda words: [c.id for c in h.search(words)]  # noqa: E731
        assert found("w0 w1500 w2999 count ") == [conv]
        assert all(found(f"omelette{i} ") == [conv] for i in range(0, len(words), 7))
        branch = h.start_branch(msg, len(h.message(msg).tokens) - 1, mode="nudged", settings={})
        with sqlite3.connect(db_path) as raw:  # the copied tokens indexed, in pieces as well
            first = branch * history._PIECES
            sizes = [n for (n,) in raw.execute(
                "SELECT length(answer) FROM message_text WHERE rowid BETWEEN ? AND ?", (first, first + 9999)
            )]  # fmt: skip
        assert len(sizes) > 8 and sum(sizes) == len(h.message(branch).text) == len(h.message(msg).text) - 9
        h.delete_last_answer(conv)
        assert found("w2999 omelette2996 ") == [conv]  # the parent's rows stay
        assert h.branches(msg) == [msg] and branch not in [m.id for m in h.messages(conv)]
        h.delete(conv)
        assert found("w0") == found("count") == []
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM message_text").fetchone()[0] == 0


def test_search_follows_appends_finishes_and_deletes(db_path):
    with History(db_path) as h:
        conv = h.new_conversation("Cooking", MODELS)
        msg = h.start_answer(conv, "What is for dinner?", mode="nudged", settings=SETTINGS)
        assert [c.id for c in h.search("dinner")] == [conv]  # the question, before any token
        assert h.search("omelette") == []
        h.append_tokens(msg, [TokenEvent(" An", "base", 1, 0.5, 0.5), TokenEvent(" ome", "nudge", 2, 0.3, 0.3)])
        assert [c.id for c in h.search("ome")] == [conv] and h.search("omelette ") == []
        h.append_tokens(msg, [TokenEvent("lette", "base", 3, 0.9, 0.9)])  # the word completed by a later batch
        assert [c.id for c in h.search("omelette ")] == [conv]
    with History(db_path) as h:  # never finished: found after a restart all the same
        assert [c.id for c in h.search("omelette")] == [conv]
        h.finish_answer(msg, stop_reason="eos", stats={})
        assert [c.id for c in h.search("an omelette")] == [conv]
        h.rename(conv, "Renamed")
        assert [c.id for c in h.search("dinner omelette")] == [conv] and h.search("renamed") == []
        other = _asked(h, conv, "And dessert?", "A crumble.")
        assert [c.id for c in h.search("crumble")] == [conv]
        assert h.delete_last_answer(conv).id == other
        assert h.search("crumble") == [] and h.search("dessert") == []
        assert [c.id for c in h.search("omelette")] == [conv]
        h.delete(conv)
        assert h.search("omelette") == [] and h.search("dinner") == []
    with sqlite3.connect(db_path) as raw:  # the cascade reached the index too
        assert raw.execute("SELECT COUNT(*) FROM message_text").fetchone()[0] == 0


# --- branches ----------------------------------------------------------------------------------------

CHOSEN = TokenEvent(" Okay", "user", 9, 0.1, 0.05)  # a token the user chose at a branch
GOES_ON = [CHOSEN, TokenEvent(" then", "base", 10, 0.8, 0.8)]


def _path(h: History, conv: int) -> list[tuple[int, int, int]]:
    return [(m.id, m.branch_index, m.branch_count) for m in h.messages(conv)]


def test_branch_keeps_the_first_tokens_and_is_shown(db_path):
    with History(db_path) as h:
        conv = h.new_conversation("loom", MODELS)
        first = _answer(h, conv, SURE, stop_reason="eos", stats={"tokens": 5})
        updated = h.conversation(conv).updated
        branch = h.start_branch(first, 2, mode="paper", settings={"gamma": 0.1})
        assert h.conversation(conv).updated > updated
        m = h.message(branch)
        assert m.tokens == SURE[:2] and m.stop_reason is None  # the kept tokens, copied
        assert (m.parent_id, m.branch_at, m.mode, m.settings) == (first, 2, "paper", {"gamma": 0.1})
        assert (m.question, m.position, m.after_id, m.conversation_id) == ("Why?", 0, None, conv)
        h.append_tokens(branch, GOES_ON)  # the rest streams in as any answer's does
        h.finish_answer(branch, stop_reason="eos", stats={})
        assert h.message(branch).tokens == SURE[:2] + GOES_ON
        assert h.message(first).tokens == SURE  # the parent untouched
        assert _path(h, conv) == [(branch, 2, 2)]  # the branch on screen, 2 of 2
        assert h.branches(first) == h.branches(branch) == [first, branch]
        assert (h.message(first).branch_index, h.message(first).branch_count) == (1, 2)

        whole = h.start_branch(first, len(SURE), mode="nudged", settings={})  # at the end, and at 0
        empty = h.start_branch(branch, 0, mode="nudged", settings={})  # a branch of a branch
        assert h.message(whole).tokens == SURE and h.message(empty).tokens == []
        assert h.branches(first) == [first, branch, whole, empty] and _path(h, conv) == [(empty, 4, 4)]
        assert h.message(empty).parent_id == branch
        assert [c.id for c in h.search("okay")] == [conv]  # branches are searched too
        with pytest.raises(ValueError, match="no position 6"):
            h.start_branch(first, len(SURE) + 1, mode="nudged", settings={})
        with pytest.raises(ValueError):
            h.start_branch(first, -1, mode="nudged", settings={})
        with pytest.raises(KeyError):
            h.start_branch(999, 0, mode="nudged", settings={})
        with pytest.raises(KeyError):
            h.show(999)
        with pytest.raises(KeyError):
            h.branches(999)
        assert h.branches(first) == [first, branch, whole, empty]  # the refused branches left nothing
        assert len(h.conversations()) == 1 and h.conversations()[0].n_messages == 4


def test_switching_branches_shows_each_ones_own_turns(db_path):
    with History(db_path) as h:
        conv = h.new_conversation("loom", {})
        a = _answer(h, conv, SURE, stop_reason="eos", stats={})
        a2 = h.start_answer(conv, "And then?", mode="nudged", settings={})  # follows a
        b = h.start_branch(a, 1, mode="nudged", settings={})
        assert _path(h, conv) == [(b, 2, 2)]  # a's next turn is not b's
        b2 = h.start_answer(conv, "And b?", mode="nudged", settings={})  # a new question follows the branch
        m = h.message(b2)
        assert (m.after_id, m.position, m.branch_count) == (b, 1, 1)
        assert _path(h, conv) == [(b, 2, 2), (b2, 1, 1)]
        h.show(a)
        assert _path(h, conv) == [(a, 1, 2), (a2, 1, 1)]
        assert [m.question for m in h.messages(conv)] == ["Why?", "And then?"]
        a3 = h.start_branch(a2, 0, mode="nudged", settings={})  # a branch of the second turn
        assert _path(h, conv) == [(a, 1, 2), (a3, 2, 2)] and h.branches(a2) == [a2, a3]
        h.show(b)
        assert _path(h, conv) == [(b, 2, 2), (b2, 1, 1)]
        h.show(b)  # showing the shown one changes nothing
        assert _path(h, conv) == [(b, 2, 2), (b2, 1, 1)]
        h.show(a)  # each point kept its own choice: a3, not a2
        assert _path(h, conv) == [(a, 1, 2), (a3, 2, 2)]
        before = _dump(h), h.branches(a2), h.export_json(conv)
    with History(db_path) as h:  # a restart: the tree and the choices are in the file
        assert (_dump(h), h.branches(a2), h.export_json(conv)) == before
    with sqlite3.connect(db_path) as raw:  # one shown answer at each point
        rows = raw.execute("SELECT COALESCE(after_id, 0), SUM(shown) FROM messages GROUP BY 1").fetchall()
        assert sorted(rows) == [(0, 1), (a, 1), (b, 1)]
        with pytest.raises(sqlite3.IntegrityError):
            raw.execute("UPDATE messages SET shown = 1 WHERE id = ?", (b,))  # the index refuses a second


def test_regenerate_replaces_the_branch_on_screen(db_path):
    with History(db_path) as h:
        conv = h.new_conversation("loom", {})
        first = _answer(h, conv, SURE, stop_reason="eos", stats={})
        branch = h.start_branch(first, 3, mode="nudged", settings={})
        gone = h.delete_last_answer(conv)
        assert gone is not None and gone.id == branch and gone.tokens == SURE[:3] and gone.branch_count == 2
        assert h.messages(conv) == []  # none shown where it was, until its replacement is asked
        assert h.branches(first) == [first]
        again = _answer(h, conv, SURE[:1], stop_reason="eos", stats={})
        assert h.branches(first) == [first, again] and _path(h, conv) == [(again, 2, 2)]
        h.show(first)  # the one on screen goes, not the newest
        assert h.delete_last_answer(conv).id == first and h.branches(again) == [again]
        h.delete(conv)
        assert h.messages(conv) == [] and h.delete_last_answer(conv) is None


def test_export_writes_the_branch_on_screen(db_path):
    with History(db_path) as h:
        conv = h.new_conversation("Loom talk", MODELS)
        first = _answer(h, conv, SURE, stop_reason="eos", stats={})
        branch = h.start_branch(first, 2, mode="nudged", settings=SETTINGS)
        h.append_tokens(branch, GOES_ON)
        h.finish_answer(branch, stop_reason="eos", stats={})
        h.start_branch(first, 0, mode="nudged", settings=SETTINGS)
        h.show(branch)
        later = _answer(h, conv, SURE[:2], stop_reason="eos", stats={})
        md, doc = h.export_markdown(conv), json.loads(h.export_json(conv))
    lines = md.splitlines()
    assert "Hi, the {Okay} then" in lines and "[Sure,]" not in md  # the branch shown, its chosen token braced
    assert "Tokens in {braces} were chosen by the user at a branch." in md
    assert lines.count("### Answer (branch 2 of 3)") == 1 and lines.count("### Answer") == 1
    assert md.count("## Question") == 2
    assert "*nudged · gamma 0.4 · temperature 0.0 · max_tokens 256 · 4 tokens, 0 nudged (0.0%), 1 chosen · " \
           "branched at token 2 · stop: eos*" in lines  # fmt: skip
    shown, after = doc["messages"]
    assert (shown["id"], shown["branch_index"], shown["branch_count"]) == (branch, 2, 3)
    assert (shown["parent_id"], shown["branch_at"], shown["after_id"]) == (first, 2, None)
    assert [TokenEvent(**t) for t in shown["tokens"]] == SURE[:2] + GOES_ON
    assert (after["id"], after["after_id"], after["branch_count"]) == (later, branch, 1)


# --- upgrading a file of the first schema ------------------------------------------------------------

V1_CONVERSATIONS = [  # id, title, created, updated, models
    (1, "Eggs", 1000.5, 1100.25, MODELS),
    (2, "Sky", 1001.0, 1050.0, {}),
]
V1_MESSAGES = [  # id, conversation, position, question, stop_reason, stats, cancelled, tokens
    (1, 1, 0, "How long to boil an egg?", "eos", {"tokens": 6, "tokens_per_second": 9.5}, False, TRICKY),
    (2, 2, 0, "Why is the sky blue?", "cancelled", {}, True, SURE[:2]),
    (3, 1, 1, "And a duck egg?", "length", {"tokens": 40}, False, [token_at(i) for i in range(40)]),
    (4, 1, 2, "Thanks!", None, None, False, SURE[:3]),  # interrupted: never finished
    (5, 2, 1, "Count", "length", {}, False, [token_at(i) for i in range(1000, 2000)]),  # indexed in pieces
]


def _v1_file(path: Path) -> None:
    """A history file of the first schema as its code wrote it: the v1 migration itself, then its rows as
    start_answer, append_tokens and finish_answer inserted them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN")
    history._v1(raw)
    raw.execute("PRAGMA user_version = 1")
    for cid, title, created, updated, models in V1_CONVERSATIONS:
        raw.execute(
            "INSERT INTO conversations VALUES (?, ?, ?, ?, ?)", (cid, title, created, updated, json.dumps(models))
        )
    for mid, cid, pos, question, stop, stats, cancelled, tokens in V1_MESSAGES:
        raw.execute(
            "INSERT INTO messages (id, conversation_id, position, question, mode, settings, stop_reason, stats, "
            "cancelled, created, finished) VALUES (?, ?, ?, ?, 'nudged', ?, ?, ?, ?, ?, ?)",
            (mid, cid, pos, question, json.dumps(SETTINGS), stop, None if stats is None else json.dumps(stats),
             int(cancelled), 1000.0 + mid, None if stop is None else 1000.5 + mid),
        )  # fmt: skip
        raw.executemany(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(mid, i, t.text, t.source, t.token, t.base_p, t.p) for i, t in enumerate(tokens)],
        )
    raw.execute("INSERT INTO state VALUES ('theme', '\"dark\"'), ('brackets', 'true')")
    raw.execute("COMMIT")
    raw.close()


def _v1_expected(conv: int) -> list[Message]:
    """A conversation's messages as the first schema's code read them, and where each sits now."""
    out: list[Message] = []
    for mid, cid, pos, question, stop, stats, cancelled, tokens in sorted(V1_MESSAGES, key=lambda r: r[2]):
        if cid == conv:
            out.append(Message(
                id=mid, question=question, mode="nudged", settings=SETTINGS, tokens=tokens, stop_reason=stop,
                stats=stats or {}, cancelled=cancelled, conversation_id=cid, position=pos, created=1000.0 + mid,
                after_id=out[-1].id if out else None,
            ))  # fmt: skip
    return out


def _schema(path: Path) -> list:
    with sqlite3.connect(path) as raw:
        return raw.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()


def test_a_first_schema_file_is_upgraded_with_nothing_lost(db_path):
    _v1_file(db_path)
    with History(db_path) as h:
        assert h.conversations() == [ConversationInfo(cid, t, c, u, n, models=m) for (cid, t, c, u, m), n
                                     in zip(V1_CONVERSATIONS, [3, 2], strict=True)]  # fmt: skip
        assert [c.models for c in h.conversations()] == [MODELS, {}]
        for conv in (1, 2):
            msgs = h.messages(conv)
            assert msgs == _v1_expected(conv)  # every message and token, in the same order
            for m in msgs:
                assert [float.hex(t.p) for t in m.tokens] == [float.hex(t.p) for t in h.message(m.id).tokens]
                assert h.branches(m.id) == [m.id] and (m.branch_index, m.branch_count) == (1, 1)
        assert [float.hex(t.p) for t in h.messages(1)[0].tokens] == [float.hex(t.p) for t in TRICKY]  # bit-exact
        assert (h.get_state("theme"), h.get_state("brackets")) == ("dark", True)
        # the old messages are in the index: questions, and answers that never finished
        assert [c.id for c in h.search("egg")] == [1] and [c.id for c in h.search("sky")] == [2]
        assert [c.id for c in h.search("w39")] == [1] and [c.id for c in h.search("thanks sure")] == [1]
        assert [c.id for c in h.search("w1000 w1500 w1999 count")] == [2]  # the long answer, end to end
        assert [c.id for c in h.search("hi the")] == [1, 2]
        md = h.export_markdown(1)
        assert "Hi, the [Sure]" in md and "(branch" not in md
        # and the file goes on as any other: the next question follows the last message
        nxt = _answer(h, 1, SURE, stop_reason="eos", stats={})
        assert (h.message(nxt).position, h.message(nxt).after_id) == (3, 4)
        branch = h.start_branch(3, 5, mode="nudged", settings={})
        assert [m.id for m in h.messages(1)] == [1, branch]
        h.delete(2)  # the foreign keys are on again: the cascade reaches tokens and the index
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
        assert raw.execute("SELECT COUNT(*) FROM tokens WHERE message_id = 2").fetchone()[0] == 0
        assert raw.execute("SELECT COUNT(*) FROM message_text WHERE rowid = 2").fetchone()[0] == 0


def test_a_failed_upgrade_leaves_the_first_schema_intact(db_path, monkeypatch):
    _v1_file(db_path)
    v1 = _schema(db_path)

    def after(migration):
        def failing(db):
            migration(db)  # all of its work done (for v2: the table rebuilt), then a failure
            raise RuntimeError("migration failed")

        return failing

    real = list(history.MIGRATIONS)
    monkeypatch.setattr(history, "MIGRATIONS", [real[0], after(real[1]), *real[2:]])
    with pytest.raises(RuntimeError):
        History(db_path)
    assert _schema(db_path) == v1  # rolled back: the old table, its constraint and no index
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    monkeypatch.setattr(history, "MIGRATIONS", [*real[:2], after(real[2]), *real[3:]])
    with pytest.raises(RuntimeError):
        History(db_path)
    with sqlite3.connect(db_path) as raw:  # branches done (version 2), search rolled back
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
        assert raw.execute("SELECT name FROM sqlite_master WHERE name = 'message_text'").fetchone() is None
    monkeypatch.setattr(history, "MIGRATIONS", real)
    with History(db_path) as h:  # and the real upgrade still finds everything
        assert [h.messages(conv) for conv in (1, 2)] == [_v1_expected(1), _v1_expected(2)]
        assert [c.id for c in h.search("duck")] == [1]


def test_an_upgrade_that_breaks_a_foreign_key_is_refused(db_path):
    _v1_file(db_path)
    with sqlite3.connect(db_path) as raw:  # a token whose message is gone (foreign keys off)
        raw.execute("INSERT INTO tokens VALUES (99, 0, 'x', 'base', 1, NULL, 0.5)")
    v1 = _schema(db_path)
    with pytest.raises(NudgeError, match="left at schema 1") as e:
        History(db_path)
    assert str(db_path) in str(e.value) and str(e.value).count(". ") == 0
    assert _schema(db_path) == v1


# --- the history screen ------------------------------------------------------------------------------


class _Shell(App):
    """The history screen alone, in the chat's styles."""

    CSS_PATH = Path(nudge_local.tui.app.__file__).with_name("app.tcss")

    def __init__(self, h: History) -> None:
        super().__init__()
        self.h, self.chosen = h, "open"

    def on_mount(self) -> None:
        self.push_screen(HistoryScreen(self.h), lambda result: setattr(self, "chosen", result))


def test_history_screen_filters_as_the_user_types(db_path):
    with History(db_path) as h:
        eggs = h.new_conversation("Breakfast", {})
        _asked(h, eggs, "How long to boil an egg?", "About seven minutes.")
        sky = h.new_conversation("Sky", {})
        _asked(h, sky, "Why is the sky blue?", "Rayleigh scattering.")
        both = h.new_conversation("Both", {})
        _asked(h, both, "And eggs in the sky?", "Only in stories.")

        async def go() -> tuple:
            app = _Shell(h)
            async with app.run_test(size=(100, 30)) as pilot:
                await pilot.pause()
                screen = app.screen
                listed = lambda: [i.conv_id for i in screen.query(ConversationItem)]  # noqa: E731
                assert listed() == [both, sky, eggs] and isinstance(app.focused, ListView)
                assert screen.query_one("#filter").region.height > 0 and screen.query_one("#title").region.height == 0
                await pilot.press("/", *"eg")  # live, word by word
                assert listed() == [both, eggs] and app.focused.id == "filter"
                await pilot.press(*"g boil")
                assert listed() == [eggs]
                await pilot.press("enter", "r", *"Soft", "enter")  # Enter goes to the list; keys as before
                assert h.conversation(eggs).title == "Soft" and listed() == [eggs]  # the filter kept
                assert "Soft" in str(screen.query_one(ConversationItem).query_one(Static).render())
                await pilot.press("/", *["backspace"] * 8, *'"sky" AND(')  # typed text, never FTS syntax
                assert listed() == [both] and screen.query_one("#filter", Input).value == '"sky" AND('
                await pilot.press(*["backspace"] * 5)
                assert listed() == [both, sky]
                await pilot.press("tab", "d")
                assert listed() == [sky] and [c.id for c in h.conversations()] == [sky, eggs]
                await pilot.press("enter")
                await pilot.pause()
            return app.chosen

        assert asyncio.run(go()) == ("open", sky)
