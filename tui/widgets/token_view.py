"""Tokens with provenance: nudged tokens coloured and, independent of colour, underlined or in
[brackets]; tokens the user chose at a branch (the loom) in reverse video and, with brackets on, in
{braces}. Hover shows why a token was written; click opens the inspector.

One widget renders one block of an answer; the answer starts a new block after a newline once a
block holds BLOCK tokens, so a long answer re-renders only its live tail.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from rich.cells import cell_len
from textual.color import Color
from textual.content import Content, Span
from textual.events import Click, MouseMove
from textual.message import Message
from textual.style import Style
from textual.widget import Widget

from nudge_local.engine.events import TokenEvent
from nudge_local.render import MARKS

BLOCK = 64  # small live blocks: each frame re-renders only the last one
LIVE_STEP = 4  # the live block's height grows 4 lines at a time: a quarter of the screen reflows
NUDGE_COLOR = Color.parse("#ff9e3d")


class TokenView(Widget):
    # Kept with the widget, not in app.tcss: a block sizes itself (the live block holds LIVE_STEP rows
    # ahead), which needs height auto wherever it is mounted, in the chat or alone.
    DEFAULT_CSS = """
    TokenView { height: auto; width: 1fr; }
    """

    @dataclass
    class Inspect(Message):
        """The user clicked token `index` of the answer this block belongs to."""

        view: TokenView
        index: int

    def __init__(self, *, first_index: int = 0, gamma: float = 0.4, gate: str = "top1", brackets: bool = False,
                 **kw) -> None:  # fmt: skip
        super().__init__(**kw)
        self.first_index = first_index
        self.tokens: list[TokenEvent] = []
        self.gamma, self.gate = gamma, gate
        self.brackets = brackets
        self.live = True  # still being written: its height is rounded up to LIVE_STEP lines
        self._reset()

    def add(self, tokens: list[TokenEvent], *, live: bool = True) -> bool:
        """Append tokens; True when the block is laid out again (its height changed)."""
        self.tokens.extend(tokens)
        self.live = live
        self._content = self.build()
        # A layout reflows and repaints the whole screen, the costly part of a frame: only when
        # the block's height changes, which while it is live is every LIVE_STEP lines of text.
        width = self.content_region.width
        shape = (width, self._height(self._content.get_height(self.styles, width)) if width else 0)
        if shape != self._laid:
            self._laid = shape
            self.refresh(layout=True)
            return True
        self.refresh()
        return False

    def _height(self, lines: int) -> int:
        return -(-lines // LIVE_STEP) * LIVE_STEP if self.live else lines

    def get_content_height(self, container, viewport, width: int) -> int:
        return self._height(super().get_content_height(container, viewport, width))

    def set_marks(self, *, brackets: bool) -> None:
        self.brackets = brackets
        self._reset()
        self.refresh(layout=True)

    def _reset(self) -> None:
        self._content = None
        self._parts: list[str] = []
        self._spans: list[Span] = []
        self._starts: list[int] = []  # offset in the text where each drawn token begins ...
        self._owners: list[int] = []  # ... and that token's index in this block
        self._pos, self._built = 0, 0
        self._open: str | None = None  # the source whose mark is open, with brackets on
        self._laid: tuple[int, int] | None = None  # (width, height in lines) at the last layout

    @property
    def full(self) -> bool:
        """Closed once it holds BLOCK tokens and the last ends a line; text without line ends is
        cut after a space once a block holds 4 x BLOCK tokens, so no block grows without bound."""
        n = len(self.tokens)
        last = self.tokens[-1].text if n else ""
        return (n >= BLOCK and last.endswith("\n")) or (n >= 4 * BLOCK and last[-1:].isspace()) or n >= 8 * BLOCK

    def _marked(self, t: TokenEvent) -> str:
        """The token's text with the marks it opens or closes: brackets around nudged words, braces around
        the user's tokens, whitespace outside them, as the paper prints nudged words."""
        text = t.text
        if not self.brackets or not text:
            return text
        closing = ""
        if self._open is not None and t.source != self._open:
            closing, self._open = MARKS[self._open][1], None
        if t.source in MARKS and self._open is None and text.strip():
            lead = len(text) - len(text.lstrip())
            text = text[:lead] + MARKS[t.source][0] + text[lead:]
            self._open = t.source
        return closing + text

    def build(self) -> Content:
        """The block's text and spans, extended by the tokens added since the last build."""
        styles = {
            "nudge": Style(foreground=NUDGE_COLOR, bold=True, underline=not self.brackets),
            "user": Style(bold=True, reverse=True),  # neither model's: no colour of its own, reverse video
        }
        for i in range(self._built, len(self.tokens)):
            t = self.tokens[i]
            text = self._marked(t)
            if text:
                self._starts.append(self._pos)  # where each token's text begins, for the mouse
                self._owners.append(i)
                end = self._pos + len(text)
                style = styles.get(t.source)
                if style is not None:  # one span per run of one source: rendering cost grows with spans
                    last = self._spans[-1] if self._spans else None
                    if last is not None and last.end == self._pos and last.style == style:
                        self._spans[-1] = Span(last.start, end, style)
                    else:
                        self._spans.append(Span(self._pos, end, style))
                self._parts.append(text)
                self._pos = end
        self._built = len(self.tokens)
        text = "".join(self._parts) + (MARKS[self._open][1] if self._open else "")
        if text.endswith("\n"):  # the next block starts the next line: no empty line between blocks
            text = text[:-1]
        return Content(text, [span for span in self._spans if span.start < len(text)])

    def render(self) -> Content:
        if self._content is None:
            self._content = self.build()
        return self._content

    def token_at(self, index: int) -> TokenEvent | None:
        i = index - self.first_index
        return self.tokens[i] if 0 <= i < len(self.tokens) else None

    def index_at(self, x: int, y: int) -> int | None:
        """The answer-wide index of the token drawn at cell (x, y) of the content, if any. Tokens
        carry no per-token style (it would triple the cost of drawing a block): the position is
        found by wrapping the text as Textual does."""
        width = self.content_region.width
        if width <= 0 or not self._starts:
            return None
        row, line_start = 0, 0
        for line in self.render().plain.split("\n"):
            pos = 0
            for visual in Content(line).wrap(width):
                piece = visual.plain.rstrip(" ")
                start = line.find(piece, pos) if piece else pos
                if row == y:
                    cells = 0
                    for k, ch in enumerate(line[start:]):
                        cells += cell_len(ch)
                        if cells > x:
                            if k >= len(piece):  # past the drawn text of this row
                                return None
                            i = bisect_right(self._starts, line_start + start + k) - 1
                            return self.first_index + self._owners[i] if i >= 0 else None
                    return None
                pos = start + len(piece)
                row += 1
            line_start += len(line) + 1
        return None

    def _event_index(self, event) -> int | None:
        offset = event.get_content_offset(self)
        return self.index_at(offset.x, offset.y) if offset is not None else None

    def on_mouse_move(self, event: MouseMove) -> None:
        index = self._event_index(event)
        t = self.token_at(index) if index is not None else None
        self.tooltip = describe(t, self.gamma, self.gate) if t else None

    def on_click(self, event: Click) -> None:
        index = self._event_index(event)
        if index is not None:
            self.post_message(self.Inspect(self, index))


