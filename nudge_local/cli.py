"""The command line: `nudge-local run`, a contract scripts can rely on (exit code 2 on user errors)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from nudge_local.catalog import HubFile, ModelFile, PackageFile, load_catalog, parse_ref
from nudge_local.choose import (
    choose_models,
    default_pair,
    fetch,
    load_models,
    local_path,
    missing,
    present,
    read_chat_template,
)
from nudge_local.config import FIELDS, Settings, load_settings
from nudge_local.devices import available_memory, backend, default_threads, rebuild_hint
from nudge_local.errors import NudgeError
from nudge_local.events import MODES, Done, TokenEvent
from nudge_local.generate import generate
from nudge_local.hub import cached_path, human_size, offline
from nudge_local.packaged import where
from nudge_local.paths import cache_dir, catalog_path, config_path, models_dir
from nudge_local.prompts import render_prompts
from nudge_local.remote import label
from nudge_local.render import BracketWriter, spans
from nudge_local.sampling import Sampling

PAIR_DEFAULT = "default: the configured one; else the catalog's default if downloaded, else tiny if installed"


class Parser(argparse.ArgumentParser):
    """argparse with errors as one sentence naming the command's help, exit code 2."""

    def error(self, message: str):  # one sentence, exit code 2, no usage block
        print(f"nudge-local: error: {message}; see {self.prog} --help.", file=sys.stderr)
        raise SystemExit(2)


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    """Flags for the settings of config.FIELDS; unset flags stay None so lower layers show through,
    and every value is checked by the same parsers as the file and the environment."""
    p.add_argument("--gamma", type=float, help="the nudger writes where the base's top-1 probability is below this")
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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="nudge-local", description="Nudging on a laptop: a base model guided by a small aligned model."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("run", help="answer one prompt and print it with nudged words in [brackets]")
    run.add_argument("prompt", help="the question")
    run.add_argument("--pair", help=f"a catalog pair ({PAIR_DEFAULT})")
    run.add_argument(
        "--base", help="base model: a GGUF path, org/repo:file.gguf, or http://HOST:PORT of a server (pretrained only)"
    )
    run.add_argument(
        "--nudge", help="nudger model: a GGUF path, org/repo:file.gguf, or http://HOST:PORT (instruction-tuned)"
    )
    run.add_argument("--yes", action="store_true", help="download missing model files without asking")
    run.add_argument("--mode", choices=MODES, default="nudged",
                     help="nudged (default), base only, nudger only, paper (the authors' algorithm)")  # fmt: skip
    run.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    run.add_argument(
        "--speculative",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="nudged mode: the nudger drafts, the base checks drafts in one batch (same output; on by default "
        "where the vocabularies match)",
    )
    run.add_argument("--chunk", type=int, default=16, help="paper mode: tokens per completion call, L (default 16)")
    run.add_argument("--max-rounds", type=int, default=150, help="paper mode: most rounds (default 150)")
    _add_settings_flags(run)

    chat = sub.add_parser("chat", help="the terminal chat that shows who wrote every token")
    chat.add_argument("pair", nargs="?", help=f"a catalog alias ({PAIR_DEFAULT})")
    chat.add_argument("--base", help="base model: a GGUF path, org/repo:file.gguf, or http://HOST:PORT")
    chat.add_argument("--nudge", help="nudger model: a GGUF path, org/repo:file.gguf, or http://HOST:PORT")
    chat.add_argument("--yes", action="store_true", help="download missing model files without asking")
    _add_settings_flags(chat)

    serve = sub.add_parser("serve", help="serve the pair over the OpenAI HTTP API, with every token's provenance")
    serve.add_argument("pair", nargs="?", help=f"a catalog alias ({PAIR_DEFAULT})")
    serve.add_argument("--base", help="base model: a GGUF path, org/repo:file.gguf, or http://HOST:PORT")
    serve.add_argument("--nudge", help="nudger model: a GGUF path, org/repo:file.gguf, or http://HOST:PORT")
    serve.add_argument("--yes", action="store_true", help="download missing model files without asking")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $NUDGE_LOCAL_API_KEY)")
    serve.add_argument("--queue", type=int, default=32, help="most requests waiting behind the running one (503 after)")
    serve.add_argument("--max-body", type=int, default=4 << 20, help="largest request body in bytes (413 beyond)")
    serve.add_argument("--context-overflow", choices=["stop", "drop_oldest"], default="stop",
                       help="messages longer than the context: stop (a 400, default) or drop_oldest (the oldest turns "
                       "leave; a request may ask with its own 'context_overflow' field)")  # fmt: skip
    serve.add_argument("--log-level", choices=["warning", "info", "debug"], default="warning",
                       help="uvicorn's log; info adds one line per request")  # fmt: skip
    _add_settings_flags(serve)

    from nudge_local.evaluate.cli import add_parser as add_eval_parser  # its options only; the run loads on use

    add_eval_parser(sub, _add_settings_flags)

    pull = sub.add_parser("pull", help="download a catalog pair or a hub file into the Hugging Face cache")
    pull.add_argument("refs", nargs="+", metavar="ALIAS|REF", help="catalog alias or org/repo:file.gguf")
    pull.add_argument("--yes", action="store_true", help="do not ask before downloading")
    sub.add_parser("models", help="the catalog: pairs, which files are present, where, sizes")
    sub.add_parser("doctor", help="llama.cpp build, backend, threads, configuration, cache location")
    sub.add_parser("config", help="the effective settings and where each came from")
    sub.add_parser(
        "bench",
        add_help=False,
        help="every decoding mode side by side on generated pairs (or --base/--nudge files), with ratios; "
        "`nudge-local bench --help` for its options",
    )
    parser.commands = sub.choices
    return parser


