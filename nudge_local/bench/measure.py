"""Side-by-side decoding benchmark: every mode on the same pair, in one process, with ratios (this
module measures; cli.py reads the options and picks the pair).

    .venv/bin/python scripts/bench.py [--vocab ../shared/vocab/ggml-vocab-llama-bpe.gguf]
        [--agreement 0.5,0.7,0.9] [--max-tokens 128] [--rounds 3] [--modes base,speculative] [--json out.json]
    .venv/bin/python scripts/bench.py --base BASE.gguf --nudge NUDGER.gguf   # a real pair (paths,
    .venv/bin/python scripts/bench.py --pair smollm2-1.7b+360m               # hub files or a catalog pair)
        [--questions 5] [--chat-template FILE]                                  # answers per round, nudger template
    nudge-local bench ...                                                       # the same

Modes: base only, nudger only, token mode (nudged), speculative nudging (same output as token
mode, drafts checked in one batch), paper mode with its completion calls answered
from the prefix cache (paper), and paper mode API-style, every completion call evaluated from
scratch as the authors' client does (paper-api). Each mode runs once a round, in a shuffled
order, for `--rounds` rounds; the table gives median tokens per second, the median over rounds of
each round's ratio to that round's base-only run (and the range of those ratios), then over all
rounds tokens evaluated, forward calls per generated token and the share of drafted tokens
accepted; speculative's own paired ratio to token mode follows. A second table says where each
mode's time went, per written token (base steps, base reads, nudger reads, nudger writes,
tokenizing, Python), and the limit its model calls alone imply (docs/method.md#where-the-time-goes):
a mode far below its limit is a slow program, one near it a slow pair. A round answers `--questions`
questions (1 on the generated pairs, 5 on a real one). Where speculative's answers leave token
mode's (batch-shape rounding with real weights), it says how many, and where. Absolute times on
shared machines are noise; the ratios are the result.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from nudge_local.catalog import is_url
from nudge_local.engine.events import Done
from nudge_local.engine.generate import generate
from nudge_local.engine.local import Model, common_prefix
from nudge_local.engine.paper_mode import api_style_complete, paper_steps, trim_repeated_suffix
from nudge_local.engine.prompts import render_prompts
from nudge_local.engine.speculative import DraftSizer
from nudge_local.engine.stream import stream
from nudge_local.engine.views import make_views, reads_text, same_vocabulary
from nudge_local.remote.connect import connect
from nudge_local.remote.http import Endpoint, flag

# The systems compared: the engine's modes, plus speculative and the authors' API-style paper mode.
SYSTEMS = ("base", "nudger", "nudged", "speculative", "paper", "paper-api")
# The questions a round answers, varied in kind; the first is the generated pairs' only one.
QUESTIONS = (
    "Find the total cost of the supplies, step by step.",
    "Why is the sky blue?",
    "How do I boil an egg?",
    "What causes the seasons on Earth?",
    "Write a short story about a lighthouse keeper.",
    "Explain how a bill becomes a law in the United States.",
    "Give three tips for learning a new language.",
    "What is the difference between a virus and a bacterium?",
)
# Figures of one answer that add up over a round's answers.
SUMMED = ("tokens", "seconds", "in_llama", "evaluated", "forward_calls", "base_calls", "draft_proposed",
          "draft_accepted")  # fmt: skip


# Where a run's time goes: the models' calls into llama.cpp (the base writing its own tokens; the
# base reading its prompt and the nudged words; the nudger reading its prompt and catching up with
# the base's text; the nudger writing), tokenizing, and the rest, Python's own.
PARTS = ("base_steps", "base_reads", "nudger_reads", "nudger_writes", "tokenize", "python")
CALLS = PARTS[:4]  # the model calls no program can skip: their sum sets the pair's limit


def _clocks(base: Model, nudger: Model) -> dict[str, float]:
    """The models' time counters now (model.py; a served model counts its server's decoding only)."""
    return {
        f"{role}_{clock}": getattr(m, f"{clock}_seconds", 0.0)
        for role, m in (("base", base), ("nudger", nudger))
        for clock in ("decode", "read", "tokenize")
    }


def time_parts(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """A run's `seconds` split into PARTS, from the models' counters before and after it."""
    d = {k: after[k] - before[k] for k in after}
    parts = {
        "base_steps": d["base_decode"] - d["base_read"],
        "base_reads": d["base_read"],
        "nudger_reads": d["nudger_read"],
        "nudger_writes": d["nudger_decode"] - d["nudger_read"],
        "tokenize": d["base_tokenize"] + d["nudger_tokenize"],
    }
    parts["python"] = seconds - sum(parts.values())
    return parts


def run_mode(mode: str, base: Model, nudger: Model, prompts, args, sizer: DraftSizer | None = None) -> dict:
    """One answer in one mode. `sizer`: the pair's draft sizer, kept across its answers (speculative)."""
    base.reset()
    nudger.reset()
    clocks = _clocks(base, nudger)
    t0 = time.perf_counter()
    if mode == "paper-api":
        steps = paper_steps(base, nudger, prompts.base, prompts.nudge, gamma=args.gamma, chunk=16,
                            max_rounds=150, max_tokens=args.max_tokens, complete=api_style_complete)  # fmt: skip
        events = stream(steps, {"base": base, "nudger": nudger}, {}, trim=trim_repeated_suffix)
    else:
        engine_mode = "nudged" if mode == "speculative" else mode
        events = generate(prompts, mode=engine_mode, base=base, nudger=nudger, gamma=args.gamma,
                          max_tokens=args.max_tokens, speculative=mode == "speculative",
                          draft=getattr(args, "draft", None), sizer=sizer)  # fmt: skip
    tokens, done = [], None
    for ev in events:
        if isinstance(ev, Done):
            done = ev
        else:
            tokens.append(ev)
    seconds = time.perf_counter() - t0
    parts = time_parts(clocks, _clocks(base, nudger), seconds)
    in_llama = sum(parts[k] for k in CALLS)
    s = done.stats
    return {
        "tokens": len(tokens),
        "events": [(e.source, e.token) for e in tokens],
        "text": done.text,
        "seconds": seconds,
        "in_llama": in_llama,
        "parts": parts,
        "tps": len(tokens) / seconds if seconds else 0.0,
        "evaluated": sum(s.evaluated_tokens.values()),
        "forward_calls": sum(s.forward_calls.values()),
        "base_calls": s.forward_calls.get("base", 0),
        "nudge_ratio": s.nudge_ratio,
        "python_ms_per_token": 1000 * (seconds - in_llama) / max(1, len(tokens)),
        "python_share": (seconds - in_llama) / seconds if seconds else 0.0,
        "acceptance": s.draft_accepted / s.draft_proposed if s.draft_proposed else None,
        "draft_proposed": s.draft_proposed,
        "draft_accepted": s.draft_accepted,
    }


