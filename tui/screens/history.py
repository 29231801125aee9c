"""Saved conversations: filter by their words, open, rename, delete."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, ListItem, ListView, Static


class ConversationItem(ListItem):
    """One saved conversation in the list."""

    def __init__(self, text: str, conv_id: int) -> None:
        super().__init__(Static(text, markup=False))
        self.conv_id = conv_id


class HistoryScreen(ModalScreen[tuple[str, int] | None]):
    """Dismisses with ("open", id) or None; rename and delete happen in place. The filter at the top
    narrows the list to the conversations holding every word typed there (History.search) as it is typed."""

    BINDINGS = [
        Binding("escape", "close", "Close", id="history.close"),
        Binding("r", "rename", "Rename", id="history.rename"),
        Binding("d,delete", "delete", "Delete", id="history.delete"),
        Binding("slash", "filter", "Filter", id="history.filter"),
    ]

    def __init__(self, history) -> None:
        super().__init__()
        self.history = history

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Conversations: Enter opens, r renames, d deletes, / filters, Esc closes", classes="title")
            yield Input(placeholder="filter: words in the questions and answers", id="filter")
            yield ListView(id="conversations")
            yield Input(placeholder="new title, Enter to save", id="title")

    async def on_mount(self) -> None:
        await self.reload()
        self.query_one(ListView).focus()

    async def reload(self) -> None:
        """The list again, as the filter has it; the focus stays where it is (the filter while typing)."""
        lv = self.query_one(ListView)
        await lv.clear()
        items = []
        for c in self.history.search(self.query_one("#filter", Input).value):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated))
            answers = f"{c.n_messages} answer" + ("" if c.n_messages == 1 else "s")
            items.append(ConversationItem(f"{c.title}  ·  {answers}  ·  {when}", c.id))
        await lv.extend(items)
        lv.index = 0 if items else None

    def _selected(self) -> int | None:
        item = self.query_one(ListView).highlighted_child
        return item.conv_id if isinstance(item, ConversationItem) else None

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        if isinstance(event.item, ConversationItem):
            self.dismiss(("open", event.item.conv_id))

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    async def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            await self.reload()

    def action_rename(self) -> None:
        if self._selected() is not None:
            field = self.query_one("#title", Input)
            field.add_class("editing")
            field.focus()

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":  # Enter: on to the list, to open, rename or delete
            self.query_one(ListView).focus()
            return
        conv = self._selected()
        if conv is not None and event.value.strip():
            self.history.rename(conv, event.value.strip())
        event.input.value = ""
        event.input.remove_class("editing")
        await self.reload()
        self.query_one(ListView).focus()

    async def action_delete(self) -> None:
        conv = self._selected()
        if conv is not None:
            self.history.delete(conv)
            await self.reload()

    def action_close(self) -> None:
        self.dismiss(None)
