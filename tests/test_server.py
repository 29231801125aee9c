"""`nudge-local serve` as clients meet it (docs/server.md): the real server in a subprocess on a free
loopback port, a generated pair (F16, zero weights: greedy answers are exact whatever the caches
hold), the `openai` package and raw HTTP. What it answers (provenance, parity with `run --json`,
logprobs, conversations), under load, when clients leave, every refusal, the API key, the full
queue, SIGTERM and SIGINT, a port in use."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import threading
import time

import httpx2 as httpx
import pytest

from conftest import load
from nudge_local.bench.generated import make_pair
from nudge_local.engine.prompts import Turn, render_prompts
from serving import THREADS, Served, command, read_stream

SHAPES = ((64, 2, 128), (32, 1, 64))  # tiny: thousands of tokens per second on one core
ROOMY = ("--ctx", "65536")  # room for answers that last seconds (cancel, queue and shutdown tests)
LONG = 60000  # max_tokens of an answer that would last seconds
QUESTION = "Why is the sky blue?"
SYSTEM = "You are a terse physics teacher."
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="session")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("server-pair"), None, 0.7, shapes=SHAPES)


@pytest.fixture(scope="module")
def server(pair):
    """The read-only tests' server: default settings (greedy), default queue and context."""
    s = Served(*pair)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server):
    with server.client() as c:
        yield c


@pytest.fixture
def start(pair):
    """Start a server with flags (and environment); every one started is stopped at teardown."""
    started: list[Served] = []

    def go(*flags: str, env: dict | None = None) -> Served:
        started.append(Served(*pair, *flags, env=env))
        return started[-1]

    yield go
    for s in started:
        s.stop()


def chat(question: str = QUESTION, **kw) -> dict:
    return {"messages": [{"role": "user", "content": question}], **kw}


def ok(http: httpx.Client, path: str, body: dict) -> dict:
    r = http.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def streamed(http: httpx.Client, path: str, body: dict) -> tuple[list[dict], bool]:
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return read_stream(r)


def text_of(chunks: list[dict]) -> str:
    """A stream's text: chat deltas' contents or completions' texts, joined."""
    out = ""
    for c in chunks:
        for ch in c["choices"]:
            out += (ch["delta"].get("content") or "") if "delta" in ch else ch["text"]
    return out


def last_choice(chunks: list[dict]) -> dict:
    """The stream's choice with finish_reason (exactly one, carrying `nudge`)."""
    finished = [ch for c in chunks for ch in c["choices"] if ch["finish_reason"] is not None]
    assert len(finished) == 1, finished
    return finished[0]


def assert_error(r: httpx.Response, status: int, *, param=..., code=...) -> dict:
    """An OpenAI error object with this status, and no traceback anywhere in the body."""
    assert r.status_code == status, (r.status_code, r.text)
    assert "Traceback" not in r.text and 'File "' not in r.text
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == ERROR_KEYS, err
    assert isinstance(err["message"], str) and err["message"].strip()
    assert isinstance(err["type"], str) and err["type"]
    if param is not ...:
        assert err["param"] == param, err
    if code is not ...:
        assert err["code"] == code, err
    return err


def health(http: httpx.Client) -> dict:
    r = http.get("/health")
    assert r.status_code == 200, r.text
    return r.json()


def idle(http: httpx.Client, timeout: float = 5.0) -> float:
    """Seconds until /health shows the engine idle and nothing waiting (the engine thread clears
    `busy` just after it hands over an answer's last event)."""
    return wait_until(lambda: {k: health(http)[k] for k in ("busy", "queue")} == {"busy": False, "queue": 0}, timeout)


def wait_until(predicate, timeout: float, step: float = 0.005) -> float:
    """Seconds until `predicate()` held; fails after `timeout`."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"not within {timeout} s"
        time.sleep(step)
    return time.monotonic() - t0


def joined(spans: list[dict]) -> str:
    return "".join(s["text"] for s in spans)


# --- 1. the openai package against the real server ---


def test_models_list_the_pair_and_retrieve_only_its_name(http, server, pair):
    models = server.openai().models.list()
    assert [m.id for m in models.data] == [server.model_id] == [f"{pair[0].name}+{pair[1].name}"]
    assert models.data[0].model_extra["nudge"] == {"base": str(pair[0]), "nudger": str(pair[1])}
    assert models.data[0].model_extra["aliases"] == []  # files, not a catalog pair: the label is the id
    assert server.openai().models.retrieve(server.model_id).id == server.model_id
    assert_error(http.get("/v1/models/other.gguf"), 404, code="model_not_found")  # asks what exists


def test_any_model_name_reaches_the_pair_and_the_response_names_it(server):
    """Clients send a fixed name (gpt-4o, their own default): one pair is served, so it answers, and
    `model` says what did, as llama-server does."""
    client = server.openai()
    for name in ("gpt-4o", "", server.model_id):
        answer = client.chat.completions.create(model=name, messages=turns(QUESTION), max_tokens=3)
        assert answer.model == server.model_id and answer.choices[0].model_extra["nudge"]["stats"]["tokens"] == 3
        completion = client.completions.create(model=name, prompt=QUESTION, max_tokens=3)
        assert completion.model == server.model_id and completion.choices[0].text
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=turns(QUESTION), max_tokens=3, stream=True))
    assert len(chunks) >= 3 and {c.model for c in chunks} == {server.model_id}
    chunks = list(client.completions.create(model="my-local-model", prompt=QUESTION, max_tokens=3, stream=True))
    assert {c.model for c in chunks} == {server.model_id}


@pytest.fixture(scope="module")
def tiny_alias(pair):
    """The server's routes in process on a pair served under a catalog alias (`tiny`, as `serve tiny`
    names it), for the `openai` package through Starlette's test client."""
    from starlette.testclient import TestClient

    from nudge_local.config import Settings
    from nudge_local.server.app import Api
    from nudge_local.server.worker import Pair

    models = {"base": load(pair[0], "base"), "nudger": load(pair[1], "nudger")}
    api = Api(Pair(models, Settings(), None, "tiny"), api_key=None, queue_size=2)
    try:
        with TestClient(api.app()) as http:  # runs the lifespan: the engine thread starts and stops
            yield http
    finally:
        api.pair.close()


