"""A server's top-k log-probabilities as logits rows (`TopRow`), and the token texts and
alternatives of an OpenAI /v1/completions `logprobs` object."""

from __future__ import annotations

import math

import numpy as np


class TopRow(np.ndarray):
    """A logits row built from a server's top-k log-probabilities: `listed` holds their ids."""

    listed: np.ndarray

    def __array_finalize__(self, obj) -> None:
        self.listed = getattr(obj, "listed", np.empty(0, dtype=np.int64))


def top_row(n: int, top: list[tuple[int, float]]) -> TopRow:
    """A row of n log-probabilities: each listed (id, logprob) exact, the remaining mass spread
    evenly over the other ids (so softmax(row) gives each listed id its reported probability)."""
    ids = np.array([i for i, _ in top], dtype=np.int64)
    lps = np.array([lp for _, lp in top], dtype=np.float64)
    rest = max(0.0, 1.0 - float(np.exp(lps).sum())) if len(top) else 1.0
    unlisted = n - len(top)
    fill = math.log(rest / unlisted) if rest > 0 and unlisted > 0 else -1e30
    row = np.full(n, fill, dtype=np.float32).view(TopRow)
    row[ids] = lps
    row.listed = ids
    return row



def token_logprobs(lp: dict | None, full_text: str | None = None) -> list[tuple[str, list[tuple[str, float]]]]:
    """Each generated token's text and its listed (text, logprob) alternatives, from either shape a
    /v1/completions `logprobs` takes: OpenAI's legacy lists (`tokens`, `top_logprobs` as mappings:
    vLLM, SGLang, llama-cpp-python) or the chat-style `content` list (llama-server). Given the
    prompt and completion text, the legacy `text_offset`s say each token's text: llama-cpp-python
    names a token that is part of a character "" (so the character would be lost), while its
    offsets give the whole character to the token that completes it."""
    if not lp:
        return []
    if isinstance(lp.get("content"), list):
        return [(c.get("token", ""), [(t.get("token", ""), float(t["logprob"])) for t in c.get("top_logprobs") or []])
                for c in lp["content"]]  # fmt: skip
    raw, tops, offsets = lp.get("tokens") or [], lp.get("top_logprobs") or [], lp.get("text_offset") or []
    chosen = lp.get("token_logprobs") or [None] * len(raw)
    tokens = raw
    if full_text is not None and len(offsets) == len(raw) and offsets == sorted(offsets):
        ends = [*offsets[1:], len(full_text)]
        tokens = [full_text[a:b] for a, b in zip(offsets, ends, strict=True)]
    out = []
    for tok, was, top, lp_tok in zip(tokens, raw, tops, chosen, strict=False):
        alts = list((top or {}).items())
        if tok != was and lp_tok is not None:  # the chosen token listed under its lossy name
            alts = [(t, v) for t, v in alts if not (t == was and v == lp_tok)] + [(tok, float(lp_tok))]
        out.append((tok, alts))
    return out
