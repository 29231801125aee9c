"""The chat history: conversations, answers token by token with their provenance, and small UI state.

One SQLite file (stdlib sqlite3) in the user's data directory. Answers are written while they stream:
`append_tokens` commits each small batch at once, so a crash or `kill -9` mid-answer loses nothing that
was already appended, and the interrupted answer comes back with `stop_reason` None.

An answer can have branches (the loom): other answers at the same point of the conversation, each
made by keeping an answer's first tokens and going on another way. The messages of a conversation form a
tree: each follows the message of the turn before it (`after_id`; NULL for the first turn), the answers
that follow the same message are siblings, and one of them is shown (`shown`). The conversation on
screen is the shown path: the shown first answer, then the shown one among those that follow it, and
so on. Switching branches changes one flag; each point keeps its own choice, so going back to a branch
shows the turns that followed it.

Full-text search reads an FTS5 index of each message's question and answer text, kept current by the
same transactions that write the messages and their tokens.

This module knows nothing about the UI; the UI thread and the generation worker thread share one
History, which serialises them with a lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
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


_V2_COLUMNS = (
    "id, conversation_id, position, question, mode, settings, stop_reason, stats, cancelled, created, finished"
)


def _v2(db: sqlite3.Connection) -> None:
    # Branches: a turn follows the message shown before it (after_id), and several answers may follow the
    # same message, so v1's UNIQUE (conversation_id, position) goes. SQLite cannot drop a constraint: the
    # table is rebuilt (create, copy, drop, rename; _migrate turns foreign keys off so the drop does not
    # cascade into tokens, and checks them after). Ids are kept, so tokens still point at their message.
    # after_id cascades: the turns that follow a deleted message go with it. parent_id is where a branch
    # came from; deleting that answer leaves the branch (parent_id NULL, branch_at kept).
    db.execute(
        """CREATE TABLE new_messages (
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
            after_id INTEGER REFERENCES messages (id) ON DELETE CASCADE,
            parent_id INTEGER REFERENCES messages (id) ON DELETE SET NULL,
            branch_at INTEGER,
            shown INTEGER NOT NULL DEFAULT 1
        )"""
    )
    # v1 had one message per position: each follows the one before it, and all are shown.
    db.execute(
        f"""INSERT INTO new_messages ({_V2_COLUMNS}, after_id)
            SELECT {_V2_COLUMNS}, (SELECT b.id FROM messages b WHERE b.conversation_id = m.conversation_id
                                   AND b.position < m.position ORDER BY b.position DESC LIMIT 1)
            FROM messages m"""
    )
    db.execute("DROP TABLE messages")
    db.execute("ALTER TABLE new_messages RENAME TO messages")
    db.execute("CREATE INDEX messages_conversation ON messages (conversation_id, position)")
    db.execute("CREATE INDEX messages_after ON messages (after_id)")  # for the cascades' lookups
    db.execute("CREATE INDEX messages_parent ON messages (parent_id)")
    # At most one answer shown at each point (after_id NULL is the first turn's point).
    db.execute("CREATE UNIQUE INDEX messages_shown ON messages (conversation_id, COALESCE(after_id, 0)) WHERE shown")


# Search rows. FTS5 re-indexes a whole row on any change, so an answer is indexed in pieces of about
# _PIECE characters and an append re-indexes only its last piece: the cost of a batch does not grow with
# the answer. A message's rows are rowid = id * _PIECES + k, the question in its piece 0.
_PIECE = 2000
_PIECES = 1 << 16


def _index_answer(db: sqlite3.Connection, msg_id: int, texts: Iterable[str]) -> None:
    """Add an answer's next tokens' texts to its search rows. A piece begins at a token that starts with
    whitespace, so no word is cut in two."""
    first = msg_id * _PIECES
    start, old = db.execute(
        "SELECT rowid, answer FROM message_text WHERE rowid BETWEEN ? AND ? ORDER BY rowid DESC LIMIT 1",
        (first, first + _PIECES - 1),
    ).fetchone()
    pieces, k = {start: old}, start
    for text in texts:
        if len(pieces[k]) >= _PIECE and text[:1].isspace() and k < first + _PIECES - 1:
            k += 1
            pieces[k] = ""
        pieces[k] += text
    for rowid, answer in pieces.items():
        if rowid == start:
            if answer != old:
                db.execute("UPDATE message_text SET answer = ? WHERE rowid = ?", (answer, rowid))
        else:
            db.execute("INSERT INTO message_text (rowid, question, answer) VALUES (?, '', ?)", (rowid, answer))


def _token_texts(db: sqlite3.Connection, msg_id: int) -> list[str]:
    return [t for (t,) in db.execute("SELECT text FROM tokens WHERE message_id = ? ORDER BY idx", (msg_id,))]


def _v3(db: sqlite3.Connection) -> None:
    # Search: an FTS5 table of each message's question and answer (in pieces, above). Triggers add and
    # remove a message's rows with it (cascades included); History adds the answer's text as tokens are
    # written (a trigger on tokens would re-index the answer's piece once per token).
    try:
        db.execute("CREATE VIRTUAL TABLE message_text USING fts5 (question, answer)")
    except sqlite3.OperationalError as e:
        if "fts5" not in str(e):
            raise
        raise NudgeError(
            "This Python's SQLite lacks full-text search (FTS5), which the chat history needs; "
            "install a Python whose sqlite3 has it."
        ) from None
    db.execute(
        f"""CREATE TRIGGER message_text_insert AFTER INSERT ON messages BEGIN
            INSERT INTO message_text (rowid, question, answer) VALUES (new.id * {_PIECES}, new.question, '');
        END"""
    )
    db.execute(
        f"""CREATE TRIGGER message_text_delete AFTER DELETE ON messages BEGIN
            DELETE FROM message_text WHERE rowid BETWEEN old.id * {_PIECES} AND old.id * {_PIECES} + {_PIECES - 1};
        END"""
    )
    for msg_id, question in db.execute("SELECT id, question FROM messages").fetchall():
        db.execute("INSERT INTO message_text (rowid, question, answer) VALUES (?, ?, '')", (msg_id * _PIECES, question))
        _index_answer(db, msg_id, _token_texts(db, msg_id))


def _v4(db: sqlite3.Connection) -> None:
    # Gates (issue 28): under the entropy gate the base's entropy at a token is the gate's value, which
    # the inspector shows; NULL for every other token (and every token written before).
    db.execute("ALTER TABLE tokens ADD COLUMN base_entropy REAL")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2, _v3, _v4]
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
    after_id: int | None = None  # the message of the turn before; None for the first turn
    parent_id: int | None = None  # the answer this one branches from; None for an original answer
    branch_at: int | None = None  # how many of its parent's first tokens it keeps
    branch_index: int = 1  # its place among the answers at its point, from 1 ("2 of 3")
    branch_count: int = 1

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)


class _Tree:
    """A conversation's messages by the point they follow: the answers there and the one shown. A point
    is named by the message its answers follow (None: the first turn's)."""

    def __init__(self, db: sqlite3.Connection, conv_id: int) -> None:
        self.after: dict[int, int | None] = {}  # message -> the message it follows
        self.answers: dict[int | None, list[int]] = {}  # a point (after_id) -> its answers, oldest first
        self.shown: dict[int | None, int] = {}  # a point -> its shown answer
        rows = db.execute("SELECT id, after_id, shown FROM messages WHERE conversation_id = ? ORDER BY id", (conv_id,))
        for msg_id, after_id, shown in rows:
            self.after[msg_id] = after_id
            self.answers.setdefault(after_id, []).append(msg_id)
            if shown:
                self.shown[after_id] = msg_id

    def path(self) -> list[int]:
        """The messages on screen: the shown answer at each point, from the first turn on."""
        out: list[int] = []
        point = None
        while point in self.shown:
            point = self.shown[point]
            out.append(point)
        return out

    def siblings(self, msg_id: int) -> list[int]:
        return self.answers[self.after[msg_id]]


def _dumps(value: Any) -> str:
    # default=str: a stray Path or similar in the caller's settings must not lose an answer mid-stream.
    return json.dumps(value, ensure_ascii=False, default=str)


def _match_terms(words: str) -> list[str]:
    """What a user typed as FTS5 queries, one per word: each a quoted string, so quotes, AND, NEAR, * and
    the like are plain text; the last a prefix while it is being typed (no space after it yet). Words
    with no letter or digit are left out: FTS5 finds no token in them, and an empty string matches nothing."""
    raw = words.split()
    typing = bool(words) and not words[-1].isspace()
    terms = []
    for n, word in enumerate(raw, 1):
        if any(c.isalnum() for c in word):
            terms.append('"' + word.replace('"', '""') + '"' + ("*" if typing and n == len(raw) else ""))
    return terms


# A conversation's summary row; n_messages counts every answer, branches included.
_CONVERSATIONS = """SELECT c.id, c.title, c.created, c.updated,
                           (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id), c.models
                    FROM conversations c"""


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
            self._migrate()
            self._db.execute("PRAGMA foreign_keys = ON")  # per connection; deletes cascade to tokens
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
        # Foreign keys off while upgrading (it cannot change inside a transaction): a migration that
        # rebuilds a table drops the old one, which would cascade into the rows pointing at it. Each
        # migration's result is checked instead, before its commit.
        self._db.execute("PRAGMA foreign_keys = OFF")
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
                if self._db.execute("PRAGMA foreign_key_check").fetchone() is not None:
                    raise NudgeError(
                        f"The history file {self.path} has rows pointing at missing ones after its upgrade to "
                        f"schema {version + 1}, so it was left at schema {version}; move it aside to start anew."
                    )
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
            rows = db.execute(f"{_CONVERSATIONS} ORDER BY c.updated DESC, c.id DESC").fetchall()
        return [ConversationInfo(*row[:5], models=json.loads(row[5])) for row in rows]

    def search(self, words: str) -> list[ConversationInfo]:
        """The conversations whose questions and answers (any branch) hold every word typed, the most
        recently updated first; the last word also matches as the start of a word while it is being
        typed ("boil eg" finds "egg"). Nothing to search for: every conversation."""
        terms = _match_terms(words)
        if not terms:
            return self.conversations()
        # One FTS query per word, so the words may sit in different messages (and pieces) of the conversation.
        holds = f"""c.id IN (SELECT m.conversation_id FROM message_text
                             JOIN messages m ON m.id = message_text.rowid / {_PIECES} WHERE message_text MATCH ?)"""
        where = " AND ".join([holds] * len(terms))
        with self._read() as db:
            rows = db.execute(f"{_CONVERSATIONS} WHERE {where} ORDER BY c.updated DESC, c.id DESC", terms)
            return [ConversationInfo(*row[:5], models=json.loads(row[5])) for row in rows.fetchall()]

    def conversation(self, conv_id: int) -> ConversationInfo:
        with self._read() as db:
            return self._conversation(db, conv_id)

    @staticmethod
    def _conversation(db: sqlite3.Connection, conv_id: int) -> ConversationInfo:
        row = db.execute(f"{_CONVERSATIONS} WHERE c.id = ?", (conv_id,)).fetchone()
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
        """Record a question before its answer streams, after the last message shown (it is shown too);
        returns the message id for append/finish."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM conversations WHERE id = ?", (conv_id,)).fetchone() is None:
                raise KeyError(f"no conversation {conv_id}")
            path = _Tree(db, conv_id).path()
            after = path[-1] if path else None
            position = 0 if after is None else db.execute(
                "SELECT position + 1 FROM messages WHERE id = ?", (after,)
            ).fetchone()[0]  # fmt: skip
            return self._insert(db, conv_id, position, question, mode, settings, after=after)

    def start_branch(self, parent_id: int, at: int, *, mode: str, settings: dict) -> int:
        """Record a branch of an answer: another answer at its point, keeping its first `at` tokens
        (copied), shown instead of it; returns its id, whose new tokens stream in with append/finish."""
        with self._write() as db:
            row = db.execute(
                "SELECT conversation_id, position, question, after_id FROM messages WHERE id = ?", (parent_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no message {parent_id}")
            (n,) = db.execute("SELECT COUNT(*) FROM tokens WHERE message_id = ?", (parent_id,)).fetchone()
            if not 0 <= at <= n:
                raise ValueError(f"An answer of {n} tokens has no position {at} to branch at.")
            conv_id, position, question, after = row
            msg_id = self._insert(db, conv_id, position, question, mode, settings, after=after,
                                  parent=parent_id, at=at)  # fmt: skip
            db.execute(
                """INSERT INTO tokens (message_id, idx, text, source, token, base_p, p, base_entropy)
                   SELECT ?, idx, text, source, token, base_p, p, base_entropy FROM tokens
                   WHERE message_id = ? AND idx < ?""",
                (msg_id, parent_id, at),
            )
            _index_answer(db, msg_id, _token_texts(db, msg_id))
            return msg_id

    def _insert(
        self,
        db: sqlite3.Connection,
        conv_id: int,
        position: int,
        question: str,
        mode: str,
        settings: dict,
        *,
        after: int | None,
        parent: int | None = None,
        at: int | None = None,
    ) -> int:
        """A new answer at the point after `after`, shown there; the conversation counts as updated."""
        now = self._now(db)
        cur = db.execute(
            """INSERT INTO messages (conversation_id, position, question, mode, settings, created, after_id,
                                     parent_id, branch_at, shown)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)""",
            (conv_id, position, question, mode, _dumps(settings), now, after, parent, at),
        )
        self._show(db, cur.lastrowid)
        db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conv_id))
        return cur.lastrowid

    @staticmethod
    def _show(db: sqlite3.Connection, msg_id: int) -> None:
        row = db.execute("SELECT conversation_id, after_id FROM messages WHERE id = ?", (msg_id,)).fetchone()
        if row is None:
            raise KeyError(f"no message {msg_id}")
        # Two statements: the unique index on shown answers is checked row by row.
        db.execute("UPDATE messages SET shown = 0 WHERE conversation_id = ? AND after_id IS ? AND shown", row)
        db.execute("UPDATE messages SET shown = 1 WHERE id = ?", (msg_id,))

    def show(self, msg_id: int) -> None:
        """Show this answer instead of its siblings; what follows it is what was shown after it before."""
        with self._write() as db:
            self._show(db, msg_id)

    def branches(self, msg_id: int) -> list[int]:
        """The answers at this message's point (itself and its siblings), oldest first."""
        with self._read() as db:
            row = db.execute("SELECT conversation_id FROM messages WHERE id = ?", (msg_id,)).fetchone()
            if row is None:
                raise KeyError(f"no message {msg_id}")
            return _Tree(db, row[0]).siblings(msg_id)

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
                    "INSERT INTO tokens (message_id, idx, text, source, token, base_p, p, base_entropy) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (msg_id, start + i, t.text, t.source, t.token, t.base_p, t.p, t.base_entropy)
                        for i, t in enumerate(tokens)
                    ],
                )
            except sqlite3.IntegrityError:
                raise KeyError(f"no message {msg_id}") from None
            _index_answer(db, msg_id, [t.text for t in tokens])

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
    def _load(db: sqlite3.Connection, tree: _Tree, ids: list[int]) -> list[Message]:
        """These messages of the tree's conversation, in this order, each with all its tokens."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = db.execute(
            f"""SELECT id, question, mode, settings, stop_reason, stats, cancelled, conversation_id, position, created,
                       after_id, parent_id, branch_at
                FROM messages WHERE id IN ({marks})""",
            ids,
        ).fetchall()
        msgs = {
            r[0]: Message(
                id=r[0], question=r[1], mode=r[2], settings=json.loads(r[3]), tokens=[], stop_reason=r[4],
                stats=json.loads(r[5]) if r[5] is not None else {}, cancelled=bool(r[6]), conversation_id=r[7],
                position=r[8], created=r[9], after_id=r[10], parent_id=r[11], branch_at=r[12],
                branch_index=tree.siblings(r[0]).index(r[0]) + 1, branch_count=len(tree.siblings(r[0])),
            )
            for r in rows
        }  # fmt: skip
        for mid, *tok in db.execute(
            "SELECT message_id, text, source, token, base_p, p, base_entropy FROM tokens "
            f"WHERE message_id IN ({marks}) ORDER BY message_id, idx",
            ids,
        ):
            *fields, base_entropy = tok
            msgs[mid].tokens.append(TokenEvent(*fields, base_entropy=base_entropy))
        return [msgs[i] for i in ids]

    def _path(self, db: sqlite3.Connection, conv_id: int) -> list[Message]:
        tree = _Tree(db, conv_id)
        return self._load(db, tree, tree.path())

    def messages(self, conv_id: int) -> list[Message]:
        """The conversation on screen (the shown branch at each point) in order, each message with all its
        tokens and its place among its siblings; [] for a missing conversation."""
        with self._read() as db:
            return self._path(db, conv_id)

    def message(self, msg_id: int) -> Message:
        with self._read() as db:
            row = db.execute("SELECT conversation_id FROM messages WHERE id = ?", (msg_id,)).fetchone()
            if row is None:
                raise KeyError(f"no message {msg_id}")
            return self._load(db, _Tree(db, row[0]), [msg_id])[0]

    def delete_last_answer(self, conv_id: int) -> Message | None:
        """Remove the last message shown (for "regenerate") and return it, or None if none is shown. Its
        siblings stay, none of them shown: the next answer (start_answer) takes its place among them."""
        with self._write() as db:
            tree = _Tree(db, conv_id)
            path = tree.path()
            if not path:
                return None
            (gone,) = self._load(db, tree, path[-1:])
            db.execute("DELETE FROM messages WHERE id = ?", (gone.id,))
            return gone

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
            return self._conversation(db, conv_id), self._path(db, conv_id)

    def export_markdown(self, conv_id: int) -> str:
        """A readable document: title, models, then each question and its answer on screen (the branch
        shown, named "branch 2 of 3" where it has siblings), nudged words in [brackets], tokens the user
        chose at a branch in {braces}."""
        conv, msgs = self._snapshot(conv_id)
        stamp = "%Y-%m-%d %H:%M"
        out = [f"# {conv.title}", ""]
        out.append(f"Started {time.strftime(stamp, time.localtime(conv.created))}, last updated "
                   f"{time.strftime(stamp, time.localtime(conv.updated))}.")  # fmt: skip
        if conv.models:
            out += ["", "Models:", ""]
            out += [f"- {k}: {v if isinstance(v, str) else _dumps(v)}" for k, v in conv.models.items()]
        out += ["", "Words in [brackets] were written by the nudger, the rest by the base model."]
        if any(t.source == "user" for m in msgs for t in m.tokens):
            out[-1] += " Tokens in {braces} were chosen by the user at a branch."
        for n, m in enumerate(msgs, 1):
            answer = f"### Answer (branch {m.branch_index} of {m.branch_count})" if m.branch_count > 1 else "### Answer"
            out += ["", "---", "", f"## Question {n}", "", m.question.strip(), "", answer, ""]
            system = m.settings.get("system")
            if isinstance(system, str) and system.strip():
                out += [f"> System prompt: {' '.join(system.split())}", ""]
            out += [bracketed(m.tokens).strip() or "(no answer)", "", f"*{_summary(m)}*"]
        return "\n".join(out) + "\n"

    def export_json(self, conv_id: int) -> str:
        """Everything stored about the conversation on screen (the branch shown at each point, and where
        it sits among its siblings), every token with its provenance and probabilities."""
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
                    "after_id": m.after_id,
                    "parent_id": m.parent_id,
                    "branch_at": m.branch_at,
                    "branch_index": m.branch_index,
                    "branch_count": m.branch_count,
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
    chosen = sum(t.source == "user" for t in m.tokens)
    parts.append(f"{n} tokens, {nudged} nudged ({nudged / n if n else 0.0:.1%})")
    if chosen:
        parts[-1] += f", {chosen} chosen"
    if m.branch_at is not None:
        parts.append(f"branched at token {m.branch_at}")
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
