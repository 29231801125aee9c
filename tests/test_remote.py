"""Models on serving engines (nudge_local/remote/), against real servers started here on loopback:
llama.cpp's llama-server (native API; built by scripts/build_llama_server.sh from the pinned
llama-cpp-python's llama.cpp source), its rpc-server, and llama-cpp-python's OpenAI-compatible server.

The pair is generated (F16, zero weights: a position's logits do not depend on the batch it was
evaluated in), so a served model's greedy output must equal the same GGUF run locally token for token.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from conftest import load
from engines import llama_cpp_python_server, llama_server, rpc_server
from interface import unimplemented
from nudge_local.bench.generated import make_pair
from nudge_local.engine.events import Done
from nudge_local.engine.generate import generate
from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.prompts import render_prompts
from nudge_local.engine.sampling import Chooser, Sampling, prob, top1, top_k
from nudge_local.remote.completions import TextRemoteModel
from nudge_local.remote.connect import connect
from nudge_local.remote.http import Endpoint, Http, RemoteError
from nudge_local.remote.llama_server import RemoteModel
from nudge_local.remote.rows import top_row
from serving import Served, events, read_stream

SHAPES = ((64, 2, 128), (32, 1, 64))  # tiny: thousands of tokens per second on one core
QUESTION = "Why is the sky blue?"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("remote-pair"), None, 0.7, shapes=SHAPES)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("engine-logs")


@pytest.fixture(scope="module")
def base_server(pair, logs):
    e = llama_server(pair[0], logs)
    yield e
    e.stop()


@pytest.fixture(scope="module")
def nudger_server(pair, logs):
    e = llama_server(pair[1], logs)
    yield e
    e.stop()


@pytest.fixture(scope="module")
def openai_server(pair, logs):
    e = llama_cpp_python_server(pair[0], logs)
    yield e
    e.stop()


@pytest.fixture(scope="module")
def local(pair):
    base, nudger = load(pair[0], "base", 2048), load(pair[1], "nudger", 2048)
    yield base, nudger
    base.close()
    nudger.close()


def remote(url: str, role: str, **kw):
    return connect(Endpoint(url, **kw), role)


def ids(events_of):
    return [(e.source, e.token) for e in events_of if not isinstance(e, Done)]


# -- the model interface ------------------------------------------------------------------------


def test_every_kind_of_model_implements_the_whole_interface(base_server, openai_server, local):
    """A local file, a model on llama-server and one behind /v1/completions each define every member
    of ScoringModel; the capabilities say what differs, and the three answer alike where they can."""
    base, _ = local
    with remote(base_server.url, "base") as served, remote(openai_server.url, "base") as text:
        assert isinstance(served, RemoteModel) and isinstance(text, TextRemoteModel)
        for model in (base, served, text):
            assert isinstance(model, ScoringModel) and unimplemented(model) == []
        assert [m.kind for m in (base, served, text)] == ["GGUF", "server", "server"]
        assert [m.has_token_ids for m in (base, served, text)] == [True, True, False]
        assert [m.scores_drafts for m in (base, served, text)] == [True, False, False]
        assert base.prompt_read is None and isinstance(served.prompt_read, int) and isinstance(text.prompt_read, int)
        prompt = b"Why is the sky blue?"
        assert served.count_tokens(prompt) == base.count_tokens(prompt) and text.count_tokens(prompt) is None
        assert served.prompt_length(prompt) == base.prompt_length(prompt) == text.prompt_length(prompt)
        assert base.token_texts() is not None and served.token_texts() is None and text.token_texts() is None
        top = int(base.text_logits(prompt, 0).argmax())
        assert int(served.text_logits(prompt, 0).argmax()) == top
        assert [c.token for c in served.complete("Why is the sky blue?", 4).tokens] == [
            c.token for c in base.complete("Why is the sky blue?", 4).tokens
        ]
        assert base.label == base.path.name and served.label == text.label != ""


# -- rows ---------------------------------------------------------------------------------------


def test_a_row_from_top_logprobs_gives_each_listed_token_its_reported_probability():
    lp = [(7, np.log(0.3)), (2, np.log(0.2)), (9, np.log(0.1))]
    row = top_row(100, lp)
    assert top1(row) == (7, pytest.approx(0.3, rel=1e-6))
    for i, p in ((7, 0.3), (2, 0.2), (9, 0.1)):
        assert prob(row, i) == pytest.approx(p, rel=1e-5)
    assert [i for i, _ in top_k(row, 3)] == [7, 2, 9]
    assert prob(row, 50) == pytest.approx(0.4 / 97, rel=1e-4)  # the rest of the mass, spread evenly
    assert top1(top_row(50, [(3, 0.0)])) == (3, pytest.approx(1.0))


def test_sampling_from_a_served_row_draws_only_the_listed_tokens():
    row = top_row(5000, [(10, np.log(0.05)), (20, np.log(0.04)), (30, np.log(0.01))])
    choose = Chooser(Sampling(temperature=1.5, seed=3))
    drawn = {choose(row) for _ in range(300)}
    assert drawn == {10, 20, 30}  # 90% of the mass is unlisted: a plain draw would land there


# -- llama-server, native API -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["base", "nudged", "paper", "nudger"])
def test_llama_server_base_writes_what_the_local_gguf_writes(mode, base_server, local):
    base, nudger = local
    with remote(base_server.url, "base") as rbase:
        assert isinstance(rbase, RemoteModel)
        prompts = render_prompts(base, nudger, QUESTION)
        got = list(generate(prompts, mode=mode, base=rbase, nudger=nudger, max_tokens=60, speculative=False))
    want = list(generate(prompts, mode=mode, base=base, nudger=nudger, max_tokens=60, speculative=False))
    assert got[-1].text == want[-1].text and got[-1].text
    assert ids(got) == ids(want)
    assert got[-1].stop_reason == want[-1].stop_reason
    if mode in ("nudged", "paper"):
        assert {s for s, _ in ids(got)} == {"base", "nudge"}


def test_llama_server_base_reads_few_requests_and_only_new_suffixes(base_server, local):
    """The base's greedy chunks answer most positions: far fewer requests than tokens, and the
    server re-reads only what its prefix cache lacks (prompt once, then the nudger's words)."""
    base, nudger = local
    with remote(base_server.url, "base") as rbase:
        prompts = render_prompts(base, nudger, QUESTION)
        events = list(generate(prompts, base=rbase, nudger=nudger, max_tokens=200, speculative=False))
        done = events[-1]
        n_prompt = len(base.tokenize(prompts.base))
        assert done.stats.tokens >= 100
        assert rbase.forward_calls == done.stats.forward_calls["base"]
        assert rbase.forward_calls <= done.stats.tokens / 3, (rbase.forward_calls, done.stats.tokens)
        assert rbase.prompt_read <= n_prompt + done.stats.tokens  # nothing read twice but the last token
        assert done.stats.served_prompt_read == {"base": rbase.prompt_read} and rbase.prompt_read >= 1


def test_a_nudger_on_llama_server_and_both_served(base_server, nudger_server, local):
    base, nudger = local
    prompts = render_prompts(base, nudger, QUESTION)
    want = list(generate(prompts, base=base, nudger=nudger, max_tokens=60, speculative=False))
    with remote(nudger_server.url, "nudger") as rnudger, remote(base_server.url, "base") as rbase:
        assert render_prompts(rbase, rnudger, QUESTION) == prompts  # the chat template from /props
        for b, n in ((base, rnudger), (rbase, rnudger)):
            got = list(generate(prompts, base=b, nudger=n, max_tokens=60, speculative=False))
            assert ids(got) == ids(want) and got[-1].text == want[-1].text


def test_text_space_with_a_served_base_matches_local_text_space(base_server, local):
    base, nudger = local
    prompts = render_prompts(base, nudger, QUESTION)
    want = list(generate(prompts, base=base, nudger=nudger, max_tokens=60, text_space=True))
    with remote(base_server.url, "base") as rbase:
        got = list(generate(prompts, base=rbase, nudger=nudger, max_tokens=60, text_space=True))
    assert [(e.source, e.text) for e in got[:-1]] == [(e.source, e.text) for e in want[:-1]]


def test_speculative_with_llama_server_runs_as_token_mode_and_says_so(base_server, local, caplog):
    """The engine notes the fallback at each answer; the command line says it once (test_cli)."""
    base, nudger = local
    prompts = render_prompts(base, nudger, QUESTION)
    want = list(generate(prompts, base=base, nudger=nudger, max_tokens=60, speculative=False))
    notes = logging.getLogger("nudge_local.notes")  # the CLI, run in this process before, may stop propagation
    added = not notes.propagate
    if added:
        notes.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="nudge_local.notes"), remote(base_server.url, "base") as rbase:
            for _ in range(2):
                got = list(generate(prompts, base=rbase, nudger=nudger, max_tokens=60, speculative=True))
                assert ids(got) == ids(want)
    finally:
        if added:
            notes.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records if "cannot score a draft" in r.getMessage()] == [
        f"The base's server ({base_server.url}) cannot score a draft in one request; speculative nudging runs as "
        f"token mode."
    ] * 2


