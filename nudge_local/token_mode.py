"""Token mode (BRIEF 1.1), and the base-only and nudger-only baselines, as generators of
TokenEvents that return their stop reason ("eos" or "length")."""

from __future__ import annotations

from collections.abc import Generator

from nudge_local.events import TokenEvent
from nudge_local.model import WHITESPACE, Model
from nudge_local.sampling import Chooser, prob, top1
from nudge_local.views import Answer

Steps = Generator[tuple[TokenEvent, bytes], None, str]


def nudged_steps(
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
) -> Steps:
    """The base writes while its top-1 probability is >= gamma; otherwise the nudger writes one word.
    Yields (event without text, piece bytes); the stream turns pieces into UTF-8 safe text."""
    emitted = 0
    while True:
        if emitted >= max_tokens:
            return "length"
        logits = base_view.logits()
        best, base_p = top1(logits)
        if base_p >= gamma:
            t = choose(logits, best)
            if base.is_eog(t):
                return "eos"
            piece = base.piece(t)
            answer.add(t, piece)
            emitted += 1
            yield TokenEvent("", "base", t, base_p, base_p if t == best else prob(logits, t)), piece
            continue
        has_text = False  # the word so far contains a non-whitespace byte
        for n_in_word in range(word_cap):
            if emitted >= max_tokens:
                break
            logits = nudger_view.logits()
            t = choose(logits)
            if nudger.is_eog(t):
                if n_in_word == 0:
                    return "eos"
                break
            piece = nudger.piece(t)
            if n_in_word and has_text and piece[:1] and piece[0] in WHITESPACE:
                break
            has_text = has_text or any(b not in WHITESPACE for b in piece)
            answer.add(t, piece)
            emitted += 1
            yield TokenEvent("", "nudge", t, base_p, prob(logits, t)), piece


def single_steps(model: Model, view, answer: Answer, *, source: str, max_tokens: int, choose: Chooser) -> Steps:
    """One model writes every token: the base-only (source "base") and nudger-only ("nudge") baselines."""
    for _ in range(max_tokens):
        logits = view.logits()
        best, p_best = top1(logits)
        t = choose(logits, best)
        if model.is_eog(t):
            return "eos"
        piece = model.piece(t)
        answer.add(t, piece)
        p = p_best if t == best else prob(logits, t)
        yield TokenEvent("", source, t, p_best if source == "base" else None, p), piece
    return "length"


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
    draft: int = 4,
    max_draft: int = 16,
) -> Steps:
    """Token mode, same vocabulary, with the nudger drafting and the base checking a whole draft in
    one batch (BRIEF 1.3). Every decision is token mode's, made in token mode's order on the same
    logits (drafts are greedy and draw nothing from the sampler), so the output is token mode's,
    token for token, for any seed. Returns (reason, draft counters)."""
    emitted = 0
    in_word, n_in_word, has_text, word_p = False, 0, False, 0.0
    proposed = accepted = idle = 0
    k, rate = draft, 0.5  # rate: running share of drafted tokens that passed
    n = nudger_view.n_shared
    counters = lambda: {"draft_proposed": proposed, "draft_accepted": accepted}  # noqa: E731

    while True:
        ids_b = base_view.prompt_ids + answer.ids
        ids_n = nudger_view.prompt_ids + answer.ids
        # Draft greedily, never past either context (token mode would fail there, not earlier).
        room = min(k, base.n_ctx - len(ids_b), nudger.n_ctx - len(ids_n), max_tokens - emitted)
        d: list[int] = []
        rows_n = []
        for _ in range(max(0, room)):
            ln = nudger.logits(ids_n + d)[:n]
            rows_n.append(ln)
            t = int(ln.argmax())
            if nudger.is_eog(t):
                break
            d.append(t)
        proposed += len(d)
        rows_b = None  # the base checks the draft in one batch, once its rule is needed this round

        i = 0
        while i <= len(d):
            if not in_word:
                if emitted >= max_tokens:
                    return "length", counters()
                if rows_b is None:
                    rows_b = base.evaluate(ids_b + d, list(range(len(ids_b) - 1, len(ids_b) + len(d))))[:, :n]
                best, base_p = top1(rows_b[i])
                if base_p >= gamma:
                    t = choose(rows_b[i], best)
                    if base.is_eog(t):
                        return "eos", counters()
                    piece = base.piece(t)
                    answer.add(t, piece)
                    emitted += 1
                    yield TokenEvent("", "base", t, base_p, base_p if t == best else prob(rows_b[i], t)), piece
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
            if n_in_word and has_text and piece[:1] and piece[0] in WHITESPACE:
                in_word = False
                continue
            has_text = has_text or any(b not in WHITESPACE for b in piece)
            answer.add(t, piece)
            emitted += 1
            n_in_word += 1
            yield TokenEvent("", "nudge", t, word_p, prob(ln, t)), piece
            if i < len(d) and t == d[i]:
                accepted += 1
                i += 1
                continue
            break
        # Draft length follows acceptance: +2 after a draft that passed whole, -1 after one that did
        # not; off (plain token mode) while the running acceptance rate is poor, retried now and then.
        if d:
            rate = 0.7 * rate + 0.3 * min(i, len(d)) / len(d)
            k = min(max_draft, k + 2) if i >= len(d) else max(1, k - 1)
            if rate < 0.15:
                k, idle = 0, 0
        elif k == 0:
            idle += 1
            if idle >= 16:
                k, rate = 1, 0.3
