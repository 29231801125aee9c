"""The branching factor (docs/method.md#branching-factor): each token's entropy of the writing
model's row and, where the base was asked, of the base's, on generated models whose rows are known
tables; Stats' exp of the means; `run --json`; nothing when not asked."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import load, run_engine
from nudge_local.bench.synthetic import CHATML, FLOOR, Table, bpe_vocab, write_model
from nudge_local.engine.events import Stats, TokenEvent
from nudge_local.engine.sampling import entropy
from nudge_local.remote.rows import top_row
from nudge_local.tui.screens.inspector import InspectorScreen, branching_line
from nudge_local.tui.widgets.answer import AnswerView
from nudge_local.tui.widgets.token_view import TokenView
from pairs import vocab, write_pair
from test_tui import ask, make_app, run, until

ROOT = Path(__file__).resolve().parents[1]
V = bpe_vocab(0)


def tok(piece: str) -> int:
    t = V.find(piece.encode())
    assert t is not None, piece
    return t


THE, WORLD, COST, SURE, COMMA, OK, DOT, FIRST = map(
    tok, [" the", " world", " cost", " Sure", ",", " ok", ".", " First"]
)
EOS = V.eos

# The base is fairly sure of " the" (top-1 0.73 >= gamma 0.4), then torn three ways (1/3 < 0.4):
# the nudger writes " Sure" ","; " First" after it starts a new word, so the base is asked again,
# torn again, and the nudger writes " First" "." as a second word; " ok" ends that one and the base,
# asked once more, is sure of the end.
BASE = Table(
    rows={
        THE: {WORLD: 0.0, COST: 0.0, OK: 0.0},
        COMMA: {OK: 0.0, DOT: 0.0, WORLD: 0.0},
        DOT: {EOS: 4.0, THE: 1.5, COST: 0.5},
    },
    default={THE: 2.0, WORLD: 0.5, COST: 0.1},
)
NUDGER = Table(
    rows={
        THE: {SURE: 3.0, OK: 1.0},
        SURE: {COMMA: 2.5, DOT: 0.0, OK: -0.5},
        COMMA: {FIRST: 4.0, THE: 1.0},
        FIRST: {DOT: 3.0, OK: 1.0, WORLD: 0.5},
    },
    default={OK: 5.0, DOT: 3.0, THE: 2.0},
)
# source of each token and whether the base was asked at its position (a base token, or the first
# token of a nudged word)
PLANTED = [(THE, "base", True), (SURE, "nudge", True), (COMMA, "nudge", False), (FIRST, "nudge", True),
           (DOT, "nudge", False)]  # fmt: skip


def hand_entropy(table: Table, after: int, n_vocab: int) -> float:
    """The entropy of the table's row after token `after`, every unlisted id at FLOOR, in float64."""
    logits = np.full(n_vocab, FLOOR, dtype=np.float64)
    for t, v in table.rows.get(after, table.default).items():
        logits[t] = v
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


# The models store the table's logits in F16: the hand value holds to F16's rounding of them.
CLOSE = 2e-3


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = tmp_path_factory.mktemp("entropy")
    base = load(write_model(d / "base.gguf", V, BASE), "base")
    nudger = load(write_model(d / "nudger.gguf", V, NUDGER, chat_template=CHATML), "nudger")
    yield base, nudger, d
    base.close()
    nudger.close()


def previous_tokens(model, prompt: str, events: list[TokenEvent]) -> list[int]:
    """The token each event's row was read after: the prompt's last, then each written token."""
    return [model.tokenize(prompt)[-1]] + [e.token for e in events[:-1]]


def test_entropy_of_a_row_against_float64():
    rng = np.random.default_rng(0)
    row = (rng.standard_normal(262_144) * 3).astype(np.float32)
    p = np.exp(row.astype(np.float64) - row.max())
    p /= p.sum()
    assert entropy(row) == pytest.approx(float(-(p * np.log(p)).sum()), abs=1e-6)
    assert entropy(np.array([0.0, 0.0, 0.0, 0.0], dtype=np.float32)) == pytest.approx(math.log(4), abs=1e-12)
    assert entropy(np.array([-np.inf, 0.0, 0.0, -np.inf], dtype=np.float32)) == pytest.approx(math.log(2), abs=1e-12)
    assert entropy(np.array([1e4, 0.0, -1e30], dtype=np.float32)) == 0.0  # one-hot: never below 0


def test_a_served_rows_entropy_is_its_listed_tokens_and_the_evenly_spread_rest():
    n, listed = 1000, [(7, math.log(0.5)), (3, math.log(0.3))]
    rest = 0.2 / (n - 2)  # each unlisted id's share of the remaining mass
    expected = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3)) - 0.2 * math.log(rest)
    assert entropy(top_row(n, listed)) == pytest.approx(expected, abs=1e-6)
    # a row whose listed tokens hold all the mass: the rest is empty, not log(0)
    assert entropy(top_row(n, [(1, math.log(0.5)), (2, math.log(0.5))])) == pytest.approx(math.log(2), abs=1e-6)


