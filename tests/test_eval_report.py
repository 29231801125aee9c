"""The eval report (nudge_local/evaluate/report.py) on results rows written by hand: every figure of
summary.json against a hand count or scipy, report.md as people read it, gamma.png as a real PNG for
a sweep only, and files written atomically."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys

import pytest
from PIL import Image
from scipy.stats import binomtest

from nudge_local.engine.paper_mode import trim_repeated_suffix
from nudge_local.evaluate import report
from nudge_local.evaluate.report import cohen_kappa, mcnemar_exact, repeated_tail, summarize, wilson, write_report

T, F, N = True, False, None
# q0..q9 per mode; N: the rule could not score the answer.
CORRECT = {
    ("base", None): [T, F, F, T, F, N, F, T, F, F],
    ("nudger", None): [T, T, F, T, T, T, F, F, T, N],
    ("nudged", 0.2): [T, T, T, T, F, N, T, T, F, T],
    ("nudged", 0.4): [T, T, F, T, T, T, T, F, T, T],
    ("nudged", 0.6): [F, F, F, T, F, F, F, T, F, F],
}
MANIFEST = {
    "version": 1,
    "task": "gsm8k",
    "data": "gsm8k_test.jsonl",
    "data_sha256": "ab" * 32,
    "base": "base.gguf",
    "nudger": "nudger.gguf",
    "settings": {"max_tokens": 512, "seed": 609},
    "judge": "judge.gguf",
    "modes": ["base", "nudger", "nudged"],
    "gammas": [0.2, 0.4, 0.6],
    "created": "2026-01-01T00:00:00",
}


def make_row(mode, gamma, i, correct, **kw):
    row = {
        "id": f"q{i}",
        "task": "gsm8k",
        "mode": mode,
        "gamma": gamma,
        "question": f"Question: {i}?",
        "gold": "#### 1",
        "answer": "1",
        "spans": [],
        "correct": correct,
        "tokens": 10 + i,
        "nudge_tokens": 0 if mode == "base" else (10 + i if mode == "nudger" else i % 3),
        "seconds": 0.5,
        "tokens_per_second": (10 + i) / 0.5,
        "nudging_words": [],
        "stop_reason": "length" if i in (7, 8) else "eos",
        "branching": {"writing": None if i == 0 else 1.0 + i / 10, "base": 12.0 if i in (1, 2) else None},
    }
    if i == 9:
        del row["branching"]  # rows may lack the key
    return {**row, **kw}


def sweep_rows():
    rows = []
    for (mode, gamma), verdicts in CORRECT.items():
        for i, correct in enumerate(verdicts):
            # the judge: the rule's verdict, but it disagrees on q3 and gives no verdict on q8
            judge = None if i == 8 else (not correct if i == 3 and correct is not None else correct)
            rows.append(make_row(mode, gamma, i, correct, judge=judge))
    return rows


def group(summary, mode, gamma=None):
    (g,) = [g for g in summary["groups"] if g["mode"] == mode and g["gamma"] == gamma]
    return g


def paired(summary, mode, gamma, against):
    (p,) = [p for p in summary["paired"] if p["mode"] == mode and p["gamma"] == gamma and p["against"] == against]
    return p


def scipy_wilson(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


# ---- statistics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (3, 9), (7, 9), (0, 10), (10, 10), (62, 100), (500, 1319)])
def test_wilson_matches_scipy(k, n):
    assert wilson(k, n) == pytest.approx(scipy_wilson(k, n), abs=1e-12)


def test_wilson_by_hand_and_without_trials():
    # 3 of 9: p = 1/3, z = 1.96; center (p + z²/2n) / (1 + z²/n), half-width z/(1 + z²/n) sqrt(p(1-p)/n + z²/4n²)
    z2 = 1.959963984540054**2
    center = (1 / 3 + z2 / 18) / (1 + z2 / 9)
    half = 1.959963984540054 / (1 + z2 / 9) * ((2 / 9) / 9 + z2 / 324) ** 0.5
    assert wilson(3, 9) == pytest.approx((center - half, center + half), abs=1e-12)
    assert wilson(0, 0) is None


@pytest.mark.parametrize("n", [1, 3, 7, 10, 12, 100, 1319])
def test_wilson_ends_are_exact(n):
    """0 of n starts at 0 and n of n ends at 1 exactly: 0 of 12 came out a hair above 0 in floating
    point, and matplotlib refused the error bar below its point."""
    assert wilson(0, n)[0] == 0.0 and wilson(n, n)[1] == 1.0


def test_plots_take_points_at_0_and_100_percent():
    rows = [make_row("nudged", g, i, c, gate=gate, tokens=100, nudge_tokens=n, stop_reason=stop)
            for gate, g, n, c, stop in (("top1", 0.2, 5, F, "length"), ("top1", 0.4, 9, T, "eos"),
                                        ("entropy", 2.0, 7, T, "length"))
            for i in range(12)]  # fmt: skip
    s = summarize(rows, MANIFEST)
    (ax,) = report.gates_figure(s).axes
    (points, _, (bars,)) = ax.containers[0].lines
    assert list(points.get_ydata()) == [0.0, 100.0]
    assert bars.get_segments()[0][:, 1][0] == 0.0 and bars.get_segments()[1][:, 1][1] == 100.0
    report.gamma_figure(summarize([r for r in rows if r["gate"] == "top1"], MANIFEST))  # the same bars, by gamma
    # an open task's points: ends by itself 0 of 12 (cut) and 12 of 12
    (ax,) = report.gates_figure(summarize([{**r, "correct": None} for r in rows], {**MANIFEST, "task": "open"})).axes
    assert list(ax.containers[0].lines[0].get_ydata()) == [0.0, 100.0]


def test_mcnemar_matches_scipy_binomtest():
    for b in range(26):
        for c in range(26):
            expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
            assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12, abs=1e-15), (b, c)
    assert mcnemar_exact(4, 0) == 0.125  # 2 * (1/2)^4
    assert mcnemar_exact(5, 1) == 14 / 64  # 2 * (1 + 6) / 2^6


def test_mcnemar_is_exact_for_many_pairs():
    # 2^1200 overflows a float; exact fractions do not
    assert 0 < mcnemar_exact(400, 800) < 1e-20
    assert mcnemar_exact(600, 600) == 1.0


def test_cohen_kappa_by_hand():
    # rule yes 7/9, judge yes 6/9, agreement 8/9: chance 48/81, kappa (72 - 48) / (81 - 48) = 8/11
    pairs = [(T, T), (T, T), (F, F), (T, F), (T, T), (T, T), (T, T), (F, F), (T, T)]
    assert cohen_kappa(pairs) == pytest.approx(8 / 11)
    assert cohen_kappa([(T, F), (F, T)]) == pytest.approx(-1.0)
    assert cohen_kappa([(T, T), (T, T)]) is None  # one verdict throughout: undefined
    assert cohen_kappa([]) is None


# ---- summary -------------------------------------------------------------------------------------


def test_group_figures():
    s = summarize(sweep_rows(), MANIFEST)
    assert [(g["mode"], g["gamma"]) for g in s["groups"]] == list(CORRECT)
    assert s["rows"] == 50 and s["items"] == 10
    base = group(s, "base")
    assert (base["items"], base["scored"], base["correct"]) == (10, 9, 3)
    assert base["accuracy"] == pytest.approx(3 / 9)
    assert base["ci"] == pytest.approx(list(scipy_wilson(3, 9)))
    assert base["nudge_ratio"] == 0
    nudged = group(s, "nudged", 0.4)
    assert (nudged["items"], nudged["scored"], nudged["correct"]) == (10, 10, 8)
    assert nudged["ci"] == pytest.approx(list(scipy_wilson(8, 10)))
    assert nudged["nudge_ratio"] == pytest.approx(9 / 145)  # nudge tokens 0,1,2,0,... over 10+11+...+19
    assert nudged["mean_tokens"] == pytest.approx(14.5)
    assert nudged["tokens_per_second"] == pytest.approx(145 / 5)
    # writing: q1..q8 (q0 null, q9 without the key); base: q1 and q2 only
    assert nudged["branching"]["writing"] == pytest.approx(sum(1 + i / 10 for i in range(1, 9)) / 8)
    assert nudged["branching"]["base"] == pytest.approx(12.0)
    assert nudged["stop_reasons"] == {"eos": 8, "length": 2}
    assert group(s, "nudger")["nudge_ratio"] == 1


def test_answers_cut_by_the_length_limit_are_counted_and_left_out_of_the_ended_accuracy():
    s = summarize(sweep_rows(), MANIFEST)
    nudged = group(s, "nudged", 0.4)  # q7 (wrong) and q8 (right) stopped at the length limit
    assert nudged["cut"] == 2 and (nudged["scored"], nudged["correct"]) == (10, 8)  # the paper's figure keeps them
    ended = nudged["ended"]
    assert (ended["scored"], ended["correct"]) == (8, 7) and ended["accuracy"] == pytest.approx(7 / 8)
    assert ended["ci"] == pytest.approx(list(scipy_wilson(7, 8)))
    base = group(s, "base")  # q5 unscored, q7 (right) cut: 2 right of the 7 scored that ended
    assert base["cut"] == 2 and (base["ended"]["scored"], base["ended"]["correct"]) == (7, 2)
    # paper's round limit cuts too; the nudger's end and the base's stop string end an answer; paper's
    # repeated-words guard does neither (ended is the set "ends by itself" counts)
    rows = [
        make_row("paper", 0.4, i, T, stop_reason=r)
        for i, r in enumerate(["round", "repeated_nudging_words", "nudging_model_stop", "stop_string"])
    ]
    paper = group(summarize(rows, MANIFEST), "paper", 0.4)
    assert paper["cut"] == 1 and paper["ended"]["scored"] == 2 and paper["ends_by_itself"]["count"] == 2
    rows = [make_row("base", None, i, F, stop_reason="length") for i in range(3)]
    base = group(summarize(rows, MANIFEST), "base")
    assert base["cut"] == 3 and base["ended"] == {"scored": 0, "correct": 0, "accuracy": None, "ci": None}
    assert "| base | – | – | 3 | 3 | 0.0% [0.0%, 56.1%] | 3 (100.0%) | – |" in report.render_markdown(
        summarize(rows, MANIFEST)
    )


def test_branching_is_null_without_values():
    rows = [make_row("base", None, i, T, branching={"writing": None, "base": None}) for i in range(3)]
    assert group(summarize(rows, MANIFEST), "base")["branching"] == {"writing": None, "base": None}


def test_judge_accuracy_and_agreement():
    s = summarize(sweep_rows(), MANIFEST)
    j = group(s, "nudged", 0.4)["judge"]
    # judge: T T F F T T T F - T (q3 flipped, q8 none)
    assert (j["scored"], j["correct"]) == (9, 6)
    assert j["accuracy"] == pytest.approx(6 / 9)
    assert j["ci"] == pytest.approx(list(scipy_wilson(6, 9)))
    assert j["agreement"]["items"] == 9
    assert j["agreement"]["agree"] == pytest.approx(8 / 9)
    assert j["agreement"]["kappa"] == pytest.approx(8 / 11)
    rows = [{k: v for k, v in r.items() if k != "judge"} for r in sweep_rows()]
    assert all(g["judge"] is None for g in summarize(rows, MANIFEST)["groups"])


def test_paired_comparisons():
    s = summarize(sweep_rows(), MANIFEST)
    assert {(p["mode"], p["gamma"], p["against"]) for p in s["paired"]} == {
        ("nudged", g, a) for g in (0.2, 0.4, 0.6) for a in ("base", "nudger")
    }
    # q5 unscored in both: 9 items; nudged right where base wrong on q1 q2 q6 q9, never the reverse
    p = paired(s, "nudged", 0.2, "base")
    assert (p["items"], p["wins"], p["losses"], p["ties"]) == (9, 4, 0, 5)
    assert p["p_value"] == pytest.approx(binomtest(4, 4, 0.5).pvalue)
    # q5 unscored in nudged, q9 in nudger: 8 items; wins q2 q6 q7, losses q4 q8
    p = paired(s, "nudged", 0.2, "nudger")
    assert (p["items"], p["wins"], p["losses"], p["ties"]) == (8, 3, 2, 3)
    assert p["p_value"] == 1.0
    p = paired(s, "nudged", 0.4, "base")
    assert (p["items"], p["wins"], p["losses"], p["ties"]) == (9, 5, 1, 3)
    assert p["p_value"] == pytest.approx(binomtest(5, 6, 0.5).pvalue)
    p = paired(s, "nudged", 0.6, "base")
    assert (p["wins"], p["losses"]) == (0, 1)


def test_nudging_word_table():
    words = ["b", "a", "c", "b", "a", "", "c", "b", "a"] + [f"w{i:02d}" for i in range(21, -1, -1)]
    rows = [
        make_row("nudged", 0.4, 0, T, nudging_words=words[:15]),
        make_row("nudged", 0.4, 1, T, nudging_words=words[15:]),
    ]
    rows.append(make_row("base", None, 0, T, nudging_words=["ignored"]))  # only nudged/paper groups get a table
    (table,) = summarize(rows, MANIFEST)["nudging_words"]
    assert (table["mode"], table["gamma"]) == ("nudged", 0.4)
    assert table["nudged_words"] == 30 and table["distinct"] == 25  # the empty word is not counted
    top = [(t["word"], t["count"]) for t in table["top"]]
    assert top == [("a", 3), ("b", 3), ("c", 2)] + [(f"w{i:02d}", 1) for i in range(17)]  # ties alphabetical
    assert table["top_share"] == pytest.approx((3 + 3 + 2 + 17) / 30)  # the 20 words of the table
    md = report.render_markdown(summarize(rows, MANIFEST))
    assert "30 nudged words (25 distinct); the 20 most frequent, listed below, cover 83.3% of them." in md
    assert "| 20 | `w16` | 1 |" in md and "| 21 |" not in md


def test_word_table_markdown_keeps_odd_words_whole():
    rows = [make_row("nudged", 0.4, 0, T, nudging_words=["a|b", "it`s", "Sure", "Sure"])]
    md = report.render_markdown(summarize(rows, MANIFEST))
    assert "4 nudged words (3 distinct), all listed below." in md
    assert "| 1 | `Sure` | 2 |" in md
    assert "| 2 | `a\\|b` | 1 |" in md  # a pipe escaped inside the table cell
    assert "| 3 | `` it`s `` | 1 |" in md


def test_open_task_has_no_accuracy_and_no_comparison():
    rows = [
        make_row(mode, gamma, i, None, gold=None, nudging_words=["Sure"])
        for mode, gamma in (("base", None), ("nudger", None), ("nudged", 0.3), ("nudged", 0.5))
        for i in range(4)
    ]
    s = summarize(rows, {**MANIFEST, "task": "open", "judge": None})
    assert all(g["accuracy"] is None and g["ci"] is None and g["scored"] == 0 for g in s["groups"])
    assert s["paired"] == []
    assert group(s, "nudged", 0.3)["nudge_ratio"] == pytest.approx(3 / 46)  # nudge tokens 0,1,2,0 of 10..13
    assert [t["nudged_words"] for t in s["nudging_words"]] == [4, 4]


# ---- files ---------------------------------------------------------------------------------------


def test_write_report_sweep(tmp_path):
    rows = sweep_rows()
    written = write_report(tmp_path, rows, MANIFEST)
    assert written == [tmp_path / "summary.json", tmp_path / "report.md", tmp_path / "gamma.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gamma.png", "report.md", "summary.json"]  # no temp file left
    assert json.loads((tmp_path / "summary.json").read_text()) == summarize(rows, MANIFEST)
    png = (tmp_path / "gamma.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (700, 700)  # two panels, 7 x 7 inches at 100 dpi


def test_report_markdown(tmp_path):
    write_report(tmp_path, sweep_rows(), MANIFEST)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# nudge-local eval: gsm8k\n")
    assert "`gsm8k_test.jsonl`" in md and "base `base.gguf`, nudger `nudger.gguf`" in md
    assert "max_tokens=512, seed=609" in md and "`judge.gguf`" in md
    lo, hi = scipy_wilson(3, 9)
    assert f"| base | – | – | 10 | 9 | 33.3% [{100 * lo:.1f}%, {100 * hi:.1f}%] |" in md
    lo, hi = scipy_wilson(7, 8)  # nudged 0.4: q7 and q8 cut, 7 of the 8 that ended right
    assert "| nudged | top1 | 0.4 | 10 | 10 | 80.0% [" in md
    assert f" | 2 (20.0%) | 87.5% [{100 * lo:.1f}%, {100 * hi:.1f}%] | " in md
    assert "Cut by length" in md and "Accuracy, ended [95% CI]" in md and "by their last number" in md
    assert "33.3% [12.1%, 64.6%]" in md
    assert "88.9% of 9 (κ 0.73)" in md  # nudged 0.4: rule and judge agree on 8 of 9
    assert "| nudged | top1 | 0.2 | base | 9 | 4 | 0 | 5 | 0.125 |" in md
    assert "| nudged | top1 | 0.2 | nudger | 8 | 3 | 2 | 3 | 1.000 |" in md
    assert "| nudged | top1 | 0.4 | base | 9 | 5 | 1 | 3 | 0.219 |" in md
    assert "![](gamma.png)" in md
    assert "## How to read this report" in md and "could be" in md and "chance" in md


def test_heading_keeps_a_multiline_setting_on_its_line():
    manifest = {**MANIFEST, "settings": {"system": "Be brief.\nBe kind.", "gamma": [0.2, 0.4]}}
    md = report.render_markdown(summarize(sweep_rows(), manifest))
    assert '- Settings: system="Be brief.\\nBe kind.", gamma=[0.2, 0.4]\n' in md


def test_main_table_order():
    modes = [("paper", 0.5), ("nudged", 0.5), ("nudger", None), ("urial", None), ("nudged", 0.1), ("base", None)]
    rows = [make_row(m, g, 0, T) for m, g in modes]
    md = report.render_markdown(summarize(rows, MANIFEST))
    lines = [line for line in md.splitlines() if line.startswith("| ") and line.split(" | ")[2] in ("–", "0.1", "0.5")]
    order = [tuple(line.split(" | ")[:3]) for line in lines if "[" in line]
    assert order == [
        ("| base", "–", "–"),
        ("| urial", "–", "–"),
        ("| nudger", "–", "–"),
        ("| nudged", "top1", "0.1"),
        ("| nudged", "top1", "0.5"),
        ("| paper", "top1", "0.5"),
    ]


def test_plot_panels_lines_and_labels():
    fig = report.gamma_figure(summarize(sweep_rows(), MANIFEST))
    accuracy, ratio = fig.axes
    assert accuracy.get_ylabel() == "accuracy (%)" and ratio.get_ylabel() == "nudge ratio (% of tokens)"
    assert ratio.get_xlabel().startswith("gamma, top1 gate (the base writes where its top-1 probability")
    legend = [t.get_text() for t in accuracy.get_legend().get_texts()]
    assert sorted(legend) == ["base", "nudged (95% CI)", "nudger"]
    lines = {line.get_label(): line for line in accuracy.get_lines()}
    assert list(lines["base"].get_ydata()) == pytest.approx([100 * 3 / 9] * 2)  # a horizontal reference
    assert list(lines["nudger"].get_ydata()) == pytest.approx([100 * 6 / 9] * 2)
    (errorbar,) = accuracy.containers
    points, _, (bars,) = errorbar.lines
    assert list(points.get_xdata()) == [0.2, 0.4, 0.6]
    assert list(points.get_ydata()) == pytest.approx([100 * 7 / 9, 80.0, 20.0])
    low, high = scipy_wilson(8, 10)  # the bar at gamma 0.4 spans the Wilson interval
    assert bars.get_segments()[1][:, 1] == pytest.approx([100 * low, 100 * high])
    (nudged,) = ratio.get_lines()
    assert list(nudged.get_ydata()) == pytest.approx([100 * 9 / 145] * 3)


def test_open_task_figure_has_one_panel():
    rows = [make_row("nudged", g, i, None, gold=None) for g in (0.3, 0.5) for i in range(4)]
    (ax,) = report.gamma_figure(summarize(rows, {**MANIFEST, "task": "open"})).axes
    assert ax.get_ylabel() == "nudge ratio (% of tokens)"


def test_no_plot_for_a_single_gamma(tmp_path):
    write_report(tmp_path, sweep_rows(), MANIFEST)
    assert (tmp_path / "gamma.png").exists()
    rows = [r for r in sweep_rows() if r["gamma"] in (None, 0.4)]
    written = write_report(tmp_path, rows, MANIFEST)
    assert written == [tmp_path / "summary.json", tmp_path / "report.md"]
    assert not (tmp_path / "gamma.png").exists()  # the earlier sweep's plot does not outlive its report
    assert "gamma.png" not in (tmp_path / "report.md").read_text()


def test_plot_for_paper_mode_sweep(tmp_path):
    rows = [make_row("nudged", 0.4, i, T) for i in range(3)]
    rows += [make_row("paper", g, i, i == 0) for g in (0.3, 0.5) for i in range(3)]
    assert (tmp_path / "gamma.png") in write_report(tmp_path, rows, MANIFEST)


def test_open_task_plot_has_the_ratio_panel_only(tmp_path):
    rows = [make_row("nudged", g, i, None, gold=None) for g in (0.3, 0.5) for i in range(4)]
    written = write_report(tmp_path, rows, {**MANIFEST, "task": "open", "judge": None})
    assert tmp_path / "gamma.png" in written
    with Image.open(tmp_path / "gamma.png") as image:
        assert image.size == (700, 380)
    md = (tmp_path / "report.md").read_text()
    assert "| nudged | top1 | 0.3 | 4 | 0 | – |" in md and "## Paired comparisons" not in md


def test_empty_results(tmp_path):
    written = write_report(tmp_path, [], MANIFEST)
    assert [p.name for p in written] == ["summary.json", "report.md"]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert (s["rows"], s["items"], s["groups"], s["paired"], s["nudging_words"]) == (0, 0, [], [], [])
    md = (tmp_path / "report.md").read_text()
    assert "No results yet: results.jsonl holds no finished item." in md
    assert "| Mode |" not in md


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    write_report(tmp_path, sweep_rows(), MANIFEST)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, sweep_rows()[:20], MANIFEST)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_plot_leaves_pyplot_and_the_backend_alone():
    code = (
        "import matplotlib, sys\n"
        "before = matplotlib.rcParams._get_backend_or_none()\n"
        "from nudge_local.evaluate.report import summarize, write_report\n"
        "import tempfile, pathlib, json\n"
        f"rows = json.loads({json.dumps(json.dumps(sweep_rows()))})\n"
        f"manifest = json.loads({json.dumps(json.dumps(MANIFEST))})\n"
        "write_report(pathlib.Path(tempfile.mkdtemp()), rows, manifest)\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert matplotlib.rcParams._get_backend_or_none() == before, 'backend changed'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---- how answers ended: by themselves, looped, repetition ----------------------------------------

LOOP = "Boil the egg for ten minutes. "  # 30 characters, the least repeat that counts


def test_repeated_tail_finds_a_block_of_thirty_characters_written_twice():
    assert repeated_tail("To boil an egg: " + LOOP * 2) == 30
    assert repeated_tail("To boil an egg: " + LOOP * 5 + "Boil the") == 30  # cut inside the next repeat
    assert repeated_tail("To boil an egg: " + LOOP * 2 + " \n\n") == 30  # trailing whitespace is not text
    assert repeated_tail("Answer:" + "ab" * 30) == 30  # a short unit repeated: its least multiple of 30 or more
    assert repeated_tail("Answer:" + "ab" * 29) == 0  # 58 characters: no block of 30 comes twice
    short = LOOP[1:]  # 29 characters: a loop only where a block of 58 comes twice
    assert repeated_tail("Step one. " + short * 5) == 58
    assert repeated_tail("Step one. " + short * 3) == 0
    assert repeated_tail(LOOP * 2 + "Then peel it and eat it with salt.") == 0  # the loop ended: not at the end
    assert repeated_tail("x" * 60) == 30  # two blocks and nothing before them
    assert repeated_tail("") == 0


def test_repeated_tail_finds_every_repeat_the_authors_trim_finds():
    rng = random.Random(609)
    for _ in range(2000):
        unit = "".join(rng.choice("ab .") for _ in range(rng.randint(20, 50)))
        text = "".join(rng.choice("xyz ") for _ in range(rng.randint(0, 40))) + unit * rng.randint(1, 4)
        if trim_repeated_suffix(text) != text.strip():
            assert repeated_tail(text) > 0, text
    # and one their binary search misses: it tries 34 characters first, then only lengths under 30
    assert trim_repeated_suffix("Step one. " + LOOP * 2) == ("Step one. " + LOOP * 2).strip()
    assert repeated_tail("Step one. " + LOOP * 2) == 30


@pytest.mark.parametrize(
    "stop,answer,expected",
    [
        ("length", "Boil it. " + LOOP * 3, True),
        ("round", "Boil it. " + LOOP * 3, True),  # paper mode's round limit is a budget too
        ("repeated_nudging_words", "Boil it.", True),  # paper mode's own loop guard
        ("eos", "Boil it. " + LOOP * 3, False),  # it ended by itself: a repeat, not a loop the limit cut
        ("stop_string", "Boil it. " + LOOP * 3, False),
        ("length", "Boil it in water for ten minutes, then cool it in cold water and peel it.", False),
    ],
)
def test_looped(stop, answer, expected):
    assert report.looped(stop, answer) is expected


def test_repetition_is_the_share_of_repeated_word_4grams():
    assert report.repetition("a b c d a b c d") == pytest.approx(1 - 4 / 5)  # grams abcd bcda cdab dabc abcd
    assert report.repetition("boil the egg now") == 0  # one 4-gram
    assert report.repetition("boil the egg") == 0  # none: nothing repeats
    assert report.repetition("") == 0
    assert report.repetition("Boil the egg now boil the egg now") == 0  # case kept: no 4-gram comes twice
    assert report.repetition("x " * 103) == pytest.approx(1 - 1 / 100)  # one loop: 100 grams, 1 distinct
    assert report.repetition("a  b\nc\td a b c d") == pytest.approx(0.2)  # words split on any whitespace


def test_group_endings_and_repetition():
    answers = [
        ("eos", "a b c d a b c d"),  # ends by itself; repetition 0.2
        ("stop_string", "Sure."),  # ends by itself; 0
        ("nudging_model_stop", "a b c d e"),  # ends by itself; 0
        ("length", "Boil it. " + LOOP * 3),  # looped
        ("length", "Boil it in water for ten minutes and then"),  # cut, not looped
        ("repeated_nudging_words", "a b c d a b c d a b c d"),  # looped (paper's guard); 1 - 4/9
    ]
    rows = [make_row("nudged", 0.4, i, None, stop_reason=r, answer=a) for i, (r, a) in enumerate(answers)]
    g = group(summarize(rows, MANIFEST), "nudged", 0.4)
    assert g["ends_by_itself"]["count"] == 3 and g["ends_by_itself"]["share"] == pytest.approx(0.5)
    assert g["ends_by_itself"]["ci"] == pytest.approx(list(scipy_wilson(3, 6)))
    assert g["looped"]["count"] == 2 and g["looped"]["share"] == pytest.approx(2 / 6)
    assert g["looped"]["ci"] == pytest.approx(list(scipy_wilson(2, 6)))
    loop_rep = report.repetition("Boil it. " + LOOP * 3)
    assert loop_rep > 0.5
    assert g["repetition"] == pytest.approx((0.2 + loop_rep + (1 - 4 / 9)) / 6)
    assert g["cut"] == 2  # the guard's stop is no budget's cut
    md = report.render_markdown(summarize(rows, MANIFEST))
    assert "| Ends by itself | Looped | Repetition |" in md
    assert f" | 3 (50.0%) | 2 (33.3%) | {100 * g['repetition']:.1f}% | " in md
    assert "**Looped**" in md and "**Repetition**" in md


def test_endings_of_rows_written_before_the_figures():
    rows = [make_row("base", None, i, T, stop_reason="length", answer="Q: " + LOOP * 2) for i in range(2)]
    for row in rows:
        row.pop("looped", None), row.pop("repetition", None)
    g = group(summarize(rows, MANIFEST), "base")
    assert (g["ends_by_itself"]["count"], g["looped"]["count"]) == (0, 2)


# ---- gates ---------------------------------------------------------------------------------------

# (gate, gamma): nudge tokens per 100-token answer, and how many of 10 answers are right
GATE_POINTS = {("top1", 0.2): (10, 1), ("top1", 0.4): (30, 5), ("entropy", 3.0): (11, 9), ("entropy", 1.0): (50, 6),
               ("margin", 0.5): (80, 4)}  # fmt: skip


def gate_rows(task="gsm8k"):
    scored = task != "open"
    rows = [make_row(m, None, i, (i < 4 if m == "base" else i < 7) if scored else None, tokens=100)
            for m in ("base", "nudger") for i in range(10)]  # fmt: skip
    for (gate, gamma), (nudged, right) in GATE_POINTS.items():
        for i in range(10):
            extra = {"stop_reason": "eos" if i < right else "length"}  # an open task: ends by itself as often
            rows.append(make_row("nudged", gamma, i, (i < right) if scored else None, gate=gate, tokens=100,
                                 nudge_tokens=nudged, **extra))  # fmt: skip
    return rows


def test_gate_curves_and_comparison():
    s = summarize(gate_rows(), MANIFEST)
    curves = {c["gate"]: [(p["gamma"], p["nudge_ratio"], p["value"]) for p in c["points"]] for c in s["gates"]}
    assert curves == {"top1": [(0.2, 0.1, 0.1), (0.4, 0.3, 0.5)], "margin": [(0.5, 0.8, 0.4)],
                      "entropy": [(1.0, 0.5, 0.6), (3.0, 0.11, 0.9)]}  # fmt: skip
    assert {c["figure"] for c in s["gates"]} == {"accuracy"}
    pairs = {tuple(c["gates"]): c for c in s["gate_comparison"]}
    assert list(pairs) == [("top1", "margin"), ("top1", "entropy"), ("margin", "entropy")]
    near = pairs[("top1", "entropy")]  # 10% and 11% nudged: within 3 points
    assert near["close"] and [(p["gamma"], p["nudge_ratio"]) for p in near["points"]] == [(0.2, 0.1), (3.0, 0.11)]
    assert not pairs[("top1", "margin")]["close"] and not pairs[("margin", "entropy")]["close"]
    # a point where nothing was nudged is the base alone under any gate: not a gate's to compare
    rows = gate_rows() + [make_row("nudged", g, i, T, gate=gate, tokens=100, nudge_tokens=0)
                          for gate, g in (("top1", 0.05), ("entropy", 9.0)) for i in range(10)]  # fmt: skip
    zero = {tuple(c["gates"]): c for c in summarize(rows, MANIFEST)["gate_comparison"]}
    assert [p["gamma"] for p in zero[("top1", "entropy")]["points"]] == [0.2, 3.0]
    md = report.render_markdown(s, plot=True)
    lo, hi = scipy_wilson(9, 10)
    assert "### entropy (the nudger writes where the base's entropy, in nats, is above γ)" in md
    assert f"| 3 | 10 | 11.0% | 90.0% [{100 * lo:.1f}%, {100 * hi:.1f}%] | 90.0% [" in md
    assert ("At similar nudge ratios, top1 at γ 0.2 (10.0% nudged) and entropy at γ 3 (11.0% nudged) gave accuracy "
            "10.0% [") in md  # fmt: skip
    assert "the 95% intervals do not overlap: entropy bought more at this ratio, on 10 items." in md
    assert "top1 and margin reached no nudge ratios within 3 percentage points of each other (closest: 30.0% " in md
    assert "![](gates.png)" in md and "gamma.png" not in md
    # the main table names each group's gate
    assert "| nudged | entropy | 3 | 10 | 10 | 90.0% [" in md and "| base | – | – | 10 | 10 |" in md


def test_overlapping_intervals_do_not_tell_gates_apart():
    rows = [r for r in gate_rows() if r.get("gate") != "margin"]
    for r in rows:
        if (r.get("gate"), r["gamma"]) == ("top1", 0.2):
            r["correct"] = int(r["id"][1:]) < 7  # 70% against entropy's 90% at a similar ratio
    md = report.render_markdown(summarize(rows, MANIFEST))
    assert "the 95% intervals overlap, so 10 items do not tell the two gates apart at this ratio." in md


def test_gates_plot_one_curve_per_gate_labelled_by_threshold():
    fig = report.gates_figure(summarize(gate_rows(), MANIFEST))
    (ax,) = fig.axes
    assert ax.get_xlabel().startswith("nudge ratio") and ax.get_ylabel() == "accuracy (%)"
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["base", "entropy", "margin", "nudger", "top1"]
    curves = {c.get_label(): c for c in ax.containers}
    points, _, (bars,) = curves["entropy"].lines
    assert list(points.get_xdata()) == pytest.approx([11.0, 50.0])  # in order of nudge ratio
    assert list(points.get_ydata()) == pytest.approx([90.0, 60.0])
    low, high = scipy_wilson(9, 10)
    assert bars.get_segments()[0][:, 1] == pytest.approx([100 * low, 100 * high])
    assert list(curves["top1"].lines[0].get_xdata()) == pytest.approx([10.0, 30.0])
    labels = [(t.get_text(), t.xy) for t in ax.texts]
    assert ("γ 3", (11.0, 90.0)) in labels and ("γ 0.4", (30.0, 50.0)) in labels and len(labels) == 5
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["base"].get_ydata()) == pytest.approx([40.0, 40.0])
    titled = report.gates_figure(summarize(gate_rows(), {**MANIFEST, "base": "/models/base.gguf (253113024 bytes)"}))
    assert titled.get_suptitle() == "gsm8k: base.gguf nudged by nudger.gguf, per gate"  # the size would not fit
    # two thresholds that gave the same point share one label
    same = gate_rows() + [{**r, "gamma": 5.0} for r in gate_rows() if (r.get("gate"), r["gamma"]) == ("entropy", 3.0)]
    (ax,) = report.gates_figure(summarize(same, MANIFEST)).axes
    assert ("γ 3, 5", (11.0, 90.0)) in [(t.get_text(), t.xy) for t in ax.texts] and len(ax.texts) == 5


def test_open_task_gates_plot_ends_by_itself(tmp_path):
    rows = gate_rows("open")
    written = write_report(tmp_path, rows, {**MANIFEST, "task": "open"})
    assert [p.name for p in written] == ["summary.json", "report.md", "gates.png"]
    (ax,) = report.gates_figure(summarize(rows, {**MANIFEST, "task": "open"})).axes
    assert ax.get_ylabel() == "ends by itself (% of answers)"
    points = ax.containers[0].lines[0]
    assert list(points.get_ydata()) == pytest.approx([10.0, 50.0])  # top1: 1 and 5 of 10 ended by themselves
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["base"].get_ydata()) == pytest.approx([80.0, 80.0])  # 8 of its 10 answers ended by themselves
    md = (tmp_path / "report.md").read_text()
    assert "| γ | Items | Nudge ratio | Ends by itself [95% CI] | Looped [95% CI] |" in md
    assert "| 0.2 | 10 | 10.0% | 10.0% [1.8%, 40.4%] | 0.0% [0.0%, 27.8%] |" in md  # cut, but none repeating
    assert "gave answers that ended by themselves 10.0% [" in md


def test_plots_follow_the_gates(tmp_path):
    """Several gates: gates.png (a gamma axis would mix probabilities and nats), and a gamma.png left
    from one gate's sweep is removed; one gate again: gamma.png, its axis naming the gate."""
    write_report(tmp_path, sweep_rows(), MANIFEST)
    assert (tmp_path / "gamma.png").exists()
    write_report(tmp_path, gate_rows(), MANIFEST)
    assert (tmp_path / "gates.png").exists() and not (tmp_path / "gamma.png").exists()
    entropy_only = [r for r in gate_rows() if r.get("gate") in (None, "entropy")]
    assert [p.name for p in write_report(tmp_path, entropy_only, MANIFEST)][-1] == "gamma.png"
    assert not (tmp_path / "gates.png").exists() and "## Gates" not in (tmp_path / "report.md").read_text()
    _, ratio = report.gamma_figure(summarize(entropy_only, MANIFEST)).axes
    assert ratio.get_xlabel().startswith("gamma, entropy gate (nats")


def test_a_report_that_cannot_be_written_is_one_sentence(tmp_path, capsys):
    """A full disk or a folder that refuses the report ends the run in one sentence; the answers
    stay in results.jsonl."""
    import errno

    from nudge_local.engine.errors import NudgeError
    from nudge_local.evaluate.cli import _report

    def full(out, rows, manifest):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(NudgeError, match=r"cannot be written in .* \(No space left on device\); results.jsonl keeps"):
        _report(full, tmp_path, [{}], {})
    _report(lambda out, rows, manifest: [out / "report.md"], tmp_path, [{}], {})
    assert capsys.readouterr().out == f"{tmp_path / 'report.md'}\n"
