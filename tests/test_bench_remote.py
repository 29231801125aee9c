"""scripts/bench_remote.py, served models against local ones: one short run on a tiny generated pair
prints every row with its figures, the served systems write their local counterparts' texts, the
JSON holds the paired ratios and the requests per token (the lookahead answers several positions
per request), and the servers are gone afterwards, also after Ctrl+C; bad options are one sentence
with exit code 2."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest

from engines import llama_cpp_bin
from nudge_local.bench.cli import _shape
from nudge_local.bench.generated import make_pair

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_remote.py"
NUMBER = r"[0-9]+(?:\.[0-9]+)?"
TINY = ["--shape", "64,2", "--max-tokens", "16", "--threads", "1"]
ROWS = ("local token", "token, remote base", "speculative local", "paper local", "paper remote (OpenAI API)")
SERVED = {"token, remote base": "local token", "paper remote (OpenAI API)": "paper local"}
URLS = re.compile(r"^llama-server \(.*\): base at (http://\S+), nudger at (http://\S+);", re.M)


@pytest.fixture(scope="module", autouse=True)
def built():
    """llama-server built before any run is timed: a first build takes minutes (~6 on 2 cores)."""
    return llama_cpp_bin()


def refused(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=2)
    except httpx.TransportError:
        return True
    return False


def test_one_run_prints_every_row_side_by_side(tmp_path):
    out = tmp_path / "remote.json"
    argv = [sys.executable, str(SCRIPT), *TINY, "--rounds", "1", "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    printed = done.stdout
    for name in ROWS:
        served = f"{NUMBER} +{NUMBER} +(True|False)" if name in SERVED else "- +- +-"
        row = rf"^{re.escape(name)} +{NUMBER} +{NUMBER} +{NUMBER} +\({NUMBER}-{NUMBER}\) +{served}$"
        assert re.search(row, printed, re.M), printed
    assert re.search(r"^(token, remote base|paper remote \(OpenAI API\)) .* False$", printed, re.M) is None, printed
    assert "speculative with a remote base runs as token mode" in printed
    assert re.search(rf"^target: token mode with a remote base >= 0.7x local: {NUMBER}x, (met|NOT met)$", printed, re.M)
    results = json.loads(out.read_text())
    assert results["same_text"] is True
    rows = results["systems"]
    assert list(rows) == list(ROWS)
    for name, row in rows.items():
        assert len(row["ratio_to_local_token_rounds"]) == 1
        assert row["ratio_to_local_token"] == pytest.approx(row["ratio_to_local_token_rounds"][0])
        assert row["ratio_to_local_token"] > 0
        assert row["tokens"] > 0 and row["tokens_per_second"] > 0
        assert row["counterpart"] == SERVED.get(name)
        assert row["same_text"] is (True if name in SERVED else None)
    assert rows["local token"]["ratio_to_local_token"] == 1.0
    assert rows["token, remote base"]["tokens"] == 16
    assert 0 < rows["token, remote base"]["requests_per_token"] < 1  # the lookahead answers several positions
    assert rows["paper remote (OpenAI API)"]["requests_per_token"] > 0
    for name in SERVED:
        row = rows[name]
        assert row["requests_per_token"] == sum(row["requests_rounds"]) / sum(row["tokens_rounds"])
        assert row["prompt_read_per_token"] == sum(row["prompt_read_rounds"]) / sum(row["tokens_rounds"])
        assert min(row["requests_rounds"]) >= 1 and min(row["prompt_read_rounds"]) > 0
    for name in ("local token", "speculative local", "paper local"):
        assert rows[name]["requests_per_token"] is None and rows[name]["prompt_read_per_token"] is None
    assert results["target"]["ratio"] == rows["token, remote base"]["ratio_to_local_token"]
    assert results["texts"]["token, remote base"] == results["texts"]["local token"]
    for url in URLS.search(printed).groups():
        assert refused(url), f"{url} still answers after the run"


def test_an_erased_slot_reads_its_whole_prompt_again(bench_remote, tmp_path):
    """Every answer starts cold: the server's prefix cache is emptied between answers."""
    base, _ = make_pair(tmp_path, None, 0.7, shapes=_shape("64,2"))
    server = bench_remote.LlamaServer(bench_remote.llama_server_binary(), base, "base", tmp_path, 1)
    try:
        server.wait_ready()
        body = {"prompt": "Question: Why is the sky blue?\nAnswer:", "n_predict": 1, "cache_prompt": True}

        def read() -> int:
            return httpx.post(server.url + "/completion", json=body, timeout=30).json()["timings"]["prompt_n"]

        whole = read()
        assert whole > 5 and read() <= 1  # the second finds the prompt in the cache
        server.erase()
        assert read() == whole
    finally:
        server.stop()
    assert server.proc.returncode is not None and refused(server.url)


@pytest.mark.parametrize("fault", [None, "server error", "Ctrl+C"])
def test_the_servers_are_stopped_whatever_ends_the_run(bench_remote, monkeypatch, capsys, fault):
    """In this process, so only the script's own stopping can end them (not the kernel's signal
    to a dead parent's children)."""
    if fault:
        exc = bench_remote.RemoteError("The base server went away.") if fault == "server error" else KeyboardInterrupt()

        def run_rounds(*_):
            raise exc

        monkeypatch.setattr(bench_remote, "run_rounds", run_rounds)
    args = bench_remote.parse_args([*TINY, "--rounds", "1"])
    if fault == "server error":
        with pytest.raises(bench_remote.BenchError, match=r"The base server went away\. The servers' logs end: base: "):
            bench_remote.run(args)
    elif fault == "Ctrl+C":
        with pytest.raises(KeyboardInterrupt):
            bench_remote.run(args)
    else:
        assert bench_remote.run(args)["same_text"]
    m = URLS.search(capsys.readouterr().out)
    for url in m.groups():
        assert refused(url), f"{url} still answers"


def test_ctrl_c_stops_both_servers():
    argv = [sys.executable, "-u", str(SCRIPT), *TINY, "--rounds", "1000"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the servers answer /health once this line is printed
            m = URLS.match(line)
            if m:
                break
        assert m, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "bench_remote: interrupted; the servers were stopped" in proc.stderr.read()
    for url in m.groups():
        assert refused(url), f"{url} still answers after Ctrl+C"


@pytest.fixture(scope="module")
def bench_remote():
    spec = importlib.util.spec_from_file_location("bench_remote", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_remote"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_remote"]


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["--rounds", "0"], "at least 1 expected"),
        (["--max-tokens", "many"], "at least 1 expected"),
        (["--agreement", "1.5"], "a share from 0 to 1 expected"),
        (["--shape", "wide"], "argument --shape: WIDTH,LAYERS"),
        (["--quant", "Q2_K"], "argument --quant: invalid choice"),
        (["--nudge", "nudger.gguf"], "a real pair needs both --base and --nudge"),
        (["--json", "no/such/folder/out.json"], "the folder for --json"),
        (["--clients", "2"], "unrecognized arguments: --clients 2"),
    ],
)
def test_bad_options_are_one_sentence(bench_remote, capsys, argv, phrase):
    with pytest.raises(SystemExit) as exit_:
        bench_remote.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nudge-local: error:") and phrase in err and "\n" not in err


def test_a_missing_model_file_is_one_sentence(tmp_path):
    argv = [sys.executable, str(SCRIPT), "--base", str(tmp_path / "base.gguf"), "--nudge", str(tmp_path / "n.gguf")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr.strip()
    assert err.startswith("nudge-local: error:") and "base.gguf" in err and "\n" not in err