def test_base_mode_each_token_has_the_base_rows_entropy(planted):
    base, nudger, _ = planted
    prompts, events, done = run_engine(base, nudger, mode="base", max_tokens=12, entropy=True)
    assert events
    for e, after in zip(events, previous_tokens(base, prompts.base, events), strict=True):
        assert e.entropy == pytest.approx(hand_entropy(BASE, after, base.n_vocab), abs=CLOSE)
        assert e.base_entropy == e.entropy
    hs = [e.entropy for e in events]
    assert done.stats.entropy_tokens == done.stats.base_entropy_tokens == len(events)
    assert done.stats.branching_factor == pytest.approx(math.exp(np.mean(hs)), rel=1e-9)
    assert done.stats.base_branching_factor == done.stats.branching_factor


@pytest.mark.parametrize("speculative", [False, True])
def test_nudged_base_entropy_at_the_gates_only(planted, speculative):
    """The base's entropy where the base was asked: each base token and the first token of each
    nudged word; the writing model's everywhere, from the row it chose from."""
    base, nudger, _ = planted
    prompts, events, done = run_engine(base, nudger, gamma=0.4, max_tokens=20, entropy=True, speculative=speculative)
    assert [(e.token, e.source, e.base_entropy is not None) for e in events] == PLANTED
    assert done.stop_reason == "eos"
    last = {"base": base.tokenize(prompts.base)[-1], "nudger": nudger.tokenize(prompts.nudge)[-1]}
    for i, e in enumerate(events):
        role = "base" if e.source == "base" else "nudger"
        table, model = (BASE, base) if role == "base" else (NUDGER, nudger)
        after = events[i - 1].token if i else last[role]  # each model reads its own prompt, then the answer
        assert e.entropy == pytest.approx(hand_entropy(table, after, model.n_vocab), abs=CLOSE), i
        if e.base_entropy is not None:
            after = events[i - 1].token if i else last["base"]
            assert e.base_entropy == pytest.approx(hand_entropy(BASE, after, base.n_vocab), abs=CLOSE), i
    # a nudged word's first token: the base torn three ways (log 3), the nudger's own row far narrower
    assert events[1].base_entropy == pytest.approx(math.log(3), abs=CLOSE)
    assert events[1].entropy < 0.5
    stats = done.stats
    assert stats.base_entropy_tokens == 3 and stats.entropy_tokens == 5
    asked = [e.base_entropy for e in events if e.base_entropy is not None]
    assert stats.base_branching_factor == pytest.approx(math.exp(sum(asked) / 3), rel=1e-9)
    assert stats.branching_factor == pytest.approx(math.exp(sum(e.entropy for e in events) / 5), rel=1e-9)


@pytest.mark.parametrize("seed", [41, 42, 43, 44])
def test_speculative_equals_token_mode_field_for_field(tmp_path, seed):
    base_path, nudger_path = write_pair(tmp_path, vocab("bpe0"), vocab("bpe0"), seed)
    with load(base_path, "base") as base, load(nudger_path, "nudger") as nudger:
        for gamma, draft in ((0.3, 2), (0.6, 4), (0.8, 1)):
            _, plain, d0 = run_engine(base, nudger, gamma=gamma, max_tokens=40, speculative=False, entropy=True)
            _, spec, d1 = run_engine(base, nudger, gamma=gamma, max_tokens=40, draft=draft, entropy=True)
            assert d1.stats.draft_proposed > 0
            assert spec == plain
            for key in ("entropy_tokens", "entropy_sum", "base_entropy_tokens", "base_entropy_sum"):
                assert getattr(d1.stats, key) == getattr(d0.stats, key), key


def test_nudger_mode_has_no_base_entropy(planted):
    base, nudger, _ = planted
    prompts, events, done = run_engine(base, nudger, mode="nudger", max_tokens=8, entropy=True)
    assert events
    for e, after in zip(events, previous_tokens(nudger, prompts.nudge, events), strict=True):
        assert e.base_entropy is None
        assert e.entropy == pytest.approx(hand_entropy(NUDGER, after, nudger.n_vocab), abs=CLOSE)
    assert done.stats.base_branching_factor is None and done.stats.base_entropy_tokens == 0
    assert done.stats.branching_factor == pytest.approx(math.exp(np.mean([e.entropy for e in events])), rel=1e-9)
    assert done.stats.as_dict()["base_branching_factor"] is None


