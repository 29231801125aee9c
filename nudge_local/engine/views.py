"""What each model sees of the answer (docs/method.md#token-space-and-text-space): the same token
ids, or its own tokens of the text. Decoding modes read logits only through a View."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.words import WHITESPACE

_BLANK = WHITESPACE.encode()


class Answer:
    """The answer so far, as the shared ids (token space) and as bytes (text space)."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.data = bytearray()

    def add(self, token: int, piece: bytes) -> None:
        self.ids.append(token)
        self.data += piece


class View(Protocol):
    """One model's view of the shared answer: how long its prompt is, and its next-token logits."""

    model: ScoringModel

    @property
    def prompt_tokens(self) -> int: ...

    def logits(self) -> np.ndarray: ...


class TokenSpaceView:
    """The model sees tok(prompt) + answer ids; its logits are cut to the ids both models share."""

    def __init__(self, model: ScoringModel, prompt: str, answer: Answer, n_shared: int | None = None) -> None:
        self.model, self.answer = model, answer
        self.prompt_ids = model.tokenize(prompt)
        self.n_shared = n_shared or model.n_vocab

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def logits(self) -> np.ndarray:
        return self.model.logits(self.prompt_ids + self.answer.ids)[: self.n_shared]


def text_read(prompt: bytes, answer: bytes, *, shown: bool = False) -> bytes:
    """The text a model reads in text space: its prompt, then the answer (`shown`: without its
    leading whitespace, as the user sees it), with one space between where the prompt ends and the
    answer starts non-blank: a nudger's "1." after "Answer:" is read as "Answer: 1.", the base's own
    tokenization of it, not "Answer:1."."""
    if shown:
        answer = answer.lstrip(_BLANK)
    if prompt[-1:] and answer[:1] and prompt[-1] not in _BLANK and answer[0] not in _BLANK:
        return prompt + b" " + answer
    return prompt + answer


class TextSpaceView:
    """The model sees text_read(prompt, answer text) as its own tokens (a local file's KV cache keeps
    the longest common token prefix with what it held), or as text where its server is text-only.
    `shown`: the answer without its leading whitespace (the nudger's chat turn, which never starts
    with the base's space)."""

    def __init__(self, model: ScoringModel, prompt: str, answer: Answer, *, shown: bool = False) -> None:
        self.model, self.answer, self.shown = model, answer, shown
        self.prompt = prompt.encode("utf-8")
        self._prompt_tokens: int | None = None

    def text(self) -> bytes:
        """What the model reads now: its prompt and the answer so far."""
        return text_read(self.prompt, self.answer.data, shown=self.shown)

    @property
    def prompt_tokens(self) -> int:
        if self._prompt_tokens is None:
            self._prompt_tokens = self.model.prompt_length(self.prompt)
        return self._prompt_tokens

    def logits(self) -> np.ndarray:
        return self.model.text_logits(self.text(), len(self.answer.ids))


PROBE = "Hello, world! 1234 + 5678 = 6912.\nÉté, naïve café; 東京 — Привет 🙂\tdef f(x): return x**2"


def same_vocabulary(a: ScoringModel, b: ScoringModel) -> bool:
    """llama.cpp's draft-model test: same tokenizer type, sizes within 128 padding ids,
    the same token texts for every shared id. A served model's vocabulary cannot be listed: there
    the sizes, the type and the tokens and pieces of a probe text must agree."""
    key = (b.path, b.n_vocab)
    if key not in a.vocab_matches:  # compared once per pair: 128k texts take ~0.1 s
        a.vocab_matches[key] = shares_ids(a, b) and _same_tokens(a, b)
    return a.vocab_matches[key]


def reads_text(model: ScoringModel) -> bool:
    """Whether the model reads text only (a text-only server, whose ids are not a vocabulary's): its
    view is in text space whatever is asked."""
    return not model.has_token_ids


def shares_ids(a: ScoringModel, b: ScoringModel) -> bool:
    """Whether both models have real token ids (token space is possible at all)."""
    return not (reads_text(a) or reads_text(b))


def _same_tokens(a: ScoringModel, b: ScoringModel) -> bool:
    if a.vocab_type != b.vocab_type or abs(a.n_vocab - b.n_vocab) > 128:
        return False
    texts_a, texts_b = a.token_texts(), b.token_texts()
    if texts_a is None or texts_b is None:  # a server: the probe's tokens and pieces
        ta, tb = a.tokenize(PROBE), b.tokenize(PROBE)
        return ta == tb and [a.piece(t) for t in ta] == [b.piece(t) for t in tb]
    n = min(a.n_vocab, b.n_vocab)
    return texts_a[:n] == texts_b[:n]


def view_of(
    model: ScoringModel, prompt: str, answer: Answer, *, text_space: bool, n_shared: int | None = None,
    shown: bool = False,
) -> View:
    """One model's view: token or text space (text for a model that reads text only). `shown` (text
    only): the model reads the answer without its leading whitespace."""
    if text_space or reads_text(model):
        return TextSpaceView(model, prompt, answer, shown=shown)
    return TokenSpaceView(model, prompt, answer, n_shared)


def make_views(
    base: ScoringModel, nudger: ScoringModel, base_prompt: str, nudger_prompt: str, *, text_space: bool | None = None
) -> tuple[Answer, View, View]:
    """Both models' views of one shared Answer; token space when the vocabularies match unless
    `text_space` forces a choice. In text space the nudger reads the answer as shown (its chat turn
    never starts with the base's leading space); token space reads the shared ids exactly."""
    answer = Answer()
    if not shares_ids(base, nudger):
        text_space = True
    elif text_space is None:
        text_space = not same_vocabulary(base, nudger)
    n = None if text_space else min(base.n_vocab, nudger.n_vocab)
    return (answer, view_of(base, base_prompt, answer, text_space=text_space, n_shared=n),
            view_of(nudger, nudger_prompt, answer, text_space=text_space, n_shared=n, shown=True))  # fmt: skip