def test_a_catalog_pair_is_listed_by_its_alias_and_answers_to_its_files_label(tiny_alias, pair):
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=tiny_alias, max_retries=0)
    label = f"{pair[0].name}+{pair[1].name}"
    (card,) = client.models.list().data
    assert card.id == "tiny" and card.model_extra["aliases"] == [label]
    assert client.models.retrieve("tiny").id == client.models.retrieve(label).id == "tiny"
    with pytest.raises(NotFoundError):
        client.models.retrieve("gpt-4o")
    for name in ("tiny", label, "gpt-4o"):
        r = client.chat.completions.create(model=name, messages=turns(QUESTION), max_tokens=2)
        assert r.model == "tiny" and r.choices[0].model_extra["nudge"]["stats"]["tokens"] == 2
    assert tiny_alias.get("/health").json()["model"] == "tiny"


def test_openai_chat_whole_and_streamed_carry_plain_text_and_provenance(server):
    client = server.openai()
    kw = dict(model=server.model_id, messages=[{"role": "user", "content": QUESTION}], max_tokens=40)
    whole = client.chat.completions.create(**kw)
    choice = whole.choices[0]
    nudge = choice.model_extra["nudge"]
    text = choice.message.content
    assert text and choice.message.role == "assistant" and choice.finish_reason == "length"
    assert joined(nudge["spans"]) == text  # plain text: the spans are the text, no markers in it
    assert {s["source"] for s in nudge["spans"]} == {"base", "nudge"}  # this pair nudges
    assert nudge["stats"]["tokens"] == whole.usage.completion_tokens == 40
    assert nudge["stats"]["prompt_tokens"]["base"] == whole.usage.prompt_tokens
    assert {"nudge_tokens", "evaluated_tokens", "forward_calls"} <= set(nudge["stats"])
    assert (nudge["stop_reason"], nudge["mode"], nudge["gamma"]) == ("length", "nudged", 0.4)

    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    finished = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].finish_reason == "length"
    assert finished[0].model_extra["nudge"]["spans"] == nudge["spans"]
    assert finished[0].model_extra["nudge"]["stats"]["tokens"] == 40
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 40
    assert all(c.id == chunks[0].id for c in chunks)


