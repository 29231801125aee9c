"""Speculative nudging (BRIEF 1.3): for a pair with one vocabulary, the nudger drafts a few tokens
greedily, the base checks the whole draft in one batch, and token mode's rule decides position by
position over those rows. The output is token mode's, token for token, wherever llama.cpp's logits
do not depend on the batch a position was evaluated in (exact on the generated test models; with
real weights its kernels round differently per batch size, which can flip near-ties)."""

from __future__ import annotations

import time
import weakref

from nudge_local.events import TokenEvent
from nudge_local.model import Model
from nudge_local.sampling import Chooser, prob, top1
from nudge_local.token_mode import Steps, ends_word, has_text_in
from nudge_local.views import Answer

CATCH_UP = 8  # a round whose models read more than this beyond the draft read a prompt: not timed


class DraftSizer:
    """Each round's draft length, chosen from what this machine measures: the nudger's seconds per
    drafted token, the base's seconds for a batch of each size, and the share of drafted tokens
    that pass (decayed counts, so a run of hard text shortens drafts soon). A draft of k tokens
    passes j of them with probability ~ a^j, so the round writes E(k) = (1 - a^(k+1)) / (1 - a)
    tokens for k * draft + batch(k + 1) seconds; the k with the least seconds per token wins, 0
    (plain token mode) included. Where checking a batch is nearly free (a GPU, a layer-heavy base)
    drafts grow; where every row costs (a 2-core CPU) they stay short."""

    def __init__(
        self, max_draft: int = 16, decay: float = 0.9, retry: int = 4, explore: int = 8, margin: float = 0.05
    ) -> None:
        self.max_draft, self.decay, self.retry, self.explore, self.margin = max_draft, decay, retry, explore, margin
        self.rounds = 0
        self.passed, self.failed = 2.0, 1.0  # decayed counts, drafted tokens that passed and drafts cut short
        self.draft_s: float | None = None  # nudger seconds per drafted token
        self.batch_s: dict[int, float] = {}  # base seconds to evaluate a batch of n tokens, by n
        self.plain = 0  # rounds in a row without a draft
        # What rounds really cost, seconds per written token, with drafts and without: the model
        # above assumes independent acceptance and no overhead per round; this checks it.
        self.rounds_seen: dict[bool, tuple[float | None, float | None]] = {False: (None, None), True: (None, None)}

    @staticmethod
    def _mean(old: float | None, new: float) -> float:
        return new if old is None else 0.8 * old + 0.2 * new

    def drafted(self, tokens: int, seconds: float) -> None:
        if tokens:
            self.draft_s = self._mean(self.draft_s, seconds / tokens)

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

    def batch(self, n: int) -> float:
        """Measured seconds for a batch of n tokens; unmeasured sizes extrapolated from the nearest
        measured ones (a batch costs at least what a smaller one did)."""
        if n in self.batch_s:
            return self.batch_s[n]
        below = max((m for m in self.batch_s if m < n), default=None)
        above = min((m for m in self.batch_s if m > n), default=None)
        if below is not None and above is not None:  # between two measured sizes: on the line
            lo, hi = self.batch_s[below], self.batch_s[above]
            return lo + (hi - lo) * (n - below) / (above - below)
        one = self.batch_s[1]
        m = below if below is not None else above
        per_token = (self.batch_s[m] - one) / (m - 1) if m is not None and m > 1 else 0.15 * one
        return one + max(per_token, 0.0) * (n - 1)

    def size(self) -> int:
        if 1 not in self.batch_s:
            return 0  # a plain step first: it measures the base's single-token cost
        if self.draft_s is None:
            return 2  # a first draft measures the nudger's cost and a batch's
        a = min(self.acceptance, 0.999)
        # A draft must promise a clear gain: the model leaves out each round's own overhead, and
        # a marginal draft that fails costs more than it saves.
        best, best_cost = 0, self.batch(1) * (1 - self.margin)
        for k in range(1, self.max_draft + 1):
            cost = (k * self.draft_s + self.batch(k + 1)) * (1 - a) / (1 - a ** (k + 1))
            if cost < best_cost:
                best, best_cost = k, cost
        self.rounds += 1
        plain, drafting = self.per_token(False), self.per_token(True)
        slower = plain is not None and drafting is not None and drafting > plain
        modelled = best
        if slower:  # drafting was measured slower than plain rounds: plain, with a try now and then
            best = 0
        self.plain = self.plain + 1 if best == 0 else 0
        if self.plain >= self.retry * (4 if slower else 1):  # without drafts nothing new is seen: try one
            self.plain = 0
            return max(modelled, 1)  # the draft the model favours, so the try measures what would be used
        if best and self.rounds % self.explore == 0:  # now and then one longer, so its cost is measured anew
            return min(best + 1, self.max_draft)
        return best