def agreement_on_path(
    base: Model, nudger: Model, prompts, events: list[tuple[str, int]], *, text_space: bool
) -> float | None:
    """The share of the base's own tokens (in token mode's answer) that the nudger's greedy choice
    matches: the agreement the pair showed in generation, whatever was planted. The nudger reads the
    answer as it does in generation (its view, views.py). An event's token is an id of the model
    that wrote it, so a pair in text space (docs/method.md#token-space-and-text-space) compares
    text: at each base token the nudger writes greedily until its text is as long as the base
    token's, and agrees where that text starts with the base token's (tokenizers cut words
    differently: " eggs" may be " egg" + "s")."""
    answer, _, view = make_views(base, nudger, prompts.base, prompts.nudge, text_space=text_space)
    agree = confident = 0
    for source, token in events:
        piece = (base if source == "base" else nudger).piece(token)
        if source == "base" and piece:
            confident += 1
            row = view.logits()
            if text_space:
                agree += _greedy_text(nudger, nudger.held_tokens, len(piece)).startswith(piece)
            else:
                agree += int(row.argmax()) == token
        answer.add(token, piece)
    return agree / confident if confident else None


def _greedy_text(model: Model, ids: list[int], length: int) -> bytes:
    """The model's greedy continuation of `ids`, at least `length` bytes long unless it ends first."""
    text = b""
    while len(text) < length:
        t = int(model.logits(ids).argmax())
        if model.is_eog(t):
            break
        text += model.piece(t)
        ids = [*ids, t]
    return text


