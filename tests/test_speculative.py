"""Speculative nudging against token mode: token for token (greedy and per seed), and the same
distribution of first nudged words under sampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import load, needs_shared, run_engine
from nudge_local.bench.synthetic import CHATML, Table, alphabet, random_table, write_model
from nudge_local.engine.generate import generate
from nudge_local.engine.prompts import render_prompts
from nudge_local.engine.sampling import Sampling
from nudge_local.engine.speculative import DraftSizer
from pairs import padded, vocab


def agreeing_pair(tmp, v, seed, agreement, nudger_vocab=None):
    """A random base, and a nudger that copies the base's row at `agreement` of the tokens (so its
    drafts pass) and is random elsewhere; end of generation is in some rows of both."""
    rng = np.random.default_rng(seed)
    base_t = random_table(v, rng)
    nv = nudger_vocab or v
    own = random_table(nv, rng)
    rows = {
        t: (dict(base_t.rows[t]) if rng.random() < agreement else own.rows.get(t, own.default)) for t in base_t.rows
    }
    base = write_model(tmp / f"sb-{seed}.gguf", v, base_t)
    nudger = write_model(tmp / f"sn-{seed}.gguf", nv, Table(rows=rows, default=own.default), chat_template=CHATML)
    return base, nudger


CASES = [(s, a, d) for s, (a, d) in enumerate([(a, d) for a in (0.3, 0.6, 0.9) for d in (1, 2, 4, 8)], start=200)]
CASES += [(230 + i, 0.9, 16) for i in range(6)]


@pytest.mark.parametrize("seed,agreement,draft", CASES)
def test_greedy_output_is_token_modes_token_for_token(tmp_path, seed, agreement, draft):
    base_path, nudger_path = agreeing_pair(tmp_path, vocab("bpe0"), seed, agreement)
    with load(base_path, "base") as base, load(nudger_path, "nudger") as nudger:
        for gamma, max_tokens in ((0.3, 60), (0.6, 60), (0.45, 9)):
            _, plain, d0 = run_engine(base, nudger, gamma=gamma, max_tokens=max_tokens, speculative=False)
            _, spec, d1 = run_engine(base, nudger, gamma=gamma, max_tokens=max_tokens, speculative=True, draft=draft)
            assert [(e.source, e.token, e.text) for e in spec] == [(e.source, e.token, e.text) for e in plain]
            assert (d1.stop_reason, d1.text) == (d0.stop_reason, d0.text)
            assert d1.stats.draft_accepted <= d1.stats.draft_proposed
            assert d0.stats.draft_proposed == 0


def test_drafts_pass_and_save_base_calls(tmp_path):
    """With a nudger that agrees everywhere, most drafts pass and the base is called far fewer times."""
    base_path, nudger_path = agreeing_pair(tmp_path, vocab("bpe0"), 300, 1.0)
    with load(base_path, "base") as base, load(nudger_path, "nudger") as nudger:
        _, plain, d0 = run_engine(base, nudger, gamma=0.0, max_tokens=80, speculative=False)
        _, spec, d1 = run_engine(base, nudger, gamma=0.0, max_tokens=80, speculative=True, draft=4)
        assert [e.token for e in spec] == [e.token for e in plain]
        assert d0.stop_reason == "length", "pick a seed whose answer runs to max_tokens"
        assert d1.stats.draft_accepted >= 0.8 * d1.stats.draft_proposed > 0
        assert d1.stats.forward_calls["base"] * 3 <= d0.stats.forward_calls["base"]


@needs_shared
def test_padded_real_vocabulary(tmp_path):
    base_path, nudger_path = agreeing_pair(tmp_path, vocab("qwen2"), 301, 0.7, nudger_vocab=padded("qwen2"))
    with load(base_path, "base") as base, load(nudger_path, "nudger") as nudger:
        _, plain, _ = run_engine(base, nudger, gamma=0.4, max_tokens=50, speculative=False)
        _, spec, d1 = run_engine(base, nudger, gamma=0.4, max_tokens=50)
        assert [e.token for e in spec] == [e.token for e in plain]
        assert d1.stats.draft_proposed > 0


def test_sampling_keeps_token_modes_draws(tmp_path):
    """Drafts are greedy and draw nothing, so each seed gives token mode's sample exactly."""
    base_path, nudger_path = agreeing_pair(tmp_path, vocab("bpe0"), 302, 0.7)
    with load(base_path, "base") as base, load(nudger_path, "nudger") as nudger:
        for seed in range(5):
            sampling = Sampling(1.2, 0.95, seed)
            _, plain, _ = run_engine(base, nudger, gamma=0.5, max_tokens=30, sampling=sampling, speculative=False)
            _, spec, _ = run_engine(base, nudger, gamma=0.5, max_tokens=30, sampling=sampling)
            assert [e.token for e in spec] == [e.token for e in plain]


