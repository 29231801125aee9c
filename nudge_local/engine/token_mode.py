"""Token mode (docs/method.md#token-mode), and the base-only and nudger-only baselines: modes that
yield (event without text, piece bytes) per token and return their Result ("eos" or "length")."""

from __future__ import annotations

from collections.abc import Generator

from nudge_local.engine.events import Result, Source, TokenEvent
from nudge_local.engine.gates import GateName, opens
from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.sampling import Chooser, prob, top1
from nudge_local.engine.stream import Steps
from nudge_local.engine.views import Answer, View
from nudge_local.engine.words import ends_word, has_text


def nudged_word(
    nudger: ScoringModel,
    view: View,
    answer: Answer,
    *,
    gate_p: float | None,
    cap: int,
    choose: Chooser,
    gate_entropy: float | None = None,
) -> Generator[tuple[TokenEvent, bytes], None, int | None]:
    """The nudger writes one word of at most `cap` tokens; returns how many it wrote, or None when
    its very first token ends its turn (the answer ends there). The word's first token carries
    `gate_entropy`, the base's at the gate that handed it over (`gate_p` None: the word was handed
    over at a branch, not by the gate)."""
    word_has_text = False
    for n in range(cap):
        nudger.reading = n == 0  # its first call catches up with the base's text; later ones write
        logits = view.logits()
        t = choose(logits)
        if nudger.is_eog(t):
            return None if n == 0 else n
        piece = nudger.piece(t)
        if ends_word(piece, n, word_has_text):
            return n
        word_has_text = word_has_text or has_text(piece)
        answer.add(t, piece)
        event = TokenEvent("", "nudge", t, gate_p, prob(logits, t), choose.top(logits), choose.entropy(logits),
                           gate_entropy if n == 0 else None)  # fmt: skip
        yield event, piece
    return cap


def nudged_steps(
    base: ScoringModel,
    nudger: ScoringModel,
    base_view: View,
    nudger_view: View,
    answer: Answer,
    *,
    gamma: float,
    max_tokens: int,
    word_cap: int,
    choose: Chooser,
    gate: GateName = "top1",
) -> Steps:
    """The base writes while the gate stays shut (the paper's `top1`: its top-1 probability is >=
    gamma); where it opens, the nudger writes one word."""
    emitted = 0
    base.reading = True  # the first call reads the prompt, and each after a nudged word reads the word
    while True:
        if emitted >= max_tokens:
            return Result("length")
        logits = base_view.logits()
        best, base_p = top1(logits)
        base_entropy = choose.entropy(logits)
        if opens(gate, gamma, logits, base_p, base_entropy):
            cap = min(word_cap, max_tokens - emitted)
            n = yield from nudged_word(nudger, nudger_view, answer, gate_p=base_p, cap=cap, choose=choose,
                                       gate_entropy=base_entropy)  # fmt: skip
            if n is None:
                return Result("eos")
            emitted += n
            base.reading = True
            continue
        t = choose(logits, best)
        if base.is_eog(t):
            return Result("eos")
        piece = base.piece(t)
        answer.add(t, piece)
        emitted += 1
        base.reading = False
        p = base_p if t == best else prob(logits, t)
        yield TokenEvent("", "base", t, base_p, p, choose.top(logits), base_entropy, base_entropy), piece


def single_steps(
    model: ScoringModel, view: View, answer: Answer, *, source: Source, max_tokens: int, choose: Chooser
) -> Steps:
    """One model writes every token: the base-only (source "base") and nudger-only ("nudge") baselines."""
    for i in range(max_tokens):
        model.reading = i == 0  # the prompt
        logits = view.logits()
        best, p_best = top1(logits)
        t = choose(logits, best)
        if model.is_eog(t):
            return Result("eos")
        piece = model.piece(t)
        answer.add(t, piece)
        p = p_best if t == best else prob(logits, t)
        h = choose.entropy(logits)
        base_only = source == "base"
        yield TokenEvent("", source, t, p_best if base_only else None, p, choose.top(logits), h,
                         h if base_only else None), piece  # fmt: skip
    return Result("length")