def test_openai_completions_whole_and_streamed(server):
    client = server.openai()
    kw = dict(model=server.model_id, prompt=QUESTION, max_tokens=30)
    whole = client.completions.create(**kw)
    choice = whole.choices[0]
    nudge = choice.model_extra["nudge"]
    assert choice.text and joined(nudge["spans"]) == choice.text and choice.finish_reason == "length"
    assert nudge["stats"]["tokens"] == 30 and whole.object == "text_completion"
    chunks = list(client.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    finished = [c.choices[0] for c in chunks if c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].model_extra["nudge"]["spans"] == nudge["spans"]


@pytest.mark.parametrize("path, body", [("/v1/chat/completions", chat()), ("/v1/completions", {"prompt": QUESTION})])
def test_raw_streams_end_with_done_and_equal_the_whole_answer(http, path, body):
    body = {**body, "max_tokens": 25}
    whole = ok(http, path, body)
    chunks, done = streamed(http, path, body)
    assert done  # the last event is `data: [DONE]`
    text = whole["choices"][0]["message"]["content"] if "chat" in path else whole["choices"][0]["text"]
    assert text_of(chunks) == text
    last = last_choice(chunks)
    assert last is chunks[-1]["choices"][0]  # nothing after the finishing chunk but [DONE] (no usage asked)
    assert last["nudge"]["spans"] == whole["choices"][0]["nudge"]["spans"]
    assert all("nudge" not in ch for c in chunks[:-1] for ch in c["choices"])
    with http.stream("POST", path, json={**body, "stream": True}) as r:  # the wire form itself
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n") and raw.startswith("data: {")


# --- 2. parity with `nudge-local run --json` ---

PARITY = {  # case: (run's flags, the request's extra fields)
    "nudged": ((), {}),
    "system": (("--system", SYSTEM), {"system": SYSTEM}),
    "base": (("--mode", "base"), {"mode": "base"}),
    "nudger": (("--mode", "nudger"), {"mode": "nudger"}),
    "token-mode": (("--no-speculative",), {"speculative": False}),
    "paper": (("--mode", "paper"), {"mode": "paper"}),
    "stop": (("--stop", "cost so", "--stop", "never"), {"stop": ["cost so", "never"]}),
}
PARITY_TOKENS = 48


@pytest.fixture(scope="module")
def run_answers(pair):
    """`run --json` for every case (one after another: side by side, llama.cpp's threads contend)."""
    base, nudger = pair
    out = {}
    for case, (flags, _) in PARITY.items():
        argv = command("run", QUESTION, "--base", str(base), "--nudge", str(nudger), "--json",
                       "--max-tokens", str(PARITY_TOKENS), *THREADS, *flags)  # fmt: skip
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        out[case] = json.loads(p.stdout)
    return out


def same_answer(nudge_text: str, nudge: dict, finish: str, run: dict) -> None:
    assert nudge_text == run["text"]
    assert nudge["spans"] == run["spans"]
    assert nudge["stop_reason"] == run["stop_reason"] and finish == ("length" if run["stop_reason"] in
                                                                       ("length", "round") else "stop")  # fmt: skip
    for key in ("tokens", "nudge_tokens", "prompt_tokens"):  # prompt_tokens: the same prompt was rendered
        assert nudge["stats"][key] == run["stats"][key], key
    for key in ("rounds", "nudging_words"):
        assert nudge.get(key) == run.get(key), key


@pytest.mark.parametrize("case", list(PARITY))
def test_chat_and_completions_answer_as_run_json(http, run_answers, case):
    run = run_answers[case]
    extra = dict(PARITY[case][1])
    system = extra.pop("system", None)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": QUESTION}]
    r = ok(http, "/v1/chat/completions", {"messages": messages, "max_tokens": PARITY_TOKENS, **extra})
    c = r["choices"][0]
    same_answer(c["message"]["content"], c["nudge"], c["finish_reason"], run)
    assert c["nudge"]["mode"] == run["mode"]
    if case == "token-mode":
        assert c["nudge"]["stats"]["draft_proposed"] == 0  # speculative: false ran token mode
    chunks, done = streamed(http, "/v1/chat/completions", {"messages": messages, "max_tokens": PARITY_TOKENS, **extra})
    last = last_choice(chunks)
    assert done
    same_answer(text_of(chunks), last["nudge"], last["finish_reason"], run)
    if system is None:  # a completions prompt takes the server's --system (none here)
        r = ok(http, "/v1/completions", {"prompt": QUESTION, "max_tokens": PARITY_TOKENS, **extra})
        c = r["choices"][0]
        same_answer(c["text"], c["nudge"], c["finish_reason"], run)


def test_the_parity_cases_differ(run_answers):
    """The cases test different things: each mode writes its own answer, the system prompt is read."""
    sources = {case: {s["source"] for s in run_answers[case]["spans"]} for case in PARITY}
    assert sources["base"] == {"base"} and sources["nudger"] == {"nudge"} and sources["nudged"] == {"base", "nudge"}
    assert run_answers["stop"]["stop_reason"] == "stop_string" and run_answers["nudged"]["stop_reason"] == "length"
    assert run_answers["paper"]["rounds"] >= 1
    assert run_answers["system"]["stats"]["prompt_tokens"] != run_answers["nudged"]["stats"]["prompt_tokens"]


# --- 3. logprobs, with who wrote each token ---


def check_entries(content: list[dict], spans: list[dict]) -> None:
    """OpenAI's fields, 3 alternatives sorted descending (the first the token itself: greedy), bytes
    that decode to the token, and `source` that makes the spans. A token is the text the answer shows:
    its piece, but for the whitespace cut from the answer's ends (the first token, the trailing ones)."""
    for i, e in enumerate(content):
        assert {"token", "logprob", "bytes", "top_logprobs", "source", "base_p"} <= set(e)
        assert bytes(e["bytes"]).decode("utf-8") == e["token"]
        assert e["logprob"] <= 0 and math.isfinite(e["logprob"])
        top = e["top_logprobs"]
        assert len(top) == 3
        assert [a["logprob"] for a in top] == sorted((a["logprob"] for a in top), reverse=True)
        assert len({a["token"] for a in top}) == 3
        for a in top:
            assert set(a) == {"token", "logprob", "bytes"} and bytes(a["bytes"]).decode("utf-8") == a["token"]
        assert top[0]["logprob"] == e["logprob"]
        shown_at_an_end = i == 0 or not "".join(x["token"] for x in content[i:]).strip()
        assert top[0]["token"] == e["token"] or (shown_at_an_end and top[0]["token"].strip() == e["token"].strip())
    merged: list[dict] = []
    for e in content:
        if merged and merged[-1]["source"] == e["source"]:
            merged[-1]["text"] += e["token"]
        else:
            merged.append({"text": e["token"], "source": e["source"]})
    assert merged == spans


def test_chat_logprobs_give_every_token_its_writer_and_base_p(http):
    r = ok(http, "/v1/chat/completions", chat(max_tokens=40, logprobs=True, top_logprobs=3))
    c = r["choices"][0]
    content = c["logprobs"]["content"]
    assert len(content) == 40 == c["nudge"]["stats"]["tokens"]
    assert "".join(e["token"] for e in content) == c["message"]["content"]
    assert content[0]["top_logprobs"][0]["token"] == " " + content[0]["token"]  # the piece; the answer shows no space
    check_entries(content, c["nudge"]["spans"])
    gamma = c["nudge"]["gamma"]
    for e in content:  # the gate: the nudger wrote where the base was unsure
        assert 0 < e["base_p"] <= 1
        assert (e["base_p"] < gamma) == (e["source"] == "nudge"), e
    assert {e["source"] for e in content} == {"base", "nudge"}


@pytest.mark.parametrize("mode", ["base", "nudger"])
def test_logprobs_in_single_model_modes(http, mode):
    r = ok(http, "/v1/chat/completions", chat(max_tokens=20, logprobs=True, top_logprobs=3, mode=mode))
    c = r["choices"][0]
    content = c["logprobs"]["content"]
    assert len(content) == 20
    check_entries(content, c["nudge"]["spans"])
    if mode == "nudger":
        assert all(e["base_p"] is None and e["source"] == "nudge" for e in content)
    else:  # the base wrote each token, its top-1: base_p is that token's probability
        assert all(e["source"] == "base" and math.isclose(math.log(e["base_p"]), e["logprob"]) for e in content)


def test_streamed_logprobs_equal_the_whole_ones(http):
    body = chat(max_tokens=24, logprobs=True, top_logprobs=3)
    whole = ok(http, "/v1/chat/completions", body)["choices"][0]["logprobs"]["content"]
    chunks, done = streamed(http, "/v1/chat/completions", body)
    parts = [ch["logprobs"]["content"] for c in chunks for ch in c["choices"] if ch["logprobs"]]
    assert done and all(len(p) == 1 for p in parts)  # one entry per token chunk
    assert [p[0] for p in parts] == whole


def test_completions_legacy_logprobs(http):
    r = ok(http, "/v1/completions", {"prompt": QUESTION, "max_tokens": 20, "logprobs": 3})
    c = r["choices"][0]
    lp = c["logprobs"]
    assert "".join(lp["tokens"]) == c["text"] and len(lp["tokens"]) == 20
    assert lp["token_logprobs"] == [e["logprob"] for e in lp["content"]]
    assert lp["tokens"] == [e["token"] for e in lp["content"]]
    assert [len(t) for t in lp["top_logprobs"]] == [3] * 20
    assert [max(t.values()) for t in lp["top_logprobs"]] == lp["token_logprobs"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(20)]
    check_entries(lp["content"], c["nudge"]["spans"])


def test_aliases_of_fields(http):
    """max_completion_tokens (the newer name), a prompt as a list of one text, a single stop text."""
    assert ok(http, "/v1/chat/completions", chat(max_completion_tokens=5))["usage"]["completion_tokens"] == 5
    one = ok(http, "/v1/completions", {"prompt": QUESTION, "max_tokens": 9})["choices"][0]
    listed = ok(http, "/v1/completions", {"prompt": [QUESTION], "max_tokens": 9})["choices"][0]
    assert listed["nudge"]["spans"] == one["nudge"]["spans"] and listed["text"] == one["text"]
    stopped = ok(http, "/v1/completions", {"prompt": QUESTION, "max_tokens": 40, "stop": "Step"})["choices"][0]
    assert stopped["finish_reason"] == "stop" and "Step" not in stopped["text"] and stopped["text"]


def test_no_logprobs_unless_asked(http):
    assert ok(http, "/v1/chat/completions", chat(max_tokens=4))["choices"][0]["logprobs"] is None
    assert ok(http, "/v1/completions", {"prompt": QUESTION, "max_tokens": 4})["choices"][0]["logprobs"] is None
    r = ok(http, "/v1/chat/completions", chat(max_tokens=4, logprobs=True))["choices"][0]["logprobs"]["content"]
    assert len(r) == 4 and all(e["top_logprobs"] == [] for e in r)


# --- 4. conversations ---


def turns(*texts: str, system: str | None = None) -> list[dict]:
    """OpenAI messages: user and assistant alternating from `texts`."""
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(texts)]


def test_a_second_turn_reuses_the_cached_prefix_and_renders_the_history(http, pair):
    q1, q2 = "Why is the sky blue?", "And why is the sunset red?"
    first = ok(http, "/v1/chat/completions", {"messages": turns(q1, system=SYSTEM), "max_tokens": 24})
    a1 = first["choices"][0]["message"]["content"]
    body = {"messages": turns(q1, a1, q2, system=SYSTEM), "max_tokens": 8}
    second = ok(http, "/v1/chat/completions", body)["choices"][0]["nudge"]
    stats = second["stats"]
    assert stats["evaluated_tokens"]["base"] < stats["prompt_tokens"]["base"]  # the prefix came from the cache
    assert stats["evaluated_tokens"]["nudger"] < stats["prompt_tokens"]["nudger"]
    base, nudger = load(pair[0], "base"), load(pair[1], "nudger")
    try:  # the prompts the server evaluated are the chat's rendering of this history
        prompts = render_prompts(base, nudger, q2, history=[Turn(q1, a1)], system=SYSTEM)
        assert stats["prompt_tokens"] == {"base": len(base.tokenize(prompts.base)),
                                          "nudger": len(nudger.tokenize(prompts.nudge))}  # fmt: skip
    finally:
        base.close()
        nudger.close()
    ok(http, "/v1/completions", {"prompt": "Something else entirely, to fill the caches.", "max_tokens": 30})
    again = ok(http, "/v1/chat/completions", body)["choices"][0]["nudge"]  # from colder caches: the same answer
    assert again["spans"] == second["spans"]
    assert again["stats"]["evaluated_tokens"]["base"] > stats["evaluated_tokens"]["base"]


def test_consecutive_messages_of_one_role_are_one_turn(http):
    split = {"messages": [{"role": "user", "content": "Why is"}, {"role": "user", "content": "the sky blue?"}]}
    one = {"messages": [{"role": "user", "content": "Why is\n\nthe sky blue?"}]}
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Why is"},
                                                       {"type": "text", "text": "the sky blue?"}]}]}  # fmt: skip
    answers = [ok(http, "/v1/chat/completions", {**b, "max_tokens": 12})["choices"][0]["nudge"] for b in (split, one)]
    assert answers[0]["spans"] == answers[1]["spans"]
    assert answers[0]["stats"]["prompt_tokens"] == answers[1]["stats"]["prompt_tokens"]
    joined_parts = ok(http, "/v1/chat/completions", {**parts, "max_tokens": 12})["choices"][0]["nudge"]
    assert joined_parts["stats"]["prompt_tokens"] == ok(http, "/v1/chat/completions", chat(
        "Why is\nthe sky blue?", max_tokens=12))["choices"][0]["nudge"]["stats"]["prompt_tokens"]  # fmt: skip


