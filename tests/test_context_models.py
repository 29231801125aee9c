"""Cached runs against from-scratch references on generated models whose output depends on context.

The zero-weight test models make each next-token distribution a function of the last token alone,
so a KV cache holding a wrong token or missing one would pass every comparison. These models add
seeded random attention and feed-forward weights (synthetic.write_model's `context`): the planted
argmax holds, and every probability depends on the whole prefix and its positions.

What "equal" means here (docs/method.md#batch-shape-rounding): the reference evaluates each context
from scratch in one batch, the engine incrementally; llama.cpp may round those batch shapes
differently. Each model's rounding is measured, and the outputs must be token for token equal up to
the first decision whose margin is within that rounding, with every token's probability equal within
it. Such a parting is counted, and more than MAX_PARTED of a pair's answers parting fails the test
(none parted when measured)."""

from __future__ import annotations

import numpy as np
import pytest

import nudge_local.engine.local as model_module
from conftest import load, needs_shared, run_engine
from nudge_local.bench.synthetic import CHATML, PIECES, alphabet, random_table, write_model
from nudge_local.engine.local import Model
from nudge_local.engine.sampling import top1
from nudge_local.engine.views import same_vocabulary
from pairs import vocab
from reference import reference_token_mode
from reference_paper import reference_paper

CONTEXT = 0.1  # random weights' scale: the top-1 probability moves by ~0.02 (up to ~0.1) with context
SETTINGS = [(0.3, 40), (0.55, 40), (0.8, 12)]  # (gamma, max_tokens)
# Of a pair's six answers (each setting in token mode and speculative), how many may part from the
# reference at a near-tie: none did on any pair here, so one is rounding and two is a fault.
MAX_PARTED = 1


def context_pair(tmp, base_vocab: str, nudger_vocab: str, seed: int, *, quant="F16", context=CONTEXT):
    rng = np.random.default_rng(seed)
    bv, nv = vocab(base_vocab), vocab(nudger_vocab)
    shape = dict(layers=2, ffn=64, context=context, quant=quant)
    base = write_model(tmp / f"base-{seed}-{quant}-{context}.gguf", bv, random_table(bv, rng), seed=seed, **shape)
    nudger = write_model(tmp / f"nudger-{seed}-{quant}-{context}.gguf", nv, random_table(nv, rng),
                         chat_template=CHATML, seed=seed + 1, **shape)  # fmt: skip
    return base, nudger


def _rows_in_chunks(model: Model, ids: list[int], sizes: list[int]) -> np.ndarray:
    """Every position's logits, `ids` evaluated in consecutive batches of the given sizes."""
    model.reset()
    rows, start = [], 0
    for size in sizes:
        end = min(len(ids), start + size)
        rows.append(model.evaluate(ids[:end], list(range(start, end))))
        start = end
    model.reset()
    return np.concatenate(rows)


def batch_rounding(model: Model, ids: list[int], seed: int) -> tuple[float, float]:
    """How far this model's top-1 probability and leading logits move between batch shapes: `ids`
    evaluated whole, one token at a time, and in random chunks of 1 to 8 (the shapes the engine
    and the references use). Returns (top-1 probability, logit gap between the top two)."""
    chunks = [int(k) for k in np.random.default_rng(seed).integers(1, 9, len(ids))]
    shapes = [_rows_in_chunks(model, ids, s) for s in ([len(ids)], [1] * len(ids), chunks)]
    lead = np.argsort(-shapes[0], axis=1)[:, :2]  # the two that decide an argmax, and their gap
    gap = [np.diff(np.take_along_axis(rows, lead, axis=1), axis=1) for rows in shapes]
    d_logit = d_p = 0.0
    for other, other_gap in zip(shapes[1:], gap[1:], strict=True):
        d_logit = max(d_logit, float(np.abs(gap[0] - other_gap).max()))
        d_p = max(d_p, max(abs(top1(a)[1] - top1(b)[1]) for a, b in zip(shapes[0], other, strict=True)))
    return d_p, d_logit


def tolerance(base: Model, nudger: Model, seed: int) -> tuple[float, float]:
    """Twice the larger of both models' measured rounding, on a random text of their alphabet as
    long as the answers compared."""
    out = [0.0, 0.0]
    for m in (base, nudger):
        alpha = alphabet_of(m)
        ids = m.tokenize("Question: why?") + [int(t) for t in np.random.default_rng(seed).choice(alpha, 60)]
        out = [max(a, 2 * b) for a, b in zip(out, batch_rounding(m, ids, seed), strict=True)]
    return out[0], out[1]


