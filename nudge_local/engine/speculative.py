"""Speculative nudging (docs/method.md#speculative-nudging): for a pair with one vocabulary, the
nudger drafts a few tokens greedily, the base checks the whole draft in one batch, and token mode's
rule decides position by position over those rows. The output is token mode's, token for token,
wherever llama.cpp's logits do not depend on the batch a position was evaluated in (exact on the
generated test models; with real weights its kernels round differently per batch size, which can
flip near-ties: docs/method.md#batch-shape-rounding).

One round, the way gpt-fast splits decoding: `draft` (the nudger), `check` (the base, one batch),
`apply_rule` (token mode's rule over those rows); `speculative_steps` is the short outer loop."""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from nudge_local.engine.events import DraftResult, Source, StopReason, TokenEvent
from nudge_local.engine.gates import GateName, opens
from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.local import common_prefix
from nudge_local.engine.sampling import Chooser, prob, top1
from nudge_local.engine.stream import Steps
from nudge_local.engine.views import Answer, TokenSpaceView
from nudge_local.engine.words import ends_word, has_text

CATCH_UP = 8  # a round whose models read more than this beyond the draft read a prompt: not timed


class DraftSizer:
    """Each round's draft length, chosen from what this machine measures: the nudger's seconds per
    drafted token and per catch-up read, the base's seconds for a batch of each size, and the share
    of drafted tokens that pass (decayed counts, so a run of hard text shortens drafts soon). A
    draft of k tokens passes j of them with probability ~ a^j, so the round writes
    E(k) = (1 - a^(k+1)) / (1 - a) tokens for k * draft + batch(k + 1) seconds, plus what the nudger
    first reads to catch up with the tokens the base wrote since it last ran; the k with the least
    seconds per token wins, 0 (plain token mode) included. Where checking a batch is nearly free (a
    GPU, a layer-heavy base) drafts grow; where every row costs (a 2-core CPU) they stay short, and
    where the nudger costs what the base does they vanish."""

    def __init__(
        self,
        max_draft: int = 16,
        decay: float = 0.9,
        retry: int = 4,
        explore: int = 8,
        margin: float = 0.05,
        changed: float = 0.3,
        evidence: int = 8,
    ) -> None:
        self.max_draft, self.decay, self.retry, self.explore = max_draft, decay, retry, explore
        self.margin, self.changed, self.evidence = margin, changed, evidence
        self.rounds = 0
        self.passed, self.failed = 2.0, 1.0  # decayed counts, drafted tokens that passed and drafts cut short
        self.batch_s: dict[int, float] = {}  # base seconds to evaluate a batch of n tokens, by n
        self.read_s: dict[int, float] = {}  # nudger seconds for a call reading n tokens (n = 1: a drafted token)
        self.plain = 0  # rounds in a row without a draft
        self.failed_retries = 0  # retries in a row after which the model still said 0: each doubles the wait
        self.off: float | None = None  # draft / batch(1) when drafting was measured slower
        # What rounds really cost, seconds per written token, with drafts and without: the model
        # above assumes independent acceptance and no overhead per round; this checks it.
        self.rounds_seen: dict[bool, tuple[float | None, float | None]] = {False: (None, None), True: (None, None)}
        self.drafting_seen = 0  # drafting rounds in rounds_seen[True]: one failed draft is no verdict
        self.last = 1  # the last draft length the model chose
        self.off_rounds, self.off_wait = 0, 64  # rounds since drafting was measured slower; how long that holds

    @staticmethod
    def _mean(old: float | None, new: float) -> float:
        return new if old is None else 0.8 * old + 0.2 * new

    @property
    def draft_s(self) -> float | None:
        """The nudger's seconds per drafted token (a call reading one token)."""
        return self.read_s.get(1)

    def drafted(self, calls: int, seconds: float, read: int | None = None) -> None:
        """The nudger made `calls` calls in one round, taking `seconds` and reading `read` tokens
        (default one a call): the first read what the base wrote since the nudger last ran, each
        later one a single token."""
        extra = (calls if read is None else read) - calls
        if not calls or extra < 0:
            return
        if extra == 0:
            self.read_s[1] = self._mean(self.read_s.get(1), seconds / calls)
        elif self.draft_s is not None and extra < 4 * self.max_draft:  # longer: a prompt, not a catch-up
            first = max(seconds - (calls - 1) * self.draft_s, 0.0)
            self.read_s[extra + 1] = self._mean(self.read_s.get(extra + 1), first)

    def checked(self, tokens: int, seconds: float) -> None:
        """The base evaluated `tokens` tokens in one call taking `seconds`."""
        if 0 < tokens <= self.max_draft + 1:
            self.batch_s[tokens] = self._mean(self.batch_s.get(tokens), seconds)

    def finished(self, drafting: bool, tokens: int, seconds: float) -> None:
        """A round wrote `tokens` tokens in `seconds` of the engine's own time."""
        # Seconds and tokens are averaged apart: an average of per-round ratios would weigh the
        # one-token rounds of a failed draft far above their share of the time.
        spent, written = self.rounds_seen[drafting]
        self.rounds_seen[drafting] = (self._mean(spent, seconds), self._mean(written, float(tokens)))
        self.drafting_seen += drafting

    def per_token(self, drafting: bool) -> float | None:
        spent, written = self.rounds_seen[drafting]
        return spent / written if spent is not None and written else None

    def judged(self, passed: int, drafted: int) -> None:
        if drafted:
            self.passed = self.decay * self.passed + passed
            self.failed = self.decay * self.failed + (passed < drafted)

    @property
    def acceptance(self) -> float:
        return self.passed / (self.passed + self.failed)

    @staticmethod
    def _curve(costs: dict[int, float], n: int) -> float:
        """Measured seconds for n tokens in one call; unmeasured sizes interpolated between the
        nearest measured ones, or extrapolated on the line through 1 and the nearest (a batch
        costs at least what a smaller one did)."""
        if n in costs:
            return costs[n]
        below, above = 0, 0  # the nearest measured sizes under and over n (0: none); a loop, as
        for m in costs:  # this runs 17 times a round, and generators cost 10x more here
            if below < m < n:
                below = m
            elif n < m and (not above or m < above):
                above = m
        if below and above:  # between two measured sizes: on the line
            lo, hi = costs[below], costs[above]
            return lo + (hi - lo) * (n - below) / (above - below)
        one = costs[1]
        m = below or above
        per_token = (costs[m] - one) / (m - 1) if m > 1 else 0.15 * one
        return one + max(per_token, 0.0) * (n - 1)

    def batch(self, n: int) -> float:
        """The base's seconds for a batch of n tokens."""
        return self._curve(self.batch_s, n)

    def catch_up(self, lag: int) -> float:
        """The nudger's seconds to read `lag` tokens before it drafts, beyond the one a draft always
        reads; until it has read such a batch, its batches are taken to grow as the base's do."""
        if lag <= 1 or self.draft_s is None:
            return 0.0
        if len(self.read_s) > 1:
            return max(self._curve(self.read_s, lag) - self.draft_s, 0.0)
        return self.draft_s * (self.batch(lag) / self.batch(1) - 1)

    def best(self, a: float, catch: float = 0.0) -> int:
        """The draft length with the least modelled seconds per written token at acceptance `a`,
        where this round also pays `catch` seconds; 0 unless it beats a plain round by the margin
        (the model leaves out each round's own overhead, and a marginal draft that fails costs
        more than it saves)."""
        a = min(a, 0.999)
        floor = min(self.batch_s.values())  # no batch costs less
        best, best_cost = 0, self.batch(1) * (1 - self.margin)
        for k in range(1, self.max_draft + 1):
            if (k * self.draft_s + floor + catch) * (1 - a) >= best_cost:
                break  # a bound on this k's cost and every longer one's (this runs every round)
            cost = (k * self.draft_s + self.batch(k + 1) + catch) * (1 - a) / (1 - a ** (k + 1))
            if cost < best_cost:
                best, best_cost = k, cost
        return best

    def size(self, lag: int = 1) -> int:
        """This round's draft length; `lag` is how many tokens the nudger must read before its
        first drafted token (1 when it ran last round)."""
        if 1 not in self.batch_s:
            return 0  # a plain step first: it measures the base's single-token cost
        if self.draft_s is None:
            return 2  # a first draft measures the nudger's cost and a batch's
        self.rounds += 1
        catch = self.catch_up(lag)
        if self._slower():
            return 0
        best = self.best(self.acceptance, catch) or (self.last if self._faster() else 0)
        if best == 0:
            return self._retry(catch)
        self.plain, self.failed_retries, self.last = 0, 0, best
        if self.rounds % (4 * self.explore) == 0:  # a plain round now and then keeps its cost measured
            return 0
        if self.rounds % self.explore == 0:  # now and then one longer, so its cost is measured anew
            return min(best + 1, self.max_draft)
        return best

    def _faster(self) -> bool:
        """Whether drafting rounds (`evidence` of them at least) measured faster per written token
        than plain ones by the margin: then a dip of the modelled acceptance below the break-even
        does not stop drafting (acceptance that comes in runs, as in real text, makes the model
        too cautious), and the last draft length stays."""
        plain, drafting = self.per_token(False), self.per_token(True)
        return (
            plain is not None
            and drafting is not None
            and self.drafting_seen >= self.evidence
            and drafting < plain * (1 - self.margin)
        )

    def _slower(self) -> bool:
        """Whether drafting rounds (`evidence` of them at least) measured slower per written token
        than plain ones (the model can be wrong: acceptance that comes in runs, overhead per
        round). Drafting then stays off until the nudger's cost against the base's, which plain
        rounds keep measuring (its nudged words), falls measurably, or until the verdict is
        `off_wait` rounds old (a verdict taken while something else loaded the machine must not
        last for ever): then what drafting measured is forgotten and the model decides again, and
        an expired verdict that proves right again waits twice as long (64 rounds, then 128, ...
        up to 1024, so re-checking costs about 1% of the rounds at most)."""
        plain, drafting = self.per_token(False), self.per_token(True)
        if plain is None or drafting is None or drafting <= plain or self.drafting_seen < self.evidence:
            self.off = None
            return False
        ratio = self.draft_s / self.batch(1)
        if self.off is None:
            self.off, self.off_rounds = ratio, 0
        self.off_rounds += 1
        expired = self.off_rounds > self.off_wait
        if expired or ratio < self.off * (1 - self.changed):
            self.off_wait = min(2 * self.off_wait, 1024) if expired else 64
            self.off, self.rounds_seen[True], self.drafting_seen = None, (None, None), 0
            return False
        return True

    def _retry(self, catch: float) -> int:
        """The model says no draft at the acceptance seen; without drafts acceptance is not seen
        again, so after a plain streak (twice as long after each try that changed nothing) a
        draft of one token tries, where one that passes would save more than the nudger's
        catch-up costs (never where the nudger costs what the base does)."""
        self.plain += 1
        if self.plain < self.retry * 2 ** min(self.failed_retries, 4):
            return 0
        one = self.draft_s + self.batch(2) + catch  # a one-token draft that passes writes two tokens
        if one > 2 * self.batch(1) * (1 - self.margin):
            return 0
        self.plain = 0
        self.failed_retries += 1
        return 1


