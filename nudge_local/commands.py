"""What every command shares: its parser's way with errors, the pair and settings options, settings
read from a command's flags, the download question, loading the chosen pair, and how the engine's
notes reach the terminal. The commands themselves live with their consumers: cli.py (run, pull,
models, config, doctor), tui/cli.py (chat), server/cli.py (serve), evaluate/cli.py (eval) and
bench/cli.py (bench)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from nudge_local.calibrate import Calibration, say_progress, settle_gamma
from nudge_local.choose import Choice, choose_models, fetch, load_models, local_path, missing, read_chat_template
from nudge_local.config import FIELDS, Settings, load_settings
from nudge_local.engine.interface import ScoringModel

PAIR_DEFAULT = "default: the configured one; else the catalog's default if downloaded, else tiny if installed"
MODEL_REF = "a GGUF path, org/repo:file.gguf, or http://HOST:PORT of a server"


class Parser(argparse.ArgumentParser):
    """argparse with errors as one sentence naming the command's help, exit code 2."""

    def error(self, message: str):  # one sentence, exit code 2, no usage block
        print(f"nudge-local: error: {message}; see {self.prog} --help.", file=sys.stderr)
        raise SystemExit(2)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--base and --nudge: the pair's two models named directly."""
    p.add_argument("--base", help=f"base model (pretrained only): {MODEL_REF}")
    p.add_argument("--nudge", help=f"nudger model (instruction-tuned): {MODEL_REF}")


def add_pair_options(p: argparse.ArgumentParser, *, positional: bool = False) -> None:
    """Which pair a command runs: a catalog alias (`positional`: as the command's argument, else
    --pair), or --base and --nudge; and --yes to download what is missing without asking."""
    if positional:
        p.add_argument("pair", nargs="?", help=f"a catalog alias ({PAIR_DEFAULT})")
    else:
        p.add_argument("--pair", help=f"a catalog pair ({PAIR_DEFAULT})")
    add_model_options(p)
    p.add_argument("--yes", action="store_true", help="download missing model files without asking")


def add_settings_flags(p: argparse.ArgumentParser) -> None:
    """Flags for the settings of config.FIELDS; unset flags stay None so lower layers show through,
    and every value is checked by the same parsers as the file and the environment."""
    p.add_argument("--gamma", help="the gate's threshold (top1: the nudger writes where the base's top-1 probability "
                   "is below it; default 0.4), or auto: calibrated for the pair to --nudge-target")  # fmt: skip
    p.add_argument("--gate", help="where the nudger writes: top1 (the paper's, default), margin (top-1 minus top-2 "
                   "probability below gamma) or entropy (the base's entropy in nats above gamma)")  # fmt: skip
    p.add_argument("--nudge-target", type=float, help="with --gamma auto: the share of tokens the nudger writes "
                   "(default 0.12)")  # fmt: skip
    p.add_argument("--max-tokens", type=int, help="answer length limit (default 256)")
    p.add_argument("--word-cap", type=int, help="most tokens in one nudged word (default 16)")
    p.add_argument("--temperature", type=float, help="0 is greedy (default)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (default 1.0)")
    p.add_argument("--seed", type=int, help="sampling seed (default 0)")
    p.add_argument("--system", help="system prompt for both models")
    p.add_argument("--base-format", help="the base's prompt, with {system} and {question}")
    p.add_argument("--chat-template", help="Jinja chat template file for the nudger (default: its GGUF's)")
    p.add_argument("--stop", action="append", metavar="TEXT",
                   help="stop before TEXT (repeatable; default: the base format's next-turn marker, "
                   "'\\nQuestion:')")  # fmt: skip
    p.add_argument("--ctx", dest="context_size", type=int, help="context size per model (default: what the pair needs)")
    p.add_argument("--threads", type=int, help="CPU threads per model (default: all cores)")
    p.add_argument("--gpu-layers", type=int, help="layers offloaded to the GPU (default: all where the build can)")
    p.add_argument("--base-model", help="with --base URL: the model's name where the server serves several")
    p.add_argument("--nudge-model", help="with --nudge URL: the model's name where the server serves several")
    p.add_argument("--base-api", help="with --base URL: auto (default), llama-server, openai or ollama")
    p.add_argument("--nudge-api", help="with --nudge URL: auto (default), llama-server, openai or ollama")
    p.add_argument("--timeout", type=float, help="seconds a model server may take per request (default 60); "
                   "API keys come from $NUDGE_LOCAL_BASE_API_KEY / $NUDGE_LOCAL_NUDGE_API_KEY")  # fmt: skip


def settings_of(args: argparse.Namespace, *, leave: tuple[str, ...] = ()) -> Settings:
    """The settings under a command's flags (those given; `leave`: flags the command reads itself)."""
    return load_settings({k: v for k, v in vars(args).items() if k in FIELDS and k not in leave})


def ask(question: str) -> bool:
    """A yes/no question on the terminal."""
    return input(question).strip().lower() in ("y", "yes")


def confirmer() -> Callable[[str], bool] | None:
    """Who answers the download question: the terminal, where there is one to ask on."""
    return ask if sys.stdin and sys.stdin.isatty() else None


def fetch_missing(choice: Choice, yes: bool) -> None:
    """Download what the chosen pair lacks, asking first where there is a terminal to ask on."""
    alias = choice.pair.alias if choice.pair else None
    what = f"{alias}: " if alias else ""
    fetch(missing([choice.base, choice.nudger], alias), yes=yes, what=what, confirm=confirmer(), pair=alias)


@dataclass(frozen=True)
class Loaded:
    """A pair ready to answer: the choice, the settings it runs with (the pair's defaults in, gamma
    auto calibrated), its models, the nudger's chat template, and the calibration where gamma was auto."""

    choice: Choice
    settings: Settings
    models: dict[str, ScoringModel]
    chat_template: str | None
    calibration: Calibration | None = None


def load_pair(s: Settings, mode: str, yes: bool) -> Loaded:
    """The chosen pair (downloaded first where asked), loaded, with its settings settled."""
    choice = choose_models(s, mode)
    s = choice.settle(s)
    fetch_missing(choice, yes)
    chat_template = read_chat_template(s)
    models = load_models({"base": local_path(choice.base), "nudger": local_path(choice.nudger)}, s)
    try:
        s, calibration = settle_gamma(s, models, chat_template, say_progress())
        if calibration is not None and not calibration.cached and sys.stderr.isatty():
            print(file=sys.stderr)  # the progress line was rewritten in place: end it
    except BaseException:
        for m in models.values():
            m.close()
        raise
    return Loaded(choice, s, models, chat_template, calibration)


class Once(logging.Filter):
    """Lets each message through once: a note repeated by every answer is said the first time."""

    def __init__(self) -> None:
        super().__init__()
        self.said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.said:
            return False
        self.said.add(message)
        return True


def say_notes(*, quiet: bool = False) -> None:
    """The engine's notes (a fallback it took) as `nudge-local: note: ...` lines on stderr, each
    once per process; `quiet` (the chat, which owns the terminal) prints none."""
    log = logging.getLogger("nudge_local.notes")
    if not log.handlers:
        handler = logging.NullHandler() if quiet else logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("nudge-local: note: %(message)s"))
        handler.addFilter(Once())
        log.addHandler(handler)
        log.propagate = False