def alphabet_of(m: Model) -> list[int]:
    """The ids of the random tables' pieces in this model's vocabulary."""
    pieces = {m.piece(i): i for i in range(m.n_vocab)}
    return [pieces[p] for p in PIECES if p in pieces]


def parted_at(events, done, expected, reason, margins, probs, tol) -> int | None:
    """Token for token equal, each probability within the rounding, up to the first decision whose
    margin the rounding could cross; after such a decision the two runs may part. Returns where they
    parted (None: not at all)."""
    eps_p, eps_logit = tol
    got = [(e.source, e.token) for e in events]
    for i, (g, e) in enumerate(zip(got, expected, strict=False)):
        if g != e:
            gate, gap = margins[i]
            assert gate <= eps_p or gap <= eps_logit, f"position {i}: {g} != {e}, margins {margins[i]}, tol {tol}"
            return i
        assert abs(events[i].p - probs[i]) <= eps_p + 1e-5, f"position {i}: p {events[i].p} vs {probs[i]}"
    if len(got) != len(expected) or done.stop_reason != reason:
        end = min(len(got), len(expected))
        gate, gap = margins[end]
        assert gate <= eps_p or gap <= eps_logit, (len(got), len(expected), done.stop_reason, reason)
        return end
    return None


def compare_token_mode(base, nudger, tol, **kw) -> list[int]:
    """Each setting's answer against the reference; returns where answers parted at a near-tie."""
    text_space = not same_vocabulary(base, nudger)
    parted = []
    for gamma, max_tokens in SETTINGS:
        prompts, events, done = run_engine(base, nudger, gamma=gamma, max_tokens=max_tokens, **kw)
        expected, reason, _, margins, probs = reference_token_mode(
            base, nudger, prompts.base, prompts.nudge, gamma=gamma, max_tokens=max_tokens, text_space=text_space,
            detail=True,
        )  # fmt: skip
        at = parted_at(events, done, expected, reason, margins, probs, tol)
        if at is not None:
            parted.append(at)
    return parted


def test_context_models_depend_on_context_and_keep_the_planted_argmax(tmp_path):
    v = vocab("bpe0")
    table = random_table(v, np.random.default_rng(0), eos_weight=0.0)
    alpha = alphabet(v)
    rng = np.random.default_rng(1)
    a = [int(t) for t in rng.choice(alpha, 30)]
    b = [int(t) for t in rng.choice(alpha, 30)]
    b[1::2] = a[1::2]  # the same token at every odd position, after other prefixes
    for quant in ("F16", "Q8_0", "Q4_0"):
        rows = {}
        for context in (0.0, CONTEXT):
            path = write_model(tmp_path / f"m-{quant}-{context}.gguf", v, table, layers=2, ffn=64, context=context,
                               quant=quant)  # fmt: skip
            with load(path) as m:
                rows[context, "a"] = m.evaluate(a, list(range(30)))
                m.reset()
                rows[context, "b"] = m.evaluate(b, list(range(30)))
        moved = [abs(top1(rows[CONTEXT, "a"][i])[1] - top1(rows[CONTEXT, "b"][i])[1]) for i in range(1, 30, 2)]
        assert max(moved) > 0.02, (quant, moved)  # context moves the top-1 probability
        flat = [abs(top1(rows[0.0, "a"][i])[1] - top1(rows[0.0, "b"][i])[1]) for i in range(1, 30, 2)]
        assert max(flat) == 0.0  # without: only the last token counts
        # The argmax is the table's (as this quantization stores it) at every position.
        assert [int(r.argmax()) for r in rows[CONTEXT, "a"]] == [int(r.argmax()) for r in rows[0.0, "a"]], quant


PAIRS = [
    pytest.param("bpe0", "bpe0", 41, "F16", id="bpe0-F16"),
    pytest.param("bpe0", "bpe0", 42, "Q4_0", id="bpe0-Q4_0"),
    pytest.param("bpe0", "bpe0", 43, "Q8_0", id="bpe0-Q8_0"),
    pytest.param("bpe0", "bpe1", 44, "F16", id="bpe0+bpe1-text-space"),
    pytest.param("qwen2", "qwen2", 45, "F16", id="qwen2", marks=needs_shared),
    pytest.param("llama-bpe", "qwen2", 46, "Q4_0", id="llama-bpe+qwen2-text-space", marks=needs_shared),
]


