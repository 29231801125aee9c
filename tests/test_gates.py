"""Gates beyond top-1 (nudge_local/engine/gates.py): each gate's decision against a reference from the
full logits row in float64, through token mode, speculative nudging and text space."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load
from nudge_local.bench.generated import make_pair
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Done
from nudge_local.engine.gates import GATES, gate_value, opens
from nudge_local.engine.generate import generate
from nudge_local.engine.local import Model
from nudge_local.engine.prompts import render_prompts
from nudge_local.engine.sampling import top1
from tiny import tiny_paths

SHAPES = ((64, 2, 128), (32, 1, 64))
QUESTION = "Find the total cost of the supplies, step by step."
THRESHOLDS = {"top1": 0.6, "margin": 0.35, "entropy": 1.2}


def reference(gate: str, logits: np.ndarray) -> float:
    """What the gate reads of a row, from the whole softmax in float64."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    if gate == "top1":
        return float(p.max())
    if gate == "margin":
        first, second = np.sort(p)[-2:][::-1]
        return float(first - second)
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


@pytest.mark.parametrize("gate", GATES)
def test_each_gate_reads_the_row_as_the_full_softmax_says(gate):
    rng = np.random.default_rng(7)
    for scale in (0.5, 2.0, 6.0):
        for _ in range(20):
            row = (rng.standard_normal(5000) * scale).astype(np.float32)
            want = reference(gate, row)
            got = gate_value(gate, row, top1(row)[1])
            assert got == pytest.approx(want, abs=1e-5)
            gamma = THRESHOLDS[gate]
            if abs(want - gamma) > 1e-4:
                assert opens(gate, gamma, row, top1(row)[1]) == (want > gamma if gate == "entropy" else want < gamma)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base_path, nudger_path = make_pair(tmp_path_factory.mktemp("gates"), None, 0.7, shapes=SHAPES)
    base, nudger = load(base_path, "base", 1024), load(nudger_path, "nudger", 1024)
    yield base, nudger
    base.close()
    nudger.close()


def decisions(base, prompts, events):
    """Each position where the base was asked (a base token, or a nudged word's first token) with the
    base's row there, scored again from the prompt and the answer's ids."""
    ids = base.tokenize(prompts.base)
    out = []
    for i, e in enumerate(events):
        if e.source == "base" or (e.source == "nudge" and (i == 0 or events[i - 1].source != "nudge")):
            out.append((e, base.logits(ids + [x.token for x in events[:i]]).copy()))
    return out


@pytest.mark.parametrize("gate", GATES)
def test_token_mode_writes_where_each_gate_says(pair, gate):
    """Every base token sits where the reference keeps the gate shut, every nudged word starts where
    it opens; speculative nudging writes the same answer; the gate changes who writes."""
    base, nudger = pair
    prompts = render_prompts(base, nudger, QUESTION)
    gamma = THRESHOLDS[gate]
    *events, done = generate(prompts, base=base, nudger=nudger, gate=gate, gamma=gamma, max_tokens=48,
                             speculative=False)  # fmt: skip
    assert isinstance(done, Done) and {e.source for e in events} == {"base", "nudge"}
    checked = 0
    for e, row in decisions(base, prompts, events):
        value = reference(gate, row)
        if abs(value - gamma) < 1e-4:
            continue
        nudges = value > gamma if gate == "entropy" else value < gamma
        assert nudges == (e.source == "nudge"), (gate, value, e)
        checked += 1
    assert checked >= 10
    *fast, _ = generate(prompts, base=base, nudger=nudger, gate=gate, gamma=gamma, max_tokens=48, speculative=True)
    assert [(e.source, e.token) for e in fast] == [(e.source, e.token) for e in events]


def test_a_gate_always_open_gives_every_word_to_the_nudger_and_paper_mode_keeps_the_papers(pair):
    base, nudger = pair
    prompts = render_prompts(base, nudger, QUESTION)
    for gate, always in (("top1", 1.0), ("margin", 1.0), ("entropy", 0.0)):
        *events, _ = generate(prompts, base=base, nudger=nudger, gate=gate, gamma=always, max_tokens=24)
        assert {e.source for e in events} == {"nudge"}, gate
    with pytest.raises(NudgeError, match="Paper mode keeps the paper's gate"):
        list(generate(prompts, mode="paper", base=base, nudger=nudger, gate="entropy", gamma=1.0))
    with pytest.raises(NudgeError, match="Unknown gate 'best'; choose one of top1, margin, entropy"):
        list(generate(prompts, base=base, nudger=nudger, gate="best"))


def test_the_entropy_gate_in_text_space_on_the_tiny_pair():
    """Different vocabularies: the base reads the text as its own tokens; each of its decisions is
    against the entropy of the row it wrote from (the event's base_entropy, measured on that row)."""
    base_path, nudger_path = tiny_paths()
    with Model(base_path, role="base", n_ctx=1024, n_threads=2) as base, \
            Model(nudger_path, role="nudger", n_ctx=1024, n_threads=2) as nudger:  # fmt: skip
        prompts = render_prompts(base, nudger, "How do I boil an egg?")
        *events, done = generate(prompts, base=base, nudger=nudger, gate="entropy", gamma=3.0, max_tokens=40,
                                 entropy=True)  # fmt: skip
        assert done.stats.nudge_tokens and done.stats.nudge_tokens < done.stats.tokens
        for i, e in enumerate(events):
            if e.source == "base":
                assert e.base_entropy <= 3.0
            elif i == 0 or events[i - 1].source != "nudge":
                assert e.base_entropy > 3.0
