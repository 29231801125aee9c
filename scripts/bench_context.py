"""Time to first token when a conversation outgrows the context: a chat of many turns through the
engine as the chat runs it (fit_history with the conversation's sticky drop count, then token mode),
and each answer's time to first token, split by whether its prompts had just left more turns out
(their prefix changed, so the KV caches are read again from the first difference) or not.

    .venv/bin/python scripts/bench_context.py [--base B.gguf --nudge N.gguf --chat-template FILE]
        [--ctx 512] [--turns 16] [--max-tokens 48] [--threads N]

Without --base/--nudge it runs bench.py's generated pair. Prints one line per turn (turns held,
turns left out, prompt tokens, time to first token, tokens) and the medians of the two kinds of turns
with their ratio. Absolute times on a shared machine are noise; the ratio within one run is the result.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from nudge_local.bench.cli import _template
from nudge_local.bench.generated import make_pair
from nudge_local.commands import Parser
from nudge_local.engine.context import fit_history
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Done
from nudge_local.engine.generate import generate
from nudge_local.engine.local import Model
from nudge_local.engine.prompts import Turn

QUESTIONS = [
    "Why is the sky blue?", "How do plants make food?", "What is a prime number?", "Why do we have seasons?",
    "How does a bicycle stay upright?", "What makes bread rise?", "Why is the sea salty?", "How do bees find flowers?",
]  # fmt: skip


def conversation(base: Model, nudger: Model, args) -> list[dict]:
    history: list[Turn] = []
    dropped, rows = 0, []
    for i in range(args.turns):
        question = QUESTIONS[i % len(QUESTIONS)]
        t0 = time.perf_counter()
        fitted = fit_history(base, nudger, question, history, chat_template=args.chat_template,
                             max_tokens=args.max_tokens, dropped=dropped)  # fmt: skip
        first, parts, done = None, [], None
        for ev in generate(fitted.prompts, base=base, nudger=nudger, max_tokens=args.max_tokens):
            if isinstance(ev, Done):
                done = ev
                break
            if first is None:
                first = time.perf_counter() - t0
            parts.append(ev.text)
        rows.append({"turn": i + 1, "held": fitted.held, "dropped": fitted.dropped,
                     "new_drop": fitted.dropped > dropped, "prompt": max(fitted.tokens.values()),
                     "ttft": first or 0.0, "tokens": done.stats.tokens})  # fmt: skip
        dropped = fitted.dropped
        history.append(Turn(question, "".join(parts)))
    return rows


def report(rows: list[dict]) -> dict:
    print(f"{'turn':>4} {'held':>4} {'out':>4} {'prompt':>6} {'first token':>11} {'tokens':>6}")
    for r in rows:
        mark = "  <- new drop" if r["new_drop"] else ""
        print(f"{r['turn']:>4} {r['held']:>4} {r['dropped']:>4} {r['prompt']:>6} {r['ttft'] * 1000:>8.0f} ms "
              f"{r['tokens']:>6}{mark}")  # fmt: skip
    later = [r for r in rows[1:]]  # the first turn reads the system prompt from nothing: left out
    drops = [r["ttft"] for r in later if r["new_drop"]]
    plain = [r["ttft"] for r in later if not r["new_drop"]]
    out = {"rows": rows, "drops": len(drops)}
    if drops and plain:
        a, b = statistics.median(drops), statistics.median(plain)
        out.update(ttft_drop=a, ttft_plain=b, ratio=a / b)
        print(
            f"time to first token: after a new drop {a * 1000:.0f} ms (median of {len(drops)}), "
            f"other turns {b * 1000:.0f} ms (median of {len(plain)}): {a / b:.2f}x"
        )
    else:
        print(f"{len(drops)} turns with a new drop and {len(plain)} without: no ratio (more --turns or less --ctx)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="scripts/bench_context.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="a base GGUF (default: the generated pair)")
    ap.add_argument("--nudge", help="a nudger GGUF (with --base)")
    ap.add_argument("--chat-template", type=_template, help="Jinja chat template file for the nudger")
    ap.add_argument("--ctx", type=int, default=512, help="context per model (default 512)")
    ap.add_argument("--turns", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = (args.base, args.nudge) if args.base else make_pair(Path(tmp), None, 0.7)
            with (Model(paths[0], role="base", n_ctx=args.ctx, n_threads=args.threads) as base,
                  Model(paths[1], role="nudger", n_ctx=args.ctx, n_threads=args.threads) as nudger):  # fmt: skip
                print(f"== {Path(paths[0]).name} + {Path(paths[1]).name}; context {args.ctx}, {args.turns} turns, "
                      f"max {args.max_tokens} tokens an answer")  # fmt: skip
                report(conversation(base, nudger, args))
    except NudgeError as e:
        print(f"bench_context: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
