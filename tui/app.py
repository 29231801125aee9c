"""The chat app: who wrote every token, live. A consumer of the engine's event stream: fitting the
history, rendering prompts and generation run in thread workers that post typed messages (tokens in
batches); the UI thread never waits on llama.cpp or a server. Every answer can be taken another way
at any of its tokens from the inspector (the loom); every branch is kept, and the conversation on
screen is the history's shown path."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.errors import NoWidget
from textual.message import Message
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState

from nudge_local.config import Settings
from nudge_local.engine.context import Fitted
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import CHAT_MODES, Done, TokenEvent
from nudge_local.engine.prompts import Prompts, Turn
from nudge_local.tui.history import History
from nudge_local.tui.history import Message as Stored
from nudge_local.tui.screens.compare import COLUMNS, CompareScreen
from nudge_local.tui.screens.history import HistoryScreen
from nudge_local.tui.screens.inspector import InspectorScreen, branching_line
from nudge_local.tui.screens.settings import SettingsScreen
from nudge_local.tui.session import ChatSession, Fork, Options, calibrating_line
from nudge_local.tui.widgets.answer import AnswerView, code_block_at
from nudge_local.tui.widgets.prompt import PromptArea
from nudge_local.tui.widgets.token_view import TokenView

FRAME = 1 / 30  # token batches reach the screen at about 30 Hz
GAMMA_STEP = 0.05  # a probability gate's (top1, margin): gamma from 0 to 1
ENTROPY_STEP = 0.25  # the entropy gate's, in nats: gamma from 0 up

# (id, key, action, description, help for the command palette)
ACTIONS = [
    ("cancel", "escape", "cancel", "Cancel", "Stop the answer, put its question back, hold the queue; again: clear it"),
    ("regenerate", "ctrl+r", "regenerate", "Regenerate", "Write the last answer again with the current settings"),
    ("gamma_up", "alt+up", "gamma(1)", "Gamma +", "Raise gamma by 0.05 (the entropy gate's by 0.25 nats)"),
    ("gamma_down", "alt+down", "gamma(-1)", "Gamma -", "Lower gamma by 0.05 (the entropy gate's by 0.25 nats)"),
    ("mode", "ctrl+o", "cycle_mode", "Mode", "Switch between nudged, base only and nudger only"),
    ("settings", "f2", "settings", "Settings", "Mode, gate, gamma (or auto), temperature, max tokens, system prompt"),
    ("history", "f3", "history", "History", "Open, rename or delete saved conversations"),
    ("compare", "f4", "compare", "Compare", "Answer the prompt with base only, nudger only and nudged, side by side"),
    ("copy", "f5", "copy_answer", "Copy", "Copy the answer under the mouse (else the last), or the code block there"),
    ("marks", "ctrl+b", "toggle_marks", "Marks", "Mark nudged tokens with [brackets] or underline"),
    ("markdown", "ctrl+t", "toggle_markdown", "Markdown", "Show the last finished answer as rendered Markdown"),
    ("export", "ctrl+s", "export", "Export", "Write the conversation to Markdown and JSON files"),
    ("new", "ctrl+n", "new_conversation", "New", "Start a new conversation"),
    ("branch_previous", "alt+left", "branch(-1)", "Branch ‹", "Show the answer's previous branch (loom)"),
    ("branch_next", "alt+right", "branch(1)", "Branch ›", "Show the answer's next branch (loom)"),
]


@dataclass(frozen=True)
class Request:
    """What an answer's prompts are made from: read from the widgets on the UI thread, made into
    prompts in a worker (tokenizing can be slow: a served model answers each count over HTTP)."""

    question: str
    history: list[Turn]
    options: Options
    dropped: int = 0  # the conversation's oldest turns already left out
    sibling_of: int | None = None  # regenerating: the stored answer the new one is written beside


# What an answer stored before the chat had gates was written with.
BEFORE_GATES = {"gate": "top1", "gamma_auto": False}

# What the workers post back. Textual's Message.__post_init__ does Message's own setup, so a
# dataclass needs nothing more (the pattern of Textual's Input.Changed).


@dataclass
class Asked(Message):
    """A question's prompts, fitted to the context, or the sentence why they cannot be."""

    view: AnswerView
    request: Request
    fitted: Fitted | None
    error: str | None


@dataclass
class Prompted(Message):
    """The prompts the compare screen's answers are written from."""

    views: list[AnswerView]
    prompts: Prompts
    held: int  # the conversation's earlier turns the prompts hold ...
    dropped: int  # ... and its oldest turns they leave out
    written: bool  # an answer's question, as its answer was written (else a new question, as it would be asked)


