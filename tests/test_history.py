"""The chat-history store: real SQLite files, restarts, a real kill -9 mid-answer, schema versions, exports."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import nudge_local.tui.history as history
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Stats, TokenEvent
from nudge_local.render import spans
from nudge_local.tui.history import SCHEMA_VERSION, ConversationInfo, History, Message

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