def test_the_base_through_rpc_server_writes_the_same(pair, logs, local):
    """The way a model is spread over machines: llama-server runs the base's layers on an
    rpc-server (another process holding the weights) on loopback."""
    base, nudger = local
    rpc = rpc_server(logs)
    try:
        served = llama_server(pair[0], logs, "--rpc", rpc.url, "-ngl", "99", "-v")
        try:
            assert f"using device RPC0 ({rpc.url})" in served.log.read_text()  # every layer is there
            with remote(served.url, "base") as rbase:
                prompts = render_prompts(base, nudger, QUESTION)
                got = list(generate(prompts, base=rbase, nudger=nudger, max_tokens=60, speculative=False))
        finally:
            served.stop()
    finally:
        rpc.stop()
    want = list(generate(prompts, base=base, nudger=nudger, max_tokens=60, speculative=False))
    assert ids(got) == ids(want)


@pytest.fixture(scope="module")
def accented(tmp_path_factory):
    """A base that writes " caf한." with "한" as three byte tokens (ED, 95, 9C), then ends; and a nudger.
    (Not a character of the vocabulary probe, whose tokens' bytes /tokenize would tell.)"""
    from nudge_local.bench.synthetic import CHATML, Table, write_model
    from pairs import vocab

    v = vocab("bpe0")
    caf, ed, x95, x9c, dot = (v.find(b) for b in (b" caf", b"\xed", b"\x95", b"\x9c", b"."))
    tmp = tmp_path_factory.mktemp("accented")
    base = write_model(tmp / "accented.gguf", v,
                       Table(rows={caf: {ed: 6.0}, ed: {x95: 6.0}, x95: {x9c: 6.0}, x9c: {dot: 6.0}, dot: {v.eos: 6.0}},
                             default={caf: 6.0}))  # fmt: skip
    nudger = write_model(tmp / "n.gguf", v, Table(rows={}, default={dot: 3.0}), chat_template=CHATML)
    return base, nudger