@dataclass
class Branched(Message):
    """The engine took a branch (it gave an event after the kept tokens), or the sentence why not. The
    branch is stored and shown only then: a refused one leaves nothing behind."""

    view: AnswerView
    parent_id: int
    at: int
    kept: list[TokenEvent]  # the parent's first `at` tokens
    prompts: Prompts | None  # a reopened answer's, made in the worker
    error: str | None


@dataclass
class Tokens(Message):
    """A batch of one answer's tokens."""

    view: AnswerView
    tokens: list[TokenEvent]


@dataclass
class Finished(Message):
    """One answer ended: its Done, or the error sentence that stopped it."""

    view: AnswerView
    done: Done | None
    error: str | None


@dataclass
class Loaded(Message):
    error: str | None


@dataclass
class LoadProgress(Message):
    role: str
    fraction: float


@dataclass
class Calibrating(Message):
    """Gamma auto is being measured for the loaded pair: before the first measurement (step 0) and
    after each."""

    step: int
    gamma: float
    ratio: float


@dataclass
class Inspected(Message):
    view: AnswerView
    index: int
    prompts: Prompts | None
    alternatives: dict | None
    error: str | None


def gamma_text(o: Options) -> str:
    """The status line's gamma: its value ("auto" until calibrated), "(auto)" where calibrated, and the
    gate where it is not the paper's top1."""
    text = "gamma auto" if o.gamma is None else f"gamma {o.gamma:.2f}" + (" (auto)" if o.gamma_auto else "")
    return text + (f" · {o.gate}" if o.gate != "top1" else "")


def compared_from(held: int, dropped: int, written: bool) -> str:
    """The compare screen's line on the turns its answers were written after; none without any."""
    if not held and not dropped:
        return ""
    turns = f"the conversation's {held} earlier turn{'s' * (held != 1)}" if held else "none of the earlier turns"
    left = f" ({dropped} older left out: outside the models' context)" if dropped else ""
    how = "as the chat's answer was written" if written else "as the chat would ask it now"
    return f"With {turns}{left}, {how}."


