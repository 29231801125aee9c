"""`nudge-local eval`: its options, the models it loads, the progress bar, and the report at the end."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from nudge_local.calibrate import Calibration, calibrate, say_progress
from nudge_local.catalog import is_url
from nudge_local.choose import choose_models, fetch, load_models, local_path, missing, read_chat_template
from nudge_local.commands import add_pair_options, add_settings_flags, confirmer, fetch_missing, settings_of
from nudge_local.config import Settings, load_settings
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.sampling import Sampling
from nudge_local.evaluate.data import TASKS, Item, Task, data_digest, load_items, select
from nudge_local.evaluate.run import (
    EVAL_MODES,
    GAMMA_MODES,
    MANIFEST_VERSION,
    EvalConfig,
    Results,
    check_manifest,
    file_sha256,
    parse_modes,
    roles_needed,
    run,
    write_atomic,
)
from nudge_local.evaluate.sweep import GRID, Threshold, check_modes, parse_sweep, resolve_auto

if TYPE_CHECKING:
    from nudge_local.evaluate.judge import ChatJudge, Judge

PAPER_SEED = 609  # the authors drew their subsets with this seed
PAPER_MAX_TOKENS = 512


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help="evaluate a pair on a task (GSM8K, SVAMP, MultiArith, multiple choice, open): accuracy, nudge "
        "figures, which words were nudged, a report",
        conflict_handler="resolve",  # its --gate and --gamma take sweeps, its --seed and --max-tokens other defaults
    )
    p.add_argument("task", choices=list(TASKS), help="how answers are scored: " + ", ".join(TASKS))
    p.add_argument("--data", required=True, metavar="FILE|hub:ORG/NAME[:SPLIT]",
                   help="the questions: a JSONL (.jsonl, .jsonl.gz, .json, .parquet) file in the dataset's own "
                   "field names, or a Hugging Face dataset (online, or already in the cache)")  # fmt: skip
    p.add_argument("--field", action="append", default=[], metavar="NAME=KEY",
                   help="where the file keeps NAME (id, question, answer, choices, label); KEY may be dotted "
                   "(doc.question); repeatable")  # fmt: skip
    add_pair_options(p)
    p.add_argument("--modes", default="base,nudger,nudged",
                   help=f"comma-separated, from {', '.join(EVAL_MODES)} (default base,nudger,nudged); urial is "
                   "the base alone, aligned in context by a preamble and three examples")  # fmt: skip
    p.add_argument("--limit", type=int, help="evaluate a seeded sample of N items (default: all)")
    p.add_argument("--prefix", help='before each question (default "Question: " for reasoning and choice tasks)')
    p.add_argument("--out", help="the run's folder (default eval-TASK): results.jsonl, summary.json, report.md")
    p.add_argument("--resume", action="store_true", help="go on with the run in --out, skipping what it holds")
    p.add_argument("--judge", metavar="GGUF|REF|URL",
                   help="also score answers with a judge model (a local GGUF or a server) that sees the question, "
                   "the gold answer and the answer, and replies {\"correct\": 0|1}")  # fmt: skip
    p.add_argument("--judge-chat-template", metavar="FILE",
                   help="Jinja chat template for the judge (a server other than llama-server is otherwise asked "
                   "through its chat API, which applies its own)")  # fmt: skip
    p.add_argument("--judge-model", metavar="NAME", help="the judge server's model, where it serves several")
    p.add_argument("--speculative", action=argparse.BooleanOptionalAction, default=True,
                   help="nudged mode drafts with the nudger (same output; on by default)")  # fmt: skip
    p.add_argument("--chunk", type=int, default=16, help="paper mode: tokens per completion call (default 16)")
    p.add_argument("--max-rounds", type=int, default=150, help="paper mode: most rounds (default 150)")
    add_settings_flags(p)
    p.add_argument("--gate", metavar="GATE[,GATE...]",
                   help="the gates nudged mode runs under, comma-separated: top1 (the paper's: the nudger writes "
                   "where the base's top-1 probability is below gamma), margin (top-1 minus top-2 probability below "
                   "gamma), entropy (the base's entropy in nats above gamma); default the gate setting. Paper mode "
                   "runs top1 only")  # fmt: skip
    p.add_argument("--gamma", action="append", metavar="LIST|GATE=LIST",
                   help="the thresholds: a comma-separated list sweeps (0.1,0.2,0.4); auto calibrates one per gate "
                   "to --nudge-target; GATE=LIST gives one gate its own (\"top1=0.1,0.3;entropy=1,2,3\", quoted, or "
                   "--gamma repeated). A bare list is every gate's, but with several gates entropy (nats) keeps its "
                   "own list or grid. Default: the gamma setting for one gate; for several, "
                   + "; ".join(f"{g} {','.join(f'{x:g}' for x in v)}" for g, v in GRID.items()))  # fmt: skip
    p.add_argument("--seed", type=int, help=f"the sample's and sampling's seed (default {PAPER_SEED}, the paper's)")
    p.add_argument("--max-tokens", type=int, help=f"answer length limit (default {PAPER_MAX_TOKENS}, the paper's)")
    return p


def parse_fields(pairs: list[str]) -> dict[str, str]:
    fields = {}
    for pair in pairs:
        name, sep, key = pair.partition("=")
        if not sep or not name.strip() or not key.strip():
            raise NudgeError(f"option --field takes NAME=KEY, e.g. question=doc.question (got {pair!r}).")
        fields[name.strip()] = key.strip()
    return fields


def _settings(args) -> Settings:
    """The file's and the environment's settings under the flags; the paper's set-up (its system
    prompt, 512 tokens, greedy, seed 609) wherever a flag does not say otherwise."""
    s = settings_of(args, leave=("gamma", "gate"))
    paper = {"max_tokens": PAPER_MAX_TOKENS, "seed": PAPER_SEED, "temperature": 0.0}
    return s.updated({k: v for k, v in paper.items() if not s.source(k).startswith("flag")}, "eval", "eval")


def _mode_for(roles: set[str]) -> str:
    return "nudged" if roles == {"base", "nudger"} else "base" if roles == {"base"} else "nudger"


def _report(write_report, out: Path, rows: list, manifest: dict) -> None:
    """The report on the answers written; a folder that cannot take it is one sentence (the answers
    stay in results.jsonl, and `--resume` writes the report again)."""
    try:
        paths = write_report(out, rows, manifest)
    except OSError as e:
        raise NudgeError(f"The report cannot be written in {out} ({e.strerror}); results.jsonl keeps every "
                         f"answer, and --resume writes the report again.") from None  # fmt: skip
    print(f"{len(rows)} answers in {out / 'results.jsonl'}", file=sys.stderr)
    for p in paths:
        print(p)


def main(args) -> int:
    from nudge_local.evaluate.report import write_report  # matplotlib and the rest load only for a run

    _check_options(args)
    s = _settings(args)
    task, modes, system, prefix, fields, items = _read_task(args, s)
    out = Path(args.out or f"eval-{task.name}")

    choice = choose_models(s, _mode_for(roles_needed(modes)))
    s = choice.settle(s)  # a catalog pair may set gamma and the base format: nothing above reads them
    sweep = _sweep(args, s, modes)
    chat_template = read_chat_template(s)
    fetch_missing(choice, args.yes)  # asks on the terminal, as `run` does
    out.mkdir(parents=True, exist_ok=True)
    models = load_models({"base": local_path(choice.base), "nudger": local_path(choice.nudger)}, s)
    judge = None
    try:
        gates, calibrations = resolve_auto(sweep, _calibrator(models, s, chat_template))
        cfg = _eval_config(args, s, task, items, modes, gates, system, prefix, chat_template)
        judge = _open_judge(args, s)
        manifest = check_manifest(out, _manifest(args, s, cfg, fields, models, judge, calibrations), args.resume)
        results = _open_results(out)
        write_atomic(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        try:
            _run_with_progress(cfg, models, results, judge)
        finally:  # a run stopped early still gets its report on the answers it wrote
            if results.rows:
                _report(write_report, out, results.rows, manifest)
    finally:
        if judge is not None:
            judge.close()
        for m in models.values():
            m.close()
    return 0


def _check_options(args) -> None:
    """The options no parser type catches: counts of at least 1, and judge options only with a judge."""
    limit = 1 if args.limit is None else args.limit
    for flag, value in (("--chunk", args.chunk), ("--max-rounds", args.max_rounds), ("--limit", limit)):
        if value < 1:
            raise NudgeError(f"option {flag} must be a whole number of at least 1 (got {value}).")
    for flag, value in (("--judge-chat-template", args.judge_chat_template), ("--judge-model", args.judge_model)):
        if value and not args.judge:
            raise NudgeError(f"option {flag} describes the judge; give --judge too.")
    if args.judge_model and not is_url(args.judge):
        raise NudgeError("option --judge-model names a served model; --judge is then a server's URL.")


def _read_task(args, s: Settings) -> tuple[Task, list[str], str, str, dict[str, str], list[Item]]:
    """The task and its modes, the system prompt and prefix each question is asked with, the --field
    names, and the items (a seeded sample of them under --limit); no items at all is an error."""
    task = TASKS[args.task]
    modes = parse_modes(args.modes)
    system = s.system if s.source("system").startswith("flag") else task.system
    prefix = task.prefix if args.prefix is None else args.prefix
    fields = parse_fields(args.field)
    items = select(load_items(task, args.data, fields), args.limit, s.seed)
    if not items:
        raise NudgeError(f"{args.data} holds no items.")
    return task, modes, system, prefix, fields, items


def _sweep(args, s: Settings, modes: list[str]) -> dict[str, list[Threshold]]:
    """Each gate's thresholds from --gate and --gamma (sweep.py), `auto` not yet calibrated; none
    where no mode that gamma changes runs. Paper mode beside other gates is said in a note."""
    sweep = parse_sweep(args.gate, args.gamma, s.gate, s.gamma)
    if not any(m in GAMMA_MODES for m in modes):
        return {}
    note = check_modes(sweep, modes)
    if note:
        print(f"nudge-local: {note}", file=sys.stderr)
    return sweep


def _calibrator(models, s: Settings, chat_template: str | None):
    """calibrate_gate(gate) for resolve_auto: the pair's gamma auto for that gate, the one `run` would
    use (its settings' system prompt and base format, --nudge-target, the same cache), with a
    progress line per measurement and the result said on stderr."""

    def calibrate_gate(gate: str) -> Calibration:
        print(f"nudge-local: gamma auto, {gate} gate: the threshold that nudges {s.nudge_target:.0%} of tokens",
              file=sys.stderr)  # fmt: skip
        c = calibrate(models["base"], models["nudger"], gate=gate, target=s.nudge_target, base_format=s.base_format,
                      system=s.system, chat_template=chat_template, progress=say_progress())  # fmt: skip
        if not c.cached and sys.stderr.isatty():
            sys.stderr.write("\n")  # the progress line was rewritten in place
        print(f"nudge-local: {c.line()}", file=sys.stderr)
        return c

    return calibrate_gate


def _eval_config(
    args,
    s: Settings,
    task: Task,
    items: list[Item],
    modes: list[str],
    gates: dict[str, list[float]],
    system: str,
    prefix: str,
    chat_template: str | None,
) -> EvalConfig:
    """What the run does, from the settled settings (the pair's defaults applied) and the eval's options."""
    return EvalConfig(
        task=task,
        items=items,
        modes=modes,
        gates=gates,
        system=system,
        prefix=prefix,
        base_format=s.base_format,
        chat_template=chat_template,
        stop_strings=s.stop_strings,
        max_tokens=s.max_tokens,
        word_cap=s.word_cap,
        sampling=Sampling(s.temperature, s.top_p, s.seed),
        chunk=args.chunk,
        max_rounds=args.max_rounds,
        speculative=args.speculative,
    )


def _open_judge(args, s: Settings) -> Judge | ChatJudge | None:
    """The --judge model or server, opened; None without --judge (its module loads only with one)."""
    if not args.judge:
        return None
    from nudge_local.evaluate.judge import open_judge

    judge_template = None
    if args.judge_chat_template:
        judge_template = read_chat_template(load_settings({"chat_template": args.judge_chat_template}))
    return open_judge(_judge_file(args.judge, args.yes), s, chat_template=judge_template, model_name=args.judge_model)


def _manifest(
    args, s: Settings, cfg: EvalConfig, fields: dict[str, str], models, judge, calibrations: list[Calibration]
) -> dict:
    """What this run is: its data, its models, its settings and its judge, the gates and thresholds it
    ran and how each `auto` was calibrated; --resume checks a run against the manifest it left
    (`check_manifest`)."""
    return {
        "version": MANIFEST_VERSION,
        "task": cfg.task.name,
        "data": args.data,
        "data_sha256": data_digest(args.data),
        "base": models["base"].identity if "base" in models else None,
        "nudger": models["nudger"].identity if "nudger" in models else None,
        "settings": {
            "system": cfg.system,
            "prefix": cfg.prefix,
            "base_format": s.base_format,
            "chat_template_sha256": file_sha256(s.chat_template) if s.chat_template else None,
            "stop": cfg.stop_strings,
            "max_tokens": s.max_tokens,
            "word_cap": s.word_cap,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "limit": args.limit,
            "fields": fields,
            "chunk": args.chunk,
            "max_rounds": args.max_rounds,
        },
        "judge": judge.label if judge else None,
        "modes": cfg.modes,
        "gates": cfg.gates,
        "auto": [{k: v for k, v in asdict(c).items() if k != "cached"} for c in calibrations],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _open_results(out: Path) -> Results:
    """OUT/results.jsonl, saying so where a kill cut its last line short."""
    results = Results(out / "results.jsonl")
    if results.cut:
        print("nudge-local: the last line of results.jsonl was cut short; its answer is written again.",
              file=sys.stderr)  # fmt: skip
    return results


def _judge_file(ref: str, yes: bool) -> str:
    """The judge as `open_judge` takes it: a server's URL or a file on disk (a hub reference,
    org/repo:file.gguf, is downloaded into the Hugging Face cache first, asking as for the pair)."""
    from nudge_local.catalog import HubFile, parse_ref

    f = None if is_url(ref) else parse_ref(ref)
    if not isinstance(f, HubFile):
        return ref
    fetch(missing([f]), yes=yes, what="--judge: ", confirm=confirmer())
    return str(local_path(f))


def _run_with_progress(cfg: EvalConfig, models, results: Results, judge) -> None:
    """The loop with one progress bar per mode, gate and gamma (Rich, on stderr), each with its ETA and
    the accuracy so far. Where stderr is not a terminal (a log file, a pipe), a plain line per bar says
    the same when it finishes, and at most every PLAIN_EVERY seconds while it runs."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    plain = not console.is_terminal
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[figures]}"))  # fmt: skip
    with Progress(*columns, console=console, disable=plain) as progress:
        bars: dict[tuple, int] = {}
        right: dict[tuple, list[int]] = {}
        said = [time.monotonic()]

        def on_start(mode, gate, gamma, done, total):
            name = mode if gamma is None else f"{mode} {gate} γ={gamma:g}"
            bars[(mode, gate, gamma)] = progress.add_task(name, total=total, completed=done, figures="")

        def say(bar: int) -> None:
            task = progress.tasks[bar]
            left = "" if task.finished or task.time_remaining is None else f", {_clock(task.time_remaining)} left"
            figures = f", {task.fields['figures']}" if task.fields["figures"] else ""
            print(f"{task.description}: {task.completed:g}/{task.total:g}{left}{figures}", file=sys.stderr, flush=True)
            said[0] = time.monotonic()

        for row in run(cfg, models, results, judge=judge, on_start=on_start):
            group = (row["mode"], row["gate"], row["gamma"])
            r = right.setdefault(group, [0, 0, 0, 0, 0])
            if row["correct"] is not None:
                r[0] += bool(row["correct"])
                r[1] += 1
            r[2] += row["nudge_tokens"]
            r[3] += row["tokens"]
            r[4] += row["cut"]
            figures = f"acc {r[0] / r[1]:.0%}" if r[1] else ""
            if row["mode"] in ("nudged", "paper") and r[3]:
                figures += f"  nudged {r[2] / r[3]:.0%}"
            if r[4]:  # answers the length limit ended: their accuracy is their last number's
                figures += f"  cut {r[4]}"
            progress.update(bars[group], advance=1, figures=figures)
            if plain and (progress.tasks[bars[group]].finished or time.monotonic() - said[0] >= PLAIN_EVERY):
                say(bars[group])


PLAIN_EVERY = 30.0  # seconds between progress lines on a log file


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
