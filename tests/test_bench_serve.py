"""scripts/bench_serve.py, the server against in-process token mode: one short run on a tiny
generated pair prints every figure, the server's text is the engine's, the JSON holds the paired
ratios; bad options are one sentence with exit code 2."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_serve.py"
NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def test_one_run_prints_the_figures_side_by_side(tmp_path):
    out = tmp_path / "serve.json"
    argv = [sys.executable, str(SCRIPT), "--shape", "64,2", "--rounds", "1", "--clients", "2", "--max-tokens", "8",
            "--threads", "1", "--json", str(out)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    printed = done.stdout
    for row in ("in-process token mode", "server, one stream"):
        assert re.search(rf"^{row} +8 tokens +{NUMBER} tok/s +first token +{NUMBER} ms", printed, re.M), printed
    assert re.search(rf"^server / in-process, paired per round: {NUMBER}x \({NUMBER}-{NUMBER}\)", printed, re.M)
    assert "server text equals in-process text: True\n" in printed
    assert re.search(rf"^2 concurrent streams: 16 tokens in {NUMBER} s = {NUMBER} tok/s .*first token p50 {NUMBER} ms, "
                     rf"p99 {NUMBER} ms$", printed, re.M), printed  # fmt: skip
    results = json.loads(out.read_text())
    assert results["same_text"] and results["text"]
    assert len(results["ratio_rounds"]) == 1 and results["ratio"] == pytest.approx(results["ratio_rounds"][0])
    assert results["ratio"] > 0 and results["server_ttft_median"] > 0
    for side in ("in_process", "server"):
        assert [r["tokens"] for r in results[side]] == [8]
        assert results[side][0]["tps"] > 0
    batch = results["concurrent"]
    assert batch["clients"] == 2 and batch["tokens"] == 16 and batch["tokens_per_second"] > 0
    assert 0 < batch["ttft_p50"] <= batch["ttft_p99"] <= batch["seconds"]


@pytest.fixture(scope="module")
def bench_serve():
    spec = importlib.util.spec_from_file_location("bench_serve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["--rounds", "0"], "at least 1 expected"),
        (["--agreement", "1.5"], "a share from 0 to 1 expected"),
        (["--shape", "wide"], "argument --shape: WIDTH,LAYERS"),
        (["--quant", "Q2_K"], "argument --quant: invalid choice"),
        (["--base", "base.gguf"], "a real pair needs both --base and --nudge"),
        (["--json", "no/such/folder/out.json"], "the folder for --json"),
        (["--chat-template", "missing.jinja"], "the chat template missing.jinja cannot be read"),
    ],
)
def test_bad_options_are_one_sentence(bench_serve, capsys, argv, phrase):
    with pytest.raises(SystemExit) as exit_:
        bench_serve.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nudge-local: error:") and phrase in err and "\n" not in err