@pytest.mark.parametrize(
    "messages, param",
    [
        (turns("Hi", "Hello."), "messages"),  # ends with the assistant
        (turns("Hi", "Hello.", "Why?")[1:], "messages[0]"),  # begins with the assistant
        (turns("Hi") + [{"role": "system", "content": "late"}], "messages[1]"),  # a system message mid-conversation
        (turns("Hi") + [{"role": "tool", "content": "42", "tool_call_id": "x"}], "messages[1]"),
        ([{"role": "function", "content": "x", "name": "f"}], "messages[0]"),
        ([{"content": "no role"}], "messages[0]"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content"),
        ([{"role": "user", "content": 3}], "messages[0].content"),
        ([], "messages"),
        ([{"role": "system", "content": "only a system message"}], "messages"),
    ],
)
def test_conversations_the_pair_cannot_answer_are_400(http, messages, param):
    assert_error(http.post("/v1/chat/completions", json={"messages": messages}), 400, param=param)


# --- 5. many clients at once ---

CLIENTS = 16


def load_body(i: int) -> dict:
    """Client i's request: its own question, length and seed (sampled), so every answer is its own."""
    return chat(f"Question {i}: what is {i} plus {i}?", max_tokens=16 + i, temperature=1.0, seed=i)


def test_concurrent_streams_each_get_their_own_whole_answer(server, http):
    results: dict[int, tuple[list[dict], bool]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(CLIENTS, timeout=10)

    def client(i: int) -> None:
        try:
            with server.client(timeout=20) as c:
                barrier.wait()
                results[i] = streamed(c, "/v1/chat/completions", load_body(i))
        except BaseException as e:  # reported below, with the others
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    waiting = 0  # the most requests seen waiting at once: the clients did overlap
    deadline = time.monotonic() + 30
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        waiting = max(waiting, health(http)["queue"])
        time.sleep(0.002)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "clients still waiting after 30 s"
    assert not errors, errors
    texts = set()
    for i in range(CLIENTS):
        chunks, done = results[i]
        assert done, i
        last = last_choice(chunks)
        assert last["finish_reason"] == "length" and last["nudge"]["stats"]["tokens"] == 16 + i
        alone = ok(http, "/v1/chat/completions", load_body(i))["choices"][0]
        assert text_of(chunks) == alone["message"]["content"], i
        assert last["nudge"]["spans"] == alone["nudge"]["spans"], i
        texts.add(alone["message"]["content"])
    assert len(texts) == CLIENTS
    assert waiting >= 2, waiting
    idle(http)


# --- 6. a client that leaves ---

SMALL = chat("A short one, please.", max_tokens=8)


def drop_stream(served: Served, body: dict, chunks: int = 5) -> float:
    """Start a long stream, read `chunks` token events, hang up; the moment it hung up."""
    with served.client() as c, c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        seen = 0
        while seen < chunks + 1:  # the role chunk, then tokens
            seen += next(lines).startswith("data:")
    return time.monotonic()  # both the response and its connection are closed here


def timed(http: httpx.Client, body: dict) -> tuple[float, dict]:
    t0 = time.monotonic()
    out = ok(http, "/v1/chat/completions", body)
    return time.monotonic() - t0, out


def test_a_dropped_stream_is_cancelled_at_once_and_the_caches_stay_right(start):
    served = start(*ROOMY)
    with served.client(timeout=10) as http:
        own, expected = min((timed(http, SMALL) for _ in range(3)), key=lambda x: x[0])  # alone, warm
        long = chat("Tell me everything.", max_tokens=LONG)
        gone = drop_stream(served, long)
        idle(http)
        assert time.monotonic() - gone < 0.2  # the long answer stopped at once
        gone = drop_stream(served, long)
        _, answer = timed(http, SMALL)
        assert time.monotonic() - gone < 0.2 + own, (time.monotonic() - gone, own)  # it waited for no long answer
        assert answer["choices"][0]["nudge"]["spans"] == expected["choices"][0]["nudge"]["spans"]
        assert answer["choices"][0]["message"] == expected["choices"][0]["message"]
        idle(http)
        # The long answer's own start, after it was cut twice, is still the answer it would have given alone.
        head = ok(http, "/v1/chat/completions", {**long, "max_tokens": 30})["choices"][0]["nudge"]["spans"]
    fresh = start()
    with fresh.client(timeout=10) as http:
        assert ok(http, "/v1/chat/completions", {**long, "max_tokens": 30})["choices"][0]["nudge"]["spans"] == head


def test_a_dropped_whole_request_is_cancelled(start):
    """A client waiting for a non-streamed answer that hangs up (here: its read times out) ends it."""
    served = start(*ROOMY)
    gone: list[float] = []

    def impatient() -> None:
        with served.client(timeout=httpx.Timeout(10, read=0.5)) as c:
            try:
                c.post("/v1/chat/completions", json=chat("Tell me everything.", max_tokens=LONG))
            except httpx.ReadTimeout:
                gone.append(time.monotonic())

    with served.client(timeout=10) as http:
        t = threading.Thread(target=impatient, daemon=True)
        t.start()
        wait_until(lambda: health(http)["busy"], timeout=2)  # it runs
        t.join(5)
        assert gone, "the long answer came whole"
        idle(http)
        assert time.monotonic() - gone[0] < 0.2
        assert ok(http, "/v1/chat/completions", SMALL)["choices"][0]["nudge"]["stats"]["tokens"] == 8


def test_a_client_that_leaves_while_waiting_costs_nothing(start):
    """A request whose client leaves while it waits in line is skipped: its prompt is never even read
    (the caches still hold the answer before it, which the next request reuses)."""
    served = start(*ROOMY)
    first = chat("Tell me everything about the sky, the sea and the stars, and then some more.", max_tokens=LONG)
    left: list[float] = []

    def leave_while_waiting() -> None:
        with served.client(timeout=httpx.Timeout(10, read=0.3)) as c:
            try:
                with c.stream("POST", "/v1/chat/completions", json={**chat("Other things?", max_tokens=LONG),
                                                                        "stream": True}):  # fmt: skip
                    pass
            except httpx.ReadTimeout:  # no headers yet: it was still in line
                left.append(time.monotonic())

    with served.client(timeout=10) as http, served.client() as c:
        with c.stream("POST", "/v1/chat/completions", json={**first, "stream": True}) as running:
            lines = running.iter_lines()
            next(lines)
            t = threading.Thread(target=leave_while_waiting, daemon=True)
            t.start()
            t.join(5)
            assert left and health(http)["queue"] == 1  # it left; its job still holds its place
        gone = time.monotonic()
        idle(http)
        assert time.monotonic() - gone < 0.2
        again = {**first, "max_tokens": 4, "speculative": False}  # token mode: no drafts evaluated
        stats = ok(http, "/v1/chat/completions", again)["choices"][0]["nudge"]["stats"]
    for role in ("base", "nudger"):  # the first prompt was still in the caches: the other one never ran
        assert stats["evaluated_tokens"][role] <= 8 < stats["prompt_tokens"][role], stats


# --- 7. every bad request: an OpenAI error object, never a traceback ---

BAD_FIELDS = [  # (endpoint, body, param)
    ("chat", chat(temperature="x"), "temperature"),
    ("chat", chat(temperature=2.5), "temperature"),
    ("chat", chat(max_tokens=-1), "max_tokens"),
    ("chat", chat(max_tokens=0), "max_tokens"),
    ("chat", chat(max_tokens=1.5), "max_tokens"),
    ("chat", chat(max_completion_tokens="many"), "max_tokens"),
    ("chat", {"messages": "Why is the sky blue?"}, "messages"),
    ("chat", {}, "messages"),
    ("chat", chat(n=2), "n"),
    ("chat", chat(top_p=0), "top_p"),
    ("chat", chat(seed="s"), "seed"),
    ("chat", chat(stream="yes"), "stream"),
    ("chat", chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("chat", chat(stop=3), "stop"),
    ("chat", chat(gamma=1.5), "gamma"),
    ("chat", chat(gamma="soon"), "gamma"),
    ("chat", chat(gate="best"), "gate"),
    ("chat", chat(gate="margin", gamma=1.5), "gamma"),
    ("chat", chat(mode="turbo"), "mode"),
    ("chat", chat(word_cap=0), "word_cap"),
    ("chat", chat(speculative="no"), "speculative"),
    ("chat", chat(logprobs="yes"), "logprobs"),
    ("chat", chat(logprobs=True, top_logprobs=21), "top_logprobs"),
    ("chat", chat(top_logprobs=2), "top_logprobs"),
    ("chat", chat(stream_options=1), "stream_options"),
    ("chat", chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    ("chat", chat(response_format={"type": "json_object"}), "response_format"),
    ("chat", chat(model=3), "model"),
    ("completions", {"prompt": ["one", "two"]}, "prompt"),
    ("completions", {"prompt": [1, 2, 3]}, "prompt"),
    ("completions", {}, "prompt"),
    ("completions", {"prompt": QUESTION, "echo": True}, "echo"),
    ("completions", {"prompt": QUESTION, "suffix": "end"}, "suffix"),
    ("completions", {"prompt": QUESTION, "logprobs": -1}, "logprobs"),
    ("completions", {"prompt": QUESTION, "n": 2}, "n"),
]


@pytest.mark.parametrize("endpoint, body, param", BAD_FIELDS, ids=[f"{e}-{p}-{i}" for i, (e, _, p) in
                                                                    enumerate(BAD_FIELDS)])  # fmt: skip
def test_a_field_of_the_wrong_type_or_range_is_400_naming_it(http, endpoint, body, param):
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    assert_error(http.post(path, json=body), 400, param=param)
    if param != "stream":
        assert_error(http.post(path, json={**body, "stream": True}), 400, param=param)  # refused before streaming


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b"[1, 2]", b'"text"', b"null"])
def test_malformed_json_is_400(http, raw):
    for path in ("/v1/chat/completions", "/v1/completions"):
        r = http.post(path, content=raw, headers={"content-type": "application/json"})
        assert_error(r, 400, code="invalid_json")


def test_unknown_routes_and_wrong_methods(http):
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.post("/v1/embeddings", json={"input": "x"}), 404)
    assert_error(http.get("/"), 404)
    r = http.get("/v1/chat/completions")
    assert_error(r, 405)
    assert r.headers.get("allow") == "POST"
    assert_error(http.delete("/v1/completions"), 405)
    assert_error(http.post("/v1/models", json={}), 405)
    assert_error(http.post("/health"), 405)


def test_the_server_stays_healthy_after_every_refusal(http):
    """Run last of this group: after all the refusals above, the same server answers as before."""
    assert {k: v for k, v in health(http).items() if k != "model"} == {"status": "ok", "loaded": True, "busy": False,
                                                                       "queue": 0}  # fmt: skip
    r = ok(http, "/v1/chat/completions", chat(max_tokens=12))["choices"][0]
    assert r["finish_reason"] == "length" and r["nudge"]["stats"]["tokens"] == 12


class _BrokenPair:
    """A pair whose engine fails: at once, or after one token."""

    def __init__(self, after: int) -> None:
        self.after = after

    def generate(self, request):
        from nudge_local.engine.events import TokenEvent

        for _ in range(self.after):
            yield TokenEvent(text="x", source="base", token=1, base_p=0.9, p=0.9)
        raise RuntimeError("secret internals /home/user/models")


@pytest.mark.parametrize("after", [0, 1])
def test_an_engine_failure_is_500_with_no_details_and_the_log_has_them(caplog, after):
    import asyncio

    from nudge_local.engine.events import TokenEvent
    from nudge_local.server.requests import ApiError
    from nudge_local.server.worker import Job, Worker

    async def items() -> list:
        worker = Worker(_BrokenPair(after), queue_size=1)
        worker.start()
        job = Job(request=None, loop=asyncio.get_running_loop())
        worker.submit(job)
        out = [await asyncio.wait_for(job.items.get(), 5) for _ in range(after + 1)]
        worker.stop()
        return out

    got = asyncio.run(items())
    assert [type(i) for i in got] == [TokenEvent] * after + [ApiError]
    err = got[-1].body()["error"]
    assert got[-1].status == 500 and err["type"] == "server_error" and "log" in err["message"]
    assert "secret" not in json.dumps(err) and "Traceback" not in json.dumps(err)
    assert "secret internals" in caplog.text  # the server's log has what happened


LONG_PROMPT = " ".join(["the total cost of the supplies is found step by step"] * 12)


def declared_too_large(port: int) -> str:
    """The status line answering a request that declares a gigabyte body and sends one byte of it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000000\r\n\r\n{")  # fmt: skip
        return s.makefile("rb").readline().decode()


def test_prompt_longer_than_the_context_and_body_over_the_limit(start, pair):
    served = start("--ctx", "64", "--max-body", "2000")
    argv = command("run", LONG_PROMPT, "--base", str(pair[0]), "--nudge", str(pair[1]), "--ctx", "64", *THREADS)
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stdout == ""
    sentence = run.stderr.strip()
    assert sentence.startswith("nudge-local: error: ") and "\n" not in sentence and "context" in sentence
    with served.client() as http:
        for path, body, param in (("/v1/chat/completions", chat(LONG_PROMPT), "messages"),
                                  ("/v1/completions", {"prompt": LONG_PROMPT}, "prompt")):  # fmt: skip
            for stream in (False, True):
                err = assert_error(http.post(path, json={**body, "stream": stream}), 400, param=param,
                                   code="context_length_exceeded")  # fmt: skip
                assert "nudge-local: error: " + err["message"] == sentence
        assert ok(http, "/v1/chat/completions", chat(max_tokens=4))  # a prompt that fits still does

        padded = chat(max_tokens=2, user="x" * 1500)
        assert 1500 < len(json.dumps(padded)) <= 2000
        assert ok(http, "/v1/chat/completions", padded)  # under the limit: read, the unused field ignored
        big = chat(max_tokens=2, user="x" * 2000)
        assert_error(http.post("/v1/chat/completions", json=big), 413, code="request_too_large")
        data = json.dumps(big).encode()
        chunked = (data[i : i + 100] for i in range(0, len(data), 100))  # sent without a Content-Length
        r = http.post("/v1/chat/completions", content=chunked, headers={"content-type": "application/json"})
        assert_error(r, 413, code="request_too_large")
        assert declared_too_large(served.port).startswith("HTTP/1.1 413 ")  # refused before the body came
        idle(http)
        assert ok(http, "/v1/completions", {"prompt": "Fine?", "max_tokens": 3})


# --- 8. the API key ---

KEY = "sk-local-0123456789"


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_api_key_guards_every_v1_route_but_not_health(start, how):
    if how == "flag":
        served = start("--api-key", KEY)
    else:
        served = start(env={**os.environ, "NUDGE_LOCAL_API_KEY": KEY})
    routes = [("GET", "/v1/models", None), ("GET", f"/v1/models/{served.model_id}", None),
              ("POST", "/v1/chat/completions", chat(max_tokens=2)),
              ("POST", "/v1/completions", {"prompt": QUESTION, "max_tokens": 2})]  # fmt: skip
    wrong = [{}, {"authorization": "Bearer"}, {"authorization": "Bearer wrong"},
             {"authorization": f"Bearer {KEY}x"}, {"authorization": f"Bearer {KEY[:-1]}"},
             {"authorization": f"Basic {KEY}"}, {"x-api-key": KEY}]  # fmt: skip
    with served.client() as http:
        for method, path, body in routes:
            for headers in wrong:
                assert_error(http.request(method, path, json=body, headers=headers), 401, code="invalid_api_key")
            r = http.request(method, path, json=body, headers={"authorization": f"Bearer {KEY}"})
            assert r.status_code == 200, r.text
        assert health(http)["status"] == "ok"  # no key needed
        idle(http)  # nothing refused ran
    client = served.openai(api_key=KEY)
    r = client.chat.completions.create(model=served.model_id, messages=turns("Hi"), max_tokens=3)
    assert r.choices[0].model_extra["nudge"]["stats"]["tokens"] == 3
    from openai import AuthenticationError

    with pytest.raises(AuthenticationError):
        served.openai(api_key="sk-wrong").models.list()


class _Headers:
    def __init__(self, authorization: str) -> None:
        self.headers = {"authorization": authorization}


def test_the_key_is_compared_in_constant_time(monkeypatch):
    """hmac.compare_digest decides, for a right and a wrong key alike (not ==, whose time leaks the prefix)."""
    from nudge_local.server import app
    from nudge_local.server.requests import ApiError

    calls = []
    real = app.hmac.compare_digest
    monkeypatch.setattr(app.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    api = app.Api(pair=None, api_key=KEY, queue_size=1)
    api._authorize(_Headers(f"Bearer {KEY}"))
    with pytest.raises(ApiError) as e:
        api._authorize(_Headers(f"Bearer {KEY[:-1]}0"))
    assert e.value.status == 401
    assert calls == [(KEY.encode(), KEY.encode()), ((KEY[:-1] + "0").encode(), KEY.encode())]
    app.Api(pair=None, api_key=None, queue_size=1)._authorize(_Headers(""))  # no key set: all may pass


def test_loopback_addresses():
    from nudge_local.server.app import is_loopback

    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.com", ""):
        assert not is_loopback(host), host


class _StubPair:
    model_id = "stub"
    models: dict = {}
    closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("host, key, warns", [("0.0.0.0", None, True), ("0.0.0.0", KEY, False),
                                              ("127.0.0.1", None, False), ("localhost", None, False)])  # fmt: skip
def test_serving_beyond_loopback_without_a_key_warns(monkeypatch, capsys, host, key, warns):
    """serve() up to uvicorn's run, which is replaced: nothing listens, on any address."""
    from nudge_local.server import app

    ran = []
    monkeypatch.setattr(app.Server, "run", lambda self, sockets=None: ran.append(self.config.host))
    pair = _StubPair()
    assert app.serve(pair, host=host, port=0, api_key=key, queue_size=1) == 0
    assert ran == [host] and pair.closed
    err = capsys.readouterr().err
    if warns:
        assert err.count("\n") == 1 and err.startswith(f"nudge-local: warning: serving on {host} without --api-key")
    else:
        assert err == ""


# --- 9. a full queue ---


def test_a_full_queue_answers_503_with_retry_after(start):
    served = start("--queue", "1", *ROOMY)
    waiter: list[httpx.Response] = []

    def wait_in_line() -> None:
        with served.client(timeout=20) as c:
            waiter.append(c.post("/v1/chat/completions", json=SMALL))

    with served.client(timeout=10) as http:
        expected = ok(http, "/v1/chat/completions", SMALL)
        with served.client() as c, c.stream("POST", "/v1/chat/completions",
                                            json={**chat(max_tokens=LONG), "stream": True}) as running:  # fmt: skip
            assert running.status_code == 200
            lines = running.iter_lines()  # kept: a line iterator dropped half-read closes the connection
            next(lines)  # it runs
            t = threading.Thread(target=wait_in_line, daemon=True)
            t.start()
            wait_until(lambda: health(http)["queue"] == 1, timeout=5)
            assert health(http)["busy"]
            for path, body in (("/v1/chat/completions", SMALL), ("/v1/completions", {"prompt": "x", "stream": True})):
                r = http.post(path, json=body, timeout=5)
                err = assert_error(r, 503, code="queue_full")
                assert err["type"] == "server_error"
                assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
            assert health(http)["queue"] == 1  # the refused did not join the line
        t.join(10)  # the long answer's client left: the one in line runs
        assert waiter and waiter[0].status_code == 200, waiter
        assert waiter[0].json()["choices"][0]["nudge"]["spans"] == expected["choices"][0]["nudge"]["spans"]
        idle(http)
        assert ok(http, "/v1/completions", {"prompt": "Room again?", "max_tokens": 3})


def test_queue_0_runs_one_request_and_lets_none_wait(start):
    """--queue 0: an idle server answers; while it answers, the next is refused at once."""
    served = start("--queue", "0", *ROOMY)
    with served.client(timeout=10) as http:
        for _ in range(3):
            assert ok(http, "/v1/chat/completions", SMALL)
            idle(http)
        with served.client() as c, c.stream("POST", "/v1/chat/completions",
                                            json={**chat(max_tokens=LONG), "stream": True}) as running:  # fmt: skip
            lines = running.iter_lines()
            next(lines)
            r = http.post("/v1/chat/completions", json=SMALL, timeout=5)
            assert_error(r, 503, code="queue_full")
            assert int(r.headers["retry-after"]) >= 1
        idle(http)
        assert ok(http, "/v1/chat/completions", SMALL)


# --- 10. SIGTERM and Ctrl+C ---


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_stream_with_an_error_event_and_exits_0(start, sig):
    served = start("--queue", "4", *ROOMY)
    waiter: list[httpx.Response] = []

    def wait_in_line() -> None:
        with served.client(timeout=20) as c:
            waiter.append(c.post("/v1/chat/completions", json=SMALL))

    long = {**chat(max_tokens=LONG), "stream": True}
    with served.client(timeout=10) as http, http.stream("POST", "/v1/chat/completions", json=long) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines)  # it runs
        t = threading.Thread(target=wait_in_line, daemon=True)
        t.start()
        wait_until(lambda: health(http)["queue"] == 1, timeout=5)
        t0 = time.monotonic()
        served.proc.send_signal(sig)
        rest, done = read_stream(lines)  # every event still to come, to the end of the stream
    assert time.monotonic() - t0 < 5
    assert done and "error" in rest[-1], rest[-1:]
    assert rest[-1]["error"]["code"] == "shutting_down" and set(rest[-1]["error"]) == ERROR_KEYS
    assert all("choices" in e for e in rest[:-1])  # tokens until then, no finishing chunk
    assert not any(ch["finish_reason"] for e in rest[:-1] for ch in e["choices"])
    assert served.proc.wait(5) == 0
    t.join(5)
    assert waiter, "the waiting request got no answer"
    assert_error(waiter[0], 503, code="shutting_down")
    assert "Traceback" not in served.stderr and "Error" not in served.stderr, served.stderr


