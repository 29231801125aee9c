"""Paper mode against the naive API-style reference (every completion call from scratch)."""

from __future__ import annotations

import pytest

from conftest import load, needs_shared
from nudge_local.engine.events import Done
from nudge_local.engine.generate import generate
from nudge_local.engine.paper_mode import trim_repeated_suffix
from nudge_local.engine.prompts import render_prompts
from pairs import vocab, write_pair
from reference_paper import reference_paper

PAIRS = [
    *[("bpe0", "bpe0", s) for s in range(60, 68)],
    *[("bpe0", "bpe1", s) for s in range(68, 74)],
    *[("qwen2", "qwen2", s) for s in (74, 75)],
    *[("llama-bpe", "qwen2", s) for s in (76, 77)],
    ("llama-spm", "qwen2", 78),
    ("qwen2", "llama-spm", 79),
]
SETTINGS = [(0.3, 16, 40, 0), (0.6, 4, 40, 0), (0.5, 8, 150, 120)]  # gamma, chunk L, max rounds, budget


def _paper(base, nudger, gamma, chunk, rounds, budget):
    prompts = render_prompts(base, nudger, "Why is the sky blue?")
    out = list(generate(prompts, mode="paper", base=base, nudger=nudger, gamma=gamma, chunk=chunk,
                        max_rounds=rounds, max_tokens=budget))  # fmt: skip
    done = out[-1]
    assert isinstance(done, Done)
    return prompts, out[:-1], done


@pytest.mark.parametrize(
    "b,n,seed",
    [pytest.param(b, n, s, marks=[needs_shared] if {b, n} - {"bpe0", "bpe1"} else [], id=f"{b}+{n}-{s}")
     for b, n, s in PAIRS],
)  # fmt: skip
def test_paper_mode_matches_the_api_style_reference(tmp_path, b, n, seed):
    base_path, nudger_path = write_pair(tmp_path, vocab(b), vocab(n), seed)
    with load(base_path, "base", n_ctx=4096) as base, load(nudger_path, "nudger", n_ctx=4096) as nudger:
        for gamma, chunk, rounds, budget in SETTINGS:
            prompts, events, done = _paper(base, nudger, gamma, chunk, rounds, budget)
            text, words, reason, n_rounds = reference_paper(
                base, nudger, prompts.base, prompts.nudge, gamma=gamma, chunk=chunk, max_rounds=rounds,
                max_tokens=budget,
            )  # fmt: skip
            assert (done.text, list(done.result.nudging_words), done.stop_reason) == (text, words, reason)
            assert done.result.rounds == n_rounds
            assert "".join(e.text for e in events) == done.text  # the stream applies the final trim


def test_the_random_pairs_reach_every_ending(tmp_path):
    """The self-built pairs above (no ../shared needed) end in each of the four ways, so the
    comparison with the reference covers every ending."""
    reasons = set()
    for b, n, seed in PAIRS:
        if {b, n} - {"bpe0", "bpe1"}:
            continue
        base_path, nudger_path = write_pair(tmp_path, vocab(b), vocab(n), seed)
        with load(base_path, "base", n_ctx=4096) as base, load(nudger_path, "nudger", n_ctx=4096) as nudger:
            reasons |= {_paper(base, nudger, *setting)[2].stop_reason for setting in SETTINGS}
    assert reasons == {"nudging_model_stop", "repeated_nudging_words", "round", "length"}


def test_150_rounds_evaluate_ten_times_fewer_tokens(tmp_path):
    """Among random pairs, one that runs all 150 rounds: the cached mode evaluates >= 10x fewer tokens."""
    for seed in range(100, 140):
        base_path, nudger_path = write_pair(tmp_path, vocab("bpe0"), vocab("bpe0"), seed, eos_weight=0.0)
        with load(base_path, "base", n_ctx=8192) as base, load(nudger_path, "nudger", n_ctx=8192) as nudger:
            prompts, _, done = _paper(base, nudger, 0.5, 16, 150, 0)
            if done.stop_reason != "round":
                continue
            cached = sum(done.stats.evaluated_tokens.values())
            before = base.evaluated_tokens + nudger.evaluated_tokens
            text, words, reason, _ = reference_paper(base, nudger, prompts.base, prompts.nudge, gamma=0.5)
            naive = base.evaluated_tokens + nudger.evaluated_tokens - before
            assert (text, words, reason) == (done.text, list(done.result.nudging_words), "round")
            assert naive >= 10 * cached, (naive, cached)
            return
    pytest.fail("no seed ran 150 rounds")


def test_trim_reproduces_the_binary_search():
    rep = "abcdefghij" * 4  # 40 characters
    assert trim_repeated_suffix("  x" + rep + rep + "\n") == "x" + rep
    assert trim_repeated_suffix("short short") == "short short"  # repeats under 30 characters stay
    # the search is not monotonic: a 31-char repeat is found only if the bisection lands on it
    rep31 = "0123456789" * 3 + "x"
    s = "Q" + rep31 + rep31  # 63 characters: the first midpoint is 31, a repeat
    assert trim_repeated_suffix(s) == "Q" + rep31
    s = "PP" + rep31 + rep31  # 64: the first midpoint, 32, is no repeat; the search goes below 30
    assert s[:-31].endswith(s[-31:]) and trim_repeated_suffix(s) == s
