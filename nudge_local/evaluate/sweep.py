"""What an eval sweeps (docs/eval.md#gates-and-thresholds): the gates (`--gate top1,margin,entropy`)
and each gate's thresholds (`--gamma`), numbers or `auto` until the pair is calibrated for them.

`--gamma` takes a LIST (thresholds, comma-separated: `0.1,0.2,0.4`, or `auto`), or GATE=LIST for one
gate (`top1=0.1,0.3`); parts join with `;` or a repeated `--gamma`. A bare LIST is the thresholds of
every gate that has no GATE=LIST of its own, except that with several gates the entropy gate, whose
threshold is in nats rather than a probability, takes none of its numbers (it runs its own list, else
GRID's); its `auto` applies to every gate. Without `--gamma`, one gate runs at the gamma setting (as
`run` would) and several gates each run GRID's thresholds.
"""

from __future__ import annotations

from collections.abc import Callable

from nudge_local.engine.errors import NudgeError
from nudge_local.engine.gates import GATES

AUTO = "auto"
PROBABILITY_GATES = ("top1", "margin")  # thresholds from 0 to 1; entropy's are nats
# Several gates without --gamma: thresholds that span small to large nudge ratios on most pairs.
GRID = {"top1": [0.1, 0.2, 0.4, 0.6], "margin": [0.1, 0.2, 0.4, 0.6], "entropy": [1.0, 2.0, 3.0, 4.0]}
SYNTAX = "thresholds as a comma-separated list (0.1,0.2,0.4), auto, or GATE=LIST per gate (top1=0.1,0.3;entropy=1,2)"

Threshold = float | str  # a number, or AUTO until calibrated


def parse_gates(text: str) -> list[str]:
    """--gate's comma-separated gates, in the order given, each once."""
    gates = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in gates if g not in GATES]
    if bad or not gates:
        raise NudgeError(f"option --gate takes a comma-separated list of {', '.join(GATES)} (got {text!r}).")
    return list(dict.fromkeys(gates))


def _thresholds(text: str, whole: str) -> list[Threshold]:
    values: list[Threshold] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            values.append(AUTO if part == AUTO else float(part))
        except ValueError:
            raise NudgeError(f"option --gamma takes {SYNTAX} (got {whole!r}).") from None
    if not values:
        raise NudgeError(f"option --gamma takes {SYNTAX} (got {whole!r}).")
    return values


def _parts(texts: list[str]) -> tuple[list[Threshold] | None, dict[str, list[Threshold]]]:
    """The bare LIST (None where none was given) and each GATE=LIST of --gamma's values."""
    bare: list[Threshold] | None = None
    own: dict[str, list[Threshold]] = {}
    for text in texts:
        for part in (p.strip() for p in text.split(";")):
            if not part:
                continue
            gate, sep, rest = part.partition("=")
            if not sep:
                bare = (bare or []) + _thresholds(part, text)
                continue
            gate = gate.strip()
            if gate not in GATES:
                raise NudgeError(f"option --gamma names the gate {gate!r}; the gates are {', '.join(GATES)}.")
            own[gate] = own.get(gate, []) + _thresholds(rest, text)
    return bare, own


def check_threshold(gate: str, value: Threshold) -> None:
    """A probability gate's threshold is from 0 to 1; the entropy gate's, in nats, at least 0."""
    if value == AUTO:
        return
    if value < 0:
        raise NudgeError(f"option --gamma: a threshold is at least 0 (got {value:g} for the {gate} gate).")
    if gate in PROBABILITY_GATES and value > 1:
        raise NudgeError(f"option --gamma: the {gate} gate's threshold is a probability from 0 to 1 (got {value:g}); "
                         "only the entropy gate's, in nats, may be larger.")  # fmt: skip


def _ordered(values: list[Threshold]) -> list[Threshold]:
    """`auto` first, then the numbers ascending, each once."""
    numbers = sorted({float(v) for v in values if v != AUTO})
    return ([AUTO] if AUTO in values else []) + numbers


def parse_sweep(
    gate_text: str | None, gamma_texts: list[str] | None, gate: str, gamma: float | None
) -> dict[str, list[Threshold]]:
    """Each gate swept with its thresholds, from --gate and --gamma (module docstring); `gate` and
    `gamma` are the settings' (gamma None: auto)."""
    bare, own = _parts(gamma_texts or [])
    gates = parse_gates(gate_text) if gate_text else list(own) or [gate]
    stray = [g for g in own if g not in gates]
    if stray:
        raise NudgeError(f"option --gamma gives thresholds for the {stray[0]} gate; add it to --gate, or drop them.")
    sweep: dict[str, list[Threshold]] = {}
    for g in gates:
        if g in own:
            values = own[g]
        elif bare is None:
            values = [AUTO if gamma is None else gamma] if len(gates) == 1 else list(GRID[g])
        elif g == "entropy" and len(gates) > 1:  # a bare list's numbers are probabilities: not nats
            values = [v for v in bare if v == AUTO] + (GRID[g] if any(v != AUTO for v in bare) else [])
        else:
            values = bare
        for v in values:
            check_threshold(g, v)
        sweep[g] = _ordered(values)
    return sweep


def check_modes(sweep: dict[str, list[Threshold]], modes: list[str]) -> str | None:
    """Paper mode keeps the paper's gate: one sentence where a gate would run nothing, else a note
    (or None) to say where paper runs beside other gates."""
    others = [g for g in sweep if g != "top1"]
    if "paper" in modes and "top1" not in sweep:
        raise NudgeError("Paper mode keeps the paper's gate, top1; add top1 to --gate, or leave paper out of --modes.")
    if others and "nudged" not in modes:
        raise NudgeError(f"The {others[0]} gate runs in nudged mode only (paper mode keeps the paper's gate, top1); "
                         "add nudged to --modes.")  # fmt: skip
    if others and "paper" in modes:
        return (f"paper mode keeps the paper's gate, top1: it runs at top1's thresholds, and {' and '.join(others)} "
                "in nudged mode only.")  # fmt: skip
    return None


def resolve_auto(
    sweep: dict[str, list[Threshold]], calibrate_gate: Callable[[str], object]
) -> tuple[dict[str, list[float]], list]:
    """The sweep with each gate's `auto` made its calibrated gamma (`calibrate_gate(gate)` returns a
    calibrate.Calibration), and the calibrations made, one per gate that asked for auto."""
    resolved: dict[str, list[float]] = {}
    made = []
    for gate, values in sweep.items():
        numbers = [float(v) for v in values if v != AUTO]
        if AUTO in values:
            c = calibrate_gate(gate)
            made.append(c)
            numbers.append(float(c.gamma))
        resolved[gate] = sorted(set(numbers))
    return resolved, made
