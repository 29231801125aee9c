"""The chat's bridge to the engine: which models, loading them, running one answer, and taking an
answer another way at one of its tokens (a branch, the loom).

No Textual here: the app calls these from a thread worker, one at a time (a lock guards the models,
which llama.cpp does not allow two threads to use at once).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from nudge_local.choose import Choice, choose_models, load_models, local_path, read_chat_template
from nudge_local.config import Settings
from nudge_local.engine.alternatives import Alternative, alternatives
from nudge_local.engine.context import Fitted, fit_history
from nudge_local.engine.devices import backend
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
    gamma: float = 0.4
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    max_tokens: int = 256
    system: str = ""
    context_overflow: str = "drop_oldest"

    @classmethod
    def from_settings(cls, s: Settings) -> Options:
        return cls(
            gamma=s.gamma,
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


def _as_stored(events: Iterator[TokenEvent | Done]) -> Iterator[TokenEvent | Done]:
    """The events without each token's entropies: the chat shows the answer's branching factors
    (its Stats), and its tokens stay what the history stores and a reopened answer shows."""
    try:
        for e in events:
            yield replace(e, entropy=None, base_entropy=None) if isinstance(e, TokenEvent) else e
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
            max_tokens=options.max_tokens,
            word_cap=self.settings.word_cap,
            sampling=Sampling(options.temperature, options.top_p, options.seed),
            stop_strings=self.settings.stop_strings,
            entropy=True,  # Done's Stats carry the answer's branching factors, for the inspector
            sizer=self.sizer,
            branch=branch,
        )
        return _as_stored(events)

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
