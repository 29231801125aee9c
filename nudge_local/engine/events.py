"""The engine's protocol: what a decoding mode yields and returns, and what the stream gives consumers.

A mode is a generator of `(TokenEvent, bytes)` pairs (the event without text, and the token's raw
bytes) that returns one `Result`. The stream (stream.py) turns that into TokenEvents with text and
one final `Done`. See docs/architecture.md."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

# Named once, imported wherever they are used. A token's *source* is who wrote it; a model's *role*
# is which of the two models it is (the nudger writes the tokens whose source is "nudge").
Source = Literal["base", "nudge", "user"]  # "user": a token the user chose at a branch (loom.py)
Role = Literal["base", "nudger"]
Mode = Literal["nudged", "base", "nudger", "paper"]
MODES: tuple[Mode, ...] = get_args(Mode)
CHAT_MODES: tuple[Mode, ...] = ("nudged", "base", "nudger")  # the chat's live modes; paper is for reproduction
ROLE_OF: dict[Source, Role] = {"base": "base", "nudge": "nudger"}
StopReason = Literal["eos", "length", "stop_string", "nudging_model_stop", "repeated_nudging_words", "round"]


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One emitted token.

    text: the characters this token completes (UTF-8 safe: a character split across tokens
      appears whole on the token that completes it, "" on the ones before).
    source: "base", "nudge", or "user" (a token the user chose at a branch of the answer, loom.py).
    token: the token id in the writing model's vocabulary.
    base_p: the base's top-1 probability at the decision that let this token be written (for every
      token of a nudged word, the gate value that handed the word to the nudger); None when the
      base was not asked (nudger-only generation).
    p: the writing model's (untempered) probability of this token.
    top: the writing model's most likely tokens at this position, (id, untempered probability),
      most likely first; only where the generation asked for them (generate's top_n), else empty.
    entropy: the natural-log entropy of the writing model's (untempered) next-token distribution
      here, from the row the token was chosen from; only where the generation asked (generate's
      entropy), else None.
    base_entropy: the same for the base's row, where the base was asked at this position (every
      base token, and the first token of each nudged word: the gate that handed it over); None
      elsewhere, in nudger-only and paper mode, and when not asked.
    """

    text: str
    source: Source
    token: int
    base_p: float | None
    p: float
    top: tuple[tuple[int, float], ...] = ()
    entropy: float | None = None
    base_entropy: float | None = None

    def as_dict(self) -> dict:
        """The one serialized form of a token (`run --json`, the chat's export)."""
        d = {"text": self.text, "source": self.source, "token": self.token, "base_p": self.base_p, "p": self.p}
        if self.top:
            d["top"] = [list(t) for t in self.top]
        if self.entropy is not None:
            d["entropy"] = self.entropy
        if self.base_entropy is not None:
            d["base_entropy"] = self.base_entropy
        return d


@dataclass(frozen=True, slots=True)
class Result:
    """What a mode returns when it stops: why, plus the figures of its own that subclasses add."""

    stop_reason: StopReason

    def figures(self) -> dict:
        """Mode-specific figures for `run --json` (beyond the Stats every mode has)."""
        return {}


@dataclass(frozen=True, slots=True)
class DraftResult(Result):
    """Speculative nudging: drafted tokens, and how many of them token mode's rule then wrote."""

    draft_proposed: int = 0
    draft_accepted: int = 0


@dataclass(frozen=True, slots=True)
class PaperResult(Result):
    """Paper mode: rounds run, and the nudging words committed, in order."""

    rounds: int = 0
    nudging_words: tuple[str, ...] = ()

    def figures(self) -> dict:
        return {"rounds": self.rounds, "nudging_words": list(self.nudging_words)}