def test_first_nudged_word_has_token_modes_distribution(tmp_path):
    """Two-sample chi-square on the first nudged word over disjoint seed sets: speculative and token
    mode must not be told apart (p > 0.001)."""
    from scipy.stats import chi2_contingency

    v = vocab("bpe0")
    the, comma = v.find(b" the"), v.find(b",")
    choices = [v.find(p) for p in (b" Sure", b" First", b" so", b" we")]
    base = write_model(tmp_path / "b.gguf", v, Table(rows={the: {comma: 0.0, the: 0.0}}, default={the: 4.0}))
    nudger = write_model(
        tmp_path / "n.gguf", v, Table(rows={the: {c: w for c, w in zip(choices, (1.5, 1.0, 0.5, 0.0), strict=True)}},
                                      default={the: 3.0}), chat_template=CHATML,
    )  # fmt: skip
    alpha = alphabet(v)
    assert set(choices) <= set(alpha)

    def first_words(spec: bool, seeds):
        out = []
        with load(base, "base") as b, load(nudger, "nudger") as n:
            for s in seeds:
                _, ev, _ = run_engine(b, n, gamma=0.6, max_tokens=3, sampling=Sampling(1.0, 1.0, s), speculative=spec)
                out.append(next((e.token for e in ev if e.source == "nudge"), -1))
        return out

    a, b = first_words(False, range(0, 300)), first_words(True, range(1000, 1300))
    keys = sorted(set(a) | set(b))
    table = [[a.count(k) for k in keys], [b.count(k) for k in keys]]
    assert len(keys) >= 3 and chi2_contingency(table).pvalue > 0.001


def measured(step=0.020, row=0.0035, first_row=None, draft=0.003):
    """A sizer that has seen batches of 1 to 5 tokens cost `step` plus `row` per further token (the
    first further one `first_row`) and drafts cost `draft` a token."""
    sizer = DraftSizer()
    for n in range(1, 6):
        extra = 0 if n == 1 else (first_row or row) + row * (n - 2)
        sizer.checked(n, step + extra)
    sizer.drafted(4, 4 * draft)
    return sizer


def test_sizer_measures_before_it_drafts():
    sizer = DraftSizer()
    assert sizer.size() == 0  # a plain step first, to time the base alone
    sizer.checked(1, 0.02)
    assert sizer.size() == 2  # then a draft, to time the nudger and a batch


def test_sizer_drafts_long_where_checking_is_free_and_short_where_rows_cost():
    free = measured(row=0.0, draft=0.001)  # a GPU: a batch costs what one token does
    costly = measured(row=0.0035, first_row=0.007, draft=0.0033)  # this 2-core CPU with an F16 base
    for sizer in (free, costly):
        for _ in range(10):
            sizer.judged(7, 8)  # most drafted tokens pass
    assert free.size() >= 8
    assert 1 <= costly.size() <= 4
    assert measured(row=0.02, draft=0.005).size() == 0  # each row as dear as a step: never worth it


def test_sizer_shortens_after_rejections_and_tries_again():
    sizer = measured()
    for _ in range(10):
        sizer.judged(4, 4)
    long = sizer.size()
    for _ in range(6):
        sizer.judged(0, 2)
    assert sizer.size() < long
    for _ in range(20):
        sizer.judged(0, 1)
    sizes = [sizer.size() for _ in range(sizer.retry)]
    assert sizes[:-1] == [0] * (sizer.retry - 1) and sizes[-1] == 1  # plain rounds, then one short try


def test_unmeasured_batch_sizes_are_extrapolated_from_measured_ones():
    sizer = DraftSizer()
    sizer.checked(1, 0.020)
    sizer.checked(3, 0.030)
    assert sizer.batch(2) == pytest.approx(0.025)
    assert sizer.batch(5) == pytest.approx(0.040)


