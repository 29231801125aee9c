"""Benchmark: tokens per second with the chat UI running, against headless generation on the same pair.

Both systems run side by side in one process, alternating round by round, on the same prompt and
options (greedy, so both must write the same tokens; the script checks that):

* headless: `render_prompts` + `generate(...)` through ChatSession.prompts/answer (the calls the
  app's worker makes) on models loaded once (their context is reset before every round), in a
  thread of its own like the app's worker, consuming the events; timed from the call to Done;
* UI: `NudgeApp` under `app.run_test(headless=True, size=(120, 40))` with fresh models each round;
  once the models are loaded it writes a short warm-up answer (as headless had one; the first answer
  of freshly loaded models pays one-off costs), starts a new conversation with emptied contexts,
  and then the prompt is typed and Enter pressed; timed from the Enter press to
  the app handling the `Finished` message, over the answer's tokens in its AnswerView. This covers
  everything the app does per answer: the worker's batching, the UI thread's message handling,
  the history writes, layout and rendering (Textual's headless driver still lays out and renders
  every frame; only writing escape sequences to a terminal is skipped).

It prints, per case, a table of mode / tokens / median tok/s (and the engine's own tok/s from
Done.stats), the ratio UI/headless (target: at least 0.9x), and how far the UI lagged behind the
worker: the delay from a batch being posted to its handling, and the UI thread's time in the batch
handler. Absolute times on a shared machine are noise; the ratio is the figure.

By default it writes a pair into a temporary folder: a base of width 512, 8 layers, FFN 1408 and
weight noise 0.02, and a nudger of width 256, 2 layers, FFN 704, noise 0.02, both realising random
Markov tables (nudge_local.bench.synthetic.random_table) without the end-of-generation token, so
every answer runs to the token limit; the base is unsure at some positions, so the nudger writes some words.

    .venv/bin/python scripts/bench_ui.py                      # 3 rounds of 1000 tokens
    .venv/bin/python scripts/bench_ui.py --long 5000          # also a 5000-token case (slow)
    .venv/bin/python scripts/bench_ui.py --vocab ../shared/vocab/ggml-vocab-qwen2.gguf --json out.json
    .venv/bin/python scripts/bench_ui.py --base base.gguf --nudge nudger.gguf --threads 2

Your configuration file and history are not touched: NUDGE_LOCAL_CONFIG points at a missing file in
the temporary folder and every app round gets a history file of its own there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

QUESTION = "Explain step by step how to find the total cost."
SIZE = (120, 40)
DEFAULT_CONTEXT = 4096
PAIR = {  # the generated pair (write_model's size knobs)
    "base": {"width": 512, "layers": 8, "ffn": 1408, "noise": 0.02},
    "nudger": {"width": 256, "layers": 2, "ffn": 704, "noise": 0.02},
}
CONTEXT_MARGIN = 512  # room for the prompt (and a nudged word's re-tokenisation) beside the answer


# -- the pair ----------------------------------------------------------------------------------------


def make_pair(tmp: Path, vocab_path: str | None, seed: int, context_length: int) -> tuple[Path, Path]:
    """Write a base and a nudger GGUF realising random Markov tables without an end token."""
    from nudge_local.bench.synthetic import CHATML, bpe_vocab, load_vocab, random_table, write_model

    vocab = load_vocab(vocab_path) if vocab_path else bpe_vocab(0)
    rng = np.random.default_rng(seed)
    base_table = random_table(vocab, rng, eos_weight=0.0)
    nudger_table = random_table(vocab, rng, eos_weight=0.0)
    base = write_model(
        tmp / "bench-base.gguf",
        vocab,
        base_table,
        **PAIR["base"],
        context_length=context_length,
        seed=seed,
        name="bench base",
    )
    nudger = write_model(
        tmp / "bench-nudger.gguf",
        vocab,
        nudger_table,
        chat_template=CHATML,
        **PAIR["nudger"],
        context_length=context_length,
        seed=seed + 1,
        name="bench nudger",
    )
    return base, nudger


# -- one run of each system --------------------------------------------------------------------------


@dataclass
class Run:
    mode: str  # "headless" or "ui"
    max_tokens: int
    tokens: list  # (token id, source, text) per token
    seconds: float  # wall time the user waits: call/Enter to the last token handled
    engine_tps: float  # the engine's own figure (Done.stats): generation alone
    nudged: int
    stop_reason: str | None
    extra: dict = field(default_factory=dict)

    @property
    def tps(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "max_tokens": self.max_tokens,
            "tokens": len(self.tokens),
            "nudged": self.nudged,
            "seconds": round(self.seconds, 4),
            "tokens_per_second": round(self.tps, 2),
            "engine_tokens_per_second": round(self.engine_tps, 2),
            "stop_reason": self.stop_reason,
            **self.extra,
        }


def run_headless(session, options, question: str) -> Run:
    """Headless generation in a thread of its own, as the app's worker runs it: llama.cpp's OpenMP
    team belongs to the calling thread, and a team left spinning by another thread would otherwise
    slow whichever side runs on the main thread."""
    box = []
    worker = threading.Thread(target=lambda: box.append(_run_headless(session, options, question)))
    worker.start()
    worker.join()
    return box[0]


def _run_headless(session, options, question: str) -> Run:
    from nudge_local.engine.events import Done
    for m in session.models.values():
        m.reset()  # the app's models start each round empty: no prompt reused from the last round
    session.forget_measurements()  # nor draft sizes learnt in the last round
    t0 = time.perf_counter()
    # The app's own calls, without the UI: session.prompts is render_prompts and session.answer is
    # generate(...) with the options' and settings' values, so both sides decode alike by construction.
    prompts = session.prompts(question, [], options)
    events = session.answer(prompts, options)
    tokens, done = [], None
    try:
        for ev in events:
            if isinstance(ev, Done):
                done = ev
                break
            tokens.append(ev)
    finally:
        events.close()
    seconds = time.perf_counter() - t0
    return Run(
        "headless",
        options.max_tokens,
        [(t.token, t.source, t.text) for t in tokens],
        seconds,
        done.stats.tokens_per_second if done else 0.0,
        sum(t.source == "nudge" for t in tokens),
        done.stop_reason if done else None,
    )


def bench_app_class():
    """NudgeApp plus timing: when each Tokens/Finished message was posted by the worker and handled
    by the UI thread, and how long the app's own handlers took. Textual calls a subclass's handler
    first; these call NudgeApp's and prevent_default() so it does not run twice."""
    import nudge_local.tui.app as app_module
    from nudge_local.tui.app import Finished, NudgeApp, Tokens

    class BenchApp(NudgeApp):
        CSS_PATH = str(Path(app_module.__file__).with_name(NudgeApp.CSS_PATH))  # relative to tui/, not here

        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            self.batches: list[tuple[float, float, int]] = []  # (queue delay, handler seconds, tokens)
            self.finished_at: float | None = None
            self.finished_delay: float | None = None
            self.finished_event: asyncio.Event | None = None

        def post_message(self, message) -> bool:
            if isinstance(message, (Tokens, Finished)):
                message.bench_posted = time.perf_counter()
            return super().post_message(message)

        def on_tokens(self, m: Tokens) -> None:
            t = time.perf_counter()
            NudgeApp.on_tokens(self, m)
            self.batches.append((t - m.bench_posted, time.perf_counter() - t, len(m.tokens)))
            m.prevent_default()

        def on_finished(self, m: Finished) -> None:
            NudgeApp.on_finished(self, m)
            self.finished_at = time.perf_counter()
            self.finished_delay = self.finished_at - m.bench_posted
            m.prevent_default()
            if self.finished_event is not None:
                self.finished_event.set()

    return BenchApp


