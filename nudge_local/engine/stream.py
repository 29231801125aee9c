"""Turns a mode's steps into the public event stream (docs/architecture.md#the-stream).

A pipeline of small generators, each returning the mode's Result: `with_text` (UTF-8 safe text),
`until_stop` (stop strings), `trimmed` (paper mode's final trim), `stripped` (the answer's ends, as
shown), then `stream` counts and ends with Done. Whatever the mode, the events' texts add up to
`Done.text`: no consumer clips."""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import replace

from nudge_local.engine.errors import ContextFull
from nudge_local.engine.events import Done, DraftResult, Result, Role, Stats, TokenEvent
from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.words import WHITESPACE

Steps = Generator[tuple[TokenEvent, bytes], None, Result]  # what a decoding mode is
Events = Generator[TokenEvent, None, Result]


def _next(events: Iterator) -> tuple[object, Result | None]:
    """The next item, or (None, the generator's return value) once it has finished."""
    try:
        return next(events), None
    except StopIteration as stop:
        return None, stop.value


def with_text(steps: Steps) -> Events:
    """Each event with the characters its bytes complete (a character split across tokens appears
    whole on the token that completes it, "" on the ones before; an incomplete one at the very end is
    dropped). A context that fills mid-answer ends it with "length"; one the prompt alone overfills
    is the user's error."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    produced = False
    try:
        while True:
            try:
                item, result = _next(steps)
            except ContextFull:
                if not produced:
                    raise
                return Result("length")
            if result is not None:
                return result
            event, piece = item
            produced = True
            yield replace(event, text=decoder.decode(piece))
    finally:
        steps.close()


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` could still begin a stop string."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:k]):
                keep = k
                break
    return keep


def _release(pending: list[TokenEvent], n_chars: int) -> int:
    """How many of the pending events fit whole in their first `n_chars` characters."""
    n = 0
    for e in pending:
        if len(e.text) > n_chars:
            break
        n_chars -= len(e.text)
        n += 1
    return n


def until_stop(events: Events, stops: Sequence[str]) -> Events:
    """Text that could begin a stop string is held back until it cannot; a completed stop string
    ends generation ("stop_string") with the text cut before it."""
    shown = ""  # text of the events already passed on
    pending: list[TokenEvent] = []
    longest = max(map(len, stops))
    try:
        while True:
            event, result = _next(events)
            if result is not None:
                yield from pending
                return result
            pending.append(event)
            tail = "".join(e.text for e in pending)
            full = shown + tail
            hits = [i for i in (full.find(s, max(0, len(shown) - longest)) for s in stops) if i >= 0]
            if hits:
                yield from clip(pending, 0, min(hits) - len(shown))
                return Result("stop_string")
            n = _release(pending, len(tail) - _held_back(full, stops))
            for e in pending[:n]:
                shown += e.text
                yield e
            del pending[:n]
    finally:
        events.close()


def clip(tokens: list[TokenEvent], start: int, end: int) -> list[TokenEvent]:
    """The tokens covering characters [start, end) of their joined text, edge tokens cut to fit."""
    out, pos = [], 0
    for t in tokens:
        a, b = max(start, pos), min(end, pos + len(t.text))
        if a < b or (not t.text and start <= pos < end):
            out.append(replace(t, text=t.text[a - pos : b - pos]))
        pos += len(t.text)
    return out


def trimmed(events: Events, trim: Callable[[str], str]) -> Events:
    """Paper mode trims its whole output after generation (both ends stripped, repeated suffixes
    dropped), which can reach back to any earlier token: its events are held to the end and passed
    on cut to the trimmed text."""
    held: list[TokenEvent] = []
    try:
        while True:
            event, result = _next(events)
            if result is not None:
                break
            held.append(event)
    finally:
        events.close()
    raw = "".join(e.text for e in held)
    text = trim(raw)
    start = len(raw) - len(raw.lstrip())
    assert raw[start : start + len(text)] == text, "a trim may only strip the ends and drop suffixes"
    yield from clip(held, start, start + len(text))
    return result


def _cut(tokens: list[TokenEvent], end: int) -> list[TokenEvent]:
    """Every token, its text cut to the characters of their joined text before `end`: a token cut
    away entirely stays, with no text, so token counts do not depend on how an answer is shown."""
    out, pos = [], 0
    for t in tokens:
        out.append(replace(t, text=t.text[: max(0, end - pos)]))
        pos += len(t.text)
    return out


def stripped(events: Events) -> Events:
    """The answer as shown, without whitespace at either end (a base writes " Boil" after
    "Answer:", and often a newline at its end): leading whitespace is cut from the events that hold
    it; trailing whitespace is held back, whole events at a time, until something non-blank follows,
    and cut at the end."""
    started = False  # something non-blank has been passed on
    pending: list[TokenEvent] = []
    try:
        while True:
            event, result = _next(events)
            if result is not None:
                tail = "".join(e.text for e in pending)
                yield from _cut(pending, len(tail.rstrip(WHITESPACE)))
                return result
            if not started:
                event = replace(event, text=event.text.lstrip(WHITESPACE))
                started = bool(event.text)
            pending.append(event)
            tail = "".join(e.text for e in pending)
            n = _release(pending, len(tail.rstrip(WHITESPACE)))
            yield from pending[:n]
            del pending[:n]
    finally:
        events.close()


def stream(
    steps: Steps,
    models: Mapping[Role, ScoringModel],
    prompt_tokens: Mapping[Role, int],
    *,
    stop_strings: Sequence[str] = (),
    trim: Callable[[str], str] | None = None,
    kept: int = 0,
) -> Iterator[TokenEvent | Done]:
    """Run a mode's `steps` to the end: one TokenEvent with text per token, then Done with the
    joined text, Stats (counts, each model's evaluated tokens and forward calls, time) and the
    mode's Result. Closing this iterator stops the mode."""
    start = {r: (m.evaluated_tokens, m.forward_calls, m.prompt_read) for r, m in models.items()}
    t0 = time.perf_counter()
    stats = Stats(prompt_tokens=dict(prompt_tokens), kept=kept)
    events = with_text(steps)
    stops = [s for s in stop_strings if s]
    if stops:
        events = until_stop(events, stops)
    if trim is not None:
        events = trimmed(events, trim)
    events = stripped(events)
    parts: list[str] = []
    try:
        while True:
            event, result = _next(events)
            if result is not None:
                break
            stats.tokens += 1
            stats.nudge_tokens += event.source == "nudge"
            stats.add_entropy(event)
            parts.append(event.text)
            yield event
    finally:
        events.close()
        for m in models.values():
            m.settle()  # a served model stops writing ahead
        stats.seconds = time.perf_counter() - t0
        for r, m in models.items():
            stats.evaluated_tokens[r] = m.evaluated_tokens - start[r][0]
            stats.forward_calls[r] = m.forward_calls - start[r][1]
            if m.prompt_read is not None:  # a server reports what it read
                stats.served_prompt_read[r] = m.prompt_read - start[r][2]
    if isinstance(result, DraftResult):
        stats.draft_proposed, stats.draft_accepted = result.draft_proposed, result.draft_accepted
    yield Done("".join(parts), stats, result)