def bench(argv: list[str]) -> int:
    from nudge_local.bench import main as bench_main  # the benchmark writes models: loaded only when asked

    try:
        bench_main(argv)
    except SystemExit as e:  # its own parser's --help or usage error
        return e.code if isinstance(e.code, int) else 2
    return 0


def _settings(args) -> Settings:
    flags = {k: v for k, v in vars(args).items() if k in FIELDS}
    return load_settings(flags)


def _ask(question: str) -> bool:
    """A yes/no question on the terminal."""
    return input(question).strip().lower() in ("y", "yes")


def _fetch_missing(choice, yes: bool) -> None:
    """Download what the chosen pair lacks, asking first where there is a terminal to ask on."""
    confirm = _ask if sys.stdin and sys.stdin.isatty() else None
    alias = choice.pair.alias if choice.pair else None
    what = f"{alias}: " if alias else ""
    fetch(missing([choice.base, choice.nudger], alias), yes=yes, what=what, confirm=confirm, pair=alias)


def _load(s: Settings, mode: str, yes: bool):
    """The chosen pair (downloaded first where asked), its loaded models and the nudger's chat template."""
    choice = choose_models(s, mode)
    _fetch_missing(choice, yes)
    chat_template = read_chat_template(s)
    models = load_models({"base": local_path(choice.base), "nudger": local_path(choice.nudger)}, s)
    return choice, models, chat_template


def run(args) -> int:
    s = _settings(args)
    for flag, value in (("--chunk", args.chunk), ("--max-rounds", args.max_rounds)):
        if value < 1:
            raise NudgeError(f"option {flag} must be a whole number of at least 1 (got {value}).")
    _, models, chat_template = _load(s, args.mode, args.yes)
    try:
        base, nudger = models.get("base"), models.get("nudger")
        prompts = render_prompts(
            base, nudger, args.prompt, system=s.system, base_format=s.base_format, chat_template=chat_template
        )
        events = generate(
            prompts,
            mode=args.mode,
            base=base,
            nudger=nudger,
            gamma=s.gamma,
            max_tokens=s.max_tokens,
            word_cap=s.word_cap,
            sampling=Sampling(s.temperature, s.top_p, s.seed),
            stop_strings=s.stop_strings,
            chunk=args.chunk,
            max_rounds=args.max_rounds,
            speculative=args.speculative,
            entropy=args.json,  # the branching factors in --json's stats
        )
        if args.json:
            *tokens, done = events
            _print_json(tokens, done, prompts, args.mode, s.gamma)
        else:
            writer = BracketWriter(sys.stdout)
            for ev in events:
                if isinstance(ev, Done):
                    writer.close()
                    print(f"[{args.mode}] stop: {ev.stop_reason}; {ev.stats.line()}", file=sys.stderr)
                else:
                    writer.write(ev)
        return 0
    finally:
        for m in models.values():
            m.close()


