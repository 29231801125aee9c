"""The live settings: mode, gate and gamma, temperature, max tokens, system prompt, context policy.

Gamma is a number, or "auto": the loaded pair's calibrated gamma for the chosen gate (calibrate.py),
measured in a thread worker while the screen shows its progress (from the cache at once where known)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from nudge_local.calibrate import Calibration
from nudge_local.config import FIELDS
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import CHAT_MODES
from nudge_local.engine.gates import GATES
from nudge_local.tui.session import Options, Stopped, calibrating_line

GATE_CHOICES = [  # where the nudger writes
    ("top1: base's top-1 p < gamma", "top1"),
    ("margin: top-1 - top-2 < gamma", "margin"),
    ("entropy: base's entropy > gamma", "entropy"),
]
assert [g for _, g in GATE_CHOICES] == list(GATES)

# The settings screen's calibration: the gate, and a progress callback (which may raise Stopped).
Calibrate = Callable[[str, Callable[[int, float, float], None]], Calibration]


def parse_gamma(raw: str, gate: str) -> float | None:
    """A typed gamma for `gate`: None for "auto"; a probability (0 to 1) for top1 and margin, nats
    (0 up) for entropy; else one sentence naming what is allowed."""
    if raw.strip().lower() == "auto":
        return None
    span = ">= 0 nats" if gate == "entropy" else "0 to 1"
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (gate != "entropy" and value > 1):
        raise NudgeError(f"gamma must be {span} for the {gate} gate, or auto (got {raw.strip()!r}).")
    return value


@dataclass
class Calibrated(Message):
    """The worker's end: the calibration, or the sentence why there is none (None for both: stopped)."""

    calibration: Calibration | None
    error: str | None


@dataclass
class Progress(Message):
    step: int
    gamma: float
    ratio: float


class SettingsScreen(ModalScreen[Options | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="settings.cancel")]

    def __init__(self, options: Options, calibrate: Calibrate | None = None) -> None:
        """`calibrate`: gamma auto on the loaded pair; None while there is none (auto is then refused)."""
        super().__init__()
        self.options = options
        self.calibrate = calibrate
        self._stop = threading.Event()  # set when the screen closes: a calibration running stops
        self._pending: dict | None = None  # the values applied once the calibration ends

    def compose(self) -> ComposeResult:
        o = self.options
        gamma = "auto" if o.gamma is None or o.gamma_auto else f"{o.gamma:g}"
        with Vertical():
            yield Static("Settings (apply to the next answer)", classes="title")
            yield Label("Mode")
            yield Select([(m, m) for m in CHAT_MODES], value=o.mode, allow_blank=False, id="mode")
            with Horizontal(id="gate-gamma"):
                with Vertical(id="gate-choice"):
                    yield Label("Gate: the nudger writes where")
                    yield Select(GATE_CHOICES, value=o.gate, allow_blank=False, id="gate")
                with Vertical():
                    yield Label("Gamma (or auto)")
                    yield Input(gamma, id="gamma")
            for name, value in (("temperature", o.temperature), ("max_tokens", o.max_tokens)):
                yield Label(name.replace("_", " ").capitalize())
                yield Input(str(value), id=name)
            yield Label("System prompt")
            yield Input(o.system, id="system")
            yield Label("When the conversation outgrows the context")
            yield Select([("drop the oldest turns", "drop_oldest"), ("stop", "stop")], value=o.context_overflow,
                         allow_blank=False, id="context_overflow")  # fmt: skip
            yield Static("", id="calibrating", markup=False)
            yield Static("", id="invalid", markup=False)
            with Horizontal():
                yield Button("Apply", variant="primary", id="apply")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.action_cancel()
            return
        try:
            values = self._values()
        except NudgeError as e:
            self._say(str(e))
            return
        if values["gamma"] is not None or not self._needs_calibration(values["gate"]):
            self.dismiss(Options(**values))
            return
        if self.calibrate is None:
            self._say("Gamma auto is measured on the loaded pair: wait for the models, or type a number.")
            return
        self._say(None)
        self._pending = values
        self.query_one("#apply", Button).disabled = True
        self._show_progress(0, 0.0, 0.0)
        self._calibrate(values["gate"])

    def _values(self) -> dict:
        """The options as typed and chosen; a bad value is one sentence (NudgeError)."""
        values = dict(self.options.as_dict())
        for name in ("mode", "gate", "context_overflow"):
            values[name] = self.query_one(f"#{name}", Select).value
        values["system"] = self.query_one("#system", Input).value
        for name, kind in (("temperature", float), ("max_tokens", int)):
            raw = self.query_one(f"#{name}", Input).value.strip()
            try:
                values[name] = FIELDS[name][0](kind(raw))
            except ValueError as e:
                allowed = getattr(FIELDS[name][0], "allowed", None) or str(e)
                raise NudgeError(f"{name} must be {allowed} (got {raw!r}).") from None
        values["gamma"] = parse_gamma(self.query_one("#gamma", Input).value, values["gate"])
        values["gamma_auto"] = values["gamma"] is None
        if values["gamma"] is None and not self._needs_calibration(values["gate"]):
            values["gamma"] = self.options.gamma  # auto already, for this gate: as calibrated (or still to be)
        return values

    def _needs_calibration(self, gate: str) -> bool:
        """Auto for `gate` is not what the options hold already (auto for the same gate)."""
        o = self.options
        return not ((o.gamma is None or o.gamma_auto) and o.gate == gate)

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _calibrate(self, gate: str) -> None:
        def progress(step: int, gamma: float, ratio: float) -> None:
            if self._stop.is_set():
                raise Stopped
            self.post_message(Progress(step, gamma, ratio))

        try:
            self.post_message(Calibrated(self.calibrate(gate, progress), None))
        except Stopped:
            pass
        except NudgeError as e:
            self.post_message(Calibrated(None, str(e)))

    def on_progress(self, m: Progress) -> None:
        self._show_progress(m.step, m.gamma, m.ratio)

    def _show_progress(self, step: int, gamma: float, ratio: float) -> None:
        line = self.query_one("#calibrating", Static)
        line.update(calibrating_line(step, gamma, ratio, f"the {self._pending['gate']} gate"))
        line.add_class("shown")

    def on_calibrated(self, m: Calibrated) -> None:
        self.query_one("#calibrating", Static).remove_class("shown")
        self.query_one("#apply", Button).disabled = False
        if m.calibration is None:
            self._say(m.error)
            return
        self.dismiss(Options(**{**self._pending, "gamma": m.calibration.gamma, "gamma_auto": True}))

    def _say(self, error: str | None) -> None:
        invalid = self.query_one("#invalid", Static)
        invalid.update(error or "")
        invalid.set_class(bool(error), "shown")

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_unmount(self) -> None:
        self._stop.set()  # a calibration still running stops at its next measurement
