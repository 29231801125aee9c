"""Token mode against a naive reference that re-evaluates every context from scratch (docs/method.md#token-mode)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import load, needs_shared, run_engine
from nudge_local.engine.views import same_vocabulary
from pairs import padded, vocab, write_pair
from reference import reference_token_mode

# (base vocabulary, nudger vocabulary, seed): same and cross vocabularies, self-built and real.
PAIRS = [
    *[("bpe0", "bpe0", s) for s in (1, 2, 3, 4)],
    *[("bpe0", "bpe1", s) for s in (5, 6, 7, 8)],
    ("bpe1", "bpe0", 9),
    *[("qwen2", "qwen2", s) for s in (10, 11)],
    ("qwen2", "qwen2-padded", 12),
    *[("llama-bpe", "qwen2", s) for s in (13, 14, 15)],
    *[("llama-spm", "qwen2", s) for s in (16, 17)],
    ("qwen2", "llama-spm", 18),
    ("llama-spm", "gpt-2", 19),
    ("llama-spm", "llama-spm", 20),
    ("gpt-2", "bpe0", 21),
    ("llama-bpe", "llama-bpe", 22),
]
SETTINGS = [(0.3, 48), (0.55, 48), (0.8, 7)]  # (gamma, max_tokens); 7 tokens often ends inside a word


def _vocab(name):
    return padded(name[:-7]) if name.endswith("-padded") else vocab(name)


def _marks(b, n):
    return [needs_shared] if {b, n} - {"bpe0", "bpe1"} else []


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    cache = {}

    def get(b, n, seed):
        if (b, n, seed) not in cache:
            cache[b, n, seed] = write_pair(tmp_path_factory.mktemp("pair"), _vocab(b), _vocab(n), seed)
        return cache[b, n, seed]

    return get


@pytest.mark.parametrize(
    "b,n,seed", [pytest.param(b, n, s, marks=_marks(b, n), id=f"{b}+{n}-{s}") for b, n, s in PAIRS]
)
def test_matches_naive_reference(pair_files, b, n, seed):
    base_path, nudger_path = pair_files(b, n, seed)
    with load(base_path, "base") as base, load(nudger_path, "nudger") as nudger:
        text_space = not same_vocabulary(base, nudger)
        assert text_space == (_vocab(b).tokens[: len(_vocab(n).tokens)] != _vocab(n).tokens[: len(_vocab(b).tokens)])
        for (gamma, max_tokens), speculative in itertools.product(SETTINGS, (False, True)):
            prompts, events, done = run_engine(
                base, nudger, gamma=gamma, max_tokens=max_tokens, speculative=speculative
            )
            expected, reason, text = reference_token_mode(
                base, nudger, prompts.base, prompts.nudge, gamma=gamma, max_tokens=max_tokens, text_space=text_space
            )
            got = [(e.source, e.token) for e in events]
            assert got == expected, f"gamma={gamma}"
            assert done.stop_reason == reason
            assert done.text == text == "".join(e.text for e in events)
            # Only ids both vocabularies share are ever produced.
            assert all(t < min(base.n_vocab, nudger.n_vocab) for _, t in got) or text_space


def _features(events, done, nudger):
    words, current = [], []
    for e in events:
        if e.source == "nudge":
            current.append(e)
        elif current:
            words.append(current)
            current = []
    if current:
        words.append(current)
    return {
        "multi-token word": any(len(w) > 1 for w in words),
        "newline": "\n" in done.text,
        "split character": any(e.text == "" for e in events) and any(ord(c) > 127 for c in done.text),
        "base eos": done.stop_reason == "eos" and (not events or events[-1].source == "base"),
        "nudger eos": done.stop_reason == "eos" and bool(events) and events[-1].source == "nudge",
        "length inside a word": done.stop_reason == "length" and bool(current) and len(current) > 0,
    }


@needs_shared  # the self-built pairs alone never see the nudger end an answer
def test_random_pairs_cover_the_hard_cases(pair_files):
    """The random pairs above must actually exercise what the issue lists; count it on the engine."""
    seen = dict.fromkeys(_features([], type("D", (), {"text": "", "stop_reason": ""})(), None), 0)
    for b, n, seed in PAIRS:
        with load(pair_files(b, n, seed)[0], "base") as base, load(pair_files(b, n, seed)[1], "nudger") as nudger:
            for gamma, max_tokens in SETTINGS:
                _, events, done = run_engine(base, nudger, gamma=gamma, max_tokens=max_tokens)
                for k, v in _features(events, done, nudger).items():
                    seen[k] += v
    missing = [k for k, v in seen.items() if not v]
    assert not missing, f"no random pair exercised: {missing} ({seen})"


@pytest.mark.parametrize("b,n,seed", [("bpe0", "bpe0", 3), ("bpe0", "bpe1", 6)])
def test_gamma_exactly_at_a_planted_probability(pair_files, b, n, seed):
    """max p >= gamma lets the base write: at gamma == p the base writes, one ulp above it nudges."""
    base_path, nudger_path = pair_files(b, n, seed)
    with load(base_path, "base") as base, load(nudger_path, "nudger") as nudger:
        _, events, _ = run_engine(base, nudger, gamma=0.0, max_tokens=20)
        p = min(e.base_p for e in events)  # the least confident decision of a base-only run
        i = next(k for k, e in enumerate(events) if e.base_p == p)
        text_space = b != n
        for gamma, source in ((p, "base"), (float(np.nextafter(p, 1.0)), "nudge")):
            prompts, got, done = run_engine(base, nudger, gamma=gamma, max_tokens=20)
            exp, reason, _ = reference_token_mode(
                base, nudger, prompts.base, prompts.nudge, gamma=gamma, max_tokens=20, text_space=text_space
            )
            assert [(e.source, e.token) for e in got] == exp and done.stop_reason == reason
            # Every earlier decision was above p, so the run is the base-only run up to position i.
            assert [e.token for e in got[:i]] == [e.token for e in events[:i]]
            assert got[i].source == source
            assert got[i].base_p == p


def test_padding_ids_are_never_produced(tmp_path):
    """A nudger whose table favours one of its padding ids (beyond the base's vocabulary) must not
    produce it: token space cuts both models to the shared ids."""
    pytest.importorskip("gguf")
    v = vocab("bpe0")
    pv = padded("bpe0", extra=64)
    pad_id = len(v.tokens) + 10
    base_path, nudger_path = write_pair(tmp_path, v, pv, 30)
    from nudge_local.bench.synthetic import CHATML, Table, write_model

    table = Table(default={pad_id: 9.0, v.find(b" the"): 1.0})
    write_model(nudger_path, pv, table, chat_template=CHATML)
    with load(base_path, "base") as base, load(nudger_path, "nudger") as nudger:
        assert same_vocabulary(base, nudger)
        _, events, _ = run_engine(base, nudger, gamma=1.0, max_tokens=10)
        assert events and all(e.source == "nudge" for e in events)
        assert all(e.token < len(v.tokens) for e in events)
        assert all(e.token == v.find(b" the") for e in events)