@pytest.mark.parametrize("api", ["llama-server", "openai"])
def test_a_character_written_over_two_tokens_comes_out_whole(api, accented, logs):
    """llama-server reports no probabilities for a token that leaves a character incomplete, and
    llama-cpp-python's server gives it the text "": the answer must still be the local one. (The
    base is sure throughout, so the nudger never writes: over the OpenAI API the base goes on from
    its own tokens, as it does locally in token space; local text space would re-tokenize " caf한".)"""
    base, nudger = (load(p, role, 512) for p, role in zip(accented, ("base", "nudger"), strict=True))
    e = (llama_server if api == "llama-server" else llama_cpp_python_server)(accented[0], logs)
    try:
        prompts = render_prompts(base, nudger, QUESTION)
        want = list(generate(prompts, base=base, nudger=nudger, max_tokens=12, speculative=False))
        with remote(e.url, "base") as rbase:
            got = list(generate(prompts, base=rbase, nudger=nudger, max_tokens=12, speculative=False))
    finally:
        e.stop()
        base.close()
        nudger.close()
    assert "caf한." in want[-1].text  # the base wrote " caf한.", shown without its leading space
    assert got[-1].text == want[-1].text and got[-1].stop_reason == want[-1].stop_reason
    if api == "llama-server":
        assert ids(got) == ids(want)


