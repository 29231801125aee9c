"""`gamma: auto` (nudge_local/calibrate.py): the pair's gamma for a target nudge ratio, measured on the
calibration prompts (on the tiny pair, real weights), cached per both files' identities, measured
again when a file changes; bad targets and gates are one sentence."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import load
from nudge_local import calibrate as cal
from nudge_local.bench.generated import make_pair
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.local import Model
from nudge_local.engine.prompts import render_prompts
from tiny import tiny_paths

SHAPES = ((64, 2, 128), (32, 1, 64))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NUDGE_LOCAL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("calibrate"), None, 0.7, shapes=SHAPES)


def test_auto_lands_within_two_points_of_its_target_on_the_tiny_pair():
    """Real weights: the calibrated gamma's nudge ratio, measured again on the calibration prompts,
    is within 2 percentage points of the 12% target; the second call reads the cache."""
    base_path, nudger_path = tiny_paths()
    with Model(base_path, role="base", n_ctx=1024, n_threads=2) as base, \
            Model(nudger_path, role="nudger", n_ctx=1024, n_threads=2) as nudger:  # fmt: skip
        steps = []
        c = cal.calibrate(base, nudger, progress=lambda *a: steps.append(a))
        assert not c.cached and c.steps == len(steps) >= 2 and 0 < c.gamma < 1
        prompts = [render_prompts(base, nudger, q) for q in cal.questions()]
        ratio, tokens = cal.nudge_ratio(base, nudger, prompts, "top1", c.gamma)
        assert abs(ratio - cal.TARGET) <= 0.02 and ratio == pytest.approx(c.ratio) and tokens == c.tokens
        again = cal.calibrate(base, nudger)
        assert again.cached and (again.gamma, again.ratio) == (c.gamma, c.ratio)


def test_the_cache_is_kept_per_files_and_a_changed_file_recalibrates(generated, monkeypatch):
    base_path, nudger_path = generated
    with load(base_path, "base", 1024) as base, load(nudger_path, "nudger", 1024) as nudger:
        first = cal.calibrate(base, nudger, gate="entropy", target=0.3)
        assert not first.cached
        measured = []
        real = cal.nudge_ratio
        monkeypatch.setattr(cal, "nudge_ratio", lambda *a: measured.append(a) or real(*a))
        assert cal.calibrate(base, nudger, gate="entropy", target=0.3).cached and measured == []
        assert not cal.calibrate(base, nudger, gate="top1", target=0.3).cached  # another gate: its own
        assert [c.gate for c in cal.cached_for_files(base_path, nudger_path)] == ["entropy", "top1"]
        stat = base_path.stat()
        os.utime(base_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed
        measured.clear()
        assert not cal.calibrate(base, nudger, gate="entropy", target=0.3).cached and measured
        assert cal.cached_for_files(base_path, nudger_path)[0].gate == "entropy"  # only the new one matches


def test_a_bad_target_or_gate_is_one_sentence(generated):
    base_path, nudger_path = generated
    with load(base_path, "base", 1024) as base, load(nudger_path, "nudger", 1024) as nudger:
        for target in (0, 1, 1.5, -0.1):
            with pytest.raises(NudgeError, match="nudge target must be a share between 0 and 1"):
                cal.calibrate(base, nudger, target=target)
        with pytest.raises(NudgeError, match="Unknown gate 'top2'"):
            cal.calibrate(base, nudger, gate="top2")


def test_run_with_gamma_auto_says_what_it_measured_and_doctor_shows_it(generated, cache):
    base_path, nudger_path = generated
    env = {**os.environ, "NUDGE_LOCAL_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "nudge_local.cli", "run", "Why is the sky blue?", "--base", str(base_path),
           "--nudge", str(nudger_path), "--threads", "1", "--max-tokens", "16", "--json"]  # fmt: skip
    out = subprocess.run([*cmd, "--gamma", "auto", "--gate", "margin", "--nudge-target", "0.3"], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    auto = doc["gamma_auto"]
    assert doc["gate"] == "margin" and doc["gamma"] == auto["gamma"] and auto["target"] == 0.3
    assert not auto["cached"] and "calibrating gamma, step 1" in out.stderr
    again = subprocess.run([*cmd, "--gamma", "auto", "--gate", "margin", "--nudge-target", "0.3"], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert json.loads(again.stdout)["gamma_auto"]["cached"] and "calibrating" not in again.stderr
    bad = subprocess.run([*cmd, "--nudge-target", "2"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "nudge_target must be a share between 0 and 1" in bad.stderr
    assert "Traceback" not in bad.stderr
