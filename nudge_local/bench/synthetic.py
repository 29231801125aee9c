"""Generate tiny llama-architecture GGUF models whose next-token distribution is a chosen table.

With one-hot embeddings, zero attention and FFN weights and RMS norms of weight 1, the hidden state
after the final norm is sqrt(d) times the one-hot vector of the current token's *state*, so the
logits are sqrt(d) times one column of the output matrix. Each token listed in the
table gets a state of its own; every other token shares state 0, the `default` row. Matrices are
F16 (F32 matrices crash this ggml build).

The tokenizer is copied from a vocabulary GGUF (`load_vocab`) or built here (`bpe_vocab`, a small
byte-level BPE), so the test suite does not need ../shared. Size knobs (width, layers, FFN width and
small random weights) let benchmarks use the same generator.

    python scripts/make_test_model.py out.gguf [--vocab ../shared/vocab/ggml-vocab-qwen2.gguf]
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, quants

from nudge_local.engine.gguf_check import read_header

FLOOR = -40.0  # logit of every token a row does not list: probability ~1e-17 each
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (byte-level BPE token texts)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


_B2U = bytes_to_unicode()
_U2B = {u: b for b, u in _B2U.items()}


@dataclass
class Vocab:
    """A tokenizer as GGUF key-values, plus each token's bytes as llama.cpp would print them."""

    kv: dict
    name: str = "vocab"

    @property
    def tokens(self) -> list[str]:
        return self.kv["tokenizer.ggml.tokens"]

    @property
    def eos(self) -> int:
        return self.kv["tokenizer.ggml.eos_token_id"]

    def piece(self, token: int) -> bytes:
        text = self.tokens[token]
        types = self.kv.get("tokenizer.ggml.token_type")
        if types and types[token] in (3, 4):  # control / user-defined tokens print as their text
            return text.encode()
        if self.kv["tokenizer.ggml.model"] == "gpt2":
            return bytes(_U2B[c] for c in text) if all(c in _U2B for c in text) else text.encode()
        if types and types[token] == 6 and text.startswith("<0x"):  # SentencePiece byte token
            return bytes([int(text[3:5], 16)])
        return text.replace("\u2581", " ").encode()

    def find(self, piece: bytes) -> int | None:
        """The id of a normal token printing exactly as `piece`, if any."""
        index = self.__dict__.get("_index")
        if index is None:
            types = self.kv.get("tokenizer.ggml.token_type") or [1] * len(self.tokens)
            index = {}
            for i in range(len(self.tokens)):
                if types[i] in (1, 6):
                    index.setdefault(self.piece(i), i)
            self.__dict__["_index"] = index
        return index.get(piece)


def load_vocab(path: str | os.PathLike) -> Vocab:
    kv, _ = read_header(path, keys=lambda k: k.startswith("tokenizer."))
    kv.pop("general.architecture", None)
    return Vocab(kv, name=Path(path).stem.removeprefix("ggml-vocab-"))


BPE_WORDS = (
    [
        " the",
        " Step",
        " 1",
        " 2",
        " 3",
        ":",
        "\n\n",
        " so",
        "lution",
        " we",
        " need",
        " to",
        " find",
        "ing",
        " answer",
        " is",
        " caf",
        "é",
        " über",
        "Hello",
        " world",
        ".",
        " Sure",
        ",",
        " First",
        " total",
        " cost",
        " step",
        " by",
        " 日本",
        "語",
        " ok",
    ],
    [
        " the",
        " St",
        "ep",
        " sol",
        "ution",
        " 1",
        ":",
        "\n",
        "\n\n",
        " We",
        " ne",
        "ed",
        " answer",
        " caf",
        "é",
        " üb",
        "er",
        " world",
        ".",
        " Sure",
        "!",
        " First",
        " cost",
        " to",
        " find",
        " 日",
        "本語",
    ],
)


