"""The chat history: conversations, answers token by token with their provenance, and small UI state.

One SQLite file (stdlib sqlite3) in the user's data directory. Answers are written while they stream:
`append_tokens` commits each small batch at once, so a crash or `kill -9` mid-answer loses nothing that
was already appended, and the interrupted answer comes back with `stop_reason` None.

This module knows nothing about the UI; the UI thread and the generation worker thread share one
History, which serialises them with a lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Stats, TokenEvent
from nudge_local.paths import data_dir
from nudge_local.render import bracketed, spans


def default_path() -> Path:
    return data_dir() / "history.sqlite3"


# ---------------------------------------------------------------------------------------------------
# Schema. Each migration takes the database from version i to i + 1 (PRAGMA user_version) and runs in
# its own transaction with the version bump, so a failed upgrade leaves the previous version intact.
# Never edit a released migration: append a new one.


def _v1(db: sqlite3.Connection) -> None:
    # Times are Unix seconds (REAL). JSON columns hold what the caller gave, so the UI can add settings
    # or statistics without a migration.
    db.execute(
        """CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            models TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    db.execute("CREATE INDEX conversations_updated ON conversations (updated)")
    # stop_reason NULL: not finished (still streaming, or interrupted by a crash).
    db.execute(
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            question TEXT NOT NULL,
            mode TEXT NOT NULL,
            settings TEXT NOT NULL DEFAULT '{}',
            stop_reason TEXT,
            stats TEXT,
            cancelled INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL,
            finished REAL,
            UNIQUE (conversation_id, position)
        )"""
    )
    # One row per token rather than a JSON blob on the message: appending a batch is an insert of a few
    # small rows, not a rewrite of everything streamed so far. The primary key clusters a message's
    # tokens in order (WITHOUT ROWID), and finds the next index in O(log n). `source` has no CHECK so a
    # future provenance does not need a migration.
    db.execute(
        """CREATE TABLE tokens (
            message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            text TEXT NOT NULL,
            source TEXT NOT NULL,
            token INTEGER NOT NULL,
            base_p REAL,
            p REAL NOT NULL,
            PRIMARY KEY (message_id, idx)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class ConversationInfo:
    id: int
    title: str
    created: float  # Unix seconds
    updated: float  # Unix seconds: last question or finished answer
    n_messages: int
    # Not part of equality/hash, so the frozen dataclass stays hashable despite the dict.
    models: dict = field(default_factory=dict, compare=False)


@dataclass
class Message:
    """One question and its answer."""

    id: int
    question: str
    mode: str
    settings: dict
    tokens: list[TokenEvent]
    stop_reason: str | None  # None: the answer never finished (streaming, or interrupted)
    stats: dict
    cancelled: bool
    conversation_id: int = 0
    position: int = 0
    created: float = 0.0

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)


def _dumps(value: Any) -> str:
    # default=str: a stray Path or similar in the caller's settings must not lose an answer mid-stream.
    return json.dumps(value, ensure_ascii=False, default=str)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