# -- OpenAI /v1/completions ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["base", "nudged", "paper"])
def test_openai_completions_base_writes_what_local_text_space_writes(mode, openai_server, local):
    """llama-cpp-python's server: text in, token texts and log-probabilities out."""
    base, nudger = local
    prompts = render_prompts(base, nudger, QUESTION)
    # paper mode's budget counts the base's tokens of the text, which a text-only server cannot
    # count: there it counts the tokens written, so compare rounds without a budget
    kw = dict(max_tokens=0, max_rounds=8) if mode == "paper" else dict(max_tokens=60)
    want = list(generate(prompts, mode=mode, base=base, nudger=nudger, text_space=True, **kw))
    with remote(openai_server.url, "base") as rbase:
        assert isinstance(rbase, TextRemoteModel)
        got = list(generate(prompts, mode=mode, base=rbase, nudger=nudger, **kw))
        requests = rbase.forward_calls
    assert got[-1].text == want[-1].text and got[-1].text
    assert [(e.source, e.text) for e in got[:-1]][:40] == [(e.source, e.text) for e in want[:-1]][:40]
    if mode != "paper":  # as the server counts them: the prompt alone, not a probe
        assert got[-1].stats.prompt_tokens["base"] == want[-1].stats.prompt_tokens["base"]
    if mode != "paper":
        assert requests <= got[-1].stats.tokens / 3


def test_openai_completions_on_llama_server_read_its_logprobs_shape(base_server, local):
    """llama-server's /v1/completions lists log-probabilities in the chat shape (`content`)."""
    base, nudger = local
    prompts = render_prompts(base, nudger, QUESTION)
    want = list(generate(prompts, base=base, nudger=nudger, max_tokens=60, text_space=True))
    with remote(base_server.url, "base", api="openai") as rbase:
        assert isinstance(rbase, TextRemoteModel)
        got = list(generate(prompts, base=rbase, nudger=nudger, max_tokens=60))
    assert got[-1].text == want[-1].text


def test_paper_mode_sends_the_authors_requests(openai_server, local):
    """As run_api.py: the prompt text, max_tokens 16, logprobs 1, temperature 0, one request per call."""
    base, nudger = local
    with remote(openai_server.url, "base") as rbase:
        seen = []
        send = rbase.http._send
        rbase.http._send = lambda method, path, body: (seen.append((path, body)), send(method, path, body))[1]
        prompts = render_prompts(base, nudger, QUESTION)
        list(generate(prompts, mode="paper", base=rbase, nudger=nudger, max_tokens=60))
    calls = [b for p, b in seen if p == "/v1/completions"]
    assert calls and all(b["max_tokens"] == 16 and b["logprobs"] == 1 and b["temperature"] == 0.0 for b in calls)
    assert all(b["prompt"].startswith(prompts.base) for b in calls)


# -- faults -------------------------------------------------------------------------------------


def cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "nudge_local.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})  # fmt: skip


