"""`gamma: auto`: the pair's gamma for a target nudge ratio (docs/method.md#gamma-auto).

How sure a base is depends on its size, family and quantization, so one gamma hands different pairs
very different shares of an answer. The authors' analysis found that a threshold handing 10-15% of
the tokens to the nudger captures most alignment-related tokens; `auto` finds the threshold that
hands the pair `target` of them (12% unless told), for whichever gate is chosen.

It is measured on the first CALIBRATION_PROMPTS of the built-in everyday instructions
(evaluate/everyday.jsonl), each answered greedily in token mode with the pair's own prompts (its base
format, system prompt and chat template) for up to CALIBRATION_TOKENS tokens. The ratio is the
share of all their tokens the nudger wrote. It moves with gamma in one direction (up for top1 and
margin, down for entropy), not smoothly, since each answer's path changes with it: the search
halves the threshold's interval until the ratio is within TOLERANCE of the target, and keeps the
closest it measured. The result is cached in the user's cache directory, keyed by both models'
identities (file name, size and modification time, or server and model), the gate, the target and
the prompts, so the same pair is calibrated once, and again when a file changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from nudge_local.config import Settings
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Done
from nudge_local.engine.gates import GateName, check_gate
from nudge_local.engine.generate import generate
from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.prompts import Prompts, render_prompts
from nudge_local.paths import calibration_path

TARGET = 0.12  # the authors' 10-15%
TOLERANCE = 0.01  # the search stops within a percentage point of the target
STEPS = 10  # at most this many measurements
CALIBRATION_PROMPTS = 8
CALIBRATION_TOKENS = 48
VERSION = 1  # of the procedure: a change to it recalibrates every pair


@dataclass(frozen=True)
class Calibration:
    """A pair's calibrated gamma and what it measured there."""

    gamma: float
    ratio: float  # the nudge ratio measured at `gamma` on the calibration prompts
    target: float
    gate: str
    tokens: int  # tokens written at `gamma`
    steps: int  # measurements the search made
    cached: bool = False  # read from the cache, not measured now

    def line(self) -> str:
        where = "cached" if self.cached else f"{self.steps} measurements"
        return (f"gamma auto: {self.gamma:.4g} ({self.gate} gate) nudges {self.ratio:.1%} of {self.tokens} tokens "
                f"on the calibration prompts (target {self.target:.0%}; {where})")  # fmt: skip


def check_target(target: float) -> float:
    if not (isinstance(target, (int, float)) and 0 < target < 1):
        raise NudgeError(f"The nudge target must be a share between 0 and 1, like 0.12 (got {target!r}).")
    return float(target)


def questions() -> list[str]:
    path = Path(__file__).with_name("evaluate") / "everyday.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["instruction"] for line in lines[:CALIBRATION_PROMPTS]]


def path_identity(path: Path) -> str:
    """A model file as the cache keys it: resolved path, size and modification time (a changed file
    recalibrates)."""
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def identity(model: ScoringModel) -> str:
    """A loaded model as the cache keys it: its file's identity, or its server's URL and model name."""
    path = Path(str(model.path))
    return path_identity(path) if model.kind == "GGUF" and path.is_file() else model.identity


def _key(base_id: str, nudger_id: str, gate: str, target: float, prompt_settings: tuple) -> str:
    text = json.dumps([VERSION, base_id, nudger_id, gate, round(target, 6), CALIBRATION_TOKENS, prompt_settings])
    return hashlib.sha256(text.encode()).hexdigest()


def _read_cache() -> dict:
    try:
        data = json.loads(calibration_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, row: dict) -> None:
    """Added to the cache file atomically (written beside it, then renamed): never half a file."""
    path = calibration_path()
    data = _read_cache()
    data[key] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    part.write_text(json.dumps(data, indent=1), encoding="utf-8")
    part.replace(path)


def _calibration(row: dict, cached: bool) -> Calibration | None:
    try:
        return Calibration(row["gamma"], row["ratio"], row["target"], row["gate"], row["tokens"], row["steps"], cached)
    except (KeyError, TypeError):  # a row of another shape: measured again
        return None


def cached_for_files(base: Path, nudger: Path) -> list[Calibration]:
    """Every calibration cached for these two files as they are now (any gate, target or prompts):
    what `models` and `doctor` show."""
    try:
        ids = path_identity(base), path_identity(nudger)
    except OSError:
        return []
    rows = [r for r in _read_cache().values() if isinstance(r, dict) and (r.get("base"), r.get("nudger")) == ids]
    return [c for c in (_calibration(r, True) for r in rows) if c is not None]


