"""The evaluation loop (docs/eval.md): every item in every mode, gate and gamma through the engine, each
finished answer appended to DIR/results.jsonl at once, so a crash or Ctrl+C loses at most the item
being written, and `--resume` goes on where the file ends without writing any line twice."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Done, TokenEvent
from nudge_local.engine.generate import generate
from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.prompts import DEFAULT_BASE_FORMAT, Prompts, base_prompt, nudger_prompt
from nudge_local.engine.sampling import Sampling
from nudge_local.engine.speculative import DraftSizer
from nudge_local.evaluate.data import Item, Task, render_question
from nudge_local.evaluate.report import looped, repetition, row_gate
from nudge_local.evaluate.scoring import cut, score
from nudge_local.evaluate.urial import STOPS as URIAL_STOPS
from nudge_local.evaluate.urial import urial_prompt
from nudge_local.render import spans

EVAL_MODES = ("base", "nudger", "nudged", "paper", "urial")
GAMMA_MODES = ("nudged", "paper")  # the modes gamma changes; the others run once, with gamma null
NEEDS = {"base": {"base"}, "urial": {"base"}, "nudger": {"nudger"}, "nudged": {"base", "nudger"},
         "paper": {"base", "nudger"}}  # fmt: skip
MANIFEST_VERSION = 2  # 2: "gates" (each gate's thresholds) and "auto" replace "gammas" (top1's)


@dataclass(frozen=True)
class Job:
    """One answer to write: an item in one mode under one gate at one gamma (both None for the modes
    gamma does not change)."""

    item: Item
    mode: str
    gate: str | None
    gamma: float | None

    @property
    def key(self) -> tuple[str, str, str | None, float | None]:
        return (self.item.id, self.mode, self.gate, self.gamma)


@dataclass
class EvalConfig:
    """What a run does, beyond the models: the task, its items, the modes, each gate's gammas (paper
    mode runs top1's only), and the decoding settings every answer shares."""

    task: Task
    items: list[Item]
    modes: list[str]
    gates: dict[str, list[float]]
    system: str
    prefix: str
    base_format: str = DEFAULT_BASE_FORMAT
    chat_template: str | None = None
    stop_strings: list[str] = field(default_factory=list)
    max_tokens: int = 512
    word_cap: int = 16
    sampling: Sampling = field(default_factory=Sampling)
    chunk: int = 16
    max_rounds: int = 150
    speculative: bool = True
    sizer: DraftSizer = field(default_factory=DraftSizer)  # the run's pair's draft costs, kept across answers


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in EVAL_MODES]
    if bad or not modes:
        raise NudgeError(f"option --modes takes a comma-separated list of {', '.join(EVAL_MODES)} (got {text!r}).")
    return list(dict.fromkeys(modes))


def roles_needed(modes: Sequence[str]) -> set[str]:
    return set().union(*(NEEDS[m] for m in modes))


def _settings_of(mode: str, gates: dict[str, Sequence[float]]) -> list[tuple[str | None, float | None]]:
    """The (gate, gamma) a mode runs at: every gate's gammas for nudged, top1's for paper (the paper's
    gate), none for the modes gamma does not change."""
    if mode not in GAMMA_MODES:
        return [(None, None)]
    return [(gate, gamma) for gate, gammas in gates.items() if mode == "nudged" or gate == "top1" for gamma in gammas]


def plan_jobs(items: Sequence[Item], modes: Sequence[str], gates: dict[str, Sequence[float]]) -> list[Job]:
    """Mode by mode, gate by gate, gamma by gamma (the progress bar's unit), item by item."""
    return [
        Job(item, mode, gate, gamma) for mode in modes for gate, gamma in _settings_of(mode, gates) for item in items
    ]


def row_key(row: dict) -> tuple[str, str, str | None, float | None]:
    """What --resume keys on; a row written before gates existed is top1's."""
    return (str(row["id"]), row["mode"], row_gate(row), row["gamma"])