class NudgeApp(App):
    TITLE = "nudge-local"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding(key, action, desc, id=id_, show=id_ not in ("gamma_down", "new", "markdown", "copy"))
        for id_, key, action, desc, _ in ACTIONS
    ]

    def __init__(self, settings: Settings, *, history: History | None = None, export_dir: Path | None = None):
        super().__init__()
        self.settings = settings
        self.session = ChatSession(settings)
        self.history = history or History()
        self.export_dir = export_dir or Path.cwd()
        self.options = Options.from_settings(settings)
        self.brackets = bool(self.history.get_state("brackets", False))
        self.conversation: int | None = None
        self.current: AnswerView | None = None  # the answer being written
        self._writing: dict[Worker, list[AnswerView]] = {}  # each generation worker's answers
        self._cancel = threading.Event()
        self.queue: list[str] = []  # questions sent while an answer is written (or the models load), oldest first
        self.held = False  # Esc stopped an answer: the queue waits for Enter
        self.loaded = False  # the models' loading ended, well (ready) or not
        self.ready = False
        self.loading = "starting"
        self.context_used = 0
        self.dropped = 0  # the conversation's oldest turns left out of the prompts so far

    # -- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("", id="status", markup=False)
        yield Static("", id="error", markup=False)
        with VerticalScroll(id="chat"):
            yield Static(
                "Ask a question. Nudged words are marked; hover a token for why, click it for both models' top 5.",
                id="welcome",
            )
        yield Static("", id="queue", markup=False)
        yield PromptArea(id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        theme = self.history.get_state("theme")
        if theme in self.available_themes:
            self.theme = theme
        if self.settings.keymap:
            self.set_keymap(self.settings.keymap)
        self.update_status()
        self.query_one(PromptArea).focus()
        self._load()

    def watch_theme(self, theme: str) -> None:
        self.history.set_state("theme", theme)

    def update_status(self) -> None:
        o = self.options
        state = "ready" if self.ready else self.loading
        if self.current is not None:
            state = "writing… (Esc cancels)"
        ctx = f"ctx {self.context_used}/{self.session.n_ctx}" if self.session.n_ctx else "ctx -"
        backend = self.session.backend if self.ready else "…"
        self.query_one("#status", Static).update(
            f"{self.session.pair_name} · {backend} · {gamma_text(o)} · {o.mode} · {ctx} · {state}"
        )

    def _within(self, used: int) -> int:
        """The status bar's count of the context: never more than the total (what does not fit is
        left out of the next question's prompts)."""
        return min(used, self.session.n_ctx) if self.session.n_ctx else used

    def show_error(self, text: str | None) -> None:
        err = self.query_one("#error", Static)
        err.update(text or "")
        err.set_class(bool(text), "shown")

    # -- models -------------------------------------------------------------------------------

    # Workers read no widget: what they need comes in as arguments, and they answer with messages.
    # exit_on_error=False: a bug in a worker ends its job (on_worker_state_changed), not the app.

    @work(thread=True, group="engine", exit_on_error=False)
    def _load(self) -> None:
        try:
            self.session.load(lambda role, f: self.post_message(LoadProgress(role, f)))
            self.session.settle_gamma(lambda step, gamma, ratio: self.post_message(Calibrating(step, gamma, ratio)))
            self.post_message(Loaded(None))
        except NudgeError as e:
            self.post_message(Loaded(str(e)))

    def on_load_progress(self, m: LoadProgress) -> None:
        self.loading = f"loading {m.role} {m.fraction:.0%}"
        self.update_status()

    def on_calibrating(self, m: Calibrating) -> None:
        self.loading = calibrating_line(m.step, m.gamma, m.ratio)
        self.update_status()

    def on_loaded(self, m: Loaded) -> None:
        self.loaded, self.ready = True, m.error is None
        self.loading = "ready" if self.ready else "no models"
        if self.ready:
            self.options = self._settled_options()
            if self.session.calibration is not None:
                self.notify(self.session.calibration.line(), timeout=6)
        self.show_error(m.error)
        self._next()
        self.update_status()

    def _settled_options(self) -> Options:
        """The options with the loaded pair's defaults (a catalog pair's gamma, gamma auto's calibrated
        one) settled in, except those the user changed while the models loaded."""
        started = Options.from_settings(self.settings).as_dict()
        changed = {k: v for k, v in self.options.as_dict().items() if v != started[k]}
        return replace(Options.from_settings(self.session.settings, self.session.calibration), **changed)

    # -- asking -------------------------------------------------------------------------------

    def on_prompt_area_send(self, m: PromptArea.Send) -> None:
        """A question joins the queue, asked as soon as nothing is being written and the models are
        loaded. Enter also goes on with a queue that Esc held, with or without a new question."""
        if m.text and self.loaded and not self.ready:
            self.notify("The models are not loaded.", severity="error")
            self._put_back(m.text)
            return
        if m.text:
            self.queue.append(m.text)
        self.held = False
        self._next()

    def _next(self) -> None:
        """Ask the oldest queued question, unless an answer is being written, the models are not
        loaded yet or Esc held the queue."""
        if self.queue and not self.held and self.ready and self.current is None:
            self.ask(self.queue.pop(0))
        self.show_queue()

    def show_queue(self) -> None:
        """The queued questions above the input, a line each; hidden when there are none."""
        lines = [f"queued: {q.splitlines()[0]}" + (" …" if "\n" in q else "") for q in self.queue]
        if self.held and self.queue:
            lines.insert(0, "held after Esc: Enter goes on, Esc clears")
        box = self.query_one("#queue", Static)
        box.update("\n".join(lines))
        box.set_class(bool(self.queue), "shown")
        box.set_class(self.held, "held")

    def _put_back(self, question: str) -> None:
        """A question not answered goes back in the input to edit and send again, unless the user
        has typed something new there meanwhile."""
        prompt = self.query_one(PromptArea)
        if not prompt.text.strip():
            prompt.text = question
            prompt.move_cursor(prompt.document.end)

    def turns(self, before: AnswerView | None = None) -> list[Turn]:
        """The conversation's turns a question is asked after: those before the answer `before`, else
        all; an answer with no tokens (cancelled at once) is none."""
        views = list(self.query("#chat AnswerView").results(AnswerView))
        if before is not None:
            views = views[: views.index(before)]
        return [Turn(v.question, v.text) for v in views if v.done and v.tokens]

    def options_of(self, view: AnswerView) -> Options:
        """The options an answer was written with; the current ones for what a reopened answer's
        stored settings lack."""
        given = {**self.options.as_dict(), **BEFORE_GATES, **view.settings}
        return Options(**{k: v for k, v in given.items() if k in Options.__dataclass_fields__})

    def ask(self, question: str, *, instead_of: AnswerView | None = None) -> None:
        """Start an answer (`instead_of` an answer: a new branch beside it, asked after the turns before
        it). Its prompts are fitted in the worker; `on_asked` stores and shows it."""
        options = replace(self.options)  # as it is now: a key pressed meanwhile changes the next answer
        view = AnswerView(question, mode=options.mode, gamma=options.gamma, gate=options.gate, brackets=self.brackets)
        self.current = view
        self._cancel = threading.Event()
        self.update_status()
        sibling = instead_of.msg_id if instead_of is not None else None
        request = Request(question, self.turns(instead_of), options, self.dropped, sibling)
        self._writing[self._ask(view, request, self._cancel)] = [view]

    def on_asked(self, m: Asked) -> None:
        view, fitted = m.view, m.fitted
        if view.done:  # cancelled before its prompts were made: never shown, nothing stored
            return
        if fitted is None:  # the question does not fit: it is not asked, and goes back to be shortened
            self.show_error(m.error)
            self.current = None
            self._put_back(view.question)
            self._next()
            self.update_status()
            return
        self.show_error(None)
        self.dropped = fitted.dropped
        if self.conversation is None:
            self.conversation = self.history.new_conversation(view.question[:60], {"pair": self.session.pair_name})
        view.settings = {**m.request.options.as_dict(), "turns_held": fitted.held, "turns_dropped": fitted.dropped}
        view.dropped = fitted.dropped
        view.prompts = fitted.prompts
        view.prompt_tokens = max(fitted.tokens.values(), default=0)
        chat = self.query_one("#chat", VerticalScroll)
        if m.request.sibling_of is not None:  # regenerated: a branch that keeps none of the old answer's tokens
            view.msg_id = self.history.start_branch(m.request.sibling_of, 0, mode=view.mode, settings=view.settings)
            self.show_path(live=view)
        else:
            view.msg_id = self.history.start_answer(self.conversation, view.question, mode=view.mode,
                                                    settings=view.settings)  # fmt: skip
            chat.mount(view)
        chat.scroll_end(animate=False)

    @work(thread=True, group="engine", exit_on_error=False)
    def _ask(self, view: AnswerView, request: Request, cancel: threading.Event) -> None:
        with self.session.lock:
            try:
                fitted = self.session.fit(request.question, request.history, request.options, request.dropped)
            except NudgeError as e:
                self.post_message(Asked(view, request, None, str(e)))
                return
        self.post_message(Asked(view, request, fitted, None))
        self._write([(view, partial(self.session.answer, fitted.prompts, request.options, request.options.mode))],
                    cancel)  # fmt: skip

    @work(thread=True, group="engine", exit_on_error=False)
    def _compare(self, jobs: list[tuple[AnswerView, str]], request: Request, written: bool,
                 cancel: threading.Event) -> None:  # fmt: skip
        """The prompts the chat asks with: a new question fitted as the chat fits one; an answer's
        question (`written`) from the turns its own fit held (those before it less those it dropped)."""
        with self.session.lock:
            try:
                if written:
                    prompts = self.session.prompts(request.question, request.history, request.options,
                                                   request.dropped)  # fmt: skip
                    dropped = request.dropped
                else:
                    fitted = self.session.fit(request.question, request.history, request.options, request.dropped)
                    prompts, dropped = fitted.prompts, fitted.dropped
            except NudgeError as e:
                for view, _ in jobs:
                    self.post_message(Finished(view, None, str(e)))
                return
        held = max(0, len(request.history) - dropped)
        self.post_message(Prompted([view for view, _ in jobs], prompts, held, dropped, written))
        self._write([(view, partial(self.session.answer, prompts, request.options, mode)) for view, mode in jobs],
                    cancel)  # fmt: skip

    def on_prompted(self, m: Prompted) -> None:
        for view in m.views:
            view.prompts = m.prompts
        line = compared_from(m.held, m.dropped, m.written)
        screen = m.views[0].screen if m.views[0].is_attached else None
        if line and isinstance(screen, CompareScreen):  # not closed meanwhile
            screen.mount(Static(line, classes="context", markup=False), after=screen.query(".heading").first())

    def _write(self, jobs: list[tuple[AnswerView, Callable[[], Iterator[TokenEvent | Done]]]], cancel: threading.Event,
               *, kept: int = 0, taken: Callable[[str | None], None] | None = None) -> None:  # fmt: skip
        """The workers' common end: each job's answer (its events, from a session call), its tokens posted in
        batches about 30 times a second. A branch (`taken`) gives its `kept` tokens again first: they are not
        posted (its view and the history copy them); `taken(None)` says the engine took the branch, before
        anything else is posted, or `taken(sentence)` that it did not (nor was anything else posted)."""
        for view, answer in jobs:
            if cancel.is_set():
                return
            batch: list[TokenEvent] = []
            done, error, last = None, None, time.monotonic()
            skip, waiting = kept, taken is not None
            with self.session.lock:
                try:
                    events = answer()
                    try:
                        for ev in events:
                            if cancel.is_set():
                                break
                            if skip and isinstance(ev, TokenEvent):
                                skip -= 1
                                continue
                            if waiting:
                                taken(None)
                                waiting = False
                            if isinstance(ev, Done):
                                done = ev
                                break
                            batch.append(ev)
                            now = time.monotonic()
                            if now - last >= FRAME:
                                self.post_message(Tokens(view, batch))
                                batch, last = [], now
                    finally:
                        events.close()
                except NudgeError as e:
                    error = str(e)
            if waiting:  # refused, or stopped before the engine took it: nothing to show or store
                taken(error)
                return
            if batch:
                self.post_message(Tokens(view, batch))  # flush on stop: nothing shown is lost
            self.post_message(Finished(view, done, error))

    def on_tokens(self, m: Tokens) -> None:
        if m.view.done:
            return  # cancelled: what arrives later is not shown
        chat = self.query_one("#chat", VerticalScroll)
        follow = chat.scroll_y >= chat.max_scroll_y - 1
        grew = m.view.add(m.tokens)
        if m.view.msg_id is not None:
            self.history.append_tokens(m.view.msg_id, m.tokens)
        if m.view is self.current and m.view.prompts is not None:
            self.context_used = self._within(m.view.prompt_tokens + len(m.view.tokens))
        m.view.show_counts()
        if grew and follow and m.view.parent is not None and m.view.screen is self.screen:
            chat.scroll_end(animate=False)

    def on_finished(self, m: Finished) -> None:
        view = m.view
        chat = self.query_one("#chat", VerticalScroll)
        # not attached: its prompts failed (a bug in the worker) before it was shown, or its screen was closed
        if view.is_attached and view.screen is self.screen and chat.scroll_y >= chat.max_scroll_y - 1:
            self.call_after_refresh(chat.scroll_end, animate=False)  # the last line, laid out at the end
        if not view.done:
            if m.error:
                self.show_error(m.error)
            view.finish(
                stop_reason=m.done.stop_reason if m.done else ("error" if m.error else None),
                stats=m.done.stats if m.done else None,
            )
            if view.msg_id is not None:
                self.history.finish_answer(
                    view.msg_id, stop_reason=view.stop_reason or "error", stats=m.done.stats.as_dict() if m.done else {}
                )
            if m.done:
                # the fuller of the two contexts: its prompt plus the answer
                self.context_used = self._within(max(m.done.stats.prompt_tokens.values()) + m.done.stats.tokens)
        if view is self.current:
            self.current = None
            self._next()
        self.update_status()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that raised (a bug, not a NudgeError sentence) ends its own job with an error
        line: its answers finish as "error", a failed load leaves no models, the app carries on."""
        worker = event.worker
        if event.state in (WorkerState.SUCCESS, WorkerState.CANCELLED):
            self._writing.pop(worker, None)
        if event.state != WorkerState.ERROR:
            return
        error = f"Internal error, please report it: {type(worker.error).__name__}: {worker.error}"
        error = " ".join(error.split())  # one line
        if worker.name == "_load":
            self.post_message(Loaded(error))
        for view in self._writing.pop(worker, []):
            self.post_message(Finished(view, None, error))  # after the tokens it had already posted
        if worker.name == "_inspect":
            self.show_error(error)

    # -- actions ------------------------------------------------------------------------------

    def cancel_generation(self) -> None:
        self._cancel.set()

    def action_cancel(self) -> None:
        """Esc: stop the answer being written and put its question back in the input (unless the user
        has typed something new there meanwhile); the queued questions wait until Enter. With no
        answer being written (so Esc a second time), clear the queue."""
        view = self.current
        if view is None:
            if self.queue:
                self.notify(f"Cleared {len(self.queue)} queued question{'s' * (len(self.queue) != 1)}.", timeout=2)
                self.queue.clear()
                self.held = False
                self.show_queue()
            return
        self._stop_current()
        if view.branch_of is None:  # a branch's question is answered already: nothing goes back
            self._put_back(view.question)

    def _stop_current(self) -> None:
        """Cancel the answer being written; its partial answer is kept, and stored as cancelled. The
        queue is held: what comes next is the user's choice."""
        view = self.current
        if view is None:
            return
        self.held = bool(self.queue)
        self.show_queue()
        self._cancel.set()
        view.finish(stop_reason="cancelled", stats=None, cancelled=True)
        if view.msg_id is not None:
            self.history.finish_answer(view.msg_id, stop_reason="cancelled", stats={}, cancelled=True)
        self.current = None
        self.update_status()

    def action_regenerate(self) -> None:
        """Write the last answer again with the current settings, as a new branch in its place: the old
        answer stays, one branch away."""
        views = list(self.query("#chat AnswerView").results(AnswerView))
        if self.current is not None or not views or not self.ready:
            return
        self.ask(views[-1].question, instead_of=views[-1])

    def action_gamma(self, direction: int) -> None:
        """One step of gamma: 0.05 for a probability gate, within 0 to 1; 0.25 nats for the entropy
        gate, from 0 up. A number the user set: no longer gamma auto."""
        o = self.options
        if o.gamma is None:
            self.notify("Gamma auto is measured once the models are loaded; then it can be changed.",
                        severity="warning")  # fmt: skip
            return
        if o.gate == "entropy":
            g = round(max(0.0, o.gamma + direction * ENTROPY_STEP), 2)
        else:
            g = round(min(1.0, max(0.0, o.gamma + direction * GAMMA_STEP)), 2)
        o.gamma, o.gamma_auto = g, False
        self.update_status()
        self.notify(f"gamma {g:.2f} (next answer)", timeout=1.5)

    def action_cycle_mode(self) -> None:
        self.options.mode = CHAT_MODES[(CHAT_MODES.index(self.options.mode) + 1) % len(CHAT_MODES)]
        self.update_status()

    def action_settings(self) -> None:
        def apply(result: Options | None) -> None:
            if result is not None:
                self.options = result
                self.update_status()

        calibrate = self.session.calibrate if self.ready else None  # gamma auto needs the loaded pair
        self.push_screen(SettingsScreen(self.options, calibrate), apply)

    def action_toggle_marks(self) -> None:
        self.brackets = not self.brackets
        self.history.set_state("brackets", self.brackets)
        for v in self.query(AnswerView).results(AnswerView):
            v.set_marks(self.brackets)

    def action_toggle_markdown(self) -> None:
        done = [v for v in self.query("#chat AnswerView").results(AnswerView) if v.done]
        if done:
            done[-1].toggle_markdown()

    def action_new_conversation(self) -> None:
        self._stop_current()
        self.query_one(PromptArea).set_questions([])
        self.conversation = None
        self.query("#chat AnswerView").remove()
        self.context_used = 0
        self.dropped = 0
        self.update_status()

    def action_export(self) -> None:
        if self.conversation is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        paths = []
        for ext, text in (
            ("md", self.history.export_markdown(self.conversation)),
            ("json", self.history.export_json(self.conversation)),
        ):
            path = self.export_dir / f"nudge-local-{self.conversation}.{ext}"
            tmp = path.with_suffix(path.suffix + ".part")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)  # never a half-written export
            paths.append(str(path))
        self.notify("Exported to " + " and ".join(paths))

    def action_history(self) -> None:
        def chosen(result) -> None:
            if result and result[0] == "open":
                self.open_conversation(result[1])

        self.push_screen(HistoryScreen(self.history), chosen)

    def open_conversation(self, conv_id: int) -> None:
        self._stop_current()
        self.query("#chat AnswerView").remove()
        self.conversation = conv_id
        self._mount(self.history.messages(conv_id))
        self.query_one("#chat", VerticalScroll).scroll_end(animate=False)

    def show_path(self, live: AnswerView | None = None) -> None:
        """The conversation on screen as the history's shown path (the branch shown at each point): the
        answers on screen up to the first that differs from it stay, the rest are made again from the
        history; `live`, an answer being written and already stored, takes its own place."""
        views = list(self.query("#chat AnswerView").results(AnswerView))
        messages = self.history.messages(self.conversation)
        same = 0
        while same < min(len(views), len(messages)) and views[same].msg_id == messages[same].id:
            views[same].show_branch(messages[same].branch_index, messages[same].branch_count)
            same += 1
        for view in views[same:]:
            view.remove()
        self._mount(messages, start=same, live=live)

    def _mount(self, messages: list[Stored], *, start: int = 0, live: AnswerView | None = None) -> None:
        """Show `messages[start:]` after the answers on screen, and follow the conversation they end: its
        questions for Up, the turns its last answer left out."""
        chat = self.query_one("#chat", VerticalScroll)
        for msg in messages[start:]:
            view = live if live is not None and live.msg_id == msg.id else self._stored(msg)
            view.show_branch(msg.branch_index, msg.branch_count)
            chat.mount(view)
        self.query_one(PromptArea).set_questions([msg.question for msg in messages])
        self.dropped = 0
        for msg in messages:
            self.dropped = msg.settings.get("turns_dropped", self.dropped)

    def _stored(self, msg: Stored) -> AnswerView:
        """A stored answer as the chat shows it; its prompts are made again when it is inspected."""
        gamma, gate = msg.settings.get("gamma", self.options.gamma), msg.settings.get("gate", "top1")
        view = AnswerView(msg.question, mode=msg.mode, gamma=gamma, gate=gate, brackets=self.brackets, msg_id=msg.id,
                          dropped=msg.settings.get("turns_dropped", 0))  # fmt: skip
        view.settings = msg.settings
        view.saved_stats = msg.stats  # its branching factors, for the inspector
        view.add(list(msg.tokens))
        view.done, view.cancelled, view.stop_reason = True, msg.cancelled, msg.stop_reason
        stats = msg.stats or {}
        view.set_summary(len(msg.tokens), view.nudged, stats.get("tokens_per_second", 0.0))
        return view

    def action_branch(self, step: int) -> None:
        """Show the previous (-1) or next (1) branch of an answer, round its siblings; the turns after it
        are those that followed that branch."""
        if len(self.screen_stack) > 1:
            return  # the chat is under another screen
        if self.current is not None:
            self.notify("Wait for the answer being written (or stop it with Esc), then switch.", severity="warning")
            return
        view = self._branched()
        if view is None:
            self.notify("No answer here has other branches: take one from a token (click it), or regenerate.",
                        severity="warning")  # fmt: skip
            return
        siblings = self.history.branches(view.msg_id)
        self.history.show(siblings[(siblings.index(view.msg_id) + step) % len(siblings)])
        self.show_path()

    def _branched(self) -> AnswerView | None:
        """The answer under the mouse pointer where it has branches, else the last on screen that has."""
        views = [v for v in self.query("#chat AnswerView").results(AnswerView) if v.branch[1] > 1]
        under = self._under_pointer()
        if under is not None and under[0] in views:
            return under[0]
        return views[-1] if views else None

    def action_compare(self) -> None:
        """The prompt in the input, asked after the conversation as the chat would ask it now; else the
        last question, from the prompts and options its answer was written with (so the nudged column
        is that answer, where it was written greedily in nudged mode)."""
        if self.current is not None or not self.ready:
            self.notify("Wait for the models (or cancel the answer) first.", severity="warning")
            return
        question = self.query_one(PromptArea).text.strip()
        views = list(self.query("#chat AnswerView").results(AnswerView))
        if question:
            request, written = Request(question, self.turns(), replace(self.options), self.dropped), False
        elif views:
            last = views[-1]
            request, written = Request(last.question, self.turns(last), self.options_of(last), last.dropped), True
        else:
            self.notify("Type a prompt to compare.", severity="warning")
            return
        screen = CompareScreen(request.question, request.options.gamma, request.options.gate, self.brackets)
        self.push_screen(screen)
        self._cancel = threading.Event()
        jobs = [(screen.views[m], m) for m in COLUMNS]
        self._writing[self._compare(jobs, request, written, self._cancel)] = [v for v, _ in jobs]

    # -- copying ------------------------------------------------------------------------------

    def action_copy_answer(self) -> None:
        """Copy (OSC 52) the answer under the mouse pointer, or the fenced code block under it if it is
        inside one; with no answer under the pointer, the last answer on the screen."""
        under = self._under_pointer()
        answers = list(self.screen.query(AnswerView).results(AnswerView))
        view, index = under or (answers[-1] if answers else None, None)
        if view is None or not view.text:
            self.notify("No answer to copy yet.", severity="warning")
            return
        code = None if index is None else code_block_at(view.text, len("".join(t.text for t in view.tokens[:index])))
        self.copy_to_clipboard(view.text if code is None else code)
        if code is None:
            self.notify(f"Copied the answer to \u201c{view.question[:40]}\u201d ({len(view.text)} characters).")
        else:
            self.notify(f"Copied the code block ({len(code.splitlines())} lines).")

    def _under_pointer(self) -> tuple[AnswerView, int | None] | None:
        """The answer under the mouse pointer, and the index of its token there (None off its text)."""
        try:
            widget, region = self.screen.get_widget_at(*self.mouse_position)
        except NoWidget:
            return None
        view = next((w for w in (widget, *widget.ancestors) if isinstance(w, AnswerView)), None)
        if view is None:
            return None
        if not isinstance(widget, TokenView):
            return view, None
        x, y = self.mouse_position - region.offset - widget.gutter.top_left
        return view, widget.index_at(x, y)

    # -- inspecting ---------------------------------------------------------------------------

    def on_token_view_inspect(self, m: TokenView.Inspect) -> None:
        view = next((a for a in m.view.ancestors if isinstance(a, AnswerView)), None)
        if view is None or not (0 <= m.index < len(view.tokens)):
            return
        if not view.done:
            self.push_screen(
                InspectorScreen(
                    view.tokens[m.index],
                    m.index,
                    view.gamma,
                    None,
                    "Alternatives are shown once the answer is finished.",
                    gate=view.gate,
                )
            )
            return
        reopened = None
        if view.prompts is None:  # a reopened answer: its prompts from the turns before it
            reopened = Request(view.question, self.turns(view), self.options_of(view), view.dropped)
        self._inspect(view, view.prompts, reopened, list(view.tokens), m.index, view.mode)

    @work(thread=True, group="engine", exit_on_error=False)
    def _inspect(self, view: AnswerView, prompts: Prompts | None, reopened: Request | None, tokens: list[TokenEvent],
                 index: int, mode: str) -> None:  # fmt: skip
        """`view` only travels back in the message: what the engine needs was read on the UI thread. A
        reopened answer's prompts (None) are made here from `reopened`, and travel back to be kept."""
        try:
            if prompts is None:
                with self.session.lock:
                    prompts = self.session.prompts(reopened.question, reopened.history, reopened.options,
                                                   reopened.dropped)  # fmt: skip
            alts = self.session.alternatives(prompts, tokens, index, mode)
            self.post_message(Inspected(view, index, prompts, alts, None))
        except NudgeError as e:
            self.post_message(Inspected(view, index, prompts, None, str(e)))

    def on_inspected(self, m: Inspected) -> None:
        view = m.view
        if m.prompts is not None:
            view.prompts = m.prompts
        branching = branching_line(view.stats or view.saved_stats)
        can_branch = view.msg_id is not None and view.mode in CHAT_MODES  # a stored answer of the chat

        def chosen(fork: Fork | None) -> None:
            if fork is not None:
                self.branch(view, fork)

        screen = InspectorScreen(view.tokens[m.index], m.index, view.gamma, m.alternatives, m.error or "", branching,
                                 can_branch=can_branch, gate=view.gate)  # fmt: skip
        self.push_screen(screen, chosen)

    # -- the loom -----------------------------------------------------------------------------

    def branch(self, parent: AnswerView, fork: Fork) -> None:
        """Take a stored answer another way at its token `fork.at` (docs/method.md#the-loom): a new answer
        in its place that keeps the tokens before that one, then goes on as the fork says, with the
        answer's own mode and settings. The old answer stays, one branch away."""
        if self.current is not None or not self.ready:
            self.notify("Wait for the answer being written (or stop it with Esc), then branch.", severity="warning")
            return
        if not parent.is_attached or parent.msg_id is None:
            return  # the conversation on screen changed meanwhile
        options = replace(self.options_of(parent), mode=parent.mode)
        view = AnswerView(parent.question, mode=parent.mode, gamma=options.gamma, gate=options.gate,
                          brackets=self.brackets, dropped=parent.dropped)  # fmt: skip
        view.settings, view.branch_of = dict(parent.settings), parent.msg_id
        view.prompts, view.prompt_tokens = parent.prompts, parent.prompt_tokens
        self.current = view
        self._cancel = threading.Event()
        self.update_status()
        reopened = None
        if parent.prompts is None:  # a reopened answer: its prompts from the turns before it
            reopened = Request(parent.question, self.turns(parent), options, parent.dropped)
        worker = self._branch(view, parent.msg_id, parent.prompts, reopened, list(parent.tokens), fork, options,
                              self._cancel)  # fmt: skip
        self._writing[worker] = [view]

    @work(thread=True, group="engine", exit_on_error=False)
    def _branch(self, view: AnswerView, parent_id: int, prompts: Prompts | None, reopened: Request | None,
                tokens: list[TokenEvent], fork: Fork, options: Options, cancel: threading.Event) -> None:  # fmt: skip
        """The branch's events from the engine (ChatSession.branch), under the lock; `Branched` says
        whether the engine took it before any of its tokens are posted."""

        def taken(error: str | None) -> None:
            self.post_message(Branched(view, parent_id, fork.at, tokens[: fork.at], prompts, error))

        if prompts is None:
            try:
                with self.session.lock:
                    prompts = self.session.prompts(reopened.question, reopened.history, reopened.options,
                                                   reopened.dropped)  # fmt: skip
            except NudgeError as e:
                taken(str(e))
                return
        self._write([(view, partial(self.session.branch, prompts, options, options.mode, tokens, fork))], cancel,
                    kept=fork.at, taken=taken)  # fmt: skip

    def on_branched(self, m: Branched) -> None:
        view = m.view
        if view.done:  # stopped before the engine took it: nothing is shown or stored
            return
        if m.error is not None:  # e.g. a position a base-only answer cannot hand to the nudger
            self.show_error(m.error)
            self.current = None
            self._next()
            self.update_status()
            return
        self.show_error(None)
        if view.prompts is None:
            view.prompts = m.prompts
        view.msg_id = self.history.start_branch(m.parent_id, m.at, mode=view.mode, settings=view.settings)
        view.add(m.kept)  # the history copied them too; the stream's copies were not posted
        self.show_path(live=view)

    # -- command palette ----------------------------------------------------------------------

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        for _, _, action, desc, help_text in ACTIONS:
            yield SystemCommand(desc, help_text, lambda a=action: self.run_action(a))

    def on_unmount(self) -> None:
        self._cancel.set()
        self.session.close()
        self.history.close()