def run_answers(mode: str, base: Model, nudger: Model, prompt_sets: list, args, sizer: DraftSizer) -> dict:
    """One mode answers every question in turn: figures summed over the answers, the answers kept."""
    runs = [run_mode(mode, base, nudger, prompts, args, sizer) for prompts in prompt_sets]
    total = {k: sum(r[k] for r in runs) for k in SUMMED}
    seconds, tokens = total["seconds"], total["tokens"]
    total.update(
        tps=tokens / seconds if seconds else 0.0,
        nudge_ratio=sum(r["nudge_ratio"] * r["tokens"] for r in runs) / max(1, tokens),
        python_ms_per_token=1000 * (seconds - total["in_llama"]) / max(1, tokens),
        python_share=(seconds - total["in_llama"]) / seconds if seconds else 0.0,
        parts={k: sum(r["parts"][k] for r in runs) for k in PARTS},
        events=runs[0]["events"],
        answers=[r["events"] for r in runs],
        texts=[r["text"] for r in runs],
    )
    return total


def run_rounds(base: Model, nudger: Model, prompt_sets: list, modes: list[str], args) -> dict[str, list[dict]]:
    runs = {m: [] for m in modes}
    sizer = DraftSizer()  # the pair's, as a loaded pair keeps one across its answers
    for m in modes:  # warm-up: the first pass pages the weights in from disk
        run_mode(m, base, nudger, prompt_sets[0], argparse.Namespace(**{**vars(args), "max_tokens": 8}), sizer)
    order = random.Random(0)
    for _ in range(args.rounds):
        # Interleaved, so drift on a shared machine hits every mode alike; in a shuffled order,
        # so no mode always runs right after another.
        for m in order.sample(modes, len(modes)):
            runs[m].append(run_answers(m, base, nudger, prompt_sets, args, sizer))
    return runs


def open_model(ref: Path | str, role: str, args):
    """A GGUF file loaded here, or a model on a server (its key from $NUDGE_LOCAL_BASE_API_KEY /
    $NUDGE_LOCAL_NUDGE_API_KEY)."""
    if is_url(ref):
        key = os.environ.get(f"NUDGE_LOCAL_{flag(role).upper()}_API_KEY") or None
        return connect(Endpoint(str(ref), getattr(args, f"{flag(role)}_model", None), api_key=key), role)
    return Model(ref, role=role, n_threads=args.threads)


def bench_pair(base_path: Path | str, nudger_path: Path | str, modes: list[str], args) -> dict:
    with open_model(base_path, "base", args) as base, open_model(nudger_path, "nudger", args) as nudger:
        template = getattr(args, "chat_template", None)
        prompt_sets = [render_prompts(base, nudger, q, chat_template=template) for q in QUESTIONS[: args.questions]]
        for m in (base, nudger):
            if isinstance(m, Model):
                m.read_cuts()  # once, before any timing (a model would do it when tokenizing had cost as much)
        runs = run_rounds(base, nudger, prompt_sets, modes, args)
        agreement = None
        if "nudged" in runs and not reads_text(nudger):  # a model served by text only has no greedy row to read
            text_space = not same_vocabulary(base, nudger)
            agreement = agreement_on_path(
                base, nudger, prompt_sets[0], runs["nudged"][0]["events"], text_space=text_space
            )
    table = summarize(runs)
    if agreement is not None:
        print(f"the nudger's choice is the base's at {agreement:.0%} of the base's tokens in token mode's answer")
        table["agreement_on_path"] = agreement
    compare_texts(runs, table)
    return table