def bpe_vocab(variant: int = 0) -> Vocab:
    """A small byte-level BPE built here: 256 byte tokens, merges for a few words, ChatML specials.
    Variant 1 orders ids differently and merges other words, so the two never share a vocabulary."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_tokens = [_B2U[b] for b in range(256)]
    if variant:
        byte_tokens.reverse()
    tokens, merges = ([*specials, *byte_tokens] if variant else list(byte_tokens)), []
    seen = set(tokens)
    for word in BPE_WORDS[variant % 2]:
        units = [_B2U[b] for b in word.encode()]
        tok = units[0]
        for u in units[1:]:
            merged = tok + u
            if merged not in seen:
                merges.append(f"{tok} {u}")
                tokens.append(merged)
                seen.add(merged)
            tok = merged
    if not variant:
        tokens += specials
    types = [3 if t in specials else 1 for t in tokens]
    kv = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": tokens.index("<|endoftext|>"),
        "tokenizer.ggml.eos_token_id": tokens.index("<|endoftext|>"),
        "tokenizer.ggml.eot_token_id": tokens.index("<|im_end|>"),
        "tokenizer.ggml.add_bos_token": False,
    }
    return Vocab(kv, name=f"bpe{variant}")


@dataclass
class Table:
    """Next-token logits: after a token listed in `rows`, its row; after any other token, `default`.
    Tokens a row does not list get FLOOR."""

    rows: dict[int, dict[int, float]] = field(default_factory=dict)
    default: dict[int, float] = field(default_factory=dict)


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


def alphabet(v: Vocab) -> list[int]:
    """The ids of PIECES that the vocabulary has as tokens."""
    ids = [v.find(p) for p in PIECES]
    return sorted({i for i in ids if i is not None})


def random_table(
    v: Vocab, rng: np.random.Generator, *, eos_weight: float = 0.08, extra: list[int] = ()
) -> Table:
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


def _kv_type(v) -> tuple[GGUFValueType, GGUFValueType | None]:
    def scalar(x):
        if isinstance(x, bool):
            return GGUFValueType.BOOL
        if isinstance(x, int):
            return GGUFValueType.INT32 if x < 0 else GGUFValueType.UINT32
        if isinstance(x, float):
            return GGUFValueType.FLOAT32
        return GGUFValueType.STRING

    if isinstance(v, list):
        sub = scalar(v[0]) if v else GGUFValueType.INT32
        return GGUFValueType.ARRAY, (GGUFValueType.INT32 if sub == GGUFValueType.UINT32 else sub)
    return scalar(v), None


HEAD_DIM = 32
QUANT_TYPES = {"F16": (None, None), "Q8_0": ("Q8_0", "Q8_0"), "Q4_0": ("Q4_0", "Q8_0")}  # layers, output
FILE_TYPES = {"F16": 1, "Q8_0": 7, "Q4_0": 2}


def _planted(vocab: Vocab, table: Table, width: int | None, free: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The embedding (one-hot per state) and output matrices that realise `table`; `free` more
    dimensions that the output matrix does not read (context lives there)."""
    n_vocab = len(vocab.tokens)
    states = {tok: s + 1 for s, tok in enumerate(sorted(table.rows))}
    d = max(width or 0, len(states) + 1 + free)
    d = (d + HEAD_DIM - 1) // HEAD_DIM * HEAD_DIM
    emb = np.zeros((n_vocab, d), dtype=np.float16)
    emb[:, 0] = 1
    out = np.full((n_vocab, d), FLOOR / math.sqrt(d), dtype=np.float32)
    for row, s in [(table.default, 0), *((table.rows[t], s) for t, s in states.items())]:
        for nxt, logit in row.items():
            out[nxt, s] = logit / math.sqrt(d)
    for tok, s in states.items():
        emb[tok, 0], emb[tok, s] = 0, 1
    return emb, out