class FixedDraft(DraftSizer):
    """A draft of the same length every round (tests, and a user's explicit choice)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def size(self, lag: int = 1) -> int:  # noqa: ARG002 - the same length whatever the nudger must read
        return self.k


@dataclass
class Word:
    """The nudged word being written; it can run on across rounds."""

    gate_p: float  # the base's top-1 probability that handed the word over
    gate_entropy: float | None = None  # ... and its row's entropy, where asked (on the word's first token)
    n: int = 0  # tokens written so far
    has_text: bool = False  # ... and whether they hold a non-whitespace byte


@dataclass
class Rule:
    """Token mode's settings, and its progress over the whole answer."""

    gamma: float
    max_tokens: int
    word_cap: int
    choose: Chooser
    gate: GateName = "top1"
    emitted: int = 0
    word: Word | None = None
    proposed: int = 0  # drafted tokens
    accepted: int = 0  # ... that token mode's rule then wrote
    paused: float = 0.0  # seconds spent by the consumer between events, not the engine's cost
    last: Source | None = None  # who wrote the last token: a model's next call reads the other's text, or writes on


@dataclass
class Round:
    """One round: what each model reads, the nudger's draft and the logits rows computed for it."""

    ids_b: list[int]
    ids_n: list[int]
    draft: list[int] = field(default_factory=list)
    rows_n: list[np.ndarray] = field(default_factory=list)  # the nudger's logits after draft[:i]
    rows_b: np.ndarray | None = None  # the base's logits after draft[:i], computed once needed