@dataclass(slots=True)
class Stats:
    tokens: int = 0
    nudge_tokens: int = 0
    kept: int = 0  # a branch's first tokens, kept as written (in `tokens`, but not written now)
    prompt_tokens: dict[Role, int] = field(default_factory=dict)  # by model role
    evaluated_tokens: dict[Role, int] = field(default_factory=dict)
    forward_calls: dict[Role, int] = field(default_factory=dict)  # a served model: its requests
    served_prompt_read: dict[Role, int] = field(default_factory=dict)  # prompt tokens a server reported reading
    turns_dropped: int = 0  # a conversation's oldest turns its prompts left out (set by the caller)
    seconds: float = 0.0
    draft_proposed: int = 0  # speculative nudging: tokens the nudger drafted
    draft_accepted: int = 0  # ... and that token mode's rule then wrote
    # Entropy along the answer, where generate was asked for it (TokenEvent.entropy, .base_entropy)
    entropy_sum: float = 0.0
    entropy_tokens: int = 0
    base_entropy_sum: float = 0.0
    base_entropy_tokens: int = 0  # the positions where the base was asked

    @property
    def nudge_ratio(self) -> float:
        return self.nudge_tokens / self.tokens if self.tokens else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Tokens written per second (a branch's kept tokens were not written now)."""
        return (self.tokens - self.kept) / self.seconds if self.seconds > 0 else 0.0

    @property
    def branching_factor(self) -> float | None:
        """exp of the mean entropy of the writing model's distribution along the answer: the
        effective number of next tokens it chose among (None where no position was measured)."""
        return math.exp(self.entropy_sum / self.entropy_tokens) if self.entropy_tokens else None

    @property
    def base_branching_factor(self) -> float | None:
        """The same for the base's distribution, over the positions where the base was asked."""
        return math.exp(self.base_entropy_sum / self.base_entropy_tokens) if self.base_entropy_tokens else None

    def add_entropy(self, event: TokenEvent) -> None:
        if event.entropy is not None:
            self.entropy_sum += event.entropy
            self.entropy_tokens += 1
        if event.base_entropy is not None:
            self.base_entropy_sum += event.base_entropy
            self.base_entropy_tokens += 1

    def as_dict(self) -> dict:
        d = asdict(self)
        d["nudge_ratio"] = round(self.nudge_ratio, 4)
        d["tokens_per_second"] = round(self.tokens_per_second, 2)
        d["seconds"] = round(self.seconds, 4)
        d["entropy_sum"], d["base_entropy_sum"] = round(self.entropy_sum, 6), round(self.base_entropy_sum, 6)
        for key, value in (
            ("branching_factor", self.branching_factor),
            ("base_branching_factor", self.base_branching_factor),
        ):
            d[key] = None if value is None else round(value, 4)
        for role in get_args(Role):
            d[f"{role}_evaluated_tokens"] = self.evaluated_tokens.get(role, 0)
            d[f"{role}_forward_calls"] = self.forward_calls.get(role, 0)
        return d

    def line(self) -> str:
        """The one-line summary the CLI prints on stderr."""
        return (
            f"{self.tokens} tokens, {self.nudge_tokens} nudged ({self.nudge_ratio:.1%}), "
            f"{self.tokens_per_second:.1f} tok/s in {self.seconds:.2f} s; evaluated "
            f"base {self.evaluated_tokens.get('base', 0)} / nudger {self.evaluated_tokens.get('nudger', 0)} "
            f"tokens in {self.forward_calls.get('base', 0)} / {self.forward_calls.get('nudger', 0)} calls"
            + "".join(f"; {r}'s server read {n} prompt tokens" for r, n in self.served_prompt_read.items())
            + "".join(
                f"; {name} branching factor {value:.2f}"
                for name, value in (("writing", self.branching_factor), ("base", self.base_branching_factor))
                if value is not None
            )
        )


@dataclass(frozen=True, slots=True)
class Done:
    """The last event: the full text (always the TokenEvents' texts joined), the run's statistics,
    and the mode's result."""

    text: str
    stats: Stats
    result: Result

    @property
    def stop_reason(self) -> StopReason:
        return self.result.stop_reason
