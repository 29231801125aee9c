"""Token mode (BRIEF 1.1), and the base-only and nudger-only baselines, as generators of
TokenEvents that return their stop reason ("eos" or "length")."""

from __future__ import annotations

from collections.abc import Generator

from nudge_local.events import TokenEvent
from nudge_local.model import WHITESPACE, Model
from nudge_local.sampling import Chooser, prob, top1
from nudge_local.views import Answer

Steps = Generator[tuple[TokenEvent, bytes], None, str]


def ends_word(piece: bytes, n_in_word: int, has_text: bool) -> bool:
    """The nudger's word ends before a token that starts with whitespace, once it has some text."""
    return bool(n_in_word and has_text and piece[:1] and piece[0] in WHITESPACE)


def has_text_in(piece: bytes) -> bool:
    return any(b not in WHITESPACE for b in piece)


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
            if ends_word(piece, n_in_word, has_text):
                break
            has_text = has_text or has_text_in(piece)
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