def draft(nudger: ScoringModel, rnd: Round, room: int, n_shared: int) -> None:
    """The nudger drafts up to `room` tokens greedily, stopping before its end of turn."""
    for _ in range(max(0, room)):
        row = nudger.logits(rnd.ids_n + rnd.draft)[:n_shared]
        nudger.reading = False  # a catch-up read at most once a round
        rnd.rows_n.append(row)
        t = int(row.argmax())
        if nudger.is_eog(t):
            break
        rnd.draft.append(t)


def check(base: ScoringModel, rnd: Round, n_shared: int) -> tuple[int, float]:
    """The base evaluates the whole draft in one batch: a logits row after every drafted prefix.
    Returns (tokens evaluated, seconds) for the sizer."""
    before, spent = base.evaluated_tokens, base.decode_seconds
    n = len(rnd.ids_b)
    rnd.rows_b = base.evaluate(rnd.ids_b + rnd.draft, list(range(n - 1, n + len(rnd.draft))))[:, :n_shared]
    return base.evaluated_tokens - before, base.decode_seconds - spent


def _emit(rule: Rule, answer: Answer, t: int, piece: bytes, event: TokenEvent) -> Steps:
    answer.add(t, piece)
    rule.emitted += 1
    rule.last = event.source
    t1 = time.perf_counter()
    yield event, piece
    rule.paused += time.perf_counter() - t1