class Results:
    """DIR/results.jsonl, one JSON object per finished answer. Each line goes to the file in one
    write and is synced to disk before the next answer starts. A line a kill cut short (the file does
    not end with a newline) is removed when the file is opened again: its answer is written anew."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = []
        self.cut = False  # a cut line was removed on opening
        if path.exists():
            self._read()

    def _read(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut short by a kill: drop it
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
            data, self.cut = data[:end], True
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row_key(row)
            except (json.JSONDecodeError, KeyError, TypeError):
                raise NudgeError(
                    f"{self.path}:{n} is not a result line; the file was changed by hand: fix or remove that line."
                ) from None
            self.rows.append(row)

    def keys(self) -> set[tuple]:
        return {row_key(r) for r in self.rows}

    def append(self, row: dict) -> None:
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.rows.append(row)


def write_atomic(path: Path, text: str) -> None:
    """The whole file or the old one: written beside it, then renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


IDENTITY = ("task", "data_sha256", "base", "nudger", "settings", "judge")  # what a resumed run must share


def manifest_gates(manifest: dict) -> dict[str, list[float]]:
    """Each gate's gammas a manifest records; one written before gates existed ran top1's "gammas"."""
    if "gates" in manifest:
        return {gate: list(gammas) for gate, gammas in manifest["gates"].items()}
    return {"top1": list(manifest["gammas"])} if manifest.get("gammas") else {}


def _merge_gates(old: dict, new: dict) -> dict[str, list[float]]:
    merged = manifest_gates(old)
    for gate, gammas in manifest_gates(new).items():
        merged[gate] = sorted(set(merged.get(gate, [])) | set(gammas))
    return merged


def check_manifest(out: Path, manifest: dict, resume: bool) -> dict:
    """The manifest to keep in `out`: a new one, or (with --resume) the existing one with this run's
    modes, gates, gammas and calibrations added. Results from another run, or a changed pair or
    setting, are one sentence."""
    path = out / "manifest.json"
    has_results = (out / "results.jsonl").exists() and (out / "results.jsonl").stat().st_size > 0
    if not resume:
        if has_results:
            raise NudgeError(f"{out} already holds results; give --resume to go on with that run, or another --out.")
        return manifest
    if not path.exists():
        if has_results:
            raise NudgeError(f"{out} holds results but no manifest.json; give another --out.")
        return manifest
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise NudgeError(f"{path} cannot be read ({e}); give another --out.") from None
    for key in IDENTITY:
        a, b = old.get(key), manifest.get(key)
        if key == "settings":
            changed = sorted(k for k in set(a or {}) | set(b or {}) if (a or {}).get(k) != (b or {}).get(k))
            if changed:
                k = changed[0]
                raise NudgeError(
                    f"{out} holds a run with {k} {(a or {}).get(k)!r}, and this one has {(b or {}).get(k)!r}; "
                    f"resume it with the same settings, or give another --out."
                )
        elif key in ("base", "nudger") and (a is None or b is None):
            continue  # a model one of the runs did not use: the other's is kept
        elif a != b:
            raise NudgeError(
                f"{out} holds a run with {key} {a!r}, and this one has {b!r}; resume it with the same "
                f"{key}, or give another --out."
            )
    merged = dict(old)
    for key in ("base", "nudger"):
        merged[key] = old.get(key) or manifest.get(key)
    merged["modes"] = list(dict.fromkeys([*old.get("modes", []), *manifest["modes"]]))
    merged["gates"] = _merge_gates(old, manifest)
    merged.pop("gammas", None)  # an old run's top1 gammas are in "gates" now
    autos = old.get("auto", [])
    merged["auto"] = autos + [a for a in manifest.get("auto", []) if a not in autos]
    merged["version"] = max(old.get("version", 1), manifest.get("version", 1))
    return merged


def prompts_for(job: Job, cfg: EvalConfig, base: ScoringModel | None, nudger: ScoringModel | None) -> Prompts:
    """The base sees the base format (its own "Question:" turn text) around the question; the nudger
    sees the prefixed question as its user message; URIAL's base prompt is its own."""
    if job.mode == "urial":
        return Prompts(base=urial_prompt(render_question(cfg.task, job.item, cfg.prefix), cfg.system), nudge=None)
    needs = NEEDS[job.mode]
    return Prompts(
        base=base_prompt(render_question(cfg.task, job.item, ""), system=cfg.system, fmt=cfg.base_format)
        if "base" in needs
        else None,
        nudge=nudger_prompt(
            nudger, render_question(cfg.task, job.item, cfg.prefix), system=cfg.system, chat_template=cfg.chat_template
        )
        if "nudger" in needs
        else None,
    )