class FixedDraft(DraftSizer):
    """A draft of the same length every round (tests, and a user's explicit choice)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def size(self) -> int:
        return self.k


_sizers: weakref.WeakKeyDictionary[Model, dict[int, DraftSizer]] = weakref.WeakKeyDictionary()


def sizer_for(base: Model, nudger: Model) -> DraftSizer:
    """One sizer per loaded pair, kept across answers: costs and acceptance carry over."""
    return _sizers.setdefault(base, {}).setdefault(id(nudger), DraftSizer())


def forget_measurements(base: Model) -> None:
    """The pair's next answer measures its costs afresh, as on a freshly loaded pair."""
    _sizers.pop(base, None)


def speculative_steps(
    base: Model,
    nudger: Model,
    base_view,
    nudger_view,
    answer: Answer,
    *,
    gamma: float,
    max_tokens: int,
    word_cap: int,
    choose: Chooser,
    draft: int | None = None,
) -> Steps:
    """Token mode with drafts: every decision is token mode's, made in token mode's order on the
    same logits (drafts are greedy and draw nothing from the sampler), so the output is token
    mode's for any seed. `draft` fixes the draft length; None sizes each draft from measured costs
    (DraftSizer). Returns (stop reason, draft counters)."""
    sizer = sizer_for(base, nudger) if draft is None else FixedDraft(draft)
    emitted = 0
    in_word, n_in_word, has_text, word_p = False, 0, False, 0.0
    proposed = accepted = 0
    n = nudger_view.n_shared
    counters = lambda: {"draft_proposed": proposed, "draft_accepted": accepted}  # noqa: E731
    # The first round reads the prompt (or the new turn): its calls cost what a prompt costs, not
    # what a draft does, so the sizer learns nothing from it. (A prompt of 17 tokens read in one
    # quantized batch once passed for a cheap 17-token check, and drafts of 9 followed.)
    measured = False

    while True:
        round_start, paused, emitted_before = time.perf_counter(), 0.0, emitted
        ev_b, ev_n = base.evaluated_tokens, nudger.evaluated_tokens
        ids_b = base_view.prompt_ids + answer.ids
        ids_n = nudger_view.prompt_ids + answer.ids
        # Draft greedily, never past either context (token mode would fail there, not earlier).
        k = sizer.size()
        room = min(k, base.n_ctx - len(ids_b), nudger.n_ctx - len(ids_n), max_tokens - emitted)
        d: list[int] = []
        rows_n = []
        spent_n = nudger.decode_seconds
        for _ in range(max(0, room)):
            ln = nudger.logits(ids_n + d)[:n]
            rows_n.append(ln)
            t = int(ln.argmax())
            if nudger.is_eog(t):
                break
            d.append(t)
        if measured and nudger.evaluated_tokens - ev_n <= len(rows_n) + CATCH_UP:
            sizer.drafted(len(rows_n), nudger.decode_seconds - spent_n)
        proposed += len(d)
        rows_b = None  # the base checks the draft in one batch, once its rule is needed this round

        i = 0
        while i <= len(d):
            if not in_word:
                if emitted >= max_tokens:
                    return "length", counters()
                if rows_b is None:
                    before, spent_b = base.evaluated_tokens, base.decode_seconds
                    rows_b = base.evaluate(ids_b + d, list(range(len(ids_b) - 1, len(ids_b) + len(d))))[:, :n]
                    if measured:
                        sizer.checked(base.evaluated_tokens - before, base.decode_seconds - spent_b)
                best, base_p = top1(rows_b[i])
                if base_p >= gamma:
                    t = choose(rows_b[i], best)
                    if base.is_eog(t):
                        return "eos", counters()
                    piece = base.piece(t)
                    answer.add(t, piece)
                    emitted += 1
                    t1 = time.perf_counter()
                    yield TokenEvent("", "base", t, base_p, base_p if t == best else prob(rows_b[i], t)), piece
                    paused += time.perf_counter() - t1  # the consumer's time is not the round's cost
                    if i < len(d) and t == d[i]:
                        accepted += 1
                        i += 1
                        continue
                    break  # off the draft: the next round starts from here
                in_word, n_in_word, has_text, word_p = True, 0, False, base_p
            if n_in_word >= word_cap or emitted >= max_tokens:
                in_word = False
                continue
            ln = rows_n[i] if i < len(rows_n) else nudger.logits(ids_n + d[:i])[:n]
            t = choose(ln)
            if nudger.is_eog(t):
                if n_in_word == 0:
                    return "eos", counters()
                in_word = False
                continue
            piece = nudger.piece(t)
            if ends_word(piece, n_in_word, has_text):
                in_word = False
                continue
            has_text = has_text or has_text_in(piece)
            answer.add(t, piece)
            emitted += 1
            n_in_word += 1
            t1 = time.perf_counter()
            yield TokenEvent("", "nudge", t, word_p, prob(ln, t)), piece
            paused += time.perf_counter() - t1
            if i < len(d) and t == d[i]:
                accepted += 1
                i += 1
                continue
            break
        sizer.judged(min(i, len(d)), len(d))
        caught_up = base.evaluated_tokens - ev_b <= k + CATCH_UP and nudger.evaluated_tokens - ev_n <= k + 2 * CATCH_UP
        if measured and caught_up:
            sizer.finished(k > 0, emitted - emitted_before, time.perf_counter() - round_start - paused)
        measured = True