def nudge_ratio(base, nudger, prompts: list[Prompts], gate: GateName, gamma: float) -> tuple[float, int]:
    """The share of all the prompts' answer tokens the nudger wrote at `gamma`, and the tokens."""
    tokens = nudged = 0
    for p in prompts:
        *_, done = generate(p, base=base, nudger=nudger, gamma=gamma, gate=gate, max_tokens=CALIBRATION_TOKENS,
                            speculative=False)  # fmt: skip
        assert isinstance(done, Done)
        tokens += done.stats.tokens
        nudged += done.stats.nudge_tokens
    return (nudged / tokens if tokens else 0.0), tokens


def search(measure: Callable[[float], tuple[float, int]], gate: GateName, target: float, n_vocab: int):
    """Halve the threshold's interval until the ratio is within TOLERANCE of `target`: every
    measurement made, (gamma, ratio, tokens) in order, the closest to the target first."""
    lo, hi = 0.0, (math.log(max(2, n_vocab)) if gate == "entropy" else 1.0)
    rising = gate != "entropy"  # the ratio grows with gamma for top1 and margin
    made: list[tuple[float, float, int]] = []
    while len(made) < STEPS:
        gamma = (lo + hi) / 2
        ratio, tokens = measure(gamma)
        made.append((gamma, ratio, tokens))
        if abs(ratio - target) <= TOLERANCE:
            break
        if (ratio < target) == rising:
            lo = gamma
        else:
            hi = gamma
    return sorted(made, key=lambda m: abs(m[1] - target)), len(made)


def calibrate(
    base: ScoringModel,
    nudger: ScoringModel,
    *,
    gate: str = "top1",
    target: float = TARGET,
    base_format: str | None = None,
    system: str = "",
    chat_template: str | None = None,
    progress: Callable[[int, float, float], None] | None = None,
) -> Calibration:
    """The pair's gamma for `target` (a share of tokens) under `gate`: from the cache, or measured
    and cached. `progress(step, gamma, ratio)` is told of each measurement."""
    gate = check_gate(gate)
    target = check_target(target)
    kw = {"system": system, "chat_template": chat_template}
    if base_format is not None:
        kw["base_format"] = base_format
    base_id, nudger_id = identity(base), identity(nudger)
    key = _key(base_id, nudger_id, gate, target, (base_format, system, chat_template))
    hit = _read_cache().get(key)
    if isinstance(hit, dict) and (found := _calibration(hit, True)) is not None:
        return found
    prompts = [render_prompts(base, nudger, q, **kw) for q in questions()]

    def measure(gamma: float) -> tuple[float, int]:
        ratio, tokens = nudge_ratio(base, nudger, prompts, gate, gamma)
        if progress is not None:
            progress(measure.steps + 1, gamma, ratio)
        measure.steps += 1
        return ratio, tokens

    measure.steps = 0
    made, steps = search(measure, gate, target, base.n_vocab)
    gamma, ratio, tokens = made[0]
    result = Calibration(round(gamma, 6), ratio, target, gate, tokens, steps)
    row = {k: v for k, v in asdict(result).items() if k != "cached"}
    _write_cache(key, {**row, "base": base_id, "nudger": nudger_id})
    return result


def say_progress(out=None) -> Callable[[int, float, float], None]:
    """A progress line on stderr for each measurement (rewritten in place on a terminal)."""
    out = out or sys.stderr
    tty = out.isatty()

    def show(step: int, gamma: float, ratio: float) -> None:
        line = f"nudge-local: calibrating gamma, step {step}: gamma {gamma:.4g} nudges {ratio:.1%}"
        out.write(f"\r{line}\033[K" if tty else line + "\n")
        out.flush()

    return show


def settle_gamma(
    s: Settings, models: dict[str, ScoringModel], chat_template: str | None, progress=None
) -> tuple[Settings, Calibration | None]:
    """`s` with gamma auto made the pair's calibrated gamma (measured once, then from the cache), and
    the calibration; `s` as it is where gamma is a number or a model of the pair is not loaded."""
    if s.gamma is not None or not {"base", "nudger"} <= set(models):
        return s, None
    c = calibrate(models["base"], models["nudger"], gate=s.gate, target=s.nudge_target, base_format=s.base_format,
                  system=s.system, chat_template=chat_template, progress=progress)  # fmt: skip
    return s.updated({"gamma": c.gamma}, "gamma auto", f"auto: {c.line()}"), c