def test_a_pair_keeps_its_measurements_across_answers(tmp_path):
    base_path, nudger_path = agreeing_pair(tmp_path, vocab("bpe0"), 303, 0.9)
    with load(base_path, "base") as base, load(nudger_path, "nudger") as nudger:
        sizer = DraftSizer()  # kept beside the loaded pair, as the chat, the server and eval keep theirs
        assert sizer.size() == 0 and not sizer.batch_s  # nothing measured yet: a plain step first
        run_engine(base, nudger, gamma=0.4, max_tokens=30, sizer=sizer)
        assert 1 in sizer.batch_s and sizer.draft_s is not None
        measured = dict(sizer.batch_s)
        run_engine(base, nudger, "How do I boil an egg?", gamma=0.4, max_tokens=30, sizer=sizer)
        assert set(measured) <= set(sizer.batch_s)  # the second answer went on from the first's measurements


def test_sizer_stays_plain_where_drafting_rounds_measure_slower():
    """The cost model can be wrong (acceptance that comes in runs, overhead per round): once rounds
    that drafted came out slower per token than plain rounds, drafting stays off for the pair,
    through noise in the costs plain rounds keep measuring, until the nudger's cost against the
    base's falls measurably; then the model decides again."""
    sizer = measured()
    sizer.explore = 10**6  # no longer exploring drafts in this test
    for _ in range(10):
        sizer.judged(3, 4)
    favoured = sizer.size()
    assert favoured > 1  # the model alone says drafting pays
    sizer.finished(False, 1, 0.020)
    sizer.finished(True, 2, 0.050)  # but a drafting round took 25 ms a token against 20:
    assert sizer.size() > 0  # one round is no verdict (a failed draft costs more than a round)
    for _ in range(sizer.evidence):
        sizer.finished(True, 2, 0.050)  # rounds that drafted keep coming out slower
    sizes = []
    for i in range(sizer.off_wait):
        sizer.checked(1, 0.020 * (1.1 if i % 2 else 0.9))  # plain rounds, the machine's noise
        sizer.drafted(3, 3 * 0.003 * (1.15 if i % 3 else 0.85))  # the nudger's words
        sizes.append(sizer.size())
    assert sizes == [0] * sizer.off_wait
    for _ in range(10):
        sizer.drafted(3, 3 * 0.0015)  # the nudger now costs half as much against the base
    assert sizer.size() > 0  # drafts again
    assert sizer.per_token(True) is None  # what drafting measured before is forgotten


def test_a_slower_verdict_is_checked_again_after_a_doubling_wait():
    """A verdict taken while something else loaded the machine must not hold for ever: once it is
    `off_wait` rounds old the sizer drafts again for `evidence` rounds; where drafting is still
    slower it stays off twice as long, so re-checking costs few rounds."""
    sizer = measured()
    sizer.explore = 10**6
    for _ in range(10):
        sizer.judged(3, 4)
    sizer.finished(False, 1, 0.020)
    drafting_rounds, turned_on = 0, []
    for i in range(2000):
        k = sizer.size()
        sizer.finished(k > 0, 2 if k else 1, 0.050 if k else 0.020)  # drafting: 25 ms a token, plain 20
        drafting_rounds += k > 0
        if k and (not i or not turned_on or turned_on[-1][1] != i - 1):
            turned_on.append([i, i])
        elif k:
            turned_on[-1][1] = i
    starts = [a for a, _ in turned_on]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) >= 3 and all(g2 > g1 for g1, g2 in itertools.pairwise(gaps))  # the waits grow
    assert drafting_rounds <= (sizer.evidence + 1) * len(starts) < 0.1 * 2000


def test_a_slower_verdict_that_expires_gives_way_to_faster_drafting():
    sizer = measured()
    sizer.explore = 10**6
    for _ in range(10):
        sizer.judged(3, 4)
    sizer.finished(False, 1, 0.020)
    for _ in range(sizer.evidence):
        sizer.finished(True, 2, 0.050)  # measured while the machine was loaded
    sizes = [sizer.size() for _ in range(sizer.off_wait)]
    assert sizes == [0] * len(sizes)
    later = []
    for _ in range(3 * sizer.evidence):  # the load is gone: drafting rounds now take 15 ms a token
        k = sizer.size()
        sizer.finished(k > 0, 3 if k else 1, 0.045 if k else 0.020)
        later.append(k)
    assert later[0] > 0 and all(k > 0 for k in later[sizer.evidence :])  # drafting again, and it stays


