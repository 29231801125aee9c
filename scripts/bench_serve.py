"""The server against the engine: `nudge-local serve` and in-process token mode on the same pair, in one run.

    .venv/bin/python scripts/bench_serve.py [--vocab ../shared/vocab/ggml-vocab-llama-bpe.gguf] [--quant Q4_0]
        [--agreement 0.7] [--shape 1024,16] [--max-tokens 96] [--rounds 5] [--clients 8] [--threads N]
        [--chat-template FILE] [--json out.json]
    .venv/bin/python scripts/bench_serve.py --base BASE.gguf --nudge NUDGER.gguf   # a real pair (paths or
                                                                                   # org/repo:file.gguf, cached)

The pair (bench.py's generated one unless --base and --nudge) is loaded here and served by a real
`nudge-local serve` process with the same threads and context. Each round asks the next of
bench.py's questions once in-process (generate(), token mode, greedy, as bench.py's run_mode) and
once through the server by one streaming client (the same settings: mode nudged, speculative false,
temperature 0), in alternating order and never at once; the result is the median of the rounds'
server / in-process speed ratios (target >= 0.95x), with their range and the median time to first
token. Neither side resets its caches (the server does not), but a round's question is new to both,
so its first token includes reading the prompt. The server's text must equal the engine's every
round (exit 1 otherwise). Then --clients clients stream at once, each with another question: their
total tokens per second over the batch's wall time, and the p50 and p99 of their times to first
token (FIFO: the last waits for every answer before it). Beside each speed, "in generate()" is the
tokens over generate()'s own time (its Stats.seconds): where the server's is low too, the engine ran
slower inside the server (its per-token hand-off, the event loop's share of the cores); where only
the client's is, the time went to the request and the transport. Absolute speeds on a shared
machine are noise; the paired ratio is the result.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import numpy as np

from nudge_local.bench.cli import _positive, _template, add_generated_pair_options
from nudge_local.bench.generated import make_pair
from nudge_local.bench.measure import QUESTIONS
from nudge_local.choose import choose_models, load_models, local_path, read_chat_template
from nudge_local.commands import Parser
from nudge_local.config import Settings, load_settings
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Done
from nudge_local.engine.generate import generate
from nudge_local.engine.local import Model
from nudge_local.engine.prompts import render_prompts
from nudge_local.engine.sampling import Sampling

ANNOUNCE = re.compile(r"nudge-local: serving (\S+) at (http://\S+/v1) ")
START_TIMEOUT = 120.0  # seconds for the server to load the pair and listen
REQUEST_TIMEOUT = httpx.Timeout(600.0, connect=10.0)  # the last of many clients waits for every answer before it
STOP_TIMEOUT = 15.0  # seconds for the server to exit after SIGTERM before it is killed
WARM_UP_TOKENS = 8
SIDE = ("tokens", "tps", "ttft", "generate_tps")  # one answer's figures, as printed and written


class BenchError(Exception):
    """The server failed (did not start, answered an error): one sentence, exit 1."""


class Server:
    """One `nudge-local serve` process on a free loopback port; its stderr is read on a thread, so
    neither the announcement wait nor a chatty log can block."""

    def __init__(self, flags: list[str]) -> None:
        argv = [sys.executable, "-m", "nudge_local.cli", "serve", "--port", "0", *flags]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            self._new.put(line)
        self._new.put(None)

    def wait_for_url(self) -> str:
        """The /v1 address from the line the server prints once it listens."""
        deadline = time.monotonic() + START_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._new.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            m = ANNOUNCE.match(line)
            if m:
                return m.group(2)
        raise BenchError(f"the server did not start listening within {START_TIMEOUT:.0f} s; its log: {self.log()}")

    def log(self, lines: int = 20) -> str:
        """The end of what the server wrote on stderr, for an error message."""
        return "".join(self.lines[-lines:]).strip() or "(nothing)"

    def stop(self) -> None:
        """SIGTERM (the server ends what runs and exits 0); SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)


def chat_body(question: str, max_tokens: int) -> dict:
    """A streamed chat request for token mode, greedy: what the in-process run does."""
    return {"messages": [{"role": "user", "content": question}], "stream": True, "max_tokens": max_tokens,
            "temperature": 0, "mode": "nudged", "speculative": False}  # fmt: skip


def in_process(models: dict[str, Model], s: Settings, template: str | None, question: str, max_tokens: int) -> dict:
    """One answer from the engine called directly, rendered and set up as the server does it."""
    base, nudger = models["base"], models["nudger"]
    t0 = time.perf_counter()
    prompts = render_prompts(base, nudger, question, system=s.system, base_format=s.base_format,
                             chat_template=template)  # fmt: skip
    events = generate(prompts, mode="nudged", base=base, nudger=nudger, gamma=s.gamma, max_tokens=max_tokens,
                      word_cap=s.word_cap, sampling=Sampling(0.0, s.top_p, s.seed), stop_strings=s.stop,
                      speculative=False)  # fmt: skip
    first = None
    for ev in events:
        if first is None and ev.text:  # the first text, as a client's first content
            first = time.perf_counter()
        if isinstance(ev, Done):
            seconds = time.perf_counter() - t0
            return _run(ev.stats.tokens, seconds, (first or t0) - t0, ev.text, ev.stats.seconds)
    raise BenchError("the engine ended without its Done event")