class History:
    """The history database. Safe to share between threads; use as a context manager or close()."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NudgeError(f"The history folder {self.path.parent} cannot be created ({e.strerror}).") from None
        # isolation_level=None: transactions are explicit (BEGIN/COMMIT below), so nothing stays
        # uncommitted behind the caller's back. check_same_thread=False: the lock serialises threads.
        # timeout: a second nudge-local on the same file waits for the other's write instead of failing.
        try:
            self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise NudgeError(f"The history file {self.path} cannot be opened ({e}).") from None
        try:
            # WAL + NORMAL: a commit is a write to the WAL without fsync, so 30 commits a second are
            # cheap, and committed data survives the process being killed (only an OS crash or power
            # loss can drop the last commits).
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")  # per connection; deletes cascade to tokens
            self._migrate()
        except NudgeError:
            self._db.close()
            raise
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise NudgeError(
                f"The history file {self.path} cannot be opened ({e}); move it aside to start anew."
            ) from None

    def _migrate(self) -> None:
        target = len(MIGRATIONS)  # read at run time, not SCHEMA_VERSION, so tests can add migrations
        while True:
            # IMMEDIATE: two processes opening an old file at once upgrade it one after the other, and
            # the second re-reads the version inside its own transaction.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > target:
                    raise NudgeError(
                        f"The history file {self.path} was written by a newer nudge-local (schema {version}, this "
                        f"one reads up to {target}); upgrade nudge-local or move the file aside."
                    )
                if version == target:
                    self._db.execute("COMMIT")
                    return
                MIGRATIONS[version](self._db)
                self._db.execute(f"PRAGMA user_version = {version + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # One read transaction: several SELECTs see one snapshot even if another process writes.
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    @staticmethod
    def _now(db: sqlite3.Connection) -> float:
        # Strictly after every stored `updated`, so "newest first" holds even on clocks with coarse
        # resolution (Windows) or that stepped back.
        now = time.time()
        latest = db.execute("SELECT MAX(updated) FROM conversations").fetchone()[0]
        return max(now, latest + 1e-6) if latest is not None else now

    # --- conversations --------------------------------------------------------------------------

    def new_conversation(self, title: str, models: dict) -> int:
        with self._write() as db:
            now = self._now(db)
            cur = db.execute(
                "INSERT INTO conversations (title, created, updated, models) VALUES (?, ?, ?, ?)",
                (title, now, now, _dumps(models)),
            )
            return cur.lastrowid

    def conversations(self) -> list[ConversationInfo]:
        """All conversations, the most recently updated first."""
        with self._read() as db:
            rows = db.execute(
                """SELECT c.id, c.title, c.created, c.updated,
                          (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id), c.models
                   FROM conversations c ORDER BY c.updated DESC, c.id DESC"""
            ).fetchall()
        return [ConversationInfo(*row[:5], models=json.loads(row[5])) for row in rows]

    def conversation(self, conv_id: int) -> ConversationInfo:
        with self._read() as db:
            return self._conversation(db, conv_id)

    @staticmethod
    def _conversation(db: sqlite3.Connection, conv_id: int) -> ConversationInfo:
        row = db.execute(
            """SELECT c.id, c.title, c.created, c.updated,
                      (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id), c.models
               FROM conversations c WHERE c.id = ?""",
            (conv_id,),
        ).fetchone()
        if row is None:
            raise KeyError(f"no conversation {conv_id}")
        return ConversationInfo(*row[:5], models=json.loads(row[5]))

    def rename(self, conv_id: int, title: str) -> None:
        # Renaming does not bump `updated`: the list should not jump when a title is edited.
        with self._write() as db:
            if db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conv_id)).rowcount == 0:
                raise KeyError(f"no conversation {conv_id}")

    def delete(self, conv_id: int) -> None:
        """Delete a conversation, its messages and their tokens; deleting a missing one is not an error."""
        with self._write() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conv_id,))

    # --- answers --------------------------------------------------------------------------------

    def start_answer(self, conv_id: int, question: str, *, mode: str, settings: dict) -> int:
        """Record a question before its answer streams; returns the message id for append/finish."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM conversations WHERE id = ?", (conv_id,)).fetchone() is None:
                raise KeyError(f"no conversation {conv_id}")
            now = self._now(db)
            (position,) = db.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM messages WHERE conversation_id = ?", (conv_id,)
            ).fetchone()
            cur = db.execute(
                """INSERT INTO messages (conversation_id, position, question, mode, settings, created)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (conv_id, position, question, mode, _dumps(settings), now),
            )
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conv_id))
            return cur.lastrowid

    def append_tokens(self, msg_id: int, tokens: list[TokenEvent]) -> None:
        """Add streamed tokens to an answer and commit at once (a crash after this returns loses none)."""
        if not tokens:
            return
        with self._write() as db:
            # The next index from the table itself (a primary-key lookup), not a counter in memory, so
            # appending stays right after a restart or from a second History on the same file.
            (start,) = db.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM tokens WHERE message_id = ?", (msg_id,)
            ).fetchone()
            try:
                db.executemany(
                    "INSERT INTO tokens (message_id, idx, text, source, token, base_p, p) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(msg_id, start + i, t.text, t.source, t.token, t.base_p, t.p) for i, t in enumerate(tokens)],
                )
            except sqlite3.IntegrityError:
                raise KeyError(f"no message {msg_id}") from None

    def finish_answer(self, msg_id: int, *, stop_reason: str, stats: dict, cancelled: bool = False) -> None:
        if isinstance(stats, Stats):  # accept the engine's Stats as well as its as_dict()
            stats = stats.as_dict()
        with self._write() as db:
            row = db.execute("SELECT conversation_id FROM messages WHERE id = ?", (msg_id,)).fetchone()
            if row is None:
                raise KeyError(f"no message {msg_id}")
            now = self._now(db)
            db.execute(
                "UPDATE messages SET stop_reason = ?, stats = ?, cancelled = ?, finished = ? WHERE id = ?",
                (stop_reason, _dumps(stats), int(cancelled), now, msg_id),
            )
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, row[0]))

    @staticmethod
    def _load(db: sqlite3.Connection, where: str, arg: int) -> list[Message]:
        rows = db.execute(
            f"""SELECT id, question, mode, settings, stop_reason, stats, cancelled, conversation_id, position, created
                FROM messages WHERE {where} ORDER BY position""",
            (arg,),
        ).fetchall()
        msgs = {
            r[0]: Message(
                id=r[0], question=r[1], mode=r[2], settings=json.loads(r[3]), tokens=[], stop_reason=r[4],
                stats=json.loads(r[5]) if r[5] is not None else {}, cancelled=bool(r[6]), conversation_id=r[7],
                position=r[8], created=r[9],
            )
            for r in rows
        }  # fmt: skip
        if msgs:
            marks = ",".join("?" * len(msgs))
            for mid, *tok in db.execute(
                f"SELECT message_id, text, source, token, base_p, p FROM tokens WHERE message_id IN ({marks}) "
                "ORDER BY message_id, idx",
                list(msgs),
            ):
                msgs[mid].tokens.append(TokenEvent(*tok))
        return list(msgs.values())

    def messages(self, conv_id: int) -> list[Message]:
        """A conversation's messages in order, each with all its tokens; [] for a missing conversation."""
        with self._read() as db:
            return self._load(db, "conversation_id = ?", conv_id)

    def message(self, msg_id: int) -> Message:
        with self._read() as db:
            found = self._load(db, "id = ?", msg_id)
        if not found:
            raise KeyError(f"no message {msg_id}")
        return found[0]

    def delete_last_answer(self, conv_id: int) -> Message | None:
        """Remove the conversation's last message (for "regenerate") and return it, or None if it had none."""
        with self._write() as db:
            found = self._load(
                db, "id = (SELECT id FROM messages WHERE conversation_id = ? ORDER BY position DESC LIMIT 1)", conv_id
            )
            if not found:
                return None
            db.execute("DELETE FROM messages WHERE id = ?", (found[0].id,))
            return found[0]

    # --- UI state -------------------------------------------------------------------------------

    def get_state(self, key: str, default: Any = None) -> Any:
        with self._read() as db:
            row = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row is not None else default

    def set_state(self, key: str, value: Any) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, _dumps(value)))

    # --- export ---------------------------------------------------------------------------------

    def _snapshot(self, conv_id: int) -> tuple[ConversationInfo, list[Message]]:
        with self._read() as db:
            return self._conversation(db, conv_id), self._load(db, "conversation_id = ?", conv_id)

    def export_markdown(self, conv_id: int) -> str:
        """A readable document: title, models, then each question and its answer, nudged words in [brackets]."""
        conv, msgs = self._snapshot(conv_id)
        stamp = "%Y-%m-%d %H:%M"
        out = [f"# {conv.title}", ""]
        out.append(f"Started {time.strftime(stamp, time.localtime(conv.created))}, last updated "
                   f"{time.strftime(stamp, time.localtime(conv.updated))}.")  # fmt: skip
        if conv.models:
            out += ["", "Models:", ""]
            out += [f"- {k}: {v if isinstance(v, str) else _dumps(v)}" for k, v in conv.models.items()]
        out += ["", "Words in [brackets] were written by the nudger, the rest by the base model."]
        for n, m in enumerate(msgs, 1):
            out += ["", "---", "", f"## Question {n}", "", m.question.strip(), "", "### Answer", ""]
            system = m.settings.get("system")
            if isinstance(system, str) and system.strip():
                out += [f"> System prompt: {' '.join(system.split())}", ""]
            out += [bracketed(m.tokens).strip() or "(no answer)", "", f"*{_summary(m)}*"]
        return "\n".join(out) + "\n"

    def export_json(self, conv_id: int) -> str:
        """Everything stored about a conversation, every token with its provenance and probabilities."""
        conv, msgs = self._snapshot(conv_id)
        doc = {
            "format": "nudge-local conversation",
            "schema_version": SCHEMA_VERSION,
            "conversation": {
                "id": conv.id,
                "title": conv.title,
                "created": _iso(conv.created),
                "updated": _iso(conv.updated),
                "models": conv.models,
            },
            "messages": [
                {
                    "id": m.id,
                    "position": m.position,
                    "created": _iso(m.created),
                    "question": m.question,
                    "mode": m.mode,
                    "settings": m.settings,
                    "stop_reason": m.stop_reason,
                    "cancelled": m.cancelled,
                    "stats": m.stats,
                    "text": m.text,
                    "spans": spans(m.tokens),
                    "tokens": [t.as_dict() for t in m.tokens],
                }
                for m in msgs
            ],
        }
        return json.dumps(doc, ensure_ascii=False, indent=2, default=str)


def _summary(m: Message) -> str:
    """The one line under an exported answer: mode, scalar settings, counts, speed and how it ended."""
    parts = [m.mode]
    for k, v in m.settings.items():
        # Scalars only: long texts (system prompt, base format) would swamp the line; JSON keeps them.
        if k == "system" or isinstance(v, (dict, list)) or (isinstance(v, str) and (len(v) > 40 or "\n" in v)):
            continue
        parts.append(f"{k} {v}")
    n = len(m.tokens)
    nudged = sum(t.source == "nudge" for t in m.tokens)
    parts.append(f"{n} tokens, {nudged} nudged ({nudged / n if n else 0.0:.1%})")
    tps = m.stats.get("tokens_per_second")
    if isinstance(tps, (int, float)) and tps > 0:
        parts.append(f"{tps:.1f} tok/s")
    if m.stop_reason is None:
        parts.append("interrupted")
    elif m.stop_reason != "cancelled":
        parts.append(f"stop: {m.stop_reason}")
    if m.cancelled:
        parts.append("cancelled")
    return " · ".join(parts)
