"""Turns a mode's steps into the public event stream: UTF-8 safe text, stop strings, then Done."""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

from nudge_local.errors import ContextFull
from nudge_local.events import Done, Stats, TokenEvent
from nudge_local.model import Model


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` could still begin a stop string."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:k]):
                keep = k
                break
    return keep


def stream(
    steps,
    models: dict[str, Model],
    prompt_tokens: dict[str, int],
    *,
    stop_strings: Sequence[str] = (),
) -> Iterator[TokenEvent | Done]:
    """Run `steps` (a generator of (event, piece bytes) returning its stop reason) to the end.

    Each TokenEvent carries the text its bytes complete; text that could begin a stop string is
    held back until it cannot, and a completed stop string ends generation with the text cut
    before it. Incomplete UTF-8 at the very end is dropped: it is no character."""
    stops = [s for s in stop_strings if s]
    start = {r: (m.evaluated_tokens, m.forward_calls) for r, m in models.items()}
    t0 = time.perf_counter()
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    stats = Stats(prompt_tokens=dict(prompt_tokens))
    shown = ""  # text of the events already yielded
    pending: list[TokenEvent] = []  # events held back for a possible stop string
    reason = None

    def release(evs):
        nonlocal shown
        for ev in evs:
            stats.tokens += 1
            stats.nudge_tokens += ev.source == "nudge"
            shown += ev.text
            yield ev

    try:
        while True:
            try:
                event, piece = next(steps)
            except StopIteration as stop:
                reason = stop.value
                break
            except ContextFull:
                if not (stats.tokens or pending):
                    raise  # the prompt alone does not fit: the user must shorten it
                reason = "length"  # the answer filled the context
                break
            pending.append(replace(event, text=decoder.decode(piece)))
            if not stops:
                yield from release(pending)
                pending.clear()
                continue
            tail = "".join(e.text for e in pending)
            full = shown + tail
            window = max(0, len(shown) - max(map(len, stops)))
            hits = [i for i in (full.find(s, window) for s in stops) if i >= 0]
            if hits:
                cut = min(hits) - len(shown)  # characters of `tail` before the stop string
                kept = []
                for e in pending:
                    if cut <= 0:
                        break
                    kept.append(replace(e, text=e.text[:cut]))
                    cut -= len(e.text)
                pending.clear()
                yield from release(kept)
                reason = "stop_string"
                break
            hold = _held_back(full, stops)
            n_free, free_chars = 0, len(tail) - hold
            for e in pending:
                if len(e.text) > free_chars:
                    break
                free_chars -= len(e.text)
                n_free += 1
            yield from release(pending[:n_free])
            del pending[:n_free]
        yield from release(pending)
        pending.clear()
    finally:
        steps.close()
        stats.seconds = time.perf_counter() - t0
        for r, m in models.items():
            stats.evaluated_tokens[r] = m.evaluated_tokens - start[r][0]
            stats.forward_calls[r] = m.forward_calls - start[r][1]
    extra = {}
    if isinstance(reason, tuple):  # (reason, extra): a mode with results of its own
        reason, extra = reason
        extra = dict(extra)
        for key in ("draft_proposed", "draft_accepted"):
            if key in extra:
                setattr(stats, key, extra.pop(key))
    yield Done(reason, extra.pop("text", shown), stats, extra)
