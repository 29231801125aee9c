"""The command line: `nudge-local run`, a contract scripts can rely on (exit code 2 on user errors)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from nudge_local.errors import NudgeError
from nudge_local.events import Done, TokenEvent
from nudge_local.generate import MODES, generate, render_prompts
from nudge_local.prompts import DEFAULT_BASE_FORMAT, check_base_format
from nudge_local.sampling import Sampling

WHITESPACE = " \t\n\r"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one sentence, exit code 2, no usage block
        print(f"nudge-local: error: {message}; see nudge-local {self.prog.split()[-1]} --help.", file=sys.stderr)
        raise SystemExit(2)


def _ranged(kind, lo=None, hi=None, lo_open=False, what=""):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {what or kind.__name__}") from None
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
            low = "above" if lo_open else "at least"
            bound = f"{low} {lo}" + (f" and at most {hi}" if hi is not None else "")
            raise argparse.ArgumentTypeError(f"{text} is out of range (it must be {bound})")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nudge-local", description="Nudging on a laptop: a base model guided by a small aligned model."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="answer one prompt and print it with nudged words in [brackets]")
    run.add_argument("prompt", help="the question")
    run.add_argument("--base", type=Path, help="base model GGUF (pretrained only)")
    run.add_argument("--nudge", type=Path, help="nudger model GGUF (instruction-tuned)")
    run.add_argument("--mode", choices=MODES, default="nudged", help="nudged (default), base only, nudger only")
    run.add_argument(
        "--gamma",
        type=_ranged(float, 0.0, 1.0),
        default=0.4,
        help="the nudger writes where the base's top-1 probability is below this (default 0.4)",
    )
    run.add_argument("--max-tokens", type=_ranged(int, 0), default=256, help="answer length limit (default 256)")
    run.add_argument("--word-cap", type=_ranged(int, 1), default=16, help="most tokens in one nudged word (default 16)")
    run.add_argument("--temperature", type=_ranged(float, 0.0), default=0.0, help="0 is greedy (default)")
    run.add_argument("--top-p", type=_ranged(float, 0.0, 1.0, lo_open=True), default=1.0)
    run.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    run.add_argument("--system", default="", help="system prompt for both models")
    run.add_argument(
        "--base-format",
        default=DEFAULT_BASE_FORMAT,
        help="the base's prompt, with {system} and {question} (default: %(default)r)",
    )
    run.add_argument("--chat-template", type=Path, help="Jinja chat template file for the nudger (default: its GGUF's)")
    run.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop when the answer contains TEXT (repeatable; none by default)",
    )
    run.add_argument("--ctx", type=_ranged(int, 64), default=4096, help="context size per model (default 4096)")
    run.add_argument("--threads", type=_ranged(int, 1), default=None, help="CPU threads per model (default: all)")
    run.add_argument(
        "--gpu-layers",
        type=int,
        default=None,
        help="layers offloaded to the GPU (default: all where the build can, else 0)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def spans(tokens: Iterable[TokenEvent]) -> list[dict]:
    """Consecutive tokens of one source merged; tokens whose text is empty (a split character) join
    the span of the token that completes the character."""
    out: list[dict] = []
    for t in tokens:
        if not t.text:
            continue
        if out and out[-1]["source"] == t.source:
            out[-1]["text"] += t.text
        else:
            out.append({"text": t.text, "source": t.source})
    return out


class BracketWriter:
    """Streams text with nudged words in [brackets], whitespace outside them, as the paper prints them."""

    def __init__(self, out) -> None:
        self.out, self.open = out, False

    def write(self, ev: TokenEvent) -> None:
        text = ev.text
        if not text:
            return
        if ev.source == "nudge" and not self.open:
            rest = text.lstrip(WHITESPACE)
            if not rest:
                self.out.write(text)
                return
            text = text[: len(text) - len(rest)] + "[" + rest
            self.open = True
        elif ev.source != "nudge" and self.open:
            text = "]" + text
            self.open = False
        self.out.write(text)
        self.out.flush()

    def close(self) -> None:
        if self.open:
            self.out.write("]")
            self.open = False
        self.out.write("\n")
        self.out.flush()


def _load(args):
    from nudge_local.model import Model

    need_base = args.mode in ("nudged", "base")
    need_nudge = args.mode in ("nudged", "nudger")
    for flag, needed, value in (("--base", need_base, args.base), ("--nudge", need_nudge, args.nudge)):
        if needed and value is None:
            raise NudgeError(f"Mode {args.mode} needs a model: give {flag} PATH.")
    chat_template = None
    if args.chat_template is not None:
        try:
            chat_template = args.chat_template.read_text(encoding="utf-8")
        except OSError as e:
            raise NudgeError(f"The chat template {args.chat_template} cannot be read ({e.strerror}).") from None
    check_base_format(args.base_format)
    opts = dict(n_ctx=args.ctx, n_threads=args.threads, n_gpu_layers=args.gpu_layers)
    models = {}
    try:
        if need_base:
            models["base"] = Model(args.base, role="base", **opts)
        if need_nudge:
            models["nudger"] = Model(args.nudge, role="nudger", **opts)
    except BaseException:
        for m in models.values():
            m.close()
        raise
    return models, chat_template


def run(args) -> int:
    models, chat_template = _load(args)
    try:
        base, nudger = models.get("base"), models.get("nudger")
        prompts = render_prompts(
            base, nudger, args.prompt, system=args.system, base_format=args.base_format, chat_template=chat_template
        )
        events = generate(
            prompts,
            mode=args.mode,
            base=base,
            nudger=nudger,
            gamma=args.gamma,
            max_tokens=args.max_tokens,
            word_cap=args.word_cap,
            sampling=Sampling(args.temperature, args.top_p, args.seed),
            stop_strings=args.stop,
        )
        tokens: list[TokenEvent] = []
        writer = None if args.json else BracketWriter(sys.stdout)
        done = None
        for ev in events:
            if isinstance(ev, Done):
                done = ev
            else:
                tokens.append(ev)
                if writer:
                    writer.write(ev)
        if writer:
            writer.close()
            print(f"[{args.mode}] stop: {done.stop_reason}; {done.stats.line()}", file=sys.stderr)
        else:
            json.dump(
                {
                    "text": done.text,
                    "spans": spans(tokens),
                    "tokens": [
                        {"text": t.text, "source": t.source, "token": t.token, "base_p": t.base_p, "p": t.p}
                        for t in tokens
                    ],
                    "stop_reason": done.stop_reason,
                    "mode": args.mode,
                    "gamma": args.gamma,
                    "prompts": {"base": prompts.base, "nudge": prompts.nudge},
                    "stats": done.stats.as_dict(),
                },
                sys.stdout,
                ensure_ascii=False,
            )
            sys.stdout.write("\n")
        return 0
    finally:
        for m in models.values():
            m.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"run": run}[args.command](args)
    except NudgeError as e:
        print(f"nudge-local: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nnudge-local: cancelled.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
