"""The model interface: what the engine asks of a model, whoever answers it (docs/architecture.md#the-model-interface).

A model is anything that can score the next token. Three kinds implement `ScoringModel`:

- `Model` (local.py): a GGUF file in a llama.cpp context of this process;
- `RemoteModel` (remote/llama_server.py): a model on llama-server, token ids in and out;
- `TextRemoteModel` (remote/completions.py): a model behind OpenAI's /v1/completions, text in and
  token texts out, with ids that are only this process's numbering of those texts.

What they can and cannot do is said by the interface itself: the methods that answer alike for
all three (`text_logits`, `count_tokens`, `complete`, `token_texts`) hide the difference, and the
two typed capabilities left (`has_token_ids`, `scores_drafts`) say what no method can hide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, slots=True)
class CompletionToken:
    token: int
    text: str  # the characters this token completes (UTF-8 safe within one completion)
    p: float  # top-1 probability at this position (the token is the argmax)


@dataclass(frozen=True, slots=True)
class Completion:
    """What a completions server returns: greedy tokens with their top-1 probabilities."""

    tokens: list[CompletionToken]
    finish: str  # "stop" (end of generation) or "length"

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)


@runtime_checkable
class ScoringModel(Protocol):
    """One model the engine decodes with, used from one thread."""

    role: str  # "base", "nudger", "judge", ...: named in its error sentences
    path: str | os.PathLike  # its file, or its server's URL
    n_ctx: int  # tokens its context holds (0: not reported; the server says when a prompt is too long)
    n_vocab: int  # ids its rows are over (a text-only model: those numbered so far)
    vocab_type: object  # its tokenizer's kind, only compared between models
    bos: int  # -1: none
    eos: int
    vocab_matches: dict  # views.same_vocabulary's answers, by the other model
    # Counters for the statistics and the benchmark's breakdown
    evaluated_tokens: int
    forward_calls: int
    decode_seconds: float
    reading: bool  # set by a mode before it asks: this call reads text (a prompt, the other model's)
    chat_template: str | None  # the Jinja template its file or server gives (None: none)
    kind: str  # where it runs, in a word for sentences: "GGUF" or "server"
    # What no method can hide:
    has_token_ids: bool  # its ids are a real vocabulary's (False: a text-only server, text space only)
    scores_drafts: bool  # `evaluate` scores given tokens in one batch (speculative nudging needs it)
    prompt_read: int | None  # prompt tokens its server reported reading (None: no server reports them)

    # -- what it is ---------------------------------------------------------------------------

    @property
    def name(self) -> str: ...

    @property
    def label(self) -> str:
        """The name a user knows it by: its file's name, or the name its server gives it."""
        ...

    @property
    def identity(self) -> str:
        """How a record names it: its file's name and size, or its server's URL and model name."""
        ...

    def metadata(self, key: str) -> str | None: ...

    # -- tokens -------------------------------------------------------------------------------

    def tokenize(self, text: str | bytes) -> list[int]: ...

    def count_tokens(self, text: str | bytes) -> int | None:
        """len(tokenize(text)), or None where it cannot tokenize (a text-only server)."""
        ...

    def piece(self, token: int) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...

    def token_texts(self) -> list[bytes] | None:
        """Every id's raw text, for comparing vocabularies (None: a server cannot list them)."""
        ...

    # -- scores -------------------------------------------------------------------------------

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Next-token logits after the ids `tokens`."""
        ...

    def text_logits(self, data: bytes, written: int) -> np.ndarray:
        """Next-token logits after the text `data`: a prompt and an answer of `written` tokens."""
        ...

    def prompt_length(self, prompt: bytes) -> int:
        """How many tokens the text `prompt` is to this model (as its server counts them, where served)."""
        ...

    def evaluate(self, tokens: list[int], rows: list[int]) -> np.ndarray:
        """The rows after the positions `rows` of `tokens`, in one batch (where `scores_drafts`)."""
        ...

    def complete(self, text: str, max_tokens: int, *, reading: bool = True) -> Completion:
        """A completion call as the authors' client makes it: greedy, top-1 probabilities."""
        ...

    # -- cache and lifetime -------------------------------------------------------------------

    @property
    def held_tokens(self) -> list[int]: ...

    def reset(self) -> None: ...

    def settle(self) -> None:
        """An answer ended (a served model stops its server writing ahead)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> ScoringModel: ...

    def __exit__(self, *exc) -> None: ...