def describe(t: TokenEvent, gamma: float, gate: str = "top1") -> str:
    """The hover text: who wrote the token and why (the gate's value where the token carries it)."""
    if t.source == "user":
        lines = [f"{t.text!r} chosen by you at a branch"]
    else:
        lines = [f"{t.text!r} written by the {'nudger' if t.source == 'nudge' else 'base'} (p={t.p:.3f})"]
    if t.base_p is not None and gate == "top1":
        rule = "below" if t.base_p < gamma else "at or above"
        lines.append(f"base top-1 p={t.base_p:.3f}, {rule} gamma {gamma:.2f}")
    elif t.base_p is not None:
        lines.append(f"base top-1 p={t.base_p:.3f}; {gate_rule(t, gamma, gate)}")
    lines.append("click for both models' top 5, and to take the answer another way here")
    return "\n".join(lines)


def gate_rule(t: TokenEvent, gamma: float, gate: str) -> str:
    """The margin or entropy gate at a token: its value where the token carries it (the base's entropy,
    on every base token and a nudged word's first), else its rule."""
    if gate == "entropy" and t.base_entropy is not None:
        rule = ">" if t.base_entropy > gamma else "<="
        return f"the base's entropy {t.base_entropy:.2f} nats {rule} gamma {gamma:.2f}"
    if gate == "entropy":
        return f"entropy gate: the nudger writes where the base's entropy > gamma {gamma:.2f} nats"
    return f"margin gate: the nudger writes where the base's top-1 minus top-2 < gamma {gamma:.2f}"