def _print_json(tokens: list[TokenEvent], done: Done, prompts, mode: str, gamma: float) -> None:
    doc = {
        "text": done.text,
        "spans": spans(tokens),
        "tokens": [t.as_dict() for t in tokens],
        "stop_reason": done.stop_reason,
        "mode": mode,
        "gamma": gamma,
        "prompts": {"base": prompts.base, "nudge": prompts.nudge},
        "stats": done.stats.as_dict(),
        **done.result.figures(),
    }
    json.dump(doc, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def chat(args) -> int:
    s = _settings(args)
    choice = choose_models(s, "nudged")
    try:
        _fetch_missing(choice, args.yes)
    except NudgeError as e:
        print(f"nudge-local: {e}", file=sys.stderr)  # the app shows it again, in place of the models
    from nudge_local.tui.app import NudgeApp  # the engine imports no UI code; only this command loads it

    NudgeApp(s).run()
    return 0


def serve(args) -> int:
    import os

    from nudge_local.server.app import check_address  # the web stack loads only for this command
    from nudge_local.server.app import serve as serve_pair
    from nudge_local.server.worker import Pair

    if not 0 <= args.port <= 65535:
        raise NudgeError(f"option --port must be a whole number from 0 to 65535 (got {args.port}).")
    for flag, value, least in (("--queue", args.queue, 0), ("--max-body", args.max_body, 1)):
        if value < least:
            raise NudgeError(f"option {flag} must be a whole number of at least {least} (got {value}).")
    check_address(args.host, args.port)
    api_key = args.api_key or os.environ.get("NUDGE_LOCAL_API_KEY") or None
    s = _settings(args)
    choice, models, chat_template = _load(s, "nudged", args.yes)
    name = choice.pair.alias if choice.pair else f"{label(models['base'])}+{label(models['nudger'])}"
    pair = Pair(models, s, chat_template, name)
    return serve_pair(pair, host=args.host, port=args.port, api_key=api_key, queue_size=args.queue,
                      max_body=args.max_body, log_level=args.log_level)  # fmt: skip


def evaluate(args) -> int:
    from nudge_local.evaluate.cli import main as eval_main

    return eval_main(args)


def pull(args) -> int:
    catalog = load_catalog()
    files: list[tuple[ModelFile, str | None]] = []
    for ref in args.refs:
        if ref in catalog.pairs:
            files += [(f, ref) for f in catalog.pairs[ref].files]
        else:
            f = parse_ref(ref)
            if not isinstance(f, HubFile):
                raise NudgeError(
                    f"{ref} is neither a catalog alias nor org/repo:file.gguf; `nudge-local models` lists aliases."
                )
            files.append((f, None))
    todo: list[HubFile] = []
    for f, alias in files:
        todo += missing([f], alias)  # a package that is not installed is one sentence here
    for f, _ in files:
        if isinstance(f, PackageFile):
            print(f"{f.ref}: {local_path(f)} (from the installed package {f.package})")
        elif f not in todo:
            print(f"{f.ref}: already in the cache at {cached_path(f)}", file=sys.stderr)
    fetch(todo, yes=True)
    for f in todo:
        print(f"{f.ref}: {cached_path(f)}")
    return 0


def _file_line(role: str, f: ModelFile) -> str:
    if isinstance(f, PackageFile):
        return f"  {role:6}  package {f.ref}  {human_size(f.size)}  {where(f)}"
    p = cached_path(f)
    return f"  {role:6}  {f.ref}  {human_size(f.size)}  {f'present: {p}' if p else 'not downloaded'}"


def models(args) -> int:
    catalog = load_catalog()
    print(f"catalog: {catalog.path}\nHugging Face cache: {cache_dir()}\nnudge-local's models: {models_dir()}\n")
    for alias, pair in catalog.pairs.items():
        mark = "  (default)" if alias == catalog.default else "  (fallback)" if alias == catalog.fallback else ""
        print(f"{alias}{mark}\n  {pair.description}")
        for role, f in (("base", pair.base), ("nudger", pair.nudger)):
            print(_file_line(role, f))
        size = human_size(pair.base.size + pair.nudger.size)
        print(
            f"  gamma {pair.gamma}, vocabulary {pair.vocabulary}, {size} in all, licence {pair.license['base']}"
            f" / {pair.license['nudger']}\n"
        )
    return 0


def _print_settings(s: Settings) -> None:
    width = max(map(len, FIELDS))
    for key in FIELDS:
        if key == "stop":
            print(f"  {key:{width}}  {s.stop_strings!r:40}  ({s.stop_source})")
        else:
            print(f"  {key:{width}}  {s.values[key]!r:40}  ({s.sources[key]})")


def config(args) -> int:
    print(f"configuration file: {config_path()}")
    _print_settings(load_settings())
    return 0


def doctor(args) -> int:
    import platform

    import llama_cpp

    from nudge_local import __version__

    s = load_settings()
    b = backend()
    print(f"nudge-local {__version__}, Python {platform.python_version()}, {platform.system()} {platform.machine()}")
    print(f"llama-cpp-python {llama_cpp.__version__}")
    print(f"backend: {b}; GPU offload {'works: all layers by default' if b != 'CPU' else 'not in this build'}")
    hint = rebuild_hint()
    if hint:
        print(f"  this machine has a GPU the build does not use; rebuild with:\n  {hint}")
    elif b == "CPU":
        print('  GPU builds: CMAKE_ARGS="-DGGML_METAL=on" (Apple) or "-DGGML_CUDA=on" (NVIDIA) when installing')
    avail, total = available_memory()
    print(f"threads per model: {s.threads or default_threads()} (the two models take turns, each with all of them)")
    print(f"memory: {human_size(avail)} free of {human_size(total)}")
    print(f"Hugging Face cache: {cache_dir()}{' (offline: HF_HUB_OFFLINE)' if offline() else ''}")
    print(f"catalog: {catalog_path()}")
    _print_pairs(s)
    print(f"configuration file: {config_path()}{'' if config_path().exists() else ' (none yet)'}")
    _print_settings(s)
    return 0


def _print_pairs(s: Settings) -> None:
    """The pair a command runs when none is named, and the fallback pair's files."""
    catalog = load_catalog()
    chosen = default_pair(catalog, s.pair)
    state = "ready" if all(present(f) for f in chosen.files) else "to be downloaded"
    print(f"pair when none is named: {chosen.alias} ({state})")
    if catalog.fallback:
        print(f"{catalog.fallback} pair (offline, from Python packages):")
        for role, f in zip(("base", "nudger"), catalog.pair(catalog.fallback).files, strict=True):
            print(_file_line(role, f))


def _notes(command: str) -> None:
    """The engine's notes (a fallback it took) as `nudge-local: note: ...` lines on stderr; the chat,
    which owns the terminal, does not print them."""
    log = logging.getLogger("nudge_local.notes")
    if not log.handlers:
        handler = logging.NullHandler() if command == "chat" else logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("nudge-local: note: %(message)s"))
        log.addHandler(handler)
        log.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv[:1] == ["bench"]:  # the benchmark script's own options, passed through whole
        args = None
    else:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named against the command given, not the top-level parser
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    _notes(args.command if args else "bench")
    try:
        if args is None:
            return bench(argv[1:])
        commands = {"run": run, "chat": chat, "serve": serve, "pull": pull, "models": models, "doctor": doctor}
        commands["config"] = config
        commands["eval"] = evaluate
        return commands[args.command](args)
    except NudgeError as e:
        print(f"nudge-local: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nnudge-local: cancelled.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (`| head`) went away: nothing more to say
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
