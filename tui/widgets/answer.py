"""One exchange: the question, the answer's token blocks (or its rendered Markdown), a summary line."""

from __future__ import annotations

import re
import time

from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Markdown, Static

from nudge_local.engine.events import Stats, TokenEvent
from nudge_local.engine.prompts import Prompts
from nudge_local.tui.widgets.token_view import TokenView


def summary(
    tokens: int, nudged: int, tps: float, stop: str | None, mode: str, cancelled: bool, done: bool = True
) -> str:
    share = nudged / tokens if tokens else 0.0
    end = "cancelled" if cancelled else (stop or ("interrupted" if done else "writing…"))
    speed = f" · {tps:.1f} tok/s" if done else ""  # the speed is known once the answer is
    return f"{mode} · {tokens} tokens · {share:.0%} nudged{speed} · {end}"


def notice(dropped: int) -> str:
    """The line above an answer whose prompts left earlier turns out."""
    return f"{dropped} earlier turn{'s are' if dropped != 1 else ' is'} outside the models' context"


FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")  # a Markdown code fence and its info string


def code_block_at(text: str, offset: int) -> str | None:
    """The code of the fenced block (``` or ~~~) whose lines, fences included, hold character
    `offset` of a Markdown text; None outside every block. A block left open runs to the end, as
    CommonMark reads it (an answer cut off inside one)."""
    pos, fence, start, code = 0, "", 0, []
    for line in text.splitlines(keepends=True):
        m = FENCE.match(line)
        if not fence:
            if m and not (m[1][0] == "`" and "`" in m[2]):  # a backtick fence's info has no backtick
                fence, start, code = m[1], pos, []
        elif m and m[1][0] == fence[0] and len(m[1]) >= len(fence) and not m[2].strip():
            if start <= offset < pos + len(line):
                return "".join(code).removesuffix("\n")
            fence = ""
        else:
            code.append(line)
        pos += len(line)
    return "".join(code).removesuffix("\n") if fence and start <= offset else None


class AnswerView(Vertical):
    def __init__(self, question: str, *, mode: str, gamma: float, brackets: bool, msg_id: int | None = None,
                 dropped: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.question, self.mode, self.gamma, self.brackets = question, mode, gamma, brackets
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
        self.done = False
        self.cancelled_at: float | None = None
        self.cancelled = False
        self.stop_reason: str | None = None
        self.stats: Stats | None = None
        self._blocks: list[TokenView] = []
        self._summary = Static("writing…", classes="summary")
        self._summary_lines = 0
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
            self.add(pending)

    def add(self, tokens: list[TokenEvent]) -> bool:
        """Append tokens, opening a new block when the live one is full. True when the answer may
        have grown taller (so a follower scrolls)."""
        if not self._ready:  # reopened from history: blocks are made once the view is in place
            self._pending.extend(tokens)
            self.tokens.extend(tokens)
            self.nudged += sum(t.source == "nudge" for t in tokens)
            return True
        grew = False
        touched: list[TokenView] = []
        for t in tokens:
            if not self._blocks or self._blocks[-1].full:
                grew = True
                if self._blocks and self._blocks[-1] not in touched:
                    touched.append(self._blocks[-1])  # closed by the last batch: drawn at its exact height
                block = TokenView(first_index=len(self.tokens), gamma=self.gamma, brackets=self.brackets)
                self._blocks.append(block)
                self.mount(block, before=self._summary)
            if not touched or touched[-1] is not self._blocks[-1]:
                touched.append(self._blocks[-1])
            self._blocks[-1].tokens.append(t)
            self.tokens.append(t)
            self.nudged += t.source == "nudge"
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
        text = Content(summary(tokens, nudged, tps, self.stop_reason, self.mode, self.cancelled, self.done))
        width = self._summary.content_region.width
        lines = text.get_height(self._summary.styles, width) if width else 0
        # A layout reflows the whole screen: only when the line's height changes, not for each count.
        self._summary.update(text, layout=lines != self._summary_lines)
        self._summary_lines = lines
        self.set_class(self.cancelled, "cancelled")

    def set_marks(self, brackets: bool) -> None:
        self.brackets = brackets
        for b in self._blocks:
            b.set_marks(brackets=brackets)

    def toggle_markdown(self) -> bool:
        """Show the finished answer as rendered Markdown, or back as tokens. Returns True if Markdown."""
        if not self.done:
            return False
        if self._markdown is None:
            self._markdown = Markdown("".join(t.text for t in self.tokens))
            self.mount(self._markdown, before=self._summary)
            for b in self._blocks:
                b.display = False
            return True
        self._markdown.remove()
        self._markdown = None
        for b in self._blocks:
            b.display = True
        return False
