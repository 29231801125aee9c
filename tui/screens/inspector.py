"""One token up close: who wrote it, the gate, both models' top-5 alternatives there, and the
answer's branching factors."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from nudge_local.engine.events import Stats, TokenEvent
from nudge_local.tui.widgets.token_view import describe


def branching_line(stats: Stats | dict | None) -> str:
    """The answer's branching factors (exp of the mean entropy along it) of the writing model's
    distribution and of the base's, from its Stats or their stored form; "" where none was measured."""
    if isinstance(stats, Stats):
        stats = {"branching_factor": stats.branching_factor, "base_branching_factor": stats.base_branching_factor}
    stats = stats or {}
    parts = [
        f"{name} {stats[key]:.2f}"
        for name, key in (("writing", "branching_factor"), ("base", "base_branching_factor"))
        if stats.get(key) is not None
    ]
    return "Branching factor of this answer: " + ", ".join(parts) if parts else ""


class InspectorScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "dismiss", "Close", id="inspector.close")]

    def __init__(self, token: TokenEvent, index: int, gamma: float, alternatives: dict | None, note: str = "",
                 branching: str = "") -> None:  # fmt: skip
        super().__init__()
        self.token, self.index, self.gamma, self.alts, self.note = token, index, gamma, alternatives or {}, note
        self.branching = branching  # branching_line of the answer

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Token {self.index}", classes="title")
            yield Static(describe(self.token, self.gamma).rsplit("\n", 1)[0], markup=False)
            if self.note:
                yield Static(self.note, markup=False)
            if self.branching:
                yield Static(self.branching, markup=False)
            with Horizontal():
                for role in ("base", "nudger"):
                    if role in self.alts:
                        table = DataTable(id=f"top-{role}", show_cursor=False)
                        table.add_columns(f"{role} top 5", "p")
                        for alt in self.alts[role]:
                            table.add_row(repr(alt.text), f"{alt.p:.3f}")
                        yield table

    def action_dismiss(self) -> None:
        self.dismiss(None)