def paired(runs: dict[str, list[dict]], mode: str, against: str) -> list[float]:
    """Each round's ratio of `mode`'s speed to the same round's `against`: the machine's speed
    drifts between rounds, and a ratio within one round cancels most of it."""
    if mode not in runs or against not in runs:
        return []
    return [r["tps"] / a["tps"] for r, a in zip(runs[mode], runs[against], strict=True)]


def summarize(runs: dict[str, list[dict]]) -> dict:
    """The table: one row per mode, printed and returned."""
    print(f"{'mode':11} {'tokens':>6} {'tok/s':>7} {'x base':>6} {'(rounds)':>11} {'eval/tok':>8} "
          f"{'base calls/tok':>14} {'accept':>6} {'nudged':>6}")  # fmt: skip
    table = {}
    for m, rs in runs.items():
        tps = statistics.median(r["tps"] for r in rs)
        ratios = paired(runs, m, "base")
        written = sum(x["tokens"] for x in rs)
        proposed = sum(x["draft_proposed"] for x in rs)
        row = {
            "tokens": rs[0]["tokens"],
            "tokens_per_second": tps,
            "tokens_per_second_rounds": [x["tps"] for x in rs],
            "ratio_to_base": statistics.median(ratios) if ratios else None,
            "ratio_to_base_rounds": ratios,
            "evaluated_per_token": sum(x["evaluated"] for x in rs) / max(1, written),
            "forward_calls_per_token": sum(x["forward_calls"] for x in rs) / max(1, written),
            "base_forward_calls_per_token": sum(x["base_calls"] for x in rs) / max(1, written),
            "acceptance": sum(x["draft_accepted"] for x in rs) / proposed if proposed else None,
            "python_ms_per_token": statistics.median(x["python_ms_per_token"] for x in rs),
            "python_share": statistics.median(x["python_share"] for x in rs),
            "nudge_ratio": rs[0]["nudge_ratio"],
            "seconds_median": statistics.median(x["seconds"] for x in rs),
        }
        table[m] = row
        ratio = f"{row['ratio_to_base']:.2f}" if ratios else "-"
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
        acc = f"{row['acceptance']:.0%}" if row["acceptance"] is not None else "-"
        print(f"{m:11} {row['tokens']:6d} {tps:7.1f} {ratio:>6} {spread:>11} {row['evaluated_per_token']:8.2f} "
              f"{row['base_forward_calls_per_token']:14.2f} {acc:>6} {row['nudge_ratio']:6.1%}")  # fmt: skip
    where_the_time_went(runs, table)
    to_token = paired(runs, "speculative", "nudged")
    if to_token:
        table["speculative"]["ratio_to_token_mode"] = statistics.median(to_token)
        table["speculative"]["ratio_to_token_mode_rounds"] = to_token
        print(f"speculative / token mode, paired per round: {statistics.median(to_token):.2f}x "
              f"({min(to_token):.2f}-{max(to_token):.2f})")  # fmt: skip
    return table