def _run(tokens: int, seconds: float, ttft: float, text: str, generate_seconds: float) -> dict:
    """One answer's figures. `generate_seconds` is generate()'s own Stats.seconds: the time from its
    first step to Done, with whatever its consumer does between tokens (the server's hand-off to
    its event loop), without the request's setup and transport."""
    return {"tokens": tokens, "seconds": seconds, "tps": tokens / seconds if seconds else 0.0, "ttft": ttft,
            "text": text, "generate_tps": tokens / generate_seconds if generate_seconds else 0.0}  # fmt: skip


def stream_once(client: httpx.Client, body: dict, t0: float | None = None) -> dict:
    """One streamed answer as a client sees it, timed from `t0` (default: now): the first content
    token's arrival, the end of the stream, the text, and the token count of the last chunk's stats."""
    t0 = time.perf_counter() if t0 is None else t0
    first, text, stats = None, [], None
    with client.stream("POST", "/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise BenchError(f"the server answered {response.status_code}: {response.read().decode()[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise BenchError(f"the server sent an error mid-stream: {event['error'].get('message')}")
            choice = event["choices"][0]
            piece = choice["delta"].get("content")
            if piece:
                first = first or time.perf_counter()
                text.append(piece)
            stats = choice.get("nudge", {}).get("stats", stats)
    seconds = time.perf_counter() - t0
    if stats is None or first is None:
        raise BenchError("the stream ended without a token or without its last chunk's nudge.stats")
    return _run(stats["tokens"], seconds, first - t0, "".join(text), stats["seconds"])


def paired_rounds(models: dict[str, Model], s: Settings, template: str | None, client: httpx.Client,
                  args) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """`--rounds` rounds, each asking both sides the next question (a prompt neither side's cache
    holds, as a new conversation's), alternating which goes first, after one short warm-up each on
    the last question (the first pass pages the weights in and wakes the server's code paths)."""
    in_process(models, s, template, QUESTIONS[-1], WARM_UP_TOKENS)
    stream_once(client, chat_body(QUESTIONS[-1], WARM_UP_TOKENS))
    local, served = [], []
    for i in range(args.rounds):
        question = QUESTIONS[i % len(QUESTIONS)]
        for runs in (local, served) if i % 2 == 0 else (served, local):  # drift hits both; neither always first
            if runs is local:
                local.append(in_process(models, s, template, question, args.max_tokens))
            else:
                served.append(stream_once(client, chat_body(question, args.max_tokens)))
    return local, served


def many_clients(url: str, args) -> list[dict]:
    """`--clients` streams started together, each asking another question, timed from the batch's
    start. The clients are made beforehand: making one (its SSL context) takes tens of milliseconds."""
    clients = [httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) for _ in range(args.clients)]
    bodies = [chat_body(QUESTIONS[i % len(QUESTIONS)], args.max_tokens) for i in range(args.clients)]
    try:
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            t0 = time.perf_counter()
            return list(pool.map(lambda c, b: stream_once(c, b, t0), clients, bodies))
    finally:
        for c in clients:
            c.close()


def summarize(local: list[dict], served: list[dict], batch: list[dict]) -> dict:
    """The figures, printed and returned: speeds and first-token times side by side, the paired ratio,
    the text check, and the concurrent batch."""
    ratios = [s["tps"] / x["tps"] for x, s in zip(local, served, strict=True)]
    rows = {"in-process token mode": local, "server, one stream": served}
    for name, runs in rows.items():
        tokens, tps, ttft, in_generate = (statistics.median(r[k] for r in runs) for k in SIDE)
        print(f"{name:24} {tokens:5.0f} tokens {tps:8.1f} tok/s   first token {1000 * ttft:7.1f} ms   "
              f"in generate() {in_generate:8.1f} tok/s   (medians)")  # fmt: skip
    ratio = statistics.median(ratios)
    verdict = "met" if ratio >= 0.95 else "NOT met"
    print(f"server / in-process, paired per round: {ratio:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}); "
          f"target >= 0.95x {verdict}")  # fmt: skip
    same = all(x["text"] == s["text"] and x["tokens"] == s["tokens"] for x, s in zip(local, served, strict=True))
    print(f"server text equals in-process text: {same}")
    print(f"  in-process: {local[0]['text']!r}")
    if not same:
        differing = next(s["text"] for x, s in zip(local, served, strict=True) if s["text"] != x["text"])
        print(f"  server:     {differing!r}")
    wall = max(c["seconds"] for c in batch)
    total = sum(c["tokens"] for c in batch)
    p50, p99 = np.percentile([c["ttft"] for c in batch], [50, 99])
    one_stream = statistics.median(s["tps"] for s in served)
    in_generate = statistics.median(c["generate_tps"] for c in batch)
    print(f"{len(batch)} concurrent streams: {total} tokens in {wall:.2f} s = {total / wall:.1f} tok/s "
          f"({total / wall / one_stream:.2f}x one stream; in generate() {in_generate:.1f} tok/s); "
          f"first token p50 {1000 * p50:.0f} ms, p99 {1000 * p99:.0f} ms")  # fmt: skip
    return {
        "in_process": [{k: r[k] for k in SIDE} for r in local],
        "server": [{k: r[k] for k in SIDE} for r in served],
        "ratio": ratio,
        "ratio_rounds": ratios,
        "server_ttft_median": statistics.median(s["ttft"] for s in served),
        "same_text": same,
        "text": local[0]["text"],
        "concurrent": {"clients": len(batch), "tokens": total, "seconds": wall, "tokens_per_second": total / wall,
                       "ttft_p50": float(p50), "ttft_p99": float(p99), "ttft": [c["ttft"] for c in batch],
                       "generate_tokens_per_second": [c["generate_tps"] for c in batch]},
    }  # fmt: skip


def bench(base_path: Path | str, nudger_path: Path | str, args) -> dict:
    """Load the pair here, serve it from another process with the same threads and context, and compare."""
    flags = {"base": str(base_path), "nudge": str(nudger_path), "threads": args.threads,
             "chat_template": args.chat_template}  # fmt: skip
    s = load_settings(flags)
    choice = choose_models(s, "nudged")
    models = load_models({"base": local_path(choice.base), "nudger": local_path(choice.nudger)}, s)
    server = None
    try:
        template = read_chat_template(s)
        argv = ["--base", str(models["base"].path), "--nudge", str(models["nudger"].path), "--ctx",
                str(models["base"].n_ctx), "--queue", str(args.clients)]  # fmt: skip
        argv += ["--threads", str(args.threads)] if args.threads else []
        argv += ["--chat-template", args.chat_template] if args.chat_template else []
        server = Server(argv)
        url = server.wait_for_url()
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
            local, served = paired_rounds(models, s, template, client, args)
        batch = many_clients(url, args)
    except httpx.HTTPError as e:  # the server went away or stopped answering: its log says why
        raise BenchError(f"{type(e).__name__}: {e}; the server's log: {server.log()}") from None
    finally:
        if server:
            server.stop()
        for m in models.values():
            m.close()
    return summarize(local, served, batch)


def _template_file(text: str) -> str:
    """A readable Jinja chat template file, kept as its path: the server is given the path too."""
    _template(text)
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(prog="scripts/bench_serve.py", description=__doc__.split("\n\n")[0])
    add_generated_pair_options(ap)
    ap.add_argument("--chat-template", type=_template_file, metavar="FILE", help="nudger chat template, both sides")
    ap.add_argument("--max-tokens", type=_positive, default=96)
    ap.add_argument("--rounds", type=_positive, default=5)
    ap.add_argument("--clients", type=_positive, default=8, help="concurrent streaming clients (default 8)")
    ap.add_argument("--threads", type=_positive, help="CPU threads per model, both sides (default: llama.cpp's)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if bool(args.base) != bool(args.nudge):
        ap.error("a real pair needs both --base and --nudge")
    if args.json and not Path(args.json).expanduser().resolve().parent.is_dir():
        ap.error(f"the folder for --json {args.json} does not exist")
    return args


def run(args: argparse.Namespace) -> dict:
    """The real pair, or a generated one written to a temporary folder that outlives the server."""
    threads = args.threads or "default"
    settings = f"{args.max_tokens} tokens, {args.rounds} rounds, {args.clients} clients, threads {threads}"
    if args.base:
        print(f"== {args.base} + {args.nudge}; {settings}")
        return bench(args.base, args.nudge, args)
    (bw, bl, _), _ = args.shape
    print(f"== generated pair, agreement {args.agreement:.0%}, {args.quant}, base {bw}x{bl}; {settings}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            paths = make_pair(Path(tmp), args.vocab, args.agreement, quant=args.quant, shapes=args.shape)
        except ValueError as e:  # a vocabulary without the benchmark's words
            raise NudgeError(f"The vocabulary {args.vocab} cannot make the benchmark's pair: {e}.") from None
        return bench(*paths, args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = run(args)
    except NudgeError as e:  # a file missing or unfit: the same sentence `nudge-local` prints
        print(f"nudge-local: error: {e}", file=sys.stderr)
        return 2
    except BenchError as e:
        print(f"bench_serve: failed: {e}", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(results, indent=2))
        print(f"results written to {args.json}")
    return 0 if results["same_text"] else 1


if __name__ == "__main__":
    sys.exit(main())
