"""Tokenizing a growing text from its last safe cut (nudge_local/engine/retokenize.py) gives exactly the
tokens of tokenizing it from the start, on the vocabularies of real models, and is what a model
does once tokenizing whole texts has cost it what reading its vocabulary does."""

from __future__ import annotations

import random

import pytest

from conftest import load, needs_shared
from nudge_local.bench.synthetic import Table, write_model
from nudge_local.engine import local as model_module
from nudge_local.engine.local import Model
from nudge_local.engine.retokenize import common_prefix
from pairs import vocab
from tiny import tiny_paths

# Words a growing answer is made of: ASCII words and punctuation, whitespace runs, accents, CJK,
# emoji, digits, a contraction, markup, and the special-token texts of the vocabularies used here.
WORDS = ["the", "egg", "Step", "1.", "boil", "water,", "(hot)", "café", "東京", "🙂", "\n", "\n\n", "  ", "\t",
         "x's", "2024", "don't", "»", "**bold**", "<b>", "> quote", " ", "a", "naïve", "—", "<start_of_turn>",
         "<|im_end|>", "<|endoftext|>", "Привет"]  # fmt: skip


def check_growing_texts(m: Model, seed: int, steps: int = 300) -> list[int]:
    """Grow two texts in turn (as paper mode's calls do), now and then cut one back (a new answer),
    and compare every tokenization with one from the start; returns the lengths the tokenizer was
    given from the cuts."""
    rng = random.Random(seed)
    given = []
    raw = m._tokenize_raw
    m._retokenizer = m._make_retokenizer()
    assert m._retokenizer, "this vocabulary should be cut"
    m._retokenizer.raw = lambda text: given.append(len(text)) or raw(text)
    texts = ["Question: How do I boil an egg?\nAnswer:", "<|im_start|>user\nWhy?<|im_end|>\n"]
    for step in range(steps):
        i = step % 2
        if rng.random() < 0.05:
            texts[i] = texts[i][: rng.randrange(len(texts[i]) + 1)]
        texts[i] += rng.choice(["", " ", " "]) + rng.choice(WORDS)
        assert m.tokenize(texts[i]) == m._tokenize_whole(texts[i].encode()), repr(texts[i][-60:])
    return given


@pytest.mark.parametrize("role", ["base", "nudger"])
def test_the_tiny_pairs_vocabularies_tokenize_alike_from_a_cut(role):
    """Gemma 3's SentencePiece vocabulary (262k) and SmolLM2's BPE (49k)."""
    path = tiny_paths()[0 if role == "base" else 1]
    with Model(path, role=role, n_ctx=256, n_threads=1) as m:
        given = check_growing_texts(m, seed=1)
    assert len(given) > 250  # most calls resumed from a cut ...
    assert sorted(given)[len(given) // 2] < 40  # ... and tokenized again only the last words


@needs_shared
@pytest.mark.parametrize("name", ["gpt-2", "llama-bpe", "qwen2", "gemma-4"])
def test_real_vocabularies_tokenize_alike_from_a_cut(tmp_path, name):
    v = vocab(name)
    with load(write_model(tmp_path / "m.gguf", v, Table(rows={}, default={v.find(b" the"): 1.0}))) as m:
        given = check_growing_texts(m, seed=2)
    assert len(given) > 250 and sorted(given)[len(given) // 2] < 40


@needs_shared
@pytest.mark.parametrize("name", ["llama-spm", "phi-3"])
def test_a_vocabulary_that_adds_a_space_prefix_is_never_cut(tmp_path, name, monkeypatch):
    """llama.cpp's SentencePiece adds a space before what it tokenizes unless the file says not to:
    a text's second half would then read " " + itself."""
    monkeypatch.setattr(model_module, "VOCAB_READ_SECONDS", 0.0)
    v = vocab(name)
    with load(write_model(tmp_path / "m.gguf", v, Table(rows={}, default={3: 1.0}))) as m:
        text = "Question: How do I boil an egg?\nAnswer:"
        for word in WORDS:
            text += " " + word
            assert m.tokenize(text) == m._tokenize_whole(text.encode())
        assert m._retokenizer is False


def test_a_model_reads_its_vocabulary_for_cuts_once_whole_texts_cost_as_much(tmp_path, monkeypatch):
    v = vocab("bpe0")
    with load(write_model(tmp_path / "m.gguf", v, Table(rows={}, default={v.find(b" the"): 1.0}))) as m:
        monkeypatch.setattr(model_module, "VOCAB_READ_SECONDS", 1.0)  # n_vocab seconds: never, here
        for _ in range(3):
            m.tokenize("Question: the answer is the egg")
        assert m._retokenizer is None and m.tokenize_seconds > 0
        monkeypatch.setattr(model_module, "VOCAB_READ_SECONDS", m.tokenize_seconds / m.n_vocab / 2)
        m.tokenize("Question: the answer is the egg, boiled")
        assert m._retokenizer


def test_common_prefix():
    assert common_prefix(b"abcd", b"abcdef") == 4
    assert common_prefix(b"abcdef", b"abxdef") == 2
    assert common_prefix(b"", b"a") == common_prefix(b"x", b"y") == 0
    assert common_prefix(b"same", b"same") == 4