def where_the_time_went(runs: dict[str, list[dict]], table: dict) -> None:
    """The second table: each mode's time per written token by part (PARTS, over all rounds), and
    its limit: the tokens per second of its model calls alone, run one after another, as measured.
    A mode far below its limit is a slow program; one near it, a slow pair."""
    heads = ("base step", "base read", "nudger read", "nudger write", "tokenize", "python")
    print("\nwhere the time went, ms per token (all rounds); limit: tok/s of the model calls alone")
    print(f"{'mode':11} " + " ".join(f"{h:>{max(len(h), 8)}}" for h in heads) + f" {'limit tok/s':>11} {'of limit':>8}")
    for m, rs in runs.items():
        tokens = max(1, sum(x["tokens"] for x in rs))
        spent = {k: sum(x["parts"][k] for x in rs) for k in PARTS}
        calls, seconds = sum(spent[k] for k in CALLS), sum(x["seconds"] for x in rs)
        row = table[m]
        row["ms_per_token"] = {k: 1000 * v / tokens for k, v in spent.items()}
        row["limit_tokens_per_second"] = tokens / calls if calls else None
        row["share_of_limit"] = calls / seconds if seconds else None  # its speed as a share of its limit
        cells = " ".join(f"{row['ms_per_token'][k]:>{max(len(h), 8)}.2f}" for k, h in zip(PARTS, heads, strict=True))
        limit = f"{row['limit_tokens_per_second']:11.1f}" if calls else f"{'-':>11}"
        share = f"{row['share_of_limit']:8.1%}" if seconds else f"{'-':>8}"
        print(f"{m:11} {cells} {limit} {share}")


def divergence(spec: list[dict], plain: list[dict]) -> dict:
    """Where speculative's answers leave token mode's (batch-shape rounding, docs/method.md), over
    every round and question: how many answers have other tokens, where each first differs (the
    share of token mode's answer written alike before it), the share of positions whose token
    differs, and how many answers have the same tokens with another model writing some."""
    firsts, differing, positions, handed = [], 0, 0, 0
    for s_round, p_round in zip(spec, plain, strict=True):
        for s_events, p_events in zip(s_round["answers"], p_round["answers"], strict=True):
            a, b = [t for _, t in s_events], [t for _, t in p_events]
            n = max(len(a), len(b))
            positions += n
            differing += sum(i >= len(a) or i >= len(b) or a[i] != b[i] for i in range(n))
            if a != b:
                firsts.append(common_prefix(a, b) / max(1, len(b)))
            handed += a == b and s_events != p_events
    return {
        "answers": sum(len(r["answers"]) for r in spec),
        "answers_differ": len(firsts),
        "first_difference_share": firsts,
        "positions_differ_share": differing / max(1, positions),
        "same_tokens_other_writer": handed,
    }


def compare_texts(runs: dict[str, list[dict]], table: dict) -> None:
    """Systems that must write the same text: speculative and token mode; paper cached and API-style."""
    if "nudged" in runs and "speculative" in runs:
        d = divergence(runs["speculative"], runs["nudged"])
        same = d["answers_differ"] == 0
        print(f"speculative writes token mode's text: {same}")
        if not same:
            where = ", ".join(f"{x:.0%}" for x in sorted(d["first_difference_share"]))
            print(f"  {d['answers_differ']} of {d['answers']} answers differ, first at {where} of the answer; "
                  f"{d['positions_differ_share']:.1%} of positions differ")  # fmt: skip
        if d["same_tokens_other_writer"]:
            print(f"  {d['same_tokens_other_writer']} of {d['answers']} answers have token mode's tokens, "
                  "some written by the other model")  # fmt: skip
        table["speculative_same_text"] = same
        table["speculative_vs_token_mode"] = d
    if "paper" in table and "paper-api" in table:
        same = runs["paper"][0]["texts"] == runs["paper-api"][0]["texts"]
        t_c, t_a = table["paper"]["seconds_median"], table["paper-api"]["seconds_median"]
        ev = table["paper-api"]["evaluated_per_token"] / max(1e-9, table["paper"]["evaluated_per_token"])
        print(f"paper cached vs API-style: wall time {t_a / t_c:.1f}x faster, {ev:.1f}x fewer tokens evaluated, "
              f"same text: {same}")  # fmt: skip
        table["paper_speedup"] = {"wall_time": t_a / t_c, "evaluated": ev, "same_text": same}