def _add_metadata(w: GGUFWriter, vocab: Vocab, *, name: str, context_length: int, d: int, layers: int, ffn: int,
                  quant: str, chat_template: str | None) -> None:  # fmt: skip
    w.add_name(name)
    w.add_context_length(context_length)
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(d // HEAD_DIM)
    w.add_head_count_kv(d // HEAD_DIM)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(len(vocab.tokens))
    w.add_file_type(FILE_TYPES[quant])
    for key, value in vocab.kv.items():
        if key != "tokenizer.chat_template":
            vtype, sub = _kv_type(value)
            w.add_key_value(key, value, vtype, sub)
    if chat_template:
        w.add_chat_template(chat_template)


def _add_matrix(w: GGUFWriter, name: str, m: np.ndarray, qtype) -> None:
    if qtype is None:
        w.add_tensor(name, m.astype(np.float16))
    else:
        w.add_tensor(name, quants.quantize(m.astype(np.float32), qtype), raw_dtype=qtype)


def _add_layers(w: GGUFWriter, d: int, layers: int, ffn: int, noise: float, context: float, n_states: int,
                qtype, rng) -> None:  # fmt: skip
    """Attention and feed-forward blocks: zero, small random weights (`noise`) for realistic cost,
    or (`context`) random weights whose outputs write only to the dimensions past the states."""
    scale = noise or context

    def matrix(name: str, rows: int, cols: int, writes_residual: bool = False) -> None:
        m = rng.standard_normal((rows, cols)) * scale if scale else np.zeros((rows, cols), dtype=np.float32)
        if context and writes_residual:
            m[:n_states] = 0  # the state dimensions stay one-hot: the planted argmax holds
        _add_matrix(w, name, m, qtype)

    ones = np.ones(d, dtype=np.float32)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        for part in ("q", "k", "v"):
            matrix(f"blk.{i}.attn_{part}.weight", d, d)
        matrix(f"blk.{i}.attn_output.weight", d, d, writes_residual=True)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        matrix(f"blk.{i}.ffn_gate.weight", ffn, d)
        matrix(f"blk.{i}.ffn_up.weight", ffn, d)
        matrix(f"blk.{i}.ffn_down.weight", d, ffn, writes_residual=True)
    w.add_tensor("output_norm.weight", ones)


def write_model(
    path: str | os.PathLike,
    vocab: Vocab,
    table: Table,
    *,
    chat_template: str | None = None,
    width: int | None = None,
    layers: int = 1,
    ffn: int = 32,
    noise: float = 0.0,
    context: float = 0.0,
    context_length: int = 4096,
    seed: int = 0,
    name: str = "nudge-local test model",
    quant: str = "F16",
) -> Path:
    """Write a llama-architecture GGUF realising `table` (exactly when noise == 0 and quant is F16).
    `context` > 0 adds seeded random attention and feed-forward weights (standard deviation
    `context`) that write only to dimensions the output matrix does not read: through the final
    RMS norm they scale each row's logits by a factor that depends on every earlier token and its
    position, so the top-1 probabilities (and the gate) depend on context while the planted argmax
    holds. quant "Q4_0" stores the layers' matrices as laptops run them (4-bit) and the output
    matrix as Q8_0, as quantized releases keep it at higher precision; "Q8_0" stores both as Q8_0."""
    if quant not in QUANT_TYPES:
        raise ValueError(f"quant is one of {', '.join(QUANT_TYPES)}, not {quant!r}")
    layer_q, output_q = (None if q is None else GGMLQuantizationType[q] for q in QUANT_TYPES[quant])
    emb, out = _planted(vocab, table, width, free=16 if context else 0)
    d, n_states = emb.shape[1], len(table.rows) + 1
    tmp = Path(str(path) + ".part")  # written beside, then renamed: never a half-written model
    w = GGUFWriter(str(tmp), "llama")
    _add_metadata(w, vocab, name=name, context_length=context_length, d=d, layers=layers, ffn=ffn, quant=quant,
                  chat_template=chat_template)  # fmt: skip
    w.add_tensor("token_embd.weight", emb)
    _add_layers(w, d, layers, ffn, noise, context, n_states, layer_q, np.random.default_rng(seed))
    _add_matrix(w, "output.weight", out, output_q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return Path(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--vocab", help="vocabulary GGUF to copy the tokenizer from (default: a built-in BPE)")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--ffn", type=int, default=32)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    vocab = load_vocab(args.vocab) if args.vocab else bpe_vocab()
    rng = np.random.default_rng(args.seed)
    table = Table(default={int(t): float(rng.normal()) for t in rng.choice(len(vocab.tokens), 20)})
    write_model(
        args.out,
        vocab,
        table,
        chat_template=CHATML,
        width=args.width,
        layers=args.layers,
        ffn=args.ffn,
        noise=args.noise,
        seed=args.seed,
    )
    print(args.out)


if __name__ == "__main__":
    main()