def test_a_signal_during_a_whole_answer_is_503_and_exits_0(start):
    served = start(*ROOMY)
    answer: list[httpx.Response] = []

    def ask() -> None:
        with served.client(timeout=20) as c:
            answer.append(c.post("/v1/chat/completions", json=chat(max_tokens=LONG)))

    with served.client(timeout=10) as http:
        t = threading.Thread(target=ask, daemon=True)
        t.start()
        wait_until(lambda: health(http)["busy"], timeout=5)
        served.proc.send_signal(signal.SIGTERM)
    t.join(5)
    assert answer, "no answer within 5 s of SIGTERM"
    assert_error(answer[0], 503, code="shutting_down")
    assert served.proc.wait(5) == 0


def test_sigterm_on_an_idle_server_exits_0_quietly(start):
    served = start()
    t0 = time.monotonic()
    assert served.stop() == 0 and time.monotonic() - t0 < 5
    assert served.stderr.splitlines() == [f"nudge-local: serving {served.model_id} at {served.url}/v1 "
                                          "(OpenAI API; Ctrl+C stops)"]  # fmt: skip


# --- 11. a port in use ---


def test_a_port_in_use_is_one_sentence_and_exit_code_2(pair):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        argv = command("serve", "--base", str(pair[0]), "--nudge", str(pair[1]), "--port", str(port))
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert p.stderr.startswith(f"nudge-local: error: Cannot listen on 127.0.0.1:{port} ")
    assert "--port" in p.stderr


