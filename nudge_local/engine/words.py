"""What a word is: the one whitespace definition, and where the nudger's word ends
(docs/method.md#token-mode)."""

from __future__ import annotations

WHITESPACE = " \t\n"  # space, tab, newline: what starts a new word
_WHITESPACE_BYTES = frozenset(WHITESPACE.encode())


def has_text(piece: bytes) -> bool:
    """The piece contains something other than whitespace."""
    return any(b not in _WHITESPACE_BYTES for b in piece)


def ends_word(piece: bytes, n_in_word: int, word_has_text: bool) -> bool:
    """The nudger's word ends before a token that starts with whitespace, once it has some text."""
    return bool(n_in_word and word_has_text and piece[:1] and piece[0] in _WHITESPACE_BYTES)