def test_paper_mode_measures_nothing(planted):
    base, nudger, _ = planted
    _, events, done = run_engine(base, nudger, mode="paper", max_tokens=12, entropy=True)
    assert events and all(e.entropy is None and e.base_entropy is None for e in events)
    assert (done.stats.branching_factor, done.stats.base_branching_factor) == (None, None)


def test_not_asked_nothing_is_measured(planted):
    base, nudger, _ = planted
    for mode in ("nudged", "base", "nudger"):
        _, events, done = run_engine(base, nudger, mode=mode, max_tokens=12)
        assert events and all(e.entropy is None and e.base_entropy is None for e in events)
        assert all("entropy" not in e.as_dict() and "base_entropy" not in e.as_dict() for e in events)
        d = done.stats.as_dict()
        assert (d["branching_factor"], d["base_branching_factor"]) == (None, None)
        assert done.stats.entropy_tokens == done.stats.base_entropy_tokens == 0
        assert "branching" not in done.stats.line()


def test_stats_branching_factors_are_exp_of_the_mean_entropies():
    stats = Stats()
    assert (stats.branching_factor, stats.base_branching_factor) == (None, None)
    events = [
        TokenEvent("a", "base", 1, 0.9, 0.9, entropy=2.0, base_entropy=2.0),
        TokenEvent("b", "nudge", 2, 0.2, 0.8, entropy=0.5, base_entropy=3.0),
        TokenEvent("c", "nudge", 3, 0.2, 0.7, entropy=0.2),
    ]
    for e in events:
        stats.add_entropy(e)
    assert stats.branching_factor == pytest.approx(math.exp(2.7 / 3), rel=1e-12)
    assert stats.base_branching_factor == pytest.approx(math.exp(2.5), rel=1e-12)
    d = stats.as_dict()
    assert d["branching_factor"] == round(math.exp(0.9), 4) and d["base_branching_factor"] == round(math.exp(2.5), 4)
    assert d["entropy_tokens"] == 3 and d["base_entropy_tokens"] == 2
    assert "writing branching factor 2.46" in stats.line() and "base branching factor 12.18" in stats.line()
    assert events[2].as_dict()["entropy"] == 0.2 and "base_entropy" not in events[2].as_dict()
    assert branching_line(stats) == "Branching factor of this answer: writing 2.46, base 12.18"
    assert branching_line(d) == branching_line(stats)
    assert branching_line(Stats()) == branching_line(None) == branching_line({}) == ""


def test_run_json_carries_the_branching_factors(planted):
    _, _, d = planted
    argv = [sys.executable, "-m", "nudge_local.cli", "run", "Q", "--base", str(d / "base.gguf"), "--nudge",
            str(d / "nudger.gguf"), "--json", "--threads", "1", "--gamma", "0.4"]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    tokens, stats = out["tokens"], out["stats"]
    assert [(t["token"], t["source"], "base_entropy" in t) for t in tokens] == PLANTED
    assert all("entropy" in t for t in tokens)
    hs = [t["entropy"] for t in tokens]
    bs = [t["base_entropy"] for t in tokens if "base_entropy" in t]
    assert stats["branching_factor"] == pytest.approx(math.exp(sum(hs) / len(hs)), abs=1e-4)
    assert stats["base_branching_factor"] == pytest.approx(math.exp(sum(bs) / len(bs)), abs=1e-4)
    # without --json nothing is measured: the summary line has no branching factor
    r = subprocess.run(argv[:-5] + ["--threads", "1"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "branching" not in r.stderr, r.stderr


def test_the_chats_inspector_shows_the_answers_branching_factors(planted, tmp_path):
    """Live, from the answer's Stats; after a restart, from the stored ones. The tokens stay as the
    history stores them (no per-token entropy)."""
    _, _, d = planted
    files = {"base": d / "base.gguf", "nudger": d / "nudger.gguf"}

    async def inspect(app, pilot, view):
        await pilot.click(view.query_one(TokenView), offset=(2, 0))
        await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
        return app.screen.branching

    async def live():
        app = make_app(tmp_path, files)
        async with app.run_test(size=(100, 30)) as pilot:
            view = await ask(app, pilot)
            assert [t.token for t in view.tokens] == [t for t, _, _ in PLANTED]
            assert all(t.entropy is None and t.base_entropy is None for t in view.tokens)
            assert view.stats.base_entropy_tokens == 3 and view.stats.entropy_tokens == 5
            return await inspect(app, pilot, view), branching_line(view.stats)

    shown, expected = run(live())
    assert shown == expected and "writing" in shown and "base" in shown

    async def reopened():
        app = make_app(tmp_path, files)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await pilot.press("f3")
            await pilot.pause(0.1)
            await pilot.press("enter")
            await until(pilot, lambda: app.query("#chat AnswerView"))
            return await inspect(app, pilot, app.query_one("#chat AnswerView", AnswerView))

    assert run(reopened()) == shown
