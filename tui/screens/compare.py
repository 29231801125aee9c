"""One prompt answered by base only, nudger only and nudged, side by side, each with its stats."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from nudge_local.tui.widgets.answer import AnswerView

COLUMNS = ("base", "nudger", "nudged")


class CompareScreen(Screen[None]):
    BINDINGS = [Binding("escape", "close", "Back to chat", id="compare.close")]

    def __init__(self, question: str, gamma: float, gate: str, brackets: bool) -> None:
        super().__init__()
        self.question = question
        self.views = {m: AnswerView(question, mode=m, gamma=gamma, gate=gate, brackets=brackets) for m in COLUMNS}

    def compose(self) -> ComposeResult:
        yield Static(f"Compare: {self.question}", classes="heading", markup=False)
        with Horizontal():
            for mode, view in self.views.items():
                with VerticalScroll(id=f"col-{mode}"):
                    yield Static(
                        {"base": "Base only", "nudger": "Nudger only", "nudged": "Nudged"}[mode], classes="heading"
                    )
                    yield view
        yield Footer()

    def action_close(self) -> None:
        self.app.cancel_generation()
        self.dismiss(None)
