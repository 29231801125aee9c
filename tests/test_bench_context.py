"""scripts/bench_context.py: a conversation that outgrows a small context prints every turn, marks the
turns whose prompts had just left more turns out, and compares their time to first token."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from nudge_local.bench.generated import make_pair

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_context.py"


def test_a_conversation_past_its_context_reports_the_drops(tmp_path):
    base, nudger = make_pair(tmp_path, None, 0.7, shapes=((64, 2, 128), (32, 1, 64)))
    argv = [sys.executable, str(SCRIPT), "--base", str(base), "--nudge", str(nudger), "--ctx", "256", "--turns", "10",
            "--max-tokens", "24", "--threads", "1"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = re.findall(r"^ +(\d+) +(\d+) +(\d+) +(\d+) +\d+ ms +(\d+)(  <- new drop)?$", done.stdout, re.M)
    assert [int(r[0]) for r in rows] == list(range(1, 11))
    out = [int(r[2]) for r in rows]
    assert out == sorted(out) and out[-1] > 0  # drops happen, and stay
    assert all(int(r[3]) + 24 <= 256 for r in rows)  # every prompt left room for its answer
    assert [bool(r[5]) for r in rows] == [b > a for a, b in zip([0, *out], out, strict=False)]
    assert re.search(r"^time to first token: after a new drop \d+ ms \(median of \d+\), other turns \d+ ms "
                     r"\(median of \d+\): [\d.]+x$", done.stdout, re.M), done.stdout  # fmt: skip