@pytest.mark.parametrize(
    "flag, value, allowed",
    [("--port", "70000", "from 0 to 65535"), ("--queue", "-1", "of at least 0"), ("--max-body", "0", "of at least 1")],
)
def test_serve_options_out_of_range_are_one_sentence(pair, flag, value, allowed):
    argv = command("serve", "--base", str(pair[0]), "--nudge", str(pair[1]), flag, value)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    assert p.stderr == f"nudge-local: error: option {flag} must be a whole number {allowed} (got {value}).\n"


def test_a_request_chooses_its_gate_and_gamma_auto_calibrates_once(start, tmp_path):
    """gate and gamma are request fields: the entropy gate's gamma is in nats (above 1 is fine), and
    "auto" is the pair's gamma calibrated for the gate at the server's nudge target, measured on the
    first such request, cached on disk and reused."""
    cache = tmp_path / "cache"
    s = start("--nudge-target", "0.3", env={**os.environ, "NUDGE_LOCAL_CACHE_DIR": str(cache)})
    path = "/v1/chat/completions"
    with s.client() as http:
        nudge = ok(http, path, chat(gate="entropy", gamma=1.5, max_tokens=12))["choices"][0]["nudge"]
        assert (nudge["gate"], nudge["gamma"]) == ("entropy", 1.5)
        first = ok(http, path, chat(gamma="auto", gate="margin", max_tokens=12))["choices"][0]["nudge"]
        rows = json.loads((cache / "calibration.json").read_text())
        assert [(r["gate"], r["target"], r["gamma"]) for r in rows.values()] == [("margin", 0.3, first["gamma"])]
        again = ok(http, path, chat(gate="margin", max_tokens=12))["choices"][0]["nudge"]  # no gamma: auto
        assert again["gamma"] == first["gamma"] and len(json.loads((cache / "calibration.json").read_text())) == 1
