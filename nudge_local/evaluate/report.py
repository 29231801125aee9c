"""The eval report: DIR/summary.json (every figure), DIR/report.md (the same for people) and, for a
gamma sweep of one gate, DIR/gamma.png, or for several gates, DIR/gates.png. Pure arithmetic on
results.jsonl rows and the run's manifest; no engine.

Statistics are written out here (Wilson interval, McNemar's exact test with exact fractions, Cohen's
kappa) so the package needs no scipy; tests check them against scipy.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections import Counter
from fractions import Fraction
from pathlib import Path

from nudge_local.engine.gates import GATES
from nudge_local.evaluate.scoring import cut

MODE_ORDER = ("base", "urial", "nudger", "nudged", "paper")
GAMMA_MODES = ("nudged", "paper")  # the modes gamma changes
BASELINES = ("base", "nudger", "urial")  # what a nudged group is paired against
TOP_WORDS = 20
Z95 = 1.959963984540054  # the normal quantile at 0.975
# An answer ended by itself: end of turn or end of text, a stop string, or (paper mode) the nudger's end.
# The others are cut by a budget (length, round) or stopped by paper mode's repeated-nudging-words guard.
BY_ITSELF = ("eos", "stop_string", "nudging_model_stop")
LOOP_MIN = 30  # characters: the authors' least repeat (paper_mode.trim_repeated_suffix)
NGRAM = 4  # words per n-gram in the repetition figure
CLOSE = 0.03  # nudge ratios this close (3 percentage points) count as similar when gates are compared


def row_gate(row: dict) -> str | None:
    """The gate a row's answer was written under: None for the modes gamma does not change, and
    top1 for a nudged or paper row written before gates existed (top1 was then the only one)."""
    if row.get("mode") not in GAMMA_MODES:
        return None
    return row.get("gate") or "top1"


# ---- how an answer ended -------------------------------------------------------------------------


def repeated_tail(text: str, least: int = LOOP_MIN) -> int:
    """The length of the shortest block of at least `least` characters that `text` (its trailing
    whitespace stripped) ends with twice in a row, 0 where there is none. Every length is tried, so
    this finds each repeat the authors' trim (a binary search, which can miss one) finds, and more."""
    text = text.rstrip()
    for n in range(least, len(text) // 2 + 1):
        if text[-n:] == text[-2 * n : -n]:
            return n
    return 0


def looped(stop_reason: str | None, answer: str) -> bool:
    """An answer a budget cut while it was repeating itself (it ends in a repeated block of at least
    LOOP_MIN characters), or one paper mode's guard stopped for drafting the same words again."""
    if stop_reason == "repeated_nudging_words":
        return True
    return cut(stop_reason) and repeated_tail(answer) > 0


def repetition(answer: str, n: int = NGRAM) -> float:
    """The share of the answer's word n-grams (words split on whitespace, case kept) that repeat an
    earlier one: 1 - distinct/total. 0 for an answer of fewer than n words, which repeats none."""
    words = answer.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


# ---- statistics ----------------------------------------------------------------------------------


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval for a proportion (95% by default); None for no trials."""
    if n == 0:
        return None
    p = correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exactly 0 and 1 at the ends (in floating point center - half can land a hair above 0, as for 0 of 12,
    # and a bar's length below zero is refused by matplotlib)
    low = 0.0 if correct == 0 else max(0.0, center - half)
    high = 1.0 if correct == n else min(1.0, center + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact test: two-sided binomial on the discordant pairs b and c, X ~ Bin(b+c, 1/2),
    p = min(1, 2 P[X <= min(b, c)]); 1 when there is no discordant pair."""
    n = b + c
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, k) for k in range(min(b, c) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def cohen_kappa(pairs: list[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa of two yes/no raters; None without pairs or when chance agreement is total
    (both raters gave one and the same verdict throughout, so kappa is undefined)."""
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    a_yes = sum(a for a, _ in pairs) / n
    b_yes = sum(b for _, b in pairs) / n
    chance = a_yes * b_yes + (1 - a_yes) * (1 - b_yes)
    if chance == 1:
        return None
    return (observed - chance) / (1 - chance)


# ---- summary -------------------------------------------------------------------------------------


Key = tuple[str, str | None, float | None]  # a group: mode, gate, gamma


def _group_key(key: Key) -> tuple:
    mode, gate, gamma = key
    order = MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)
    gate_order = -1 if gate is None else GATES.index(gate) if gate in GATES else len(GATES)
    return (order, mode, gate_order, gate or "", -1.0 if gamma is None else gamma)


def _groups(rows: list[dict]) -> dict[Key, list[dict]]:
    groups: dict[Key, list[dict]] = {}
    for row in rows:
        gamma = row.get("gamma")
        groups.setdefault((row["mode"], row_gate(row), None if gamma is None else float(gamma)), []).append(row)
    return {key: groups[key] for key in sorted(groups, key=_group_key)}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _accuracy(verdicts: list[bool | None]) -> dict:
    scored = [v for v in verdicts if v is not None]
    right = sum(scored)
    ci = wilson(right, len(scored))
    return {
        "scored": len(scored),
        "correct": right,
        "accuracy": _ratio(right, len(scored)),
        "ci": list(ci) if ci else None,
    }


def _share(count: int, n: int) -> dict:
    """A count of answers with its share of the group and the share's 95% Wilson interval."""
    ci = wilson(count, n)
    return {"count": count, "share": _ratio(count, n), "ci": list(ci) if ci else None}


def _judge(rows: list[dict]) -> dict | None:
    """The judge's accuracy and its agreement with the rule; None where no row was judged."""
    if not any("judge" in row for row in rows):
        return None
    both = [(r["correct"], r["judge"]) for r in rows if r.get("correct") is not None and r.get("judge") is not None]
    agree = _ratio(sum(a == b for a, b in both), len(both))
    agreement = {"items": len(both), "agree": agree, "kappa": cohen_kappa(both)}
    return {**_accuracy([r.get("judge") for r in rows]), "agreement": agreement}


def _branching(rows: list[dict], side: str) -> float | None:
    values = [(r.get("branching") or {}).get(side) for r in rows]
    return _mean([v for v in values if v is not None])


def _group_summary(mode: str, gate: str | None, gamma: float | None, rows: list[dict]) -> dict:
    tokens = sum(r.get("tokens", 0) for r in rows)
    stops = Counter(r.get("stop_reason") or "unknown" for r in rows)
    # from the stop reason, not the row's "cut" flag, so results written before the flag count too;
    # "ended" is the same set "ends by itself" counts (paper's repeated-words guard is neither)
    ended = [r for r in rows if r.get("stop_reason") in BY_ITSELF]
    return {
        "mode": mode,
        "gate": gate,
        "gamma": gamma,
        "items": len(rows),
        **_accuracy([r.get("correct") for r in rows]),  # the paper's figure: cut answers by their last number
        "cut": sum(cut(r.get("stop_reason")) for r in rows),
        "ended": _accuracy([r.get("correct") for r in ended]),
        # from the stop reason and the answer's text, so results written before these figures count too
        "ends_by_itself": _share(sum(r.get("stop_reason") in BY_ITSELF for r in rows), len(rows)),
        "looped": _share(sum(looped(r.get("stop_reason"), r.get("answer") or "") for r in rows), len(rows)),
        "repetition": _mean([repetition(r.get("answer") or "") for r in rows]),
        "nudge_ratio": _ratio(sum(r.get("nudge_tokens", 0) for r in rows), tokens),
        "mean_tokens": _mean([r.get("tokens", 0) for r in rows]),
        "tokens_per_second": _ratio(tokens, sum(r.get("seconds", 0.0) for r in rows)),
        "branching": {"writing": _branching(rows, "writing"), "base": _branching(rows, "base")},
        "stop_reasons": dict(sorted(stops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "judge": _judge(rows),
    }


def _scored(rows: list[dict]) -> dict[str, bool]:
    return {r["id"]: r["correct"] for r in rows if r.get("correct") is not None}


def _paired(groups: dict[Key, list[dict]]) -> list[dict]:
    """Each nudged/paper group against each baseline that ran, on the ids both scored (none: no entry)."""
    baselines = {mode: _scored(rows) for (mode, _, _), rows in groups.items() if mode in BASELINES}
    out = []
    for (mode, gate, gamma), rows in groups.items():
        if mode not in GAMMA_MODES:
            continue
        mine = _scored(rows)
        for against in BASELINES:
            if against not in baselines:
                continue
            theirs = baselines[against]
            ids = [i for i in mine if i in theirs]
            if not ids:
                continue  # nothing scored on both sides (an open task): no comparison to make
            wins = sum(mine[i] and not theirs[i] for i in ids)
            losses = sum(theirs[i] and not mine[i] for i in ids)
            out.append(
                {
                    "mode": mode,
                    "gate": gate,
                    "gamma": gamma,
                    "against": against,
                    "items": len(ids),
                    "wins": wins,
                    "losses": losses,
                    "ties": len(ids) - wins - losses,
                    "p_value": mcnemar_exact(wins, losses),
                }
            )
    return out


def _words(mode: str, gate: str | None, gamma: float | None, rows: list[dict]) -> dict:
    """The TOP_WORDS most frequent nudged words (ties alphabetical) and the share of all nudged words
    they cover. Empty words (a nudged stretch of whitespace) are left out of the counts."""
    counts = Counter(w for r in rows for w in r.get("nudging_words") or () if w)
    total = sum(counts.values())
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_WORDS]
    return {
        "mode": mode,
        "gate": gate,
        "gamma": gamma,
        "nudged_words": total,
        "distinct": len(counts),
        "top": [{"word": w, "count": n} for w, n in top],
        "top_share": _ratio(sum(n for _, n in top), total),
    }


def summarize(rows: list[dict], manifest: dict) -> dict:
    """Every figure of the report, as plain JSON values (None where a figure has no data)."""
    groups = _groups(rows)
    summaries = [_group_summary(mode, gate, gamma, g) for (mode, gate, gamma), g in groups.items()]
    return {
        "version": 4,  # 4: gates, each group's gate; 3: ends_by_itself, looped, repetition; 2: cut and ended
        "task": manifest.get("task"),
        "data": manifest.get("data"),
        "data_sha256": manifest.get("data_sha256"),
        "base": manifest.get("base"),
        "nudger": manifest.get("nudger"),
        "judge": manifest.get("judge"),
        "settings": manifest.get("settings") or {},
        "rows": len(rows),
        "items": len({r["id"] for r in rows}),
        "groups": summaries,
        "paired": _paired(groups),
        "nudging_words": [_words(*key, g) for key, g in groups.items() if key[0] in GAMMA_MODES],
        "gates": gate_curves(summaries),
        "gate_comparison": compare_gates(summaries),
    }


# ---- gates ---------------------------------------------------------------------------------------


def figure_of(groups: list[dict]) -> str:
    """What the gates are compared by: accuracy where the task scores answers, else how often
    answers end by themselves (an open task's measure of alignment without a judge)."""
    return "accuracy" if any(g["accuracy"] is not None for g in groups) else "ends_by_itself"


def _point(g: dict, figure: str) -> dict:
    value, ci = (g["accuracy"], g["ci"]) if figure == "accuracy" else (g["ends_by_itself"]["share"],
                                                                        g["ends_by_itself"]["ci"])  # fmt: skip
    return {"gamma": g["gamma"], "items": g["items"], "nudge_ratio": g["nudge_ratio"], "value": value, "ci": ci}


def gate_curves(groups: list[dict]) -> list[dict]:
    """Per gamma mode and gate, its points in gamma order: the nudge ratio each threshold gave and the
    figure (`figure_of`) it bought, with the figure's 95% Wilson interval."""
    figure = figure_of(groups)
    curves: dict[tuple[str, str], list[dict]] = {}
    for g in groups:
        if g["mode"] in GAMMA_MODES and g["gamma"] is not None:
            curves.setdefault((g["mode"], g["gate"]), []).append(_point(g, figure))
    return [{"mode": m, "gate": gate, "figure": figure, "points": pts} for (m, gate), pts in curves.items()]


def multi_gate(s: dict) -> bool:
    """True when nudged mode ran under two or more gates (the gates table and plot's condition)."""
    return len({g["gate"] for g in s["groups"] if g["mode"] == "nudged"}) >= 2


def _closest(a: list[dict], b: list[dict]) -> tuple[dict, dict] | None:
    pairs = [(p, q) for p in a for q in b]
    return min(pairs, key=lambda pq: abs(pq[0]["nudge_ratio"] - pq[1]["nudge_ratio"])) if pairs else None


def compare_gates(groups: list[dict]) -> list[dict]:
    """Each two gates of nudged mode at their closest nudge ratios: the pair of points (one per gate)
    whose ratios differ least, and whether they are within CLOSE of each other. A point where nothing
    or everything was nudged is the base or the nudger alone, whatever the gate: left out."""
    curves = {c["gate"]: c for c in gate_curves(groups) if c["mode"] == "nudged"}
    usable = {
        gate: [p for p in c["points"] if p["nudge_ratio"] is not None and 0 < p["nudge_ratio"] < 1
               and p["value"] is not None]
        for gate, c in curves.items()
    }  # fmt: skip
    out = []
    names = list(usable)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pair = _closest(usable[a], usable[b])
            if pair is None:
                continue
            close = abs(pair[0]["nudge_ratio"] - pair[1]["nudge_ratio"]) <= CLOSE + 1e-12
            out.append({"gates": [a, b], "figure": curves[a]["figure"], "close": close, "points": list(pair)})
    return out


# ---- files ---------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename over it: a crash leaves the old file or
    the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_sweep(summary: dict) -> bool:
    """True when a gamma-dependent mode ran at two or more gammas (the plot's condition)."""
    return any(len({g["gamma"] for g in summary["groups"] if g["mode"] == mode}) >= 2 for mode in GAMMA_MODES)


def plot_name(summary: dict) -> str | None:
    """The plot the results make: gates.png where nudged mode ran under several gates, gamma.png for
    a sweep of one gate's gamma, none otherwise."""
    if multi_gate(summary):
        return "gates.png"
    return "gamma.png" if is_sweep(summary) else None


def write_report(out: Path, rows: list[dict], manifest: dict) -> list[Path]:
    """Write summary.json, report.md and the plot (`plot_name`) into `out`; return the paths written.
    A plot from an earlier write is removed when the results no longer make it, so the folder never
    shows a plot the report does not describe. No rows: the report says so in a sentence."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows, manifest)
    name = plot_name(summary)
    written = [out / "summary.json", out / "report.md"]
    if name:
        _write_atomic(out / name, gates_png(summary) if name == "gates.png" else gamma_png(summary))
        written.append(out / name)
    _write_atomic(written[0], (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())
    _write_atomic(written[1], render_markdown(summary, plot=name is not None).encode())
    for stale in {"gamma.png", "gates.png"} - {name}:
        (out / stale).unlink(missing_ok=True)  # last: a failed write above leaves the old report whole
    return written


# ---- report.md -----------------------------------------------------------------------------------


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def fmt_accuracy(acc: float | None, ci: list[float] | None) -> str:
    """62.0% [55.1%, 68.4%]; a dash for an unscored group."""
    if acc is None:
        return "–"
    return f"{pct(acc)} [{pct(ci[0])}, {pct(ci[1])}]" if ci else pct(acc)


def fmt_share(share: dict) -> str:
    """A count with its share: '12 (50.0%)'."""
    return f"{share['count']} ({pct(share['share'])})"


def fmt_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def fmt_gamma(gamma: float | None) -> str:
    return "–" if gamma is None else f"{gamma:g}"


def fmt_gate(gate: str | None) -> str:
    return "–" if gate is None else gate


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(word: str) -> str:
    """A word as inline code; one holding a backtick gets a double-backtick span."""
    return f"`` {word} ``" if "`" in word else f"`{word}`"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _heading(s: dict) -> list[str]:
    # JSON values: a multi-line system prompt stays on its line
    settings = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in s["settings"].items()) or "defaults"
    digest = f" (sha256 {s['data_sha256'][:12]})" if s.get("data_sha256") else ""
    lines = [
        f"# nudge-local eval: {s['task'] or 'unknown task'}",
        "",
        f"- Data: `{s['data']}`{digest}",
        f"- Pair: base `{s['base']}`, nudger `{s['nudger']}`",
        f"- Settings: {settings}",
    ]
    if s.get("judge"):
        lines.append(f"- Judge: `{s['judge']}`")
    return lines + [f"- Results: {s['rows']} rows over {s['items']} items", ""]


def _judge_cells(j: dict | None) -> list[str]:
    """Judge accuracy, and the rule's agreement with the judge: '88.9% of 9 (κ 0.73)'."""
    if j is None:
        return ["–", "–"]
    agree = j["agreement"]
    kappa = "–" if agree["kappa"] is None else f"{agree['kappa']:.2f}"
    return [fmt_accuracy(j["accuracy"], j["ci"]), f"{pct(agree['agree'])} of {agree['items']} (κ {kappa})"]


def _main_table(s: dict) -> list[str]:
    judged = any(g["judge"] for g in s["groups"])
    header = ["Mode", "Gate", "γ", "Items", "Scored", "Accuracy [95% CI]", "Cut by length",
              "Accuracy, ended [95% CI]", "Ends by itself", "Looped", "Repetition"]  # fmt: skip
    header += ["Judge accuracy [95% CI]", "Rule–judge agreement (κ)"] if judged else []
    header += ["Nudge ratio", "Mean length", "Tokens/s", "Branching (writing / base)", "Stop reasons"]
    rows = []
    for g in s["groups"]:
        row = [
            g["mode"],
            fmt_gate(g["gate"]),
            fmt_gamma(g["gamma"]),
            str(g["items"]),
            str(g["scored"]),
            fmt_accuracy(g["accuracy"], g["ci"]),
            f"{g['cut']} ({pct(_ratio(g['cut'], g['items']))})",
            fmt_accuracy(g["ended"]["accuracy"], g["ended"]["ci"]),
            fmt_share(g["ends_by_itself"]),
            fmt_share(g["looped"]),
            pct(g["repetition"]),
        ]
        if judged:
            row += _judge_cells(g["judge"])
        branching = f"{fmt_num(g['branching']['writing'], 2)} / {fmt_num(g['branching']['base'], 2)}"
        stops = ", ".join(f"{k} {n}" for k, n in g["stop_reasons"].items())
        row += [pct(g["nudge_ratio"]), fmt_num(g["mean_tokens"]), fmt_num(g["tokens_per_second"]), branching, stops]
        rows.append(row)
    return ["## Results by mode, gate and gamma", "", *_table(header, rows), ""]


def _paired_table(s: dict) -> list[str]:
    if not s["paired"]:
        return []
    header = ["Mode", "Gate", "γ", "Against", "Paired items", "Wins", "Losses", "Ties", "McNemar p"]
    rows = [
        [p["mode"], fmt_gate(p["gate"]), fmt_gamma(p["gamma"]), p["against"], str(p["items"]), str(p["wins"]),
         str(p["losses"]), str(p["ties"]), fmt_p(p["p_value"])]
        for p in s["paired"]
    ]  # fmt: skip
    return ["## Paired comparisons (same items)", "", *_table(header, rows), ""]


def _word_tables(s: dict) -> list[str]:
    if not s["nudging_words"]:
        return []
    lines = ["## Nudging words", ""]
    for w in s["nudging_words"]:
        title = f"### {w['mode']}, {fmt_gate(w['gate'])} gate, γ {fmt_gamma(w['gamma'])}"
        if not w["top"]:
            lines += [title, "", "No word was nudged.", ""]
            continue
        counted = f"{w['nudged_words']} nudged words ({w['distinct']} distinct)"
        listed = len(w["top"])  # the table's rows, so the sentence names the number it shows
        if listed == w["distinct"]:
            counted += ", all listed below."
        else:
            counted += f"; the {listed} most frequent, listed below, cover {pct(w['top_share'])} of them."
        lines += [title, "", counted, ""]
        rows = [[str(i), _code(t["word"]), str(t["count"])] for i, t in enumerate(w["top"], 1)]
        lines += [*_table(["Rank", "Word", "Count"], rows), ""]
    return lines


GATE_RULES = {
    "top1": "the nudger writes where the base's top-1 probability is below γ",
    "margin": "the nudger writes where the base's top-1 probability minus its top-2 is below γ",
    "entropy": "the nudger writes where the base's entropy, in nats, is above γ",
}
FIGURE_WORDS = {"accuracy": "accuracy", "ends_by_itself": "answers that ended by themselves"}


def _gate_tables(s: dict) -> list[str]:
    """Per gate of nudged mode: each threshold's nudge ratio and what it bought, with intervals."""
    curves = [c for c in s["gates"] if c["mode"] == "nudged"]
    scored = curves[0]["figure"] == "accuracy"
    groups = {(g["gate"], g["gamma"]): g for g in s["groups"] if g["mode"] == "nudged"}
    lines = ["## Gates", "",
             f"Nudged mode under each gate: the share of tokens each threshold handed to the nudger, and the "
             f"{FIGURE_WORDS[curves[0]['figure']]} it bought. gates.png plots one against the other, a curve per "
             "gate, so gates are compared at the same nudge ratio rather than the same γ.", ""]  # fmt: skip
    header = ["γ", "Items", "Nudge ratio"] + (["Accuracy [95% CI]"] if scored else [])
    header += ["Ends by itself [95% CI]", "Looped [95% CI]"]
    for c in curves:
        rows = []
        for p in c["points"]:
            g = groups[(c["gate"], p["gamma"])]
            ends, loops = g["ends_by_itself"], g["looped"]
            row = [fmt_gamma(p["gamma"]), str(p["items"]), pct(p["nudge_ratio"])]
            row += [fmt_accuracy(g["accuracy"], g["ci"])] if scored else []
            rows.append(row + [fmt_accuracy(ends["share"], ends["ci"]), fmt_accuracy(loops["share"], loops["ci"])])
        lines += [f"### {c['gate']} ({GATE_RULES.get(c['gate'], 'its own rule')})", "", *_table(header, rows), ""]
    sentences = [compare_sentence(c) for c in s["gate_comparison"]]
    if sentences:
        lines += ["### At similar nudge ratios", "", *(f"- {x}" for x in sentences), ""]
    return lines


def _at(gate: str, p: dict) -> str:
    return f"{gate} at γ {fmt_gamma(p['gamma'])}"


def compare_sentence(c: dict) -> str:
    """One comparison of `compare_gates`, stated from its numbers and intervals alone."""
    (a, b), (p, q) = c["gates"], c["points"]
    if not c["close"]:
        return (f"{a} and {b} reached no nudge ratios within {100 * CLOSE:g} percentage points of each other (closest: "
                f"{pct(p['nudge_ratio'])} nudged at {_at(a, p)}, {pct(q['nudge_ratio'])} at {_at(b, q)}), so this "
                "run does not compare them at a similar ratio.")  # fmt: skip
    what = FIGURE_WORDS[c["figure"]]
    items = str(p["items"]) if p["items"] == q["items"] else f"{p['items']} and {q['items']}"
    head = (f"At similar nudge ratios, {_at(a, p)} ({pct(p['nudge_ratio'])} nudged) and {_at(b, q)} "
            f"({pct(q['nudge_ratio'])} nudged) gave {what} {fmt_accuracy(p['value'], p['ci'])} and "
            f"{fmt_accuracy(q['value'], q['ci'])}")  # fmt: skip
    if p["ci"] and q["ci"] and (p["ci"][1] < q["ci"][0] or q["ci"][1] < p["ci"][0]):
        better = a if p["value"] > q["value"] else b
        return f"{head}; the 95% intervals do not overlap: {better} bought more at this ratio, on {items} items."
    return f"{head}; the 95% intervals overlap, so {items} items do not tell the two gates apart at this ratio."


HOW_TO_READ = """\
## How to read this report

- **Items**: answers in the group (one per question). **Scored**: those the task's rule could score
  (open tasks score none).
- **Accuracy [95% CI]**: the share of scored answers the rule found correct, with a 95% Wilson
  confidence interval: the range of true accuracies consistent with this many items. Two modes whose
  intervals overlap widely may not differ at all; more items narrow the interval.
- **Cut by length**: answers the length limit (or paper mode's round limit) ended, and their share.
  Accuracy scores them as the paper did, by their last number, which may be a step's rather than the
  result's. **Accuracy, ended**: the accuracy of the answers that ended by themselves alone.
- **Ends by itself**: answers that ended by end of turn or end of text, a stop string, or (paper mode)
  the nudger's end, rather than by the length limit. **Looped**: answers the length limit cut while they
  repeated themselves (the text ends in a block of 30 or more characters written twice in a row), and
  paper mode's answers its repeated-nudging-words guard stopped. **Repetition**: the mean share of an
  answer's word 4-grams that repeat an earlier one (1 - distinct/total): 0 where no four words in a row
  come twice, near 1 for an answer that is one loop.
- **Judge accuracy** and **rule–judge agreement**: the judge model's verdicts, how often they match the
  rule on the items both scored, and Cohen's κ (1: full agreement, 0: no better than chance).
- **Gate** and **γ**: where the nudger wrote (top1: the base's top-1 probability below γ; margin: its
  top-1 minus top-2 probability below γ; entropy: its entropy in nats above γ). **Gates** compares
  gates at similar nudge ratios, since one γ means different things to different gates.
- **Nudge ratio**: the share of answer tokens the nudger wrote. **Mean length**: answer tokens per item.
  **Tokens/s**: answer tokens over the seconds spent writing them.
- **Branching**: exp of the mean per-token entropy along the answers (the effective number of next
  tokens), for the distribution that wrote and for the base's; aligned models sit near 1, base models
  far above.
- **Paired comparisons**: a nudged mode against each baseline on the items both scored. **Wins**:
  nudged right, the other wrong; **losses**: the reverse; **ties**: both right or both wrong.
  **McNemar p**: the exact test on wins against losses. A p above 0.05 means the difference could be
  chance at this item count; below it, chance alone rarely gives a split this uneven.
- **Nudging words**: the words the nudger wrote, most frequent first: what alignment changes in the
  base's answers. Whitespace-only words are not counted.
"""


def render_markdown(s: dict, plot: bool = False) -> str:
    """report.md from a summary; `plot`: embed its plot (gates.png for several gates, else gamma.png)."""
    lines = _heading(s)
    if not s["groups"]:
        lines += ["No results yet: results.jsonl holds no finished item.", ""]
        return "\n".join(lines)
    lines += _main_table(s)
    if multi_gate(s):
        lines += _gate_tables(s)
        if plot:
            what = FIGURE_WORDS[s["gates"][0]["figure"]]
            lines += [f"## {what.capitalize()} against the nudge ratio, per gate", "", "![](gates.png)", ""]
    lines += _paired_table(s) + _word_tables(s)
    if plot and not multi_gate(s):
        lines += ["## Accuracy and nudge ratio against gamma", "", "![](gamma.png)", ""]
    return "\n".join(lines) + "\n" + HOW_TO_READ


# ---- gamma.png -----------------------------------------------------------------------------------


def gamma_figure(s: dict):
    """Accuracy (with CI bars, the baselines as horizontal lines) and nudge ratio against gamma, as a
    matplotlib Figure. An open task (nothing scored) gets the nudge ratio panel alone. A bare Figure
    on the Agg canvas: pyplot and the process-wide backend are never touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    swept = [g for g in s["groups"] if g["mode"] in GAMMA_MODES and g["gamma"] is not None]
    scored = any(g["accuracy"] is not None for g in s["groups"])
    fig = Figure(figsize=(7, 7 if scored else 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if scored else 1, 1, sharex=True, squeeze=False)[:, 0]
    if scored:
        _plot_accuracy(axes[0], s["groups"], swept)
    _plot_ratio(axes[-1], swept)
    gate = next((g["gate"] for g in swept), "top1")
    axes[-1].set_xlabel(f"gamma, {gate} gate ({GAMMA_AXES.get(gate, 'its threshold')})")
    fig.suptitle(f"{s['task']}: {_short(s['base'])} nudged by {_short(s['nudger'])}", fontsize=10)
    return fig


GAMMA_AXES = {
    "top1": "the base writes where its top-1 probability is at least gamma",
    "margin": "the base writes where its top-1 probability exceeds its top-2 by at least gamma",
    "entropy": "nats: the base writes where its entropy is at most gamma",
}


def gamma_png(s: dict) -> bytes:
    """gamma_figure as PNG bytes, 100 dpi."""
    return _png(gamma_figure(s))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# ---- gates.png -----------------------------------------------------------------------------------


def gates_figure(s: dict):
    """Accuracy (an open task: ends by itself) against the nudge ratio, one curve per gate of nudged
    mode (and paper mode's, at top1), each point labelled by its threshold, with its 95% Wilson bar;
    the baselines as horizontal lines. A bare Figure on the Agg canvas, as gamma_figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    figure = s["gates"][0]["figure"] if s["gates"] else figure_of(s["groups"])
    for i, c in enumerate(s["gates"]):
        _plot_curve(ax, c, i)
    _baselines(ax, s["groups"], figure)
    ax.set_xlabel("nudge ratio (% of tokens the nudger wrote)")
    ax.set_ylabel("accuracy (%)" if figure == "accuracy" else "ends by itself (% of answers)")
    right = ax.get_xlim()[1]
    ax.set_xlim(-3, right + 0.1 * (right + 3))  # a point at 0% shows whole, and the last point's label
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"{s['task']}: {_short(s['base'])} nudged by {_short(s['nudger'])}, per gate", fontsize=10)
    return fig


CURVE_COLORS = {"top1": "tab:blue", "margin": "tab:orange", "entropy": "tab:red"}  # apart from the baselines'


def _plot_curve(ax, c: dict, index: int) -> None:
    """One gate's points in order of nudge ratio, each with its Wilson bar and its thresholds beside it
    (thresholds that gave the same point share a label; each curve's labels sit at their own height,
    so curves that meet stay readable)."""
    points = sorted((p for p in c["points"] if p["nudge_ratio"] is not None and p["value"] is not None),
                    key=lambda p: p["nudge_ratio"])  # fmt: skip
    if not points:
        return
    x = [100 * p["nudge_ratio"] for p in points]
    y = [100 * p["value"] for p in points]
    err = [[max(0.0, 100 * (p["value"] - p["ci"][0])) for p in points],
           [max(0.0, 100 * (p["ci"][1] - p["value"])) for p in points]]  # fmt: skip
    nudged = c["mode"] == "nudged"
    label = c["gate"] if nudged else f"{c['mode']} ({c['gate']})"
    color = CURVE_COLORS.get(c["gate"], "tab:gray") if nudged else "tab:brown"
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label, color=color)
    at: dict[tuple[float, float], list[str]] = {}
    for i, p in enumerate(points):
        at.setdefault((x[i], y[i]), []).append(fmt_gamma(p["gamma"]))
    for xy, gammas in at.items():
        ax.annotate(f"γ {', '.join(gammas)}", xy, xytext=(4, 4 + 9 * index), textcoords="offset points", fontsize=7,
                    color=color)  # fmt: skip


def gates_png(s: dict) -> bytes:
    """gates_figure as PNG bytes, 100 dpi."""
    return _png(gates_figure(s))


def _baselines(ax, groups: list[dict], figure: str) -> None:
    """The modes gamma does not change, as horizontal lines at their accuracy (or ends by itself)."""
    styles = {"base": (":", "black"), "nudger": ("--", "tab:green"), "urial": ("-.", "tab:purple")}
    for g in groups:
        value = g["accuracy"] if figure == "accuracy" else g["ends_by_itself"]["share"]
        if g["mode"] in BASELINES and value is not None:
            style, color = styles[g["mode"]]
            ax.axhline(100 * value, linestyle=style, color=color, label=g["mode"])


def _short(ref: str | None) -> str:
    """A model file's or server's last path part, for the plot's title (a file's size left out)."""
    return str(ref).split(" (", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def _by_mode(swept: list[dict]) -> dict[str, list[dict]]:
    modes: dict[str, list[dict]] = {}
    for g in swept:
        modes.setdefault(g["mode"], []).append(g)
    return modes


def _plot_accuracy(ax, groups: list[dict], swept: list[dict]) -> None:
    for mode, gs in _by_mode(swept).items():
        gs = [g for g in gs if g["accuracy"] is not None]
        if not gs:
            continue
        x = [g["gamma"] for g in gs]
        y = [100 * g["accuracy"] for g in gs]
        err = [[max(0.0, 100 * (g["accuracy"] - g["ci"][0])) for g in gs],
               [max(0.0, 100 * (g["ci"][1] - g["accuracy"])) for g in gs]]  # fmt: skip
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{mode} (95% CI)")
    _baselines(ax, groups, "accuracy")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _plot_ratio(ax, swept: list[dict]) -> None:
    for mode, gs in _by_mode(swept).items():
        gs = [g for g in gs if g["nudge_ratio"] is not None]
        ax.plot([g["gamma"] for g in gs], [100 * g["nudge_ratio"] for g in gs], marker="s", label=mode)
    ax.set_ylabel("nudge ratio (% of tokens)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
