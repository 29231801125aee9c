"""Text forms of an answer with provenance: spans, and the paper's [bracketed] nudged words ({braced}
tokens the user chose at a branch)."""

from __future__ import annotations

import io
from collections.abc import Iterable

from nudge_local.engine.events import TokenEvent
from nudge_local.engine.words import WHITESPACE


def spans(tokens: Iterable[TokenEvent]) -> list[dict]:
    """Consecutive tokens of one source merged; tokens whose text is empty (a split character) join
    the span of the token that completes the character."""
    out: list[dict] = []
    for t in tokens:
        if not t.text:
            continue
        if out and out[-1]["source"] == t.source:
            out[-1]["text"] += t.text
        else:
            out.append({"text": t.text, "source": t.source})
    return out


MARKS = {"nudge": ("[", "]"), "user": ("{", "}")}  # the base's text is unmarked


class BracketWriter:
    """Streams text with nudged words in [brackets] and tokens the user chose at a branch in {braces},
    whitespace outside them, as the paper prints nudged words."""

    def __init__(self, out) -> None:
        self.out, self.open = out, None  # the source whose mark is open

    def write(self, ev: TokenEvent) -> None:
        text = ev.text
        if not text:
            return
        if ev.source != self.open:
            closing = MARKS[self.open][1] if self.open in MARKS else ""
            rest = text.lstrip(WHITESPACE)
            if ev.source in MARKS and not rest:  # whitespace stays outside the marks
                self.out.write(closing + text)
                self.open = None
                return
            opening = MARKS[ev.source][0] if ev.source in MARKS else ""
            text = closing + text[: len(text) - len(rest)] + opening + rest
            self.open = ev.source if ev.source in MARKS else None
        self.out.write(text)
        self.out.flush()

    def close(self, newline: bool = True) -> None:
        if self.open in MARKS:
            self.out.write(MARKS[self.open][1])
            self.open = None
        if newline:
            self.out.write("\n")
        self.out.flush()


def bracketed(tokens: Iterable[TokenEvent]) -> str:
    """The whole answer with nudged words in [brackets], e.g. "[To] solve this, [we] need"."""
    out = io.StringIO()
    w = BracketWriter(out)
    for t in tokens:
        w.write(t)
    w.close(newline=False)
    return out.getvalue()