def apply_rule(
    base: ScoringModel, nudger: ScoringModel, rnd: Round, rule: Rule, answer: Answer, n_shared: int, on_check
) -> Generator[tuple[TokenEvent, bytes], None, StopReason | None]:
    """Token mode's rule at each position of the draft, in token mode's order and on the same
    logits. Returns a stop reason, or None when the round ends: a written token left the draft,
    or the draft ran out."""
    d, i = rnd.draft, 0
    while i <= len(d):
        if rule.word is None:
            if rule.emitted >= rule.max_tokens:
                return "length"
            if rnd.rows_b is None:
                base.reading = rule.last != "base"  # the prompt, or nudged words before the draft
                on_check(*check(base, rnd, n_shared))
            best, base_p = top1(rnd.rows_b[i])
            base_entropy = rule.choose.entropy(rnd.rows_b[i])
            if opens(rule.gate, rule.gamma, rnd.rows_b[i], base_p, base_entropy):
                rule.word = Word(base_p, base_entropy)
                continue
            t = rule.choose(rnd.rows_b[i], best)
            if base.is_eog(t):
                return "eos"
            p = base_p if t == best else prob(rnd.rows_b[i], t)
            event = TokenEvent("", "base", t, base_p, p, rule.choose.top(rnd.rows_b[i]), base_entropy, base_entropy)
            yield from _emit(rule, answer, t, base.piece(t), event)
        else:
            word = rule.word
            if word.n >= rule.word_cap or rule.emitted >= rule.max_tokens:
                rule.word = None
                continue
            if i < len(rnd.rows_n):
                row = rnd.rows_n[i]
            else:
                row = nudger.logits(rnd.ids_n + d[:i])[:n_shared]
                nudger.reading = False
            t = rule.choose(row)
            if nudger.is_eog(t):
                if word.n == 0:
                    return "eos"
                rule.word = None
                continue
            piece = nudger.piece(t)
            if ends_word(piece, word.n, word.has_text):
                rule.word = None
                continue
            word.has_text = word.has_text or has_text(piece)
            gate_entropy = word.gate_entropy if word.n == 0 else None
            word.n += 1
            h = rule.choose.entropy(row)
            event = TokenEvent("", "nudge", t, word.gate_p, prob(row, t), rule.choose.top(row), h, gate_entropy)
            yield from _emit(rule, answer, t, piece, event)
        if i == len(d) or t != d[i]:
            return None  # off the draft: the next round starts from here
        rule.accepted += 1
        i += 1
    return None


