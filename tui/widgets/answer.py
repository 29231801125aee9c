"""One exchange: the question, the answer's token blocks (or its rendered Markdown), a summary line."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from itertools import groupby

from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Markdown, Static

from nudge_local.engine.events import Stats, TokenEvent
from nudge_local.engine.prompts import Prompts
from nudge_local.render import MARKS
from nudge_local.tui.widgets.token_view import TokenView


def summary(tokens: int, nudged: int, tps: float, stop: str | None, mode: str, cancelled: bool, done: bool = True,
            *, chosen: int = 0, branch: tuple[int, int] = (1, 1)) -> str:  # fmt: skip
    """The line under an answer; "branch 2/3" first where it has siblings, and the tokens the user chose."""
    share = nudged / tokens if tokens else 0.0
    end = "cancelled" if cancelled else (stop or ("interrupted" if done else "writing…"))
    speed = f" · {tps:.1f} tok/s" if done else ""  # the speed is known once the answer is
    where = f"branch {branch[0]}/{branch[1]} · " if branch[1] > 1 else ""
    picked = f" · {chosen} chosen by you" if chosen else ""
    return f"{where}{mode} · {tokens} tokens · {share:.0%} nudged{picked}{speed} · {end}"


def notice(dropped: int) -> str:
    """The line above an answer whose prompts left earlier turns out."""
    return f"{dropped} earlier turn{'s are' if dropped != 1 else ' is'} outside the models' context"


FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")  # a Markdown code fence and its info string


def fenced_lines(text: str) -> Iterator[tuple[str, str]]:
    """Each line of a Markdown text (its end kept) and what it is: "open" or "close" (a code fence, ```
    or ~~~), "code" (inside a fenced block) or "text". A block left open runs to the end, as CommonMark
    reads it (an answer cut off inside one)."""
    fence = ""
    for line in text.splitlines(keepends=True):
        m = FENCE.match(line)
        if not fence:
            if m and not (m[1][0] == "`" and "`" in m[2]):  # a backtick fence's info has no backtick
                fence = m[1]
                yield line, "open"
            else:
                yield line, "text"
        elif m and m[1][0] == fence[0] and len(m[1]) >= len(fence) and not m[2].strip():
            fence = ""
            yield line, "close"
        else:
            yield line, "code"


def code_block_at(text: str, offset: int) -> str | None:
    """The code of the fenced block whose lines, fences included, hold character `offset` of a
    Markdown text; None outside every block."""
    pos, start, code = 0, None, []
    for line, kind in fenced_lines(text):
        if kind == "open":
            start, code = pos, []
        elif kind == "code":
            code.append(line)
        elif kind == "close":
            if start <= offset < pos + len(line):
                return "".join(code).removesuffix("\n")
            start = None
        pos += len(line)
    return "".join(code).removesuffix("\n") if start is not None and start <= offset else None


# Markdown keeps provenance. The rendered view has no colour or underline per token, so it marks words
# as the token view's brackets do, in the Markdown source: outside code, nudged words in escaped
# brackets \[like this\], which render as brackets and can never make a link, and tokens the user chose
# in {braces}, which Markdown leaves alone. An emphasis marker was the other way, but it nests with
# the answer's own emphasis and fails next to punctuation. Inside code (a fenced block, or a code span
# whose text more than one writer wrote) a backslash would show, so the marks are plain [ ] and { }
# there, shown as text; a code span one writer wrote whole is marked around it. Lines whose shape is
# the syntax stay as written (fences, rules, setext underlines, table delimiter rows), and a line's
# block marker (list bullet or number, heading hashes, quote, a table's first pipe) stays outside the marks.
TEXT_MARKS = {"nudge": ("\\[", "\\]"), "user": ("{", "}")}
BLOCK_START = re.compile(r"[ \t]*(?:>[ \t]?)*[ \t]*(?:[-*+][ \t]+|\d{1,9}[.)][ \t]+|#{1,6}[ \t]+|\|[ \t]*)?")
SYNTAX_LINE = re.compile(
    r" {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,}|=+[ \t]*"
    r"|\|?(?:[ \t]*:?-+:?[ \t]*\|)+(?:[ \t]*:?-+:?[ \t]*)?)\s*"
)

Piece = tuple[str, str | None, bool]  # text, the source whose mark it takes (None: none), whether inside code


def _code_span_end(body: str, i: int) -> tuple[int, int]:
    """The backtick run at `i`: its length, and where the code span it opens ends (-1: it opens none,
    no run of the same length follows on the line)."""
    n = len(body[i:]) - len(body[i:].lstrip("`"))
    k = i + n
    while (j := body.find("`" * n, k)) >= 0:
        m = len(body[j:]) - len(body[j:].lstrip("`"))
        if m == n:
            return n, j + n
        k = j + m
    return n, -1


def _text_pieces(line: str, sources: list[str]) -> list[Piece]:
    body = line.rstrip("\n")
    lead = BLOCK_START.match(body).end()
    pieces: list[Piece] = [(body[:lead], None, False)]
    i = lead
    while i < len(body):
        if body[i] != "`":
            pieces.append((body[i], sources[i], False))
            i += 1
            continue
        n, end = _code_span_end(body, i)
        if end < 0:
            pieces.append((body[i : i + n], sources[i], False))
            i += n
        elif len(set(sources[i:end])) == 1:  # one writer: marked around it, as a word
            pieces.append((body[i:end], sources[i], False))
            i = end
        else:
            pieces.append((body[i : i + n], None, False))
            pieces += [(c, s, True) for c, s in zip(body[i + n : end - n], sources[i + n : end - n], strict=True)]
            pieces.append((body[end - n : end], None, False))
            i = end
    return [*pieces, (line[len(body) :], None, False)]


def _with_marks(pieces: list[Piece]) -> str:
    """Each run of one marked source in one kind of text in its marks, whitespace outside them."""
    out = []
    for (source, code), run in groupby(pieces, key=lambda p: (p[1] if p[1] in MARKS else None, p[2])):
        chunk = "".join(p[0] for p in run)
        core = chunk.strip()
        if source is None or not core:
            out.append(chunk)
            continue
        start = chunk.index(core)
        opening, closing = (MARKS if code else TEXT_MARKS)[source]
        out.append(chunk[:start] + opening + core + closing + chunk[start + len(core) :])
    return "".join(out)


def marked_markdown(tokens: list[TokenEvent]) -> str:
    """The answer's Markdown source with nudged words and tokens the user chose marked (see above)."""
    text = "".join(t.text for t in tokens)
    sources = [t.source for t in tokens for _ in t.text]
    out, pos = [], 0
    for line, kind in fenced_lines(text):
        here = sources[pos : pos + len(line)]
        pos += len(line)
        if kind == "code":
            out.append(_with_marks([(c, s, True) for c, s in zip(line, here, strict=True)]))
        elif kind == "text" and not SYNTAX_LINE.fullmatch(line.rstrip("\n")):
            out.append(_with_marks(_text_pieces(line, here)))
        else:
            out.append(line)
    return "".join(out)


class AnswerView(Vertical):
    def __init__(self, question: str, *, mode: str, gamma: float, brackets: bool, gate: str = "top1",
                 msg_id: int | None = None, dropped: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.question, self.mode, self.gamma, self.brackets = question, mode, gamma, brackets
        self.gate = gate  # the gate it was written with, gamma its threshold
        # what the history holds of it beside its tokens
        self.msg_id = msg_id
        self.settings: dict = {}  # the options it was written with, and the turns its prompts held and dropped
        self.saved_stats: dict | None = None  # a reopened answer's stored Stats (its branching factors)
        self.dropped = dropped  # earlier turns outside the models' context for this answer
        # what it was written from
        self.prompts: Prompts | None = None  # for the inspector; None for a reopened answer until inspected
        self.prompt_tokens = 0  # the fuller prompt's tokens, for the status bar
        self.tokens: list[TokenEvent] = []
        self.nudged = 0
        self.chosen = 0  # tokens the user chose at a branch
        self.branch = (1, 1)  # its place among the answers at its point of the conversation, and their number
        self.branch_of: int | None = None  # while a branch is written: the stored answer it goes another way from
        self.done = False
        self.cancelled_at: float | None = None
        self.cancelled = False
        self.stop_reason: str | None = None
        self.stats: Stats | None = None
        self._blocks: list[TokenView] = []
        self._summary = Static("writing…", classes="summary")
        self._summary_lines = 0
        self._counts = (0, 0, 0.0)  # the summary's tokens, nudged tokens and speed
        self._counted_at = 0.0  # when show_counts last updated the summary
        self._markdown: Markdown | None = None
        self._pending: list[TokenEvent] = []
        self._ready = False

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    def compose(self):
        yield Static(f"› {self.question}", classes="question", markup=False)
        if self.dropped:
            yield Static(notice(self.dropped), classes="notice", markup=False)
        yield self._summary

    def on_mount(self) -> None:
        self._ready = True
        if self._pending:
            pending, self._pending = self._pending, []
            del self.tokens[len(self.tokens) - len(pending) :]
            self.nudged -= sum(t.source == "nudge" for t in pending)
            self.chosen -= sum(t.source == "user" for t in pending)
            self.add(pending)

    def add(self, tokens: list[TokenEvent]) -> bool:
        """Append tokens, opening a new block when the live one is full. True when the answer may
        have grown taller (so a follower scrolls)."""
        if not self._ready:  # reopened from history: blocks are made once the view is in place
            self._pending.extend(tokens)
            self.tokens.extend(tokens)
            self.nudged += sum(t.source == "nudge" for t in tokens)
            self.chosen += sum(t.source == "user" for t in tokens)
            return True
        grew = False
        touched: list[TokenView] = []
        for t in tokens:
            if not self._blocks or self._blocks[-1].full:
                grew = True
                if self._blocks and self._blocks[-1] not in touched:
                    touched.append(self._blocks[-1])  # closed by the last batch: drawn at its exact height
                block = TokenView(first_index=len(self.tokens), gamma=self.gamma, gate=self.gate,
                                  brackets=self.brackets)  # fmt: skip
                self._blocks.append(block)
                self.mount(block, before=self._summary)
            if not touched or touched[-1] is not self._blocks[-1]:
                touched.append(self._blocks[-1])
            self._blocks[-1].tokens.append(t)
            self.tokens.append(t)
            self.nudged += t.source == "nudge"
            self.chosen += t.source == "user"
        for block in touched:  # a block closed during this batch is drawn whole, at its exact height
            grew = block.add([], live=block is self._blocks[-1] and not self.done) or grew
        return grew

    def finish(self, *, stop_reason: str | None, stats: Stats | None, cancelled: bool = False) -> None:
        self.done, self.cancelled, self.stop_reason, self.stats = True, cancelled, stop_reason, stats
        if self._blocks:
            self._blocks[-1].add([], live=False)  # its exact height, no rows held for more text
        if cancelled:
            self.cancelled_at = time.monotonic()
        if stats is not None:
            self.set_summary(stats.tokens, stats.nudge_tokens, stats.tokens_per_second)
        else:
            self.set_summary(len(self.tokens), self.nudged, 0.0)

    def show_counts(self) -> None:
        """The live summary's counts, at most 4 times a second rather than once per batch of tokens."""
        now = time.monotonic()
        if now - self._counted_at > 0.25:
            self._counted_at = now
            self.set_summary(len(self.tokens), self.nudged, 0.0)

    def set_summary(self, tokens: int, nudged: int, tps: float) -> None:
        self._counts = (tokens, nudged, tps)
        text = Content(summary(tokens, nudged, tps, self.stop_reason, self.mode, self.cancelled, self.done,
                               chosen=self.chosen, branch=self.branch))  # fmt: skip
        width = self._summary.content_region.width
        lines = text.get_height(self._summary.styles, width) if width else 0
        # A layout reflows the whole screen: only when the line's height changes, not for each count.
        self._summary.update(text, layout=lines != self._summary_lines)
        self._summary_lines = lines
        self.set_class(self.cancelled, "cancelled")

    def show_branch(self, index: int, count: int) -> None:
        """Its place among the answers at its point ("branch 2/3" in the summary, where count > 1)."""
        if (index, count) != self.branch:
            self.branch = (index, count)
            self.set_summary(*(self._counts if self.done else (len(self.tokens), self.nudged, 0.0)))

    def set_marks(self, brackets: bool) -> None:
        self.brackets = brackets
        for b in self._blocks:
            b.set_marks(brackets=brackets)

    def toggle_markdown(self) -> bool:
        """Show the finished answer as rendered Markdown, or back as tokens. Returns True if Markdown."""
        if not self.done:
            return False
        if self._markdown is None:
            self._markdown = Markdown(marked_markdown(self.tokens))  # nudged words marked: see marked_markdown
            self.mount(self._markdown, before=self._summary)
            for b in self._blocks:
                b.display = False
            return True
        self._markdown.remove()
        self._markdown = None
        for b in self._blocks:
            b.display = True
        return False