@pytest.mark.parametrize("b,n,seed,quant", PAIRS)
def test_token_mode_and_speculative_match_the_reference(tmp_path, b, n, seed, quant):
    base_path, nudger_path = context_pair(tmp_path, b, n, seed, quant=quant)
    with load(base_path, "base", n_ctx=1024) as base, load(nudger_path, "nudger", n_ctx=1024) as nudger:
        tol = tolerance(base, nudger, seed)
        print(f"\n{b}+{n} {quant}: rounding tolerance p {tol[0]:.4f}, logit gap {tol[1]:.4f}")
        parted = {speculative: compare_token_mode(base, nudger, tol, speculative=speculative)
                  for speculative in (False, True)}  # fmt: skip
        print(f"  answers parted at a near-tie, at positions: {parted}")
        assert sum(map(len, parted.values())) <= MAX_PARTED, f"more than {MAX_PARTED} of 6 answers parted: {parted}"


@pytest.mark.parametrize("b,n,seed", [("bpe0", "bpe0", 51), ("bpe0", "bpe1", 52)])
def test_paper_mode_matches_the_api_style_reference(tmp_path, b, n, seed):
    base_path, nudger_path = context_pair(tmp_path, b, n, seed)
    with load(base_path, "base", n_ctx=2048) as base, load(nudger_path, "nudger", n_ctx=2048) as nudger:
        for gamma in (0.3, 0.6):
            prompts, events, done = run_engine(base, nudger, mode="paper", gamma=gamma, chunk=8, max_rounds=12)
            text, words, reason, rounds = reference_paper(base, nudger, prompts.base, prompts.nudge, gamma=gamma,
                                                          chunk=8, max_rounds=12)  # fmt: skip
            # Completion calls read their texts one token at a time in both, from the same prefixes.
            assert (done.text, list(done.result.nudging_words), done.stop_reason) == (text, words, reason)
            assert done.result.rounds == rounds


# -- a deliberately broken cache is caught -----------------------------------------------------------


def _stale_token(monkeypatch):
    """The cache claims one more matching token than it has: a wrong token stays at that position."""
    true = model_module.common_prefix

    def lying(a, b):
        n = true(a, b)
        return n + 1 if n < min(len(a), len(b)) else n

    monkeypatch.setattr(model_module, "common_prefix", lying)


def _dropped_token(monkeypatch):
    """Each evaluation of several new tokens drops its first one, the token before it taking its
    place (llama.cpp refuses positions that skip, so a drop that closes up stays consistent)."""
    fill = Model._fill

    def dropping(self, chunk, start, wanted):
        if len(chunk) < 2 or start == 0:
            return fill(self, chunk, start, wanted)
        return fill(self, [self._tokens[start - 1], *chunk[1:]], start, wanted)

    monkeypatch.setattr(Model, "_fill", dropping)


@pytest.mark.parametrize("breakage", [_stale_token, _dropped_token], ids=["stale token", "dropped token"])
def test_a_broken_cache_fails_the_comparison_on_context_models_only(tmp_path, monkeypatch, breakage):
    """The same breakage passes unnoticed on zero-weight models and fails on context models."""
    breakage(monkeypatch)
    caught = {}
    for context in (0.0, CONTEXT):
        base_path, nudger_path = context_pair(tmp_path, "bpe0", "bpe1", 61, context=context)  # text space
        with load(base_path, "base", n_ctx=1024) as base, load(nudger_path, "nudger", n_ctx=1024) as nudger:
            try:
                compare_token_mode(base, nudger, (1e-4, 1e-3), speculative=False)
                caught[context] = False
            except AssertionError:
                caught[context] = True
    assert caught == {0.0: False, CONTEXT: True}


def test_a_refused_partial_removal_starts_again_from_position_0(tmp_path, monkeypatch):
    """Recurrent and hybrid models refuse to cut their cache part way: the model clears it, and must
    then evaluate the whole sequence again, not go on from where the cut was asked."""
    base_path, _ = context_pair(tmp_path, "bpe0", "bpe0", 71)
    alpha = alphabet(vocab("bpe0"))
    rng = np.random.default_rng(71)
    a = [int(t) for t in rng.choice(alpha, 40)]
    b = a[:20] + [int(t) for t in rng.choice(alpha, 20)]
    rows = list(range(30, 40))
    with load(base_path) as m, load(base_path) as fresh:
        m.evaluate(a, [39])
        monkeypatch.setattr(model_module.ll, "llama_memory_seq_rm", lambda *args: False)
        got = m.evaluate(b, rows)
        assert m.held_tokens == b
        want = fresh.evaluate(b, rows)  # a fresh context, the same batch shape: the whole sequence at once
        assert np.array_equal(got, want)
