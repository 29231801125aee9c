"""Probabilities from a logits row, and the seeded choice of a token (greedy or tempered, top-p)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; otherwise the token is drawn from softmax(logits / temperature),
    cut to the smallest set whose mass reaches top_p, with a generator seeded by `seed`."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def top1(logits: np.ndarray) -> tuple[int, float]:
    """The argmax and its probability under the plain (temperature 1) softmax."""
    t = int(logits.argmax())
    return t, 1.0 / float(np.exp(logits - logits[t]).sum(dtype=np.float64))


def top_k(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely tokens and their plain softmax probabilities, most likely first; equal
    logits in id order (the same on every numpy build). One partition, not a full sort: about 1 ms
    for a 262k vocabulary."""
    k = min(k, len(logits))
    if k <= 0:
        return []
    kth = np.partition(logits, len(logits) - k)[len(logits) - k]
    idx = np.flatnonzero(logits >= kth)  # every tie of the k-th value, to order by id below
    idx = idx[np.lexsort((idx, -logits[idx]))][:k]
    w = np.exp(logits - logits[idx[0]])
    total = w.sum(dtype=np.float64)
    return [(int(i), float(w[i] / total)) for i in idx]


def entropy(logits: np.ndarray) -> float:
    """The natural-log entropy of the plain softmax, as log(sum w) - sum(w * z) / sum(w) with
    z = logits - max and w = exp(z): no probability is formed, so no log of an underflowed zero.
    The row stays float32 (llama.cpp's logits are) through exp, and both sums add in float64:
    within 1e-7 of an all-float64 computation at a fifth of its cost (numpy's float64 exp is not
    vectorized on AVX2), about 0.8 ms for a 262k vocabulary (docs/method.md#branching-factor)."""
    z = logits - logits.max()
    w = np.exp(z)
    total = w.sum(dtype=np.float64)
    with np.errstate(invalid="ignore"):  # a -inf logit: 0 * -inf is nan ...
        h = float(np.log(total) - (w * z).sum(dtype=np.float64) / total)
    if not np.isfinite(h):  # ... and its term is 0
        h = float(np.log(total) - np.multiply(w, z, out=np.zeros_like(w), where=w > 0).sum(dtype=np.float64) / total)
    return max(h, 0.0)  # a one-hot row rounds to -1e-17, not below 0


def prob(logits: np.ndarray, token: int) -> float:
    """The plain softmax probability of `token`."""
    m = logits.max()
    return float(np.exp(logits[token] - m) / np.exp(logits - m).sum(dtype=np.float64))


class Chooser:
    """Picks tokens for one generation; one seeded stream of draws across both models. With
    `top_n` > 0 the modes also record the writing model's top_n tokens at each position (`top`);
    with `entropy` the entropy of the rows they read (TokenEvent's `entropy`, `base_entropy`)."""

    def __init__(self, sampling: Sampling, top_n: int = 0, entropy: bool = False) -> None:
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)
        self.top_n = top_n
        self.measures_entropy = entropy

    def top(self, logits: np.ndarray) -> tuple[tuple[int, float], ...]:
        """The top_n alternatives for a TokenEvent's `top` (empty when not asked: it costs a partition)."""
        return tuple(top_k(logits, self.top_n)) if self.top_n else ()

    def entropy(self, logits: np.ndarray) -> float | None:
        """The row's entropy for a TokenEvent (None when not asked: it costs an exp of the row)."""
        return entropy(logits) if self.measures_entropy else None

    def __call__(self, logits: np.ndarray, argmax: int | None = None) -> int:
        s = self.sampling
        if s.greedy:
            return int(logits.argmax()) if argmax is None else argmax
        z = logits.astype(np.float64) / s.temperature
        w = np.exp(z - z.max())
        listed = getattr(logits, "listed", None)
        if listed is not None:  # a served model's row: draw among the tokens its server listed
            keep = np.zeros_like(w)
            listed = listed[listed < len(w)]
            keep[listed] = w[listed]
            w = keep
        if s.top_p < 1.0:
            order = np.argsort(-w, kind="stable")
            mass = np.cumsum(w[order])
            keep = order[: int(np.searchsorted(mass, s.top_p * mass[-1])) + 1]
            mask = np.zeros_like(w)
            mask[keep] = w[keep]
            w = mask
        cdf = np.cumsum(w)
        return int(min(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"), len(w) - 1))
