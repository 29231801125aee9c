"""Random generated model pairs for the exactness tests, and where the real vocabularies live."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from nudge_local.synthetic import CHATML, Table, Vocab, bpe_vocab, load_vocab, write_model

# Text pieces the random tables draw on: words, word pieces, newlines, punctuation, non-ASCII,
# and the single bytes of "é" (C3 A9) and "日" (E6 97 A5) so characters split across tokens.
# fmt: off
PIECES = [
    b" the", b" Step", b" St", b"ep", b" 1", b" 2", b":", b".", b",", b"!", b"\n", b"\n\n", b" so", b"lution",
    b" we", b" need", b" to", b" find", b"ing", b" answer", b" is", b" caf", "é".encode(), " über".encode(),
    b"Hello", b" world", b" Sure", b" First", b" cost", b" 4", b"er", b"ed", b" ", b"  ",
    b"\xc3", b"\xa9", b"\xe6", b"\x97", b"\xa5", " 日本".encode(), "語".encode(),
]
# fmt: on


def vocab_dir() -> Path | None:
    """../shared/vocab, found through NUDGE_LOCAL_VOCAB_DIR (set by .ci/run) or beside the checkout."""
    env = os.environ.get("NUDGE_LOCAL_VOCAB_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2] / "shared" / "vocab"
    return here if here.is_dir() else None


@functools.cache
def vocab(name: str) -> Vocab:
    """The vocabulary "bpe0"/"bpe1" (built here) or ../shared/vocab/ggml-vocab-NAME.gguf."""
    if name.startswith("bpe"):
        return bpe_vocab(int(name[3:]))
    d = vocab_dir()
    if d is None:
        raise FileNotFoundError("set NUDGE_LOCAL_VOCAB_DIR to ../shared/vocab")
    return load_vocab(d / f"ggml-vocab-{name}.gguf")


@functools.cache
def padded(name: str, extra: int = 96) -> Vocab:
    """The vocabulary with `extra` padding ids appended, like Qwen2.5-7B's 152064 against 151936."""
    v = vocab(name)
    kv = dict(v.kv)
    kv["tokenizer.ggml.tokens"] = v.tokens + [f"[PAD{i}]" for i in range(len(v.tokens), len(v.tokens) + extra)]
    kv["tokenizer.ggml.token_type"] = list(kv["tokenizer.ggml.token_type"]) + [4] * extra
    return Vocab(kv, name=v.name + "-padded")


def alphabet(v: Vocab) -> list[int]:
    ids = [v.find(p) for p in PIECES]
    return sorted({i for i in ids if i is not None})


def random_table(v: Vocab, rng: np.random.Generator, *, eos_weight: float = 0.08, extra: list[int] = ()) -> Table:
    """A Markov table over the vocabulary's alphabet: each row confident or spread at random, with
    the end-of-generation token now and then."""
    alpha = alphabet(v) + list(extra)

    def row() -> dict[int, float]:
        chosen = rng.choice(alpha, size=min(len(alpha), int(rng.integers(2, 7))), replace=False)
        spread = rng.choice([0.3, 1.0, 2.5, 5.0])
        r = {int(t): float(rng.normal(0, spread)) for t in chosen}
        if rng.random() < eos_weight * 4:
            r[v.eos] = float(rng.normal(-1.0, 1.5))
        return r

    return Table(rows={t: row() for t in alpha}, default=row())


def write_pair(
    tmp: Path, base_vocab: Vocab, nudger_vocab: Vocab, seed: int, *, nudger_extra=(), eos_weight: float = 0.08
) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    base = write_model(
        tmp / f"base-{base_vocab.name}-{seed}.gguf", base_vocab, random_table(base_vocab, rng, eos_weight=eos_weight)
    )
    nudger = write_model(
        tmp / f"nudger-{nudger_vocab.name}-{seed}.gguf",
        nudger_vocab,
        random_table(nudger_vocab, rng, eos_weight=eos_weight, extra=list(nudger_extra)),
        chat_template=CHATML,
    )
    return base, nudger
