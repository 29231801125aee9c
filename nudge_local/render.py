"""Text forms of an answer with provenance: spans, and the paper's [bracketed] nudged words."""

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


class BracketWriter:
    """Streams text with nudged words in [brackets], whitespace outside them, as the paper prints them."""

    def __init__(self, out) -> None:
        self.out, self.open = out, False

    def write(self, ev: TokenEvent) -> None:
        text = ev.text
        if not text:
            return
        if ev.source == "nudge" and not self.open:
            rest = text.lstrip(WHITESPACE)
            if not rest:
                self.out.write(text)
                return
            text = text[: len(text) - len(rest)] + "[" + rest
            self.open = True
        elif ev.source != "nudge" and self.open:
            text = "]" + text
            self.open = False
        self.out.write(text)
        self.out.flush()

    def close(self, newline: bool = True) -> None:
        if self.open:
            self.out.write("]")
            self.open = False
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