def test_drafting_measured_faster_outlasts_a_dip_in_modelled_acceptance():
    """Acceptance comes in runs: a few failed drafts pull the modelled acceptance under the
    break-even while drafting rounds still measure faster than plain ones; drafting goes on."""
    sizer = measured()
    sizer.explore = 10**6
    for _ in range(10):
        sizer.judged(3, 4)
    k = sizer.size()
    assert k > 0
    sizer.finished(False, 1, 0.020)
    for _ in range(sizer.evidence):
        sizer.finished(True, 3, 0.045)  # 15 ms a token against plain rounds' 20
    for _ in range(20):
        sizer.judged(0, 2)  # a run of failed drafts
    assert sizer.best(sizer.acceptance) == 0  # the model alone would stop here
    assert sizer.size() == k


def test_sizer_drafts_again_where_drafting_rounds_measure_faster():
    sizer = measured()
    sizer.explore = 10**6
    for _ in range(10):
        sizer.judged(3, 4)
    sizer.finished(False, 1, 0.020)
    for _ in range(sizer.evidence):
        sizer.finished(True, 2, 0.050)
    assert sizer.size() == 0
    for _ in range(5):
        sizer.finished(True, 3, 0.045)  # drafting now measured at 15 ms a token
    assert sizer.size() > 0


def test_sizer_waits_to_retry_where_the_nudger_must_catch_up():
    """A retry first makes the nudger read what the base wrote since it last ran: with that read
    measured at 40 ms for 16 tokens, a one-token try (it saves at most 11.5 ms here) waits until
    the nudger has caught up by itself (a nudged word), however long the plain streak."""
    sizer = measured()
    sizer.drafted(2, 0.003 + 0.040, read=18)  # one call read 17 tokens (16 beyond a draft's one), one read 1
    assert sizer.catch_up(17) == pytest.approx(0.040 - 0.003)
    for _ in range(20):
        sizer.judged(0, 1)  # drafts fail: the model says no draft
    assert [sizer.size(lag=17) for _ in range(200)] == [0] * 200
    assert sizer.size(lag=1) == 1  # current again: the overdue try, at no catch-up


def test_sizer_never_tries_a_draft_where_the_nudger_costs_what_the_base_does():
    """A nudger as dear as the base (a model as its own nudger): no draft can pay, whatever passes,
    so after measuring that the sizer never drafts again."""
    sizer = measured(draft=0.020)
    for _ in range(10):
        sizer.judged(1, 1)  # every drafted token passes
    assert [sizer.size(lag=1 + i % 20) for i in range(300)] == [0] * 300


def test_catch_up_reads_are_measured_apart_from_drafted_tokens():
    sizer = measured(draft=0.003)
    assert sizer.catch_up(1) == 0
    assert sizer.catch_up(5) == pytest.approx(0.003 * (sizer.batch(5) / sizer.batch(1) - 1))  # as the base's grow
    sizer.drafted(3, 2 * 0.003 + 0.011, read=12)  # a 10-token catch-up, then two single tokens
    assert sizer.draft_s == pytest.approx(0.003)  # the drafted token's cost is not raised by it
    assert sizer.catch_up(10) == pytest.approx(0.011 - 0.003)


def test_the_prompt_read_teaches_the_sizer_nothing(tmp_path):
    """The first round of an answer reads the prompt: a prompt read in one batch is no draft's
    check, and taken for one it made a quantized pair draft 9 tokens."""
    base_path, nudger_path = agreeing_pair(tmp_path, vocab("bpe0"), 303, 0.9)
    with load(base_path, "base") as base, load(nudger_path, "nudger") as nudger:
        prompts = render_prompts(base, nudger, "Hi, so", base_format="{question}")
        sizer = DraftSizer()
        events = list(generate(prompts, base=base, nudger=nudger, gamma=0.4, max_tokens=1, sizer=sizer))
        assert len(events) == 2 and 1 < base.evaluated_tokens <= DraftSizer().max_draft + 1  # a short prompt
        assert not sizer.batch_s and sizer.draft_s is None and sizer.per_token(False) is None
        list(generate(prompts, base=base, nudger=nudger, gamma=0.4, max_tokens=30, sizer=sizer))
        assert 1 in sizer.batch_s and sizer.draft_s is not None  # the later rounds are measured
