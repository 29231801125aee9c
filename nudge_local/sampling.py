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


def prob(logits: np.ndarray, token: int) -> float:
    """The plain softmax probability of `token`."""
    m = logits.max()
    return float(np.exp(logits[token] - m) / np.exp(logits - m).sum(dtype=np.float64))


class Chooser:
    """Picks tokens for one generation; one seeded stream of draws across both models."""

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)

    def __call__(self, logits: np.ndarray, argmax: int | None = None) -> int:
        s = self.sampling
        if s.greedy:
            return int(logits.argmax()) if argmax is None else argmax
        z = logits.astype(np.float64) / s.temperature
        w = np.exp(z - z.max())
        if s.top_p < 1.0:
            order = np.argsort(-w, kind="stable")
            mass = np.cumsum(w[order])
            keep = order[: int(np.searchsorted(mass, s.top_p * mass[-1])) + 1]
            mask = np.zeros_like(w)
            mask[keep] = w[keep]
            w = mask
        cdf = np.cumsum(w)
        return int(min(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"), len(w) - 1))
