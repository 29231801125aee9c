"""Random generated model pairs for the exactness tests, and where the real vocabularies live."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from nudge_local.bench.synthetic import CHATML, Vocab, bpe_vocab, load_vocab, random_table, write_model


def vocab_dir() -> Path | None:
    """../shared/vocab, found through NUDGE_LOCAL_VOCAB_DIR (set by .ci/run) or beside the checkout;
    None where that folder does not exist, so the tests that need it skip (why_no_vocab says why)."""
    env = os.environ.get("NUDGE_LOCAL_VOCAB_DIR")
    d = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "vocab"
    return d if d.is_dir() else None


def why_no_vocab() -> str:
    env = os.environ.get("NUDGE_LOCAL_VOCAB_DIR")
    if env:
        return f"NUDGE_LOCAL_VOCAB_DIR={env} is not a folder (point it at ../shared/vocab)"
    return "../shared/vocab not found: set NUDGE_LOCAL_VOCAB_DIR to it"


@functools.cache
def vocab(name: str) -> Vocab:
    """The vocabulary "bpe0"/"bpe1" (built here) or ../shared/vocab/ggml-vocab-NAME.gguf."""
    if name.startswith("bpe"):
        return bpe_vocab(int(name[3:]))
    d = vocab_dir()
    if d is None:
        raise FileNotFoundError(why_no_vocab())
    return load_vocab(d / f"ggml-vocab-{name}.gguf")


@functools.cache
def padded(name: str, extra: int = 96) -> Vocab:
    """The vocabulary with `extra` padding ids appended, like Qwen2.5-7B's 152064 against 151936."""
    v = vocab(name)
    kv = dict(v.kv)
    kv["tokenizer.ggml.tokens"] = v.tokens + [f"[PAD{i}]" for i in range(len(v.tokens), len(v.tokens) + extra)]
    kv["tokenizer.ggml.token_type"] = list(kv["tokenizer.ggml.token_type"]) + [4] * extra
    return Vocab(kv, name=v.name + "-padded")


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
