"""Tokenizing a text that grows (text space reads prompt + answer again on every call) from the last
place where it may be cut, instead of from its start (docs/method.md#re-tokenizing-from-a-cut).

A cut at byte p splits the text into two halves that tokenize alone to exactly the whole text's
tokens, when p holds an ASCII space, the byte before it is printable ASCII, and no token of the
vocabulary holds that byte followed by a space. No token then spans p: SentencePiece's merges and
BPE's join two neighbours only into a token of the vocabulary, so none joins across p, and each
half merges as it would alone (the queue's order within a half does not depend on the other). The
pre-tokenizers' patterns (GPT-2's, Llama 3's, Qwen2's, ...) never put a non-space character and a
following space in one chunk, and look ahead only past whitespace, so the chunks left of p end
where they would alone. Special tokens are found by their text, which holds no such pair either.
Not covered, so not cut: a vocabulary that adds a space prefix to what it tokenizes, tokens that
strip the whitespace beside them, and tokenizers other than SentencePiece and BPE."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

SPACE = 0x20
PRINTABLE = frozenset(range(0x21, 0x7F))  # a cut's byte before the space: printable ASCII, not whitespace
RECENT = 4  # texts remembered: paper mode tokenizes a few growing texts in turn


@dataclass(frozen=True, slots=True)
class Tokenized:
    """One text's tokens, and the places where it may be cut: byte offsets (ascending) and the index
    of the token that starts at each."""

    text: bytes
    ids: tuple[int, ...]
    cuts: tuple[int, ...]
    at: tuple[int, ...]


def common_prefix(a: bytes, b: bytes) -> int:
    """The length of the longest common prefix of two byte strings (slices compare in C)."""
    if b.startswith(a):
        return len(a)
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Retokenizer:
    """tok() of complete UTF-8 text, from the last cut of a recently tokenized text that shares its
    start. `full` tokenizes from scratch (BOS included where the vocabulary asks), `raw` a text's
    tail (no BOS), `piece` gives a token's bytes; `followers` are the bytes that a space follows
    inside some token; `bos` is a BOS id that `full` may add without it being in the text."""

    def __init__(
        self,
        full: Callable[[bytes], list[int]],
        raw: Callable[[bytes], list[int]],
        piece: Callable[[int], bytes],
        followers: frozenset[int],
        bos: int,
    ) -> None:
        self.full, self.raw, self.piece, self.bos = full, raw, piece, bos
        self.before_cut = PRINTABLE - followers
        self.recent: list[Tokenized] = []

    def __call__(self, text: bytes) -> list[int]:
        found = self._resume_point(text)
        if found is None:
            ids = self.full(text)
            cuts, at = self._cuts(text, ids, 0, 0)
        else:
            old, j = found
            p, k = old.cuts[j], old.at[j]
            ids = [*old.ids[:k], *self.raw(text[p:])]
            cuts, at = self._cuts(text, ids, k, p)
            cuts, at = old.cuts[:j] + cuts, old.at[:j] + at
            self.recent.remove(old)  # the new text takes its place
        self.recent.insert(0, Tokenized(text, tuple(ids), cuts, at))
        del self.recent[RECENT:]
        return ids

    def _resume_point(self, text: bytes) -> tuple[Tokenized, int] | None:
        """The remembered text and cut (its index) that leave the least to tokenize again: the last
        cut inside the part it shares with `text` (the space at the cut shared too)."""
        best, best_cut = None, 0
        for old in self.recent:
            j = bisect_left(old.cuts, common_prefix(old.text, text)) - 1
            if j >= 0 and old.cuts[j] > best_cut:
                best, best_cut = (old, j), old.cuts[j]
        return best

    def _cuts(self, text: bytes, ids: list[int], start: int, offset: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The cuts at the starts of ids[start:], the first of which starts at byte `offset`; none
        past a token whose piece is not the text there (pieces that do not spell the text out)."""
        cuts, at = [], []
        for i in range(start, len(ids)):
            piece = self.piece(ids[i])
            if i == 0 and ids[0] == self.bos and not text.startswith(piece):
                continue  # a BOS the tokenizer added: it holds no text
            if 0 < offset < len(text) and text[offset] == SPACE and text[offset - 1] in self.before_cut:
                cuts.append(offset)
                at.append(i)
            if not text.startswith(piece, offset):
                break
            offset += len(piece)
        return tuple(cuts), tuple(at)
