"""One token up close: who wrote it, the gate, both models' top-5 alternatives there, and the
answer's branching factors. From here an answer can be taken another way at this token (the loom):
one of the alternatives, or the position handed to the other model; the screen closes with that
choice, a `Fork`, and the app writes the branch."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from nudge_local.engine.alternatives import Alternative
from nudge_local.engine.events import Role, Stats, TokenEvent
from nudge_local.tui.session import Fork
from nudge_local.tui.widgets.token_view import describe

# Who takes a position handed over: the other model; a token the user chose goes to the base.
HANDED_TO: dict[str, Role] = {"base": "nudger", "nudge": "base", "user": "base"}


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


class Alternatives(DataTable):
    """A model's top 5 at the token. It opens as a list to read, with no row cursor; where the answer
    can branch, Up, Down, Enter or a click on a row gives it one, and Enter (or a second click) on a
    row takes that token."""

    def __init__(self, role: str, alternatives: list[Alternative], *, pickable: bool) -> None:
        super().__init__(id=f"top-{role}", show_cursor=False)  # a row cursor once shown (cursor_type draws the header)
        self.role, self.alternatives, self.pickable = role, alternatives, pickable

    def on_mount(self) -> None:
        self.add_columns(f"{self.role} top 5", "p")
        for alt in self.alternatives:
            self.add_row(repr(alt.text), f"{alt.p:.3f}")

    def _reveal(self) -> bool:
        """Show the row cursor; True where this key only did that."""
        if self.show_cursor or not self.pickable or not self.row_count:
            return False
        self.cursor_type, self.show_cursor = "row", True
        self.screen.picking()
        return True

    def action_cursor_up(self) -> None:
        if not self._reveal():
            super().action_cursor_up()

    def action_cursor_down(self) -> None:
        if not self._reveal():
            super().action_cursor_down()

    def action_select_cursor(self) -> None:
        if not self._reveal():
            super().action_select_cursor()

    def _on_click(self, event: events.Click) -> None:
        """The first click on a row points at it (DataTable's own handler, which runs after this one
        unless prevented, would take it at once); with a cursor shown, DataTable's handler takes it."""
        row = event.style.meta.get("row", -1)
        if not self.show_cursor and row >= 0 and self._reveal():
            self.move_cursor(row=row)
            event.prevent_default()
            event.stop()


class InspectorScreen(ModalScreen[Fork | None]):
    BINDINGS = [
        Binding("escape,q", "dismiss", "Close", id="inspector.close"),
        Binding("h", "hand", "Hand over", id="inspector.hand"),
    ]

    def __init__(self, token: TokenEvent, index: int, gamma: float, alternatives: dict | None, note: str = "",
                 branching: str = "", *, can_branch: bool = False, gate: str = "top1") -> None:  # fmt: skip
        super().__init__()
        self.token, self.index, self.gamma, self.alts, self.note = token, index, gamma, alternatives or {}, note
        self.gate = gate  # the answer's, gamma its threshold
        self.branching = branching  # branching_line of the answer
        self.can_branch = can_branch and bool(self.alts)  # a finished answer of the chat, its alternatives known

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Token {self.index}", classes="title")
            yield Static(describe(self.token, self.gamma, self.gate).rsplit("\n", 1)[0], markup=False)
            if self.note:
                yield Static(self.note, markup=False)
            if self.branching:
                yield Static(self.branching, markup=False)
            with Horizontal():
                for role in ("base", "nudger"):
                    if role in self.alts:
                        yield Alternatives(role, self.alts[role], pickable=self.can_branch)
            # Shown once a table has a row cursor: the inspector opens as it always read.
            yield Static("", id="branch-help", markup=False)

    def picking(self) -> None:
        """A table took a row cursor: say what Enter and h do."""
        self.query_one("#branch-help", Static).add_class("shown")
        self._say_choice()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.show_cursor:
            self._say_choice()

    def _say_choice(self) -> None:
        table = self.focused if isinstance(self.focused, Alternatives) else None
        tables = [t for t in self.query(Alternatives).results(Alternatives) if t.show_cursor]
        table = table if table in tables else (tables[0] if tables else None)
        if table is None:
            return
        alt = table.alternatives[table.cursor_row]
        self.query_one("#branch-help", Static).update(
            f"Enter: branch with {alt.text!r} (the {table.role}'s) · h: the {HANDED_TO[self.token.source]} writes here"
            " · Esc: close"
        )

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        table = event.data_table
        if isinstance(table, Alternatives) and self.can_branch:
            self.dismiss(Fork(self.index, choice=table.alternatives[event.cursor_row]))

    def action_hand(self) -> None:
        """The position goes to the other model: the nudger writes a word there, or the base a token."""
        if self.can_branch:
            self.dismiss(Fork(self.index, writer=HANDED_TO[self.token.source]))
        else:
            self.notify("Only a finished answer of the chat can be taken another way.", severity="warning")

    def action_dismiss(self) -> None:
        self.dismiss(None)
