"""The chat's bridge to the engine: which models, loading them, running one answer, settling gamma
auto for them (calibrate.py), and taking an answer another way at one of its tokens (a branch, the loom).

No Textual here: the app calls these from a thread worker, one at a time (a lock guards the models,
which llama.cpp does not allow two threads to use at once).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from nudge_local.calibrate import Calibration, settle_gamma
from nudge_local.choose import Choice, choose_models, load_models, local_path, read_chat_template
from nudge_local.config import Settings
from nudge_local.engine.alternatives import Alternative, alternatives
from nudge_local.engine.context import Fitted, fit_history
from nudge_local.engine.devices import backend
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Done, Role, TokenEvent
from nudge_local.engine.generate import generate
from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.loom import Branch, branch_point
from nudge_local.engine.prompts import Prompts, Turn, render_prompts
from nudge_local.engine.sampling import Sampling
from nudge_local.engine.speculative import DraftSizer


@dataclass
class Options:
    """What the user can change live in the chat."""

    mode: str = "nudged"
    gamma: float | None = 0.4  # None: auto, until the loaded pair's calibration settles it
    gate: str = "top1"  # where the nudger writes (engine/gates.py); gamma is its threshold
    gamma_auto: bool = False  # gamma is the pair's calibrated one (for this gate), not the user's number
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    max_tokens: int = 256
    system: str = ""
    context_overflow: str = "drop_oldest"

    @classmethod
    def from_settings(cls, s: Settings, calibration: Calibration | None = None) -> Options:
        """The settings' options; gamma auto is None until settled (`calibration`: settled by it)."""
        return cls(
            gamma=s.gamma,
            gate=s.gate,
            gamma_auto=s.gamma is None or calibration is not None,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=s.seed,
            max_tokens=s.max_tokens,
            system=s.system,
            context_overflow=s.context_overflow,
        )

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Fork:
    """Where the user takes an answer another way (docs/method.md#the-loom): at its token `at`, one of
    a model's alternatives there (`choice`), or the position handed to a model (`writer`)."""

    at: int
    choice: Alternative | None = None
    writer: Role | None = None


def calibrating_line(step: int, gamma: float, ratio: float, what: str = "this pair") -> str:
    """What the chat says while gamma auto is measured (`step` 0: before the first measurement)."""
    if not step:
        return f"calibrating gamma for {what}…"
    return f"calibrating gamma for {what} (step {step}: gamma {gamma:.4g} nudges {ratio:.1%})"


class Stopped(Exception):
    """A calibration the user stopped (raised from its progress callback, which calibrate calls after
    each measurement)."""


def _as_stored(events: Iterator[TokenEvent | Done], gate: str) -> Iterator[TokenEvent | Done]:
    """The events without each token's entropies: the chat shows the answer's branching factors
    (its Stats), and its tokens stay what the history stores and a reopened answer shows. Under the
    entropy gate the base's entropy is the gate's value, which the inspector shows: it stays (and is
    stored)."""
    keep = gate == "entropy"
    try:
        for e in events:
            if isinstance(e, TokenEvent):
                yield replace(e, entropy=None, base_entropy=e.base_entropy if keep else None)
            else:
                yield e
    finally:
        events.close()


