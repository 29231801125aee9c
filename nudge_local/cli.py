"""The command line: `nudge-local run`, a contract scripts can rely on (exit code 2 on user errors), and
the commands about files and settings (pull, models, config, doctor). chat, serve, eval and bench
add their own commands (tui/cli.py, server/cli.py, evaluate/cli.py, bench/cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from nudge_local.calibrate import cached_for_files
from nudge_local.catalog import HubFile, ModelFile, PackageFile, load_catalog, parse_ref
from nudge_local.choose import default_pair, fetch, local_path, missing, present
from nudge_local.commands import Parser, add_pair_options, add_settings_flags, load_pair, say_notes, settings_of
from nudge_local.config import FIELDS, Settings, load_settings
from nudge_local.engine.devices import available_memory, backend, default_threads, rebuild_hint
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import MODES, Done, TokenEvent
from nudge_local.engine.generate import generate
from nudge_local.engine.prompts import render_prompts
from nudge_local.engine.sampling import Sampling
from nudge_local.evaluate.cli import add_parser as add_eval_parser
from nudge_local.evaluate.cli import main as eval_main
from nudge_local.hub import cached_path, human_size, offline
from nudge_local.packaged import present_path, where
from nudge_local.paths import cache_dir, catalog_path, config_path, models_dir
from nudge_local.render import BracketWriter, spans
from nudge_local.server.cli import add_parser as add_serve_parser
from nudge_local.server.cli import main as serve_main
from nudge_local.tui.cli import add_parser as add_chat_parser
from nudge_local.tui.cli import main as chat_main


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; each consumer adds its own command (chat, serve, eval, bench)."""
    parser = Parser(
        prog="nudge-local", description="Nudging on a laptop: a base model guided by a small aligned model."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_run_parser(sub)
    add_chat_parser(sub)
    add_serve_parser(sub)
    add_eval_parser(sub)
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


def _add_run_parser(sub) -> None:
    run = sub.add_parser("run", help="answer one prompt and print it with nudged words in [brackets]")
    run.add_argument("prompt", help="the question")
    add_pair_options(run)
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
    add_settings_flags(run)


def bench(argv: list[str]) -> int:
    from nudge_local.bench.cli import main as bench_main  # the benchmark writes models: loaded only when asked

    try:
        bench_main(argv)
    except SystemExit as e:  # its own parser's --help or usage error
        return e.code if isinstance(e.code, int) else 2
    return 0


def run(args) -> int:
    s = settings_of(args)
    for flag, value in (("--chunk", args.chunk), ("--max-rounds", args.max_rounds)):
        if value < 1:
            raise NudgeError(f"option {flag} must be a whole number of at least 1 (got {value}).")
    loaded = load_pair(s, args.mode, args.yes)
    s, models, chat_template = loaded.settings, loaded.models, loaded.chat_template
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
            gate=s.gate,
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
            _print_json(tokens, done, prompts, args.mode, s, loaded.calibration)
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


def _print_json(tokens: list[TokenEvent], done: Done, prompts, mode: str, s: Settings, calibration) -> None:
    doc = {
        "text": done.text,
        "spans": spans(tokens),
        "tokens": [t.as_dict() for t in tokens],
        "stop_reason": done.stop_reason,
        "mode": mode,
        "gamma": s.gamma,
        "gate": s.gate,
        "gamma_auto": None if calibration is None else {k: v for k, v in asdict(calibration).items()},
        "prompts": {"base": prompts.base, "nudge": prompts.nudge},
        "stats": done.stats.as_dict(),
        **done.result.figures(),
    }
    json.dump(doc, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


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
            f" / {pair.license['nudger']}"
        )
        for line in _calibrations(pair):
            print(line)
        print()
    return 0


def _calibrations(pair) -> list[str]:
    """The pair's calibrated gammas (`gamma: auto`), from the cache, where its files are present."""
    paths = [present_path(f) if isinstance(f, PackageFile) else cached_path(f) for f in pair.files]
    found = cached_for_files(*paths) if all(paths) else []
    return [f"  {c.line()}" for c in sorted(found, key=lambda c: (c.gate, c.target))]


def _print_settings(s: Settings) -> None:
    width = max(map(len, FIELDS))
    for key in FIELDS:
        if key == "stop":
            print(f"  {key:{width}}  {s.stop_strings!r:40}  ({s.stop_source})")
        else:
            print(f"  {key:{width}}  {getattr(s, key)!r:40}  ({s.source(key)})")


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
    print(*(_calibrations(chosen) or ["  gamma auto: not calibrated for it yet"]), sep="\n")
    if catalog.fallback:
        print(f"{catalog.fallback} pair (offline, from Python packages):")
        for role, f in zip(("base", "nudger"), catalog.pair(catalog.fallback).files, strict=True):
            print(_file_line(role, f))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv[:1] == ["bench"]:  # the benchmark script's own options, passed through whole
        args = None
    else:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named against the command given, not the top-level parser
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    say_notes(quiet=bool(args) and args.command == "chat")
    try:
        if args is None:
            return bench(argv[1:])
        commands = {"run": run, "chat": chat_main, "serve": serve_main, "eval": eval_main, "pull": pull}
        commands.update(models=models, doctor=doctor, config=config)
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
