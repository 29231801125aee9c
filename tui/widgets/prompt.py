"""The input: Enter sends, Shift+Enter or Ctrl+J adds a line."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class PromptArea(TextArea):
    BINDINGS = [
        Binding("enter", "send", "Send", id="send", priority=True),
        Binding("shift+enter,ctrl+j", "newline", "New line", id="newline", show=False),
    ]

    @dataclass
    class Send(Message):
        text: str

    def action_send(self) -> None:
        text = self.text.strip()
        if text:
            self.post_message(self.Send(text))

    def action_newline(self) -> None:
        self.insert("\n")