def speculative_steps(
    base: ScoringModel,
    nudger: ScoringModel,
    base_view: TokenSpaceView,
    nudger_view: TokenSpaceView,
    answer: Answer,
    *,
    gamma: float,
    max_tokens: int,
    word_cap: int,
    choose: Chooser,
    draft_len: int | None = None,
    sizer: DraftSizer | None = None,
    gate: GateName = "top1",
) -> Steps:
    """Token mode with drafts: every decision is token mode's, made in token mode's order on the
    same logits (drafts are greedy and draw nothing from the sampler), so the output is token
    mode's for any seed. `draft_len` fixes the draft length; None sizes each draft from measured
    costs (`sizer`, kept by whoever keeps the pair loaded; a fresh DraftSizer where None)."""
    sizer = FixedDraft(draft_len) if draft_len is not None else sizer or DraftSizer()
    rule = Rule(gamma, max_tokens, word_cap, choose, gate)
    n = nudger_view.n_shared
    # The first round reads the prompt (or the new turn): its calls cost what a prompt costs, not
    # what a draft does, so the sizer learns nothing from it. (A prompt of 17 tokens read in one
    # quantized batch once passed for a cheap 17-token check, and drafts of 9 followed.)
    measured = False
    while True:
        started, paused, emitted = time.perf_counter(), rule.paused, rule.emitted
        ev_b, ev_n = base.evaluated_tokens, nudger.evaluated_tokens
        calls_n, spent_n = nudger.forward_calls, nudger.decode_seconds
        rnd = Round(base_view.prompt_ids + answer.ids, nudger_view.prompt_ids + answer.ids)
        nudger.reading = rule.last != "nudge"  # its first call this round reads the base's text (or the prompt)
        k = sizer.size(len(rnd.ids_n) - common_prefix(nudger.held_tokens, rnd.ids_n))  # what it must catch up
        # Never past either context (token mode would fail there, not earlier).
        room = min(k, base.n_ctx - len(rnd.ids_b), nudger.n_ctx - len(rnd.ids_n), max_tokens - rule.emitted)
        draft(nudger, rnd, room, n)
        rule.proposed += len(rnd.draft)
        accepted = rule.accepted
        on_check = sizer.checked if measured else (lambda tokens, seconds: None)
        stop = yield from apply_rule(base, nudger, rnd, rule, answer, n, on_check)
        if stop is not None:
            return DraftResult(stop, rule.proposed, rule.accepted)
        sizer.judged(rule.accepted - accepted, len(rnd.draft))
        if measured:  # the nudger's calls this round, drafting or writing a word: a catch-up, then single tokens
            read_n = nudger.evaluated_tokens - ev_n
            sizer.drafted(nudger.forward_calls - calls_n, nudger.decode_seconds - spent_n, read_n)
        caught_up = base.evaluated_tokens - ev_b <= k + CATCH_UP and nudger.evaluated_tokens - ev_n <= k + 2 * CATCH_UP
        if measured and caught_up:
            seconds = time.perf_counter() - started - (rule.paused - paused)
            sizer.finished(k > 0, rule.emitted - emitted, seconds)
        measured = True
