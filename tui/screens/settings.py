"""The live settings: mode, gamma, temperature, max tokens, system prompt, context policy."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from nudge_local.config import FIELDS
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import CHAT_MODES
from nudge_local.tui.session import Options


class SettingsScreen(ModalScreen[Options | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="settings.cancel")]

    def __init__(self, options: Options) -> None:
        super().__init__()
        self.options = options

    def compose(self) -> ComposeResult:
        o = self.options
        with Vertical():
            yield Static("Settings (apply to the next answer)", classes="title")
            yield Label("Mode")
            yield Select([(m, m) for m in CHAT_MODES], value=o.mode, allow_blank=False, id="mode")
            for name, value in (("gamma", o.gamma), ("temperature", o.temperature), ("max_tokens", o.max_tokens)):
                yield Label(name.replace("_", " ").capitalize())
                yield Input(str(value), id=name)
            yield Label("System prompt")
            yield Input(o.system, id="system")
            yield Label("When the conversation outgrows the context")
            yield Select([("drop the oldest turns", "drop_oldest"), ("stop", "stop")], value=o.context_overflow,
                         allow_blank=False, id="context_overflow")  # fmt: skip
            yield Static("", id="invalid")
            with Horizontal():
                yield Button("Apply", variant="primary", id="apply")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
            return
        values = dict(self.options.as_dict())
        values["mode"] = self.query_one("#mode", Select).value
        values["system"] = self.query_one("#system", Input).value
        values["context_overflow"] = self.query_one("#context_overflow", Select).value
        try:
            for name, kind in (("gamma", float), ("temperature", float), ("max_tokens", int)):
                raw = self.query_one(f"#{name}", Input).value.strip()
                try:
                    number = kind(raw)
                except ValueError:
                    raise NudgeError(f"{name} must be {FIELDS[name][0].allowed} (got {raw!r}).") from None
                try:
                    values[name] = FIELDS[name][0](number)
                except ValueError as e:
                    raise NudgeError(f"{name} must be {e} (got {raw!r}).") from None
        except NudgeError as e:
            invalid = self.query_one("#invalid", Static)
            invalid.update(str(e))
            invalid.add_class("shown")
            return
        self.dismiss(Options(**values))

    def action_cancel(self) -> None:
        self.dismiss(None)