async def _run_ui(settings, question: str, tmp: Path, index: int, timeout: float) -> Run:
    from nudge_local.tui.history import History
    from nudge_local.tui.widgets.answer import AnswerView
    from nudge_local.tui.widgets.token_view import TokenView

    app = bench_app_class()(settings, history=History(tmp / f"history-{index}.sqlite3"), export_dir=tmp)
    async with app.run_test(headless=True, size=SIZE) as pilot:
        app.finished_event = asyncio.Event()
        deadline = time.monotonic() + 120
        while not app.ready:
            if app.loading == "no models" or app._exception is not None or time.monotonic() > deadline:
                raise SystemExit(f"The app did not load the models: {app.query_one('#error').render()}")
            await asyncio.sleep(0.05)
        # A warm-up answer first (not timed), as the headless side had one: the first answer of
        # freshly loaded models pays one-off costs (buffers, threads) that a chat pays once. Then
        # a new conversation and contexts emptied, so the timed answer starts as headless does.
        full = app.options.max_tokens
        app.options.max_tokens = min(64, full)
        await pilot.press(*question, "enter")
        await asyncio.wait_for(app.finished_event.wait(), timeout)
        app.options.max_tokens = full
        app.action_new_conversation()
        for m in app.session.models.values():
            m.reset()
        app.session.forget_measurements()
        await pilot.pause()
        app.batches.clear()
        app.finished_event.clear()
        await pilot.press(*question)
        await pilot.pause()
        t0, cpu0 = time.perf_counter(), time.thread_time()
        await pilot.press("enter")
        try:
            await asyncio.wait_for(app.finished_event.wait(), timeout)
        except asyncio.TimeoutError:
            raise SystemExit(f"The app did not finish the answer within {timeout:.0f} s.") from None
        ui_cpu = time.thread_time() - cpu0  # the UI thread (this one) while the answer was written
        await pilot.pause()
        assert app.current is None
        view = list(app.query("#chat AnswerView").results(AnswerView))[-1]
        tokens = [(t.token, t.source, t.text) for t in view.tokens]
        blocks = [len(b.tokens) for b in view.query(TokenView).results(TokenView)]
        delays = sorted(d for d, _, _ in app.batches)
        handler = [h for _, h, _ in app.batches]
        tenth = max(1, len(handler) // 10)
        extra = {
            "batches": len(app.batches),
            "tokens_per_batch": round(len(tokens) / max(1, len(app.batches)), 1),
            "batch_delay_ms_p50": round(1000 * delays[len(delays) // 2], 2) if delays else 0.0,
            "batch_delay_ms_p95": round(1000 * delays[int(len(delays) * 0.95)], 2) if delays else 0.0,
            "batch_delay_ms_max": round(1000 * delays[-1], 2) if delays else 0.0,
            "finished_delay_ms": round(1000 * (app.finished_delay or 0.0), 2),
            "handler_ms_total": round(1000 * sum(handler), 1),
            "handler_ms_first_tenth": round(1000 * statistics.mean(handler[:tenth]), 3) if handler else 0.0,
            "handler_ms_last_tenth": round(1000 * statistics.mean(handler[-tenth:]), 3) if handler else 0.0,
            "ui_thread_cpu_share": round(ui_cpu / max(1e-9, app.finished_at - t0), 3),
            "blocks": len(blocks),
            "largest_block": max(blocks, default=0),
        }
        stats = view.stats
        return Run(
            "ui",
            app.options.max_tokens,
            tokens,
            app.finished_at - t0,
            stats.tokens_per_second if stats else 0.0,
            sum(t.source == "nudge" for t in view.tokens),
            view.stop_reason,
            extra,
        )


def run_ui(settings, question: str, tmp: Path, index: int, timeout: float) -> Run:
    return asyncio.run(_run_ui(settings, question, tmp, index, timeout))


# -- a case: N alternating rounds --------------------------------------------------------------------


def run_case(args, settings, session, tmp: Path, max_tokens: int, counter: list[int]) -> dict:
    from nudge_local.tui.session import Options

    options = Options.from_settings(settings)
    assert options.max_tokens == max_tokens
    runs: dict[str, list[Run]] = {"headless": [], "ui": []}
    timeout = max(120.0, max_tokens * 0.5)
    for r in range(args.rounds):
        order = ("headless", "ui") if r % 2 == 0 else ("ui", "headless")  # drift hits both alike
        for mode in order:
            if mode == "headless":
                run = run_headless(session, options, args.question)
            else:
                counter[0] += 1
                run = run_ui(settings, args.question, tmp, counter[0], timeout)
            runs[mode].append(run)
            print(
                f"  {max_tokens} tokens, round {r + 1}/{args.rounds}, {mode:8}: {len(run.tokens)} tokens "
                f"in {run.seconds:.2f} s, {run.tps:.1f} tok/s",
                file=sys.stderr,
                flush=True,
            )
    reference = runs["headless"][0].tokens
    identical = all(run.tokens == reference for rs in runs.values() for run in rs)
    summary = {}
    for mode, rs in runs.items():
        summary[mode] = {
            "tokens": len(rs[0].tokens),
            "nudged": rs[0].nudged,
            "stop_reason": rs[0].stop_reason,
            "median_tokens_per_second": round(statistics.median(r.tps for r in rs), 2),
            "median_engine_tokens_per_second": round(statistics.median(r.engine_tps for r in rs), 2),
            "tokens_per_second": [round(r.tps, 2) for r in rs],
        }
    ratio = summary["ui"]["median_tokens_per_second"] / max(1e-9, summary["headless"]["median_tokens_per_second"])
    # Each round's UI run against the same round's headless run (they run back to back): the
    # machine's speed drifts between rounds, and a ratio within one round cancels most of it.
    paired = [u.tps / max(1e-9, h.tps) for u, h in zip(runs["ui"], runs["headless"], strict=True)]
    return {
        "paired_ratio": round(statistics.median(paired), 3),
        "paired_ratios": [round(x, 3) for x in paired],
        "max_tokens": max_tokens,
        "rounds": args.rounds,
        "identical": identical,
        "ratio": round(ratio, 3),
        "summary": summary,
        "runs": [r.as_dict() for rs in runs.values() for r in rs],
    }


def print_case(case: dict) -> None:
    s = case["summary"]
    print(f"\nmax tokens {case['max_tokens']}, {case['rounds']} rounds (alternating)")
    print(f"{'mode':10} {'tokens':>7} {'nudged':>7} {'median tok/s':>13} {'engine tok/s':>13}  stop")
    for mode in ("headless", "ui"):
        m = s[mode]
        print(
            f"{mode:10} {m['tokens']:>7} {m['nudged']:>7} {m['median_tokens_per_second']:>13.1f} "
            f"{m['median_engine_tokens_per_second']:>13.1f}  {m['stop_reason']}"
        )
    ui = [r for r in case["runs"] if r["mode"] == "ui"]
    last = ui[-1]
    print(
        f"UI lag (last round): {last['batches']} batches of ~{last['tokens_per_batch']} tokens; "
        f"post-to-handle delay p50 {last['batch_delay_ms_p50']} ms, p95 {last['batch_delay_ms_p95']} ms, "
        f"max {last['batch_delay_ms_max']} ms; Finished {last['finished_delay_ms']} ms; "
        f"batch handler {last['handler_ms_first_tenth']} -> {last['handler_ms_last_tenth']} ms "
        f"(first -> last tenth), {last['handler_ms_total']} ms in all; "
        f"UI thread busy {last['ui_thread_cpu_share']:.0%} of the time; "
        f"{last['blocks']} token blocks, largest {last['largest_block']} tokens"
    )
    flag = "" if case["ratio"] >= 0.9 else "  (below the 0.9x target)"
    same = "identical" if case["identical"] else "DIFFERENT"
    print(f"ratio UI/headless: {case['ratio']:.3f}x{flag}; token sequences {same}")
    p = case["paired_ratios"]
    print(f"per round (UI / the same round's headless): median {case['paired_ratio']:.3f}x, {min(p):.3f}-{max(p):.3f}")


# -- main --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (default 3)")
    ap.add_argument("--max-tokens", type=int, default=1000, help="answer length of the main case (default 1000)")
    ap.add_argument("--long", type=int, default=None, metavar="N", help="also run a long case of N tokens (e.g. 5000)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per model (default: the setting, auto)")
    ap.add_argument("--vocab", help="vocabulary GGUF for the generated pair (default: the built-in BPE)")
    ap.add_argument("--base", help="a real base GGUF instead of the generated pair (with --nudge)")
    ap.add_argument("--nudge", help="a real nudger GGUF instead of the generated pair (with --base)")
    ap.add_argument("--seed", type=int, default=13, help="seed of the generated pair's tables and weights (default 13)")
    ap.add_argument("--question", default=QUESTION, help="the prompt")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args()
    if bool(args.base) != bool(args.nudge):
        ap.error("--base and --nudge go together")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nudge-bench-ui-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["NUDGE_LOCAL_CONFIG"] = str(tmp / "no-config.yaml")  # the user's file is not read
        os.environ["NUDGE_LOCAL_DATA_DIR"] = str(tmp / "data")

        from nudge_local.config import load_settings
        from nudge_local.engine.devices import default_threads
        from nudge_local.tui.session import ChatSession

        lengths = [args.max_tokens] + ([args.long] if args.long else [])
        need = max(lengths) + CONTEXT_MARGIN
        context = None if need <= DEFAULT_CONTEXT else -(-need // 256) * 256
        if args.base:
            base, nudger = Path(args.base), Path(args.nudge)
        else:
            base, nudger = make_pair(tmp, args.vocab, args.seed, max(DEFAULT_CONTEXT, context or 0))

        def settings_for(max_tokens: int):
            flags = {"base": str(base), "nudge": str(nudger), "max_tokens": max_tokens, "threads": args.threads}
            flags["context_size"] = context
            return load_settings(flags)

        # Headless models: loaded once, kept for every round and case (the context is reset per round).
        session = ChatSession(settings_for(args.max_tokens))
        session.load()
        threads = args.threads or default_threads()
        print(
            f"pair: {base.name} + {nudger.name}; context {session.n_ctx}; threads {threads} per model; "
            f"{os.cpu_count()} CPUs; backend {session.backend}",
            file=sys.stderr,
        )
        # Warm-up (not counted): page the weights in and let the allocator settle.
        from nudge_local.tui.session import Options

        run_headless(session, Options.from_settings(settings_for(min(64, args.max_tokens))), args.question)

        cases, counter = [], [0]
        for n in lengths:
            cases.append(run_case(args, settings_for(n), session, tmp, n, counter))
        session.close()

    elapsed = time.perf_counter() - started
    print(f"\npair {base.name} + {nudger.name}, threads {threads} per model, {os.cpu_count()} CPUs")
    for case in cases:
        print_case(case)
    print(f"\ntotal run time {elapsed:.0f} s")
    for case in cases:
        if not case["identical"]:
            print(f"warning: UI and headless wrote different tokens at max tokens {case['max_tokens']}")
        for mode, m in case["summary"].items():
            if m["tokens"] != case["max_tokens"] and not args.base:
                print(f"warning: {mode} stopped at {m['tokens']} tokens ({m['stop_reason']}), not the limit")
    if args.json:
        out = {
            "question": args.question,
            "pair": {"base": str(base), "nudger": str(nudger)} if args.base else PAIR,
            "vocab": None if args.base else (args.vocab or "built-in BPE (bpe_vocab(0))"),
            "seed": args.seed,
            "threads": threads,
            "cpus": os.cpu_count(),
            "seconds": round(elapsed, 1),
            "cases": cases,
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    if not all(c["identical"] for c in cases):
        sys.exit(1)


if __name__ == "__main__":
    main()
