"""The benchmark's generated pairs: a base and a nudger written as small GGUF files with a planted
greedy text, so every mode has a known path to follow (synthetic.py writes the files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nudge_local.bench.synthetic import CHATML, Table, bpe_vocab, load_vocab, write_model

PIECES = [b" the", b" Step", b" 1", b":", b".", b",", b"\n", b"\n\n", b" so", b" we", b" need", b" to", b" find",
          b" answer", b" is", b" Sure", b" First", b" cost", b" total", b" by", b" step", b" 2", b" 3", b" and",
          b" of", b" a", b" in", b" it", b" that", b" this"]  # fmt: skip
CYCLE, CONFIDENT = 24, 20  # the greedy text's cycle, and the positions on it where the base is confident
BASE_SHAPE, NUDGER_SHAPE = (1024, 16, 2816), (256, 6, 704)  # width, layers, FFN width


def make_pair(
    out: Path,
    vocab_path: str | None,
    agreement: float,
    seed: int = 0,
    quant: str = "F16",
    shapes: tuple[tuple[int, int, int], tuple[int, int, int]] = (BASE_SHAPE, NUDGER_SHAPE),
) -> tuple[Path, Path]:
    """A base of realistic shape (d=1024, 16 layers) and a nudger ~10x smaller in compute, over a
    Markov table whose greedy text runs round one cycle of 24 tokens. The base is confident (top-1
    p ~ 0.87) at 20 of them and the nudger's top-1 is the base's at `agreement` of those 20 (10, 14
    and 18 for 50%, 70% and 90%: exact, not a draw); at the other 4 the base is unsure (top-1 p ~
    0.29, below gamma 0.4) and the nudger writes the cycle's next token, so the text stays on the
    cycle and every cycle meets the agreement asked. Where the nudger disagrees its choice starts
    with a space, so a nudged word never runs into it. Weights other than the table are zero: ggml
    multiplies zeros as fast as anything else, so the compute is that of a real model of this shape
    while the output stays the planted table. `shapes` shrinks both models for tests."""
    vocab = load_vocab(vocab_path) if vocab_path else bpe_vocab(0)
    alpha = sorted({i for i in (vocab.find(p) for p in PIECES) if i is not None})
    if len(alpha) < CYCLE:
        raise ValueError(f"the vocabulary has {len(alpha)} of the benchmark's words as single tokens; it needs {CYCLE}")
    rng = np.random.default_rng(seed)
    order = [int(x) for x in rng.permutation(alpha)[:CYCLE]]
    succ = {t: order[(i + 1) % len(order)] for i, t in enumerate(order)}
    spaced = [t for t in order if vocab.piece(t)[:1] == b" "]
    picked = [int(x) for x in rng.permutation(order)]  # confident and agreeing rows lie anywhere on the cycle
    confident = picked[:CONFIDENT]
    agreeing = set(confident[: round(agreement * CONFIDENT)])
    confident = set(confident)
    base_rows, nudger_rows = {}, {}
    for t in order:
        top = succ[t]
        others = [int(x) for x in rng.permutation(order) if x != top]
        if t in confident:
            base_rows[t] = {top: 4.0, others[0]: 1.5, others[1]: 1.0}
        else:
            base_rows[t] = {top: 1.0, others[0]: 0.9, others[1]: 0.8, others[2]: 0.7}
        if t in agreeing or t not in confident:
            nudger_rows[t] = {top: 5.0, others[3]: 1.0}
        else:
            other = next(int(x) for x in rng.permutation(spaced) if x != top)
            nudger_rows[t] = {other: 5.0, top: 1.0}
    first = {order[0]: 4.0}  # after a token outside the cycle (the prompt's last) the base starts the cycle
    base_table = Table(rows=base_rows, default=first)
    nudger_table = Table(rows=nudger_rows, default={order[0]: 5.0})
    (bw, bl, bf), (nw, nl, nf) = shapes
    base = write_model(out / "bench-base.gguf", vocab, base_table, width=bw, layers=bl, ffn=bf, noise=0.0,
                       seed=seed, quant=quant)  # fmt: skip
    nudger = write_model(out / "bench-nudger.gguf", vocab, nudger_table, width=nw, layers=nl, ffn=nf, noise=0.0,
                         chat_template=CHATML, seed=seed + 1, quant=quant)  # fmt: skip
    return base, nudger
