"""Nudging with served models against local ones: llama-server rows beside local rows, one pair, one run.

    .venv/bin/python scripts/bench_remote.py [--vocab ../shared/vocab/ggml-vocab-llama-bpe.gguf] [--quant Q4_0]
        [--agreement 0.7] [--shape 1024,16] [--max-tokens 96] [--rounds 5] [--threads N] [--json out.json]
    .venv/bin/python scripts/bench_remote.py --base BASE.gguf --nudge NUDGER.gguf   # a real pair (paths or
                                                                                    # org/repo:file.gguf, cached)

The pair (bench.py's generated one unless --base and --nudge) is loaded here and served by two
llama.cpp llama-server processes on loopback (scripts/build_llama_server.sh builds them once), one
per model, with the same threads and context and one slot each. Five systems answer, all greedy:

    local token                 token mode, both models here (speculative off): the reference
    token, remote base          token mode, the base on llama-server's native API (greedy lookahead
                                chunks), the nudger here
    speculative local           speculative nudging, both here, for reference
    paper local                 the authors' algorithm, both here (completion calls from the cache)
    paper remote (OpenAI API)   the authors' algorithm with base and nudger on the servers'
                                /v1/completions: the authors' own setting

Speculative nudging with a served base runs as token mode (llama-server cannot score a draft in
one request), so it has no row of its own. Each round every system answers the round's question
(bench.py's, in turn) once, one after another in an order that rotates every round, after one
short warm-up answer each (loading and first requests are not timed). Before every answer each
model starts cold: the local contexts are cleared and the servers' slots erased, so no system
finds a prompt another one read.

Per system: median tokens and tokens per second; the median over rounds of each round's speed
ratio to `local token` with its range (the result: absolute speeds on a shared machine are noise);
requests per written token (the served models' requests that evaluated something, over the tokens
written: below 1 where a lookahead chunk answers several positions); prompt tokens the servers
re-read per written token (not found in their prefix cache); and whether its text is its local
counterpart's every round (`token, remote base` against `local token`, `paper remote` against
`paper local`; exit 1 where not). The target: token mode with a remote base at >= 0.7x local.

Paper mode's budget: both paper systems get the same --max-tokens. A text-only (OpenAI) base
cannot tokenize, so its budget counts the tokens written, where a local base counts its own tokens
of the text; on the generated pair every written token is one base token (the pair's words are
single tokens of one vocabulary and the text re-tokenizes to them), so the two budgets stop at
the same place and the texts agree (checked: up to 256 tokens on four questions). On a real pair
the nudger's tokens are not the base's, so there both paper systems run without a token budget
(max_tokens 0) for REAL_PAPER_ROUNDS rounds, and differ then only where the models do.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx

from nudge_local.bench.cli import _positive, _template, add_generated_pair_options
from nudge_local.bench.generated import make_pair
from nudge_local.bench.measure import QUESTIONS
from nudge_local.catalog import parse_ref
from nudge_local.choose import local_path
from nudge_local.commands import Parser
from nudge_local.engine.devices import default_threads
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Done
from nudge_local.engine.generate import generate
from nudge_local.engine.gguf_check import check_gguf
from nudge_local.engine.local import Model
from nudge_local.engine.prompts import render_prompts
from nudge_local.remote.connect import connect
from nudge_local.remote.http import Endpoint, RemoteError

ROOT = Path(__file__).resolve().parent.parent
CTX = 4096  # context of every model, local and served
START_TIMEOUT = 120.0  # seconds for a server to load its model and answer /health
STOP_TIMEOUT = 10.0  # seconds for a server to exit after SIGTERM before it is killed
WARM_UP_TOKENS = 8
REAL_PAPER_ROUNDS = 8  # paper mode's rounds on a real pair, without a token budget (see above)
TARGET = 0.7  # token mode with a remote base, against local token mode
REFERENCE = "local token"


class BenchError(Exception):
    """A server failed (did not start, answered an error): one sentence, exit 1."""


# -- servers ------------------------------------------------------------------------------------


def llama_server_binary() -> Path:
    """llama-server from scripts/build_llama_server.sh (cached after its first build, ~6 min)."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "build_llama_server.sh")], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable})  # fmt: skip
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        why = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise NudgeError(
            f"llama-server could not be built by scripts/build_llama_server.sh ({why}); run it to see why."
        )
    return Path(lines[-1]) / "llama-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Run in the server's process before exec: Linux sends it SIGTERM when this script dies, even
    by SIGKILL (a test's timeout), so no server outlives its benchmark."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# --swa-full: a whole-context cache for sliding-window layers (Gemma 2 and 3), as llama-cpp-python keeps
# locally; without it llama-server cannot cut its cache back and re-reads the whole prompt after each
# nudged word (docs/remote.md).
SERVER_FLAGS = ("--swa-full",)

class LlamaServer:
    """llama.cpp's llama-server for one model on a free loopback port, with one slot (so every
    request finds its prefix cache) that can be erased (--slot-save-path); its log in a file."""

    def __init__(self, binary: Path, model: Path, role: str, folder: Path, threads: int) -> None:
        self.role, self.port = role, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"llama-server-{role}.log"
        argv = [str(binary), "-m", str(model), "-c", str(CTX), "-t", str(threads), "-tb", str(threads),
                "-np", "1", "--host", "127.0.0.1", "--port", str(self.port), "--no-webui",
                "--slot-save-path", str(folder), *SERVER_FLAGS]  # fmt: skip
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)  # fmt: skip

    def tail(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines() if self.log.exists() else []
        return " | ".join(lines[-3:]) or "(nothing)"

    def wait_ready(self) -> None:
        """Until /health answers 200 (the model is loaded), the process exits, or START_TIMEOUT."""
        deadline = time.monotonic() + START_TIMEOUT
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        if self.proc.poll() is not None:
            raise BenchError(f"the {self.role} llama-server exited with {self.proc.returncode} at start: {self.tail()}")
        raise BenchError(f"the {self.role} llama-server did not answer /health within {START_TIMEOUT:.0f} s: "
                         f"{self.tail()}")  # fmt: skip

    def erase(self) -> None:
        """Empty the slot's prefix cache: the next request reads its whole prompt."""
        r = httpx.post(self.url + "/slots/0?action=erase", timeout=10)
        if r.status_code != 200:
            raise BenchError(
                f"the {self.role} llama-server did not erase its slot (HTTP {r.status_code}): {r.text[:200]}"
            )

    def stop(self) -> None:
        """SIGTERM to its process group; SIGKILL if it has not exited within STOP_TIMEOUT."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT)


# -- systems ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    """One way of answering: a mode, its two models (local or served) and its budget."""

    name: str
    mode: str
    base: object
    nudger: object
    budget: dict
    speculative: bool = False
    counterpart: str | None = None  # the local system whose text it must write
    warm_up: dict = field(default_factory=lambda: {"max_tokens": WARM_UP_TOKENS})

    @property
    def served(self) -> list:
        return [m for m in (self.base, self.nudger) if m.kind == "server"]


def make_systems(local: dict, served: dict, max_tokens: int, real: bool) -> list[System]:
    """The five systems; paper mode's budget as the module's docstring says."""
    base, nudger = local["base"], local["nudger"]
    token = {"max_tokens": max_tokens}
    paper = {"max_tokens": 0, "max_rounds": REAL_PAPER_ROUNDS} if real else token
    paper_warm_up = {"max_tokens": 0, "max_rounds": 1} if real else {"max_tokens": WARM_UP_TOKENS}
    return [
        System(REFERENCE, "nudged", base, nudger, token),
        System("token, remote base", "nudged", served["base"], nudger, token, counterpart=REFERENCE),
        System("speculative local", "nudged", base, nudger, token, speculative=True),
        System("paper local", "paper", base, nudger, paper, warm_up=paper_warm_up),
        System("paper remote (OpenAI API)", "paper", served["base_text"], served["nudger_text"], paper,
               counterpart="paper local", warm_up=paper_warm_up),
    ]  # fmt: skip


def answer(system: System, prompts, budget: dict, servers: list[LlamaServer]) -> dict:
    """One timed answer from cold caches: tokens, speed, text, and the served models' requests and
    prompt tokens re-read."""
    for m in (system.base, system.nudger):
        m.reset()
    for s in servers:
        s.erase()
    before = [m.prompt_read for m in system.served]
    t0 = time.perf_counter()
    events = generate(prompts, mode=system.mode, base=system.base, nudger=system.nudger,
                      speculative=system.speculative, **budget)  # fmt: skip
    done = next(ev for ev in events if isinstance(ev, Done))
    seconds = time.perf_counter() - t0
    tokens = done.stats.tokens
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tps": tokens / seconds if seconds else 0.0,
        "text": done.text,
        "requests": sum(done.stats.forward_calls[m.role] for m in system.served),
        "prompt_read": sum(m.prompt_read - r for m, r in zip(system.served, before, strict=True)),
    }


def run_rounds(systems: list[System], prompt_sets: list, servers: list[LlamaServer], rounds: int) -> dict:
    """A warm-up answer each, then `rounds` rounds of one answer per system on the round's question,
    never at once, the order rotated each round so drift hits every system alike."""
    def prompts_for(s: System, i: int):
        """A nudger behind /v1/completions gets its prompt without the BOS text: its server adds BOS
        to a text prompt, as the local model's tokenizer does once."""
        return prompt_sets[i][1] if getattr(s.nudger, "text_only", False) else prompt_sets[i][0]

    for s in systems:
        answer(s, prompts_for(s, -1), s.warm_up, servers)
    runs = {s.name: [] for s in systems}
    for i in range(rounds):
        k = i % len(systems)
        for s in systems[k:] + systems[:k]:
            runs[s.name].append(answer(s, prompts_for(s, i % len(prompt_sets)), s.budget, servers))
    return runs


# -- figures ------------------------------------------------------------------------------------


def figures(system: System, runs: dict) -> dict:
    """One system's row: speeds, the paired ratio to the reference, requests and re-reads per token."""
    rs = runs[system.name]
    ratios = [r["tps"] / x["tps"] for r, x in zip(rs, runs[REFERENCE], strict=True)]
    written = sum(r["tokens"] for r in rs)
    served = bool(system.served)
    same = None
    if system.counterpart:
        want = runs[system.counterpart]
        same = all(r["text"] == x["text"] and r["tokens"] == x["tokens"] for r, x in zip(rs, want, strict=True))
    return {
        "mode": system.mode,
        "served": [m.role for m in system.served],
        "budget": system.budget,
        "tokens": statistics.median(r["tokens"] for r in rs),
        "tokens_rounds": [r["tokens"] for r in rs],
        "tokens_per_second": statistics.median(r["tps"] for r in rs),
        "tokens_per_second_rounds": [r["tps"] for r in rs],
        "ratio_to_local_token": statistics.median(ratios),
        "ratio_to_local_token_rounds": ratios,
        "requests_per_token": sum(r["requests"] for r in rs) / max(1, written) if served else None,
        "requests_rounds": [r["requests"] for r in rs] if served else None,
        "prompt_read_per_token": sum(r["prompt_read"] for r in rs) / max(1, written) if served else None,
        "prompt_read_rounds": [r["prompt_read"] for r in rs] if served else None,
        "counterpart": system.counterpart,
        "same_text": same,
    }


def _cell(value: float | bool | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt) if not isinstance(value, bool) else str(value)


def summarize(systems: list[System], runs: dict) -> dict:
    """The table, printed and returned, with the target and the text check."""
    print(f"{'system':26} {'tokens':>6} {'tok/s':>8} {'x local token':>13} {'(rounds)':>11} {'requests/tok':>12} "
          f"{'re-read/tok':>11} {'same text':>9}")  # fmt: skip
    rows = {}
    for s in systems:
        row = rows[s.name] = figures(s, runs)
        spread = f"({min(row['ratio_to_local_token_rounds']):.2f}-{max(row['ratio_to_local_token_rounds']):.2f})"
        print(f"{s.name:26} {row['tokens']:6.0f} {row['tokens_per_second']:8.1f} {row['ratio_to_local_token']:13.2f} "
              f"{spread:>11} {_cell(row['requests_per_token'], '12.2f'):>12} "
              f"{_cell(row['prompt_read_per_token'], '11.2f'):>11} {_cell(row['same_text'], ''):>9}")  # fmt: skip
    print("same text: every round's text and tokens as its local counterpart's (token, remote base: local token; "
          "paper remote: paper local)")  # fmt: skip
    print("speculative with a remote base runs as token mode (llama-server cannot score a draft in one request): "
          "its row is token, remote base")  # fmt: skip
    ratio = rows["token, remote base"]["ratio_to_local_token"]
    met = ratio >= TARGET
    print(f"target: token mode with a remote base >= {TARGET}x local: {ratio:.2f}x, {'met' if met else 'NOT met'}")
    same = all(r["same_text"] is not False for r in rows.values())
    for s in systems:
        if s.counterpart and not rows[s.name]["same_text"]:
            i = next(i for i, (r, x) in enumerate(zip(runs[s.name], runs[s.counterpart], strict=True))
                     if r["text"] != x["text"] or r["tokens"] != x["tokens"])  # fmt: skip
            print(f"  {s.name} differs in round {i + 1}:\n    {s.counterpart}: {runs[s.counterpart][i]['text']!r}\n"
                  f"    {s.name}: {runs[s.name][i]['text']!r}")  # fmt: skip
    print(f"  local token:  {runs[REFERENCE][0]['text']!r}")
    print(f"  paper local:  {runs['paper local'][0]['text']!r}")
    return {"systems": rows, "target": {"ratio": ratio, "at_least": TARGET, "met": met}, "same_text": same,
            "texts": {name: rs[0]["text"] for name, rs in runs.items()}}  # fmt: skip


# -- the run ------------------------------------------------------------------------------------


def bench(base_path: Path, nudger_path: Path, folder: Path, args, real: bool) -> dict:
    """Serve the pair, load it here too, answer with every system, and stop the servers whatever happens."""
    binary = llama_server_binary()
    threads = args.threads or default_threads()
    servers: dict[str, LlamaServer] = {}
    local: dict[str, Model] = {}
    served: dict = {}
    try:
        for role, path in (("base", base_path), ("nudger", nudger_path)):
            servers[role] = LlamaServer(binary, path, role, folder, threads)
        for role, path in (("base", base_path), ("nudger", nudger_path)):  # while the servers load theirs
            local[role] = Model(path, role=role, n_ctx=CTX, n_threads=threads)
        for s in servers.values():
            s.wait_ready()
        print(f"llama-server ({binary.parent}): base at {servers['base'].url}, nudger at {servers['nudger'].url}; "
              f"threads {threads}, context {CTX}, one slot each")  # fmt: skip
        served["base"] = connect(Endpoint(servers["base"].url, api="llama-server"), "base")
        served["base_text"] = connect(Endpoint(servers["base"].url, api="openai"), "base")
        served["nudger_text"] = connect(Endpoint(servers["nudger"].url, api="openai"), "nudger")
        systems = make_systems(local, served, args.max_tokens, real)
        questions = QUESTIONS[: min(args.rounds, len(QUESTIONS))]
        template = args.chat_template  # a base used as its own nudger has none in its GGUF
        text_template = template or local["nudger"].chat_template
        prompt_sets = [(render_prompts(local["base"], local["nudger"], q, chat_template=template),
                        render_prompts(local["base"], served["nudger_text"], q, chat_template=text_template))
                       for q in questions]  # fmt: skip
        runs = run_rounds(systems, prompt_sets, list(servers.values()), args.rounds)
    except (RemoteError, httpx.HTTPError) as e:  # a server went away or answered an error: its log says why
        logs = "; ".join(f"{s.role}: {s.tail()}" for s in servers.values())
        raise BenchError(f"{e} The servers' logs end: {logs}") from None
    finally:
        for m in [*served.values(), *local.values()]:
            m.close()
        for s in servers.values():
            s.stop()
    return summarize(systems, runs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(prog="scripts/bench_remote.py", description=__doc__.split("\n\n")[0])
    add_generated_pair_options(ap)
    ap.add_argument(
        "--chat-template", type=_template, help="Jinja chat template file for the nudger (default: its GGUF's)"
    )
    ap.add_argument("--max-tokens", type=_positive, default=96)
    ap.add_argument("--rounds", type=_positive, default=5)
    ap.add_argument("--threads", type=_positive, help="CPU threads per model, local and served (default: all cores)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if bool(args.base) != bool(args.nudge):
        ap.error("a real pair needs both --base and --nudge")
    if args.json and not Path(args.json).expanduser().resolve().parent.is_dir():
        ap.error(f"the folder for --json {args.json} does not exist")
    return args


def run(args: argparse.Namespace) -> dict:
    """The real pair, or a generated one, in a temporary folder that also holds the servers' logs."""
    settings = f"{args.max_tokens} tokens, {args.rounds} rounds, threads {args.threads or default_threads()}"
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        folder = Path(tmp)
        if args.base:
            paths = (check_gguf(local_path(parse_ref(args.base)), role="base"),
                     check_gguf(local_path(parse_ref(args.nudge)), role="nudger"))  # fmt: skip
            print(f"== {paths[0]} + {paths[1]}; {settings}; paper modes {REAL_PAPER_ROUNDS} rounds, no token budget")
            return bench(*paths, folder, args, real=True)
        (bw, bl, _), _ = args.shape
        print(f"== generated pair, agreement {args.agreement:.0%}, {args.quant}, base {bw}x{bl}; {settings}")
        try:
            paths = make_pair(folder, args.vocab, args.agreement, quant=args.quant, shapes=args.shape)
        except ValueError as e:  # a vocabulary without the benchmark's words
            raise NudgeError(f"The vocabulary {args.vocab} cannot make the benchmark's pair: {e}.") from None
        return bench(*paths, folder, args, real=False)


def _terminated(signum, frame) -> None:  # noqa: ARG001
    raise SystemExit(128 + signum)  # unwinds like Ctrl+C: the servers are stopped on the way out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        results = run(args)
    except NudgeError as e:  # a file missing or unfit: the same sentence `nudge-local` prints
        print(f"nudge-local: error: {e}", file=sys.stderr)
        return 2
    except BenchError as e:
        print(f"bench_remote: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_remote: interrupted; the servers were stopped", file=sys.stderr)
        return 130
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(results, indent=2))
        print(f"results written to {args.json}")
    return 0 if results["same_text"] else 1


if __name__ == "__main__":
    sys.exit(main())