def nudging_words(tokens: Sequence[TokenEvent], done: Done) -> list[str]:
    """Each word the nudger wrote, split on whitespace, in order: the words of token mode's nudged
    spans, or of what paper mode's rounds committed (a round may commit several words)."""
    named = done.result.figures().get("nudging_words")
    texts = named if named is not None else [s["text"] for s in spans(tokens) if s["source"] == "nudge"]
    return [w for text in texts for w in text.split()]


def answer(
    job: Job, cfg: EvalConfig, base: ScoringModel | None, nudger: ScoringModel | None
) -> tuple[list[TokenEvent], Done]:
    """One answer through the engine (URIAL is the base mode on URIAL's prompt)."""
    prompts = prompts_for(job, cfg, base, nudger)
    mode = "base" if job.mode == "urial" else job.mode
    stops = list(URIAL_STOPS) if job.mode == "urial" else cfg.stop_strings
    events = list(
        generate(
            prompts,
            mode=mode,
            base=base,
            nudger=nudger,
            gamma=job.gamma if job.gamma is not None else 0.4,
            gate=job.gate or "top1",
            max_tokens=cfg.max_tokens,
            word_cap=cfg.word_cap,
            sampling=cfg.sampling,
            stop_strings=stops,
            chunk=cfg.chunk,
            max_rounds=cfg.max_rounds,
            speculative=cfg.speculative,
            sizer=cfg.sizer,
            entropy=True,
        )
    )
    return events[:-1], events[-1]


def judge_gold(task: Task, item: Item) -> str:
    """The gold answer as the judge reads it: a choice's letter with its option's text."""
    if task.kind == "choice":
        return next((f"{letter}. {text}" for letter, text in item.options if letter == item.gold), item.gold or "")
    return item.gold or ""


def result_row(job: Job, cfg: EvalConfig, tokens: list[TokenEvent], done: Done, judge=None) -> dict:
    question = render_question(cfg.task, job.item, cfg.prefix)
    stats = done.stats
    row = {
        "id": job.item.id,
        "task": cfg.task.name,
        "mode": job.mode,
        "gamma": job.gamma,
        "gate": job.gate,
        "question": question,
        "gold": job.item.gold,
        "answer": done.text,
        "spans": spans(tokens),
        "correct": score(cfg.task, job.item, done.text),
        "tokens": stats.tokens,
        "nudge_tokens": stats.nudge_tokens,
        "seconds": round(stats.seconds, 4),
        "tokens_per_second": round(stats.tokens_per_second, 2),
        "nudging_words": nudging_words(tokens, done),
        "stop_reason": done.stop_reason,
        "cut": cut(done.stop_reason),  # scored all the same, by the authors' rule; the report counts these
        "looped": looped(done.stop_reason, done.text),
        "repetition": round(repetition(done.text), 4),
        "branching": {"writing": _round(stats.branching_factor), "base": _round(stats.base_branching_factor)},
    }
    if judge is not None:
        row["judge"] = judge.verdict(question, judge_gold(cfg.task, job.item), done.text) if job.item.gold else None
    return row


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def run(
    cfg: EvalConfig,
    models: dict[str, ScoringModel],
    results: Results,
    *,
    judge=None,
    on_start: Callable[[str, str | None, float | None, int, int], None] | None = None,
) -> Iterator[dict]:
    """Write every job that `results` lacks, mode by mode; yield each row once it is on disk.
    `on_start(mode, gate, gamma, done, total)` is called when a mode, gate and gamma begins."""
    done_keys = results.keys()
    jobs = plan_jobs(cfg.items, cfg.modes, cfg.gates)
    base, nudger = models.get("base"), models.get("nudger")
    current = None
    for job in jobs:
        group = (job.mode, job.gate, job.gamma)
        if group != current and on_start:
            in_group = [j for j in jobs if (j.mode, j.gate, j.gamma) == group]
            on_start(job.mode, job.gate, job.gamma, sum(j.key in done_keys for j in in_group), len(in_group))
        current = group
        if job.key in done_keys:
            continue
        t0 = time.perf_counter()
        try:
            tokens, done = answer(job, cfg, base, nudger)
        except NudgeError as e:
            where = f"{job.mode}, {job.gate} gate" if job.gate else job.mode
            raise NudgeError(f"Item {job.item.id} ({where}): {e}") from None
        row = result_row(job, cfg, tokens, done, judge)
        row["wall_seconds"] = round(time.perf_counter() - t0, 4)
        results.append(row)
        yield row