def one_sentence(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.startswith("nudge-local: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_run_with_a_served_base_prints_the_answer_and_its_figures(base_server, pair):
    r = cli("run", QUESTION, "--base", base_server.url, "--nudge", str(pair[1]), "--threads", "1",
            "--max-tokens", "40", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] and out["stats"]["base_forward_calls"] >= 1
    assert out["stats"]["served_prompt_read"]["base"] >= 1  # (the server may hold the prompt from before)
    assert "nudger" not in out["stats"]["served_prompt_read"]  # the local one reads its own
    assert "cannot score a draft" in r.stderr  # speculative was asked (the default) and fell back


def test_a_wrong_model_name_names_the_flag_and_the_served_models(openai_server, pair):
    r = cli("run", QUESTION, "--base", str(pair[0]), "--nudge", openai_server.url, "--nudge-model", "other")
    assert r.returncode == 2
    assert f"serves {pair[0]}, not other; give --nudge-model one of them." in one_sentence(r.stderr)


def test_an_unreachable_server_is_one_sentence_and_exit_2(pair):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    r = cli("run", QUESTION, "--base", f"http://127.0.0.1:{port}", "--nudge", str(pair[1]))
    assert r.returncode == 2
    assert "cannot be reached" in one_sentence(r.stderr) and str(port) in r.stderr


def test_a_server_without_logprobs_names_the_option_that_enables_them(pair, logs):
    e = llama_cpp_python_server(pair[0], logs, logits_all=False)
    try:
        r = cli("run", QUESTION, "--base", e.url, "--nudge", str(pair[1]), "--threads", "1")
    finally:
        e.stop()
    assert r.returncode == 2
    assert "--logits_all true" in one_sentence(r.stderr)


def test_a_server_slower_than_the_timeout_is_one_sentence(pair):
    """A server that accepts the connection and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        t0 = time.monotonic()
        r = cli("run", QUESTION, "--base", f"http://127.0.0.1:{port}", "--nudge", str(pair[1]), "--timeout", "0.5")
    assert r.returncode == 2 and time.monotonic() - t0 < 60
    assert "did not answer within 0.5 s" in one_sentence(r.stderr)


def test_an_error_status_is_the_servers_own_sentence_and_a_key_from_the_environment_passes(pair, logs):
    e = llama_server(pair[0], logs, "--api-key", "sesame")
    try:
        r = cli("run", QUESTION, "--base", e.url, "--nudge", str(pair[1]), "--threads", "1", "--max-tokens", "8")
        ok = cli("run", QUESTION, "--base", e.url, "--nudge", str(pair[1]), "--threads", "1", "--max-tokens", "8",
                 env={"NUDGE_LOCAL_BASE_API_KEY": "sesame"})  # fmt: skip
    finally:
        e.stop()
    assert r.returncode == 2
    assert "HTTP 401" in one_sentence(r.stderr) and "Invalid API Key" in r.stderr
    assert ok.returncode == 0, ok.stderr


def test_a_server_killed_mid_answer_keeps_the_shown_answer_and_ends_in_one_sentence(pair, logs):
    e = llama_server(pair[0], logs, ctx=65536)
    proc = subprocess.Popen([sys.executable, "-m", "nudge_local.cli", "run", QUESTION, "--base", e.url, "--nudge",
                             str(pair[1]), "--threads", "1", "--max-tokens", "60000", "--ctx", "65536"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        first = proc.stdout.read(64)  # the answer has started
        e.kill()
        rest, err = proc.communicate(timeout=60)
    finally:
        e.stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2
    assert len(first) == 64 and rest is not None
    sentence = one_sentence(err.decode())
    assert "closed the connection" in sentence or "cannot be reached" in sentence


class Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first `fails` requests, then a model list."""

    fails = 2
    seen = 0

    def do_GET(self):  # noqa: N802 - the handler API's name
        type(self).seen += 1
        status = 503 if type(self).seen <= type(self).fails else 200
        body = json.dumps({"data": [{"id": "m"}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_failed_request_is_tried_again_a_bounded_number_of_times():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        Flaky.seen, Flaky.fails = 0, 2
        assert Http(Endpoint(url, retries=2), "base").get("/v1/models")["data"][0]["id"] == "m"
        assert Flaky.seen == 3
        Flaky.seen, Flaky.fails = 0, 5
        with pytest.raises(RemoteError, match="HTTP 503"):
            Http(Endpoint(url, retries=2), "base").get("/v1/models")
        assert Flaky.seen == 3  # two retries, then the answer stands
        Flaky.seen, Flaky.fails = 0, 99  # llama-server while it loads its model
        with pytest.raises(RemoteError, match="is not ready .*HTTP 503.*try again when its /health answers 200"):
            connect(Endpoint(url, retries=0), "nudger")
    finally:
        server.shutdown()


# -- nudge-local serve with a served base -------------------------------------------------------


def test_serve_with_a_served_base_answers_and_a_dead_base_server_is_a_502_and_an_error_event(pair, logs, local):
    e = llama_server(pair[0], logs, ctx=65536)
    served = Served(e.url, pair[1], "--ctx", "65536")
    try:
        base, nudger = local
        prompts = render_prompts(base, nudger, QUESTION)
        want = list(generate(prompts, base=base, nudger=nudger, max_tokens=30, speculative=False))[-1].text
        msg = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 30}
        with served.client(timeout=60) as http:
            r = http.post("/v1/chat/completions", json=msg)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == want
            long = {**msg, "max_tokens": 60000, "stream": True}
            with http.stream("POST", "/v1/chat/completions", json=long) as r:
                lines = r.iter_lines()
                next(events(lines))  # it runs
                e.kill()
                rest, done = read_stream(lines)
            assert done and "error" in rest[-1], rest[-1:]
            err = rest[-1]["error"]
            assert (
                err["code"] == "model_server_error"
                and "closed the connection" in err["message"]
                or ("cannot be reached" in err["message"])
            )
            assert all("choices" in x for x in rest[:-1])  # the tokens written before it stay sent
            r = http.post("/v1/chat/completions", json=msg)
            assert r.status_code == 502 and "Traceback" not in r.text
            err = r.json()["error"]
            assert err["code"] == "model_server_error" and "cannot be reached" in err["message"]
    finally:
        served.stop()
        e.stop()
    assert "Traceback" not in served.stderr, served.stderr


# -- the chat with a served base ----------------------------------------------------------------


def test_the_chat_keeps_the_partial_answer_when_the_base_server_dies(tmp_path, logs, monkeypatch):
    """A base that never ends, on llama-server; killed mid-answer, the chat shows one sentence and
    keeps (and stores) every token already shown. Each row waits 2 ms (thousands of tokens a second
    would outrun the test's polling)."""
    rows = RemoteModel.logits

    def slowed(self, tokens):
        time.sleep(0.002)
        return rows(self, tokens)

    monkeypatch.setattr(RemoteModel, "logits", slowed)
    import asyncio

    from nudge_local.bench.synthetic import CHATML, Table, write_model
    from nudge_local.config import load_settings
    from nudge_local.tui.app import NudgeApp
    from nudge_local.tui.history import History
    from pairs import vocab

    v = vocab("bpe0")
    the, ok = v.find(b" the"), v.find(b" ok")
    endless = write_model(
        tmp_path / "endless.gguf", v, Table(rows={the: {ok: 6.0}, ok: {the: 6.0}}, default={the: 6.0})
    )
    nudger = write_model(tmp_path / "n.gguf", v, Table(rows={}, default={ok: 3.0}), chat_template=CHATML)
    e = llama_server(endless, logs, ctx=65536)
    settings = load_settings({"base": e.url, "nudge": str(nudger), "threads": 1, "max_tokens": 60000,
                              "context_size": 65536})  # fmt: skip
    app = NudgeApp(settings, history=History(tmp_path / "history.sqlite3"), export_dir=tmp_path)

    async def until(pilot, cond, timeout=30.0):
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, (
                f"timed out: {[(v.stop_reason, len(v.tokens)) for v in app.query('AnswerView')]}, "
                f"{app.query_one('#error').render()}"
            )
            await pilot.pause(0.02)

    async def go():
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await pilot.press(*"Go", "enter")
            await until(pilot, lambda: app.current is not None and len(app.current.tokens) > 20)
            view = app.current
            e.kill()
            await until(pilot, lambda: view.done)
            text = str(app.query_one("#error").render())
            assert "closed the connection" in text or "cannot be reached" in text
            assert "Traceback" not in text and text.count("\n") == 0
            assert view.stop_reason == "error" and len(view.tokens) > 20
            stored = app.history.messages(app.conversation)[-1]
            assert len(stored.tokens) == len(view.tokens)  # nothing shown is lost

    try:
        asyncio.run(go())
    finally:
        e.stop()


def test_bench_takes_a_served_base(base_server, pair):
    r = cli("bench", "--base", base_server.url, "--nudge", str(pair[1]), "--modes", "base,nudged", "--rounds", "1",
            "--questions", "1", "--max-tokens", "16", "--threads", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"== {base_server.url} + {pair[1]}" in r.stdout
    assert re.search(r"^nudged +16 ", r.stdout, re.M), r.stdout
