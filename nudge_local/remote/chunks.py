"""Reading ahead: what one request returned (`Chunk`) and how many tokens to ask for next
(`ChunkSizer`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nudge_local.remote.http import Events
from nudge_local.remote.rows import TopRow, top_row

CHUNK_MAX = 64


class ChunkSizer:
    """How many tokens to ask ahead: twice the recent run of rows used, doubled while whole chunks
    are used, between 1 and CHUNK_MAX."""

    def __init__(self) -> None:
        self.size = 8
        self.mean_used = 4.0

    def used(self, used: int, asked: int) -> None:
        if used >= asked:
            self.size = min(CHUNK_MAX, max(self.size, asked) * 2)
            return
        self.mean_used = 0.7 * self.mean_used + 0.3 * used
        self.size = max(1, min(CHUNK_MAX, round(2 * self.mean_used) + 1))


@dataclass
class Chunk:
    """What one request returned: the rows after key[:n], key[:n] + ahead[:1], ... (key is the
    prefix sent; ahead the server's greedy tokens after it). Rows are kept as the server listed them
    (ids and log-probabilities) and made `width`-long TopRows only when asked: a stream may hold
    hundreds, and a full row of a 262k vocabulary is a megabyte."""

    key: list | bytes
    ahead: list
    rows: list[list[tuple[int, float]]]
    width: int
    used: int = 0
    written: int = 0  # text-only models: answer tokens written when it was asked
    prompt_n: int = 0  # ... and the prompt tokens its server counted
    events: Events | None = None  # a stream still open: more rows to come
    timings: dict = field(default_factory=dict)  # the server's latest figures for it

    def row(self, i: int) -> TopRow:
        self.used = max(self.used, i + 1)
        return top_row(self.width, self.rows[i])