@dataclass
class ChatSession:
    settings: Settings
    choice: Choice | None = None
    models: dict[str, ScoringModel] = field(default_factory=dict)
    chat_template: str | None = None
    n_ctx: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    sizer: DraftSizer = field(default_factory=DraftSizer)  # the loaded pair's draft costs, kept across answers
    calibration: Calibration | None = None  # gamma auto's, once settled for the loaded pair

    @property
    def pair_name(self) -> str:
        if self.choice and self.choice.pair:
            return self.choice.pair.alias
        names = [m.label for m in self.models.values()]
        return " + ".join(names) if names else "no models"

    @property
    def backend(self) -> str:
        return backend()

    def load(self, progress: Callable[[str, float], None] = lambda role, f: None) -> None:
        """Resolve the pair (never downloading: the command line offers that before the app starts)
        and load both models. Errors are NudgeError sentences."""
        self.choice = choose_models(self.settings, "nudged")
        self.settings = self.choice.settle(self.settings)
        paths = {"base": local_path(self.choice.base), "nudger": local_path(self.choice.nudger)}
        self.chat_template = read_chat_template(self.settings)
        with self.lock:
            self.models = load_models(paths, self.settings, progress)
            self.n_ctx = min((m.n_ctx for m in self.models.values() if m.n_ctx), default=0)

    def settle_gamma(self, calibrating: Callable[[int, float, float], None] = lambda step, gamma, ratio: None) -> None:
        """Gamma auto made the loaded pair's calibrated gamma (measured once, then from the cache);
        `calibrating(step, gamma, ratio)` is told before (step 0) and after each measurement. A number
        already: nothing to do."""
        if self.settings.gamma is None:
            calibrating(0, 0.0, 0.0)
            with self.lock:
                self.settings, self.calibration = settle_gamma(self.settings, self.models, self.chat_template,
                                                               calibrating)  # fmt: skip

    def calibrate(self, gate: str, progress: Callable[[int, float, float], None]) -> Calibration:
        """Gamma auto for `gate` on the loaded pair (the settings screen's "auto"), with the settings'
        target and prompts; `progress` as calibrate's (it may raise Stopped to stop it)."""
        wanted = self.settings.updated({"gate": gate, "gamma": "auto"}, "the chat's settings", "chat settings")
        with self.lock:
            _, found = settle_gamma(wanted, self.models, self.chat_template, progress)
        if found is None:
            raise NudgeError("Gamma auto is measured on the loaded pair: wait for the models, or type a number.")
        self.calibration = found
        return found

    def fit(self, question: str, history: list[Turn], options: Options, dropped: int = 0) -> Fitted:
        """Both prompts of `question`, the oldest turns left out (at least `dropped` of them) where
        the conversation outgrows a context and the policy is drop_oldest."""
        return fit_history(
            self.models["base"],
            self.models["nudger"],
            question,
            history,
            system=options.system,
            base_format=self.settings.base_format,
            chat_template=self.chat_template,
            max_tokens=options.max_tokens,
            policy=options.context_overflow,
            dropped=dropped,
        )

    def prompts(self, question: str, history: list[Turn], options: Options, dropped: int = 0) -> Prompts:
        base, nudger = self.models["base"], self.models["nudger"]
        return render_prompts(
            base,
            nudger,
            question,
            history=history[dropped:],
            system=options.system,
            base_format=self.settings.base_format,
            chat_template=self.chat_template,
        )

    def answer(self, prompts: Prompts, options: Options, mode: str | None = None, *,
               branch: Branch | None = None) -> Iterator[TokenEvent | Done]:  # fmt: skip
        """One answer's events; hold `lock` while iterating. Closing the iterator stops generation."""
        mode = mode or options.mode
        events = generate(
            prompts,
            mode=mode,
            base=self.models["base"],
            nudger=self.models["nudger"],
            gamma=options.gamma,
            gate=options.gate,
            max_tokens=options.max_tokens,
            word_cap=self.settings.word_cap,
            sampling=Sampling(options.temperature, options.top_p, options.seed),
            stop_strings=self.settings.stop_strings,
            entropy=True,  # Done's Stats carry the answer's branching factors, for the inspector
            sizer=self.sizer,
            branch=branch,
        )
        return _as_stored(events, options.gate)

    def branch(self, prompts: Prompts, options: Options, mode: str, tokens: list[TokenEvent],
               fork: Fork) -> Iterator[TokenEvent | Done]:  # fmt: skip
        """A branch of the answer `tokens` (written from `prompts` in `mode`): its events, the kept
        tokens again first, then the fork's position, then `mode` with `options`; hold `lock` while
        iterating. A position the mode cannot hand over is the engine's NudgeError sentence."""
        kept, pieces = branch_point(tokens, fork.at, self.models["base"], self.models["nudger"])
        choice = fork.choice
        branch = Branch(kept, pieces, token=choice.token if choice else None, piece=choice.piece if choice else b"",
                        writer=fork.writer)  # fmt: skip
        return self.answer(prompts, options, mode, branch=branch)

    def forget_measurements(self) -> None:
        """The pair's next answer measures its draft costs afresh, as on a freshly loaded pair."""
        self.sizer = DraftSizer()

    def alternatives(self, prompts: Prompts, tokens: list[TokenEvent], index: int, mode: str) -> dict:
        base = self.models["base"] if mode in ("nudged", "base") else None
        nudger = self.models["nudger"] if mode in ("nudged", "nudger") else None
        with self.lock:
            return alternatives(prompts, tokens, index, base=base, nudger=nudger)

    def close(self) -> None:
        with self.lock:
            for m in self.models.values():
                m.close()
            self.models.clear()
