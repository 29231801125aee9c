"""A model on a serving engine (docs/remote.md): the same interface as a local GGUF Model, answered
by HTTP requests to llama.cpp's llama-server (native API: token ids, top-N probabilities) or to any
OpenAI-compatible /v1/completions endpoint (vLLM, SGLang, llama-cpp-python's server: text only).

A server reports only the top-k probabilities of each position, so a logits row from it is a
`TopRow`: the listed tokens carry their true log-probabilities and the rest of the mass is spread
evenly over the unlisted ids. The plain softmax of such a row gives every listed token its reported
probability (so the top-1 probability nudging gates on is exact), and greedy choice is the server's
argmax. Sampling with temperature draws among the listed tokens only (`Chooser`).

Requests are few: asked for the row after a prefix, a model asks its server for a greedy chunk of
tokens after it with their top-k probabilities, and keeps the rows of the whole chunk (`Lookahead`).
While the answer follows the server's own greedy tokens (the base writing in token mode, the nudger
writing a word), the next rows are already there; a prefix that leaves the chunk asks again, and the
server's prefix cache re-reads only the new suffix.
"""

from __future__ import annotations

import codecs
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import httpx2 as httpx
import numpy as np

from nudge_local.errors import ContextFull, NudgeError

APIS = ("auto", "llama-server", "openai", "ollama")
TOP_K = 8  # probabilities asked per position (vLLM's default cap is 20)
CHUNK_MAX = 64
STREAM_MAX = 512  # tokens a stream may write ahead before it is asked again
TEXT_TAIL = 4096  # unlisted ids in a text-only model's rows


def flag(role: str) -> str:
    """The command line's name for a role's options: --base-..., --nudge-..., --judge-..."""
    return {"base": "base", "judge": "judge"}.get(role, "nudge")


def label(model) -> str:
    """The name a user knows a model by: its file's name, or the name its server gives it."""
    return model.name if model.remote else PurePosixPath(str(model.path)).name


def is_url(ref: str | None) -> bool:
    return isinstance(ref, str) and ref.startswith(("http://", "https://"))


class RemoteError(NudgeError):
    """A serving engine failed or answered something nudging cannot use; one sentence (`status`:
    the HTTP status it answered with, where it answered)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Endpoint:
    """Where a model is served and how to talk to it."""

    url: str
    model: str | None = None  # the served model's name, where the server holds several
    api: str = "auto"
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0  # seconds for one request
    retries: int = 2  # extra tries of a request that failed in transit

    @property
    def root(self) -> str:
        """The URL without a trailing slash or /v1 (the APIs' paths are added to it)."""
        u = self.url.rstrip("/")
        return u[:-3] if u.endswith("/v1") else u


# -- rows ---------------------------------------------------------------------------------------


class TopRow(np.ndarray):
    """A logits row built from a server's top-k log-probabilities: `listed` holds their ids."""

    listed: np.ndarray

    def __array_finalize__(self, obj) -> None:
        self.listed = getattr(obj, "listed", np.empty(0, dtype=np.int64))


def top_row(n: int, top: list[tuple[int, float]]) -> TopRow:
    """A row of n log-probabilities: each listed (id, logprob) exact, the remaining mass spread
    evenly over the other ids (so softmax(row) gives each listed id its reported probability)."""
    ids = np.array([i for i, _ in top], dtype=np.int64)
    lps = np.array([lp for _, lp in top], dtype=np.float64)
    rest = max(0.0, 1.0 - float(np.exp(lps).sum())) if len(top) else 1.0
    unlisted = n - len(top)
    fill = math.log(rest / unlisted) if rest > 0 and unlisted > 0 else -1e30
    row = np.full(n, fill, dtype=np.float32).view(TopRow)
    row[ids] = lps
    row.listed = ids
    return row


# -- HTTP ---------------------------------------------------------------------------------------


class Http:
    """One connection pool to one server; every failure is one RemoteError sentence. Requests are
    idempotent (greedy completions, tokenization), so a connection that fails or a 502/503/504 is
    tried again, `retries` times, after 0.25 s, 0.5 s, 1 s, ..."""

    def __init__(self, endpoint: Endpoint, role: str) -> None:
        self.endpoint, self.role = endpoint, role
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        self.client = httpx.Client(base_url=endpoint.root, headers=headers, timeout=endpoint.timeout)
        self.requests = 0
        self.seconds = 0.0

    @property
    def who(self) -> str:
        return f"The {self.role} server at {self.endpoint.root}"

    def get(self, path: str) -> dict:
        return self._send("GET", path, None)

    def post(self, path: str, body: dict) -> dict:
        return self._send("POST", path, body)

    def events(self, path: str, body: dict) -> Events:
        """A POST answered with server-sent events, read one at a time (close() ends it)."""
        r = self._send("POST", path, body, stream=True)
        return Events(self, r, path)

    def _send(self, method: str, path: str, body: dict | None, stream: bool = False):
        for attempt in range(self.endpoint.retries + 1):
            last = attempt == self.endpoint.retries
            t0 = time.perf_counter()
            try:
                r = self.client.send(self.client.build_request(method, path, json=body), stream=stream)
            except httpx.TimeoutException:
                raise RemoteError(
                    f"{self.who} did not answer within {self.endpoint.timeout:g} s; "
                    f"raise --timeout or check the server."
                ) from None
            except httpx.ConnectError:
                if last:
                    raise RemoteError(
                        f"{self.who} cannot be reached (connection refused or no route); start it or check the URL."
                    ) from None
            except httpx.TransportError:
                if last:
                    raise RemoteError(f"{self.who} closed the connection mid-answer; did it stop or crash?") from None
            else:
                self.requests += 1
                self.seconds += time.perf_counter() - t0
                if r.status_code in (502, 503, 504) and not last:
                    r.close()
                elif stream and r.status_code < 400:
                    return r
                else:
                    if stream:
                        r.read()
                        r.close()
                    return self._json(r, path)
            time.sleep(0.25 * 2**attempt)
        raise AssertionError("unreachable")

    def _json(self, r: httpx.Response, path: str) -> dict:
        if r.status_code >= 400:
            hint = ""
            if r.status_code in (401, 403):
                hint = f" Its key comes from $NUDGE_LOCAL_{flag(self.role).upper()}_API_KEY."
            raise RemoteError(f"{self.who} answered {path} with HTTP {r.status_code}: {error_message(r)}{hint}",
                              r.status_code)  # fmt: skip
        try:
            return r.json()
        except ValueError:
            raise RemoteError(
                f"{self.who} answered {path} with something that is not JSON; is it the right URL?"
            ) from None

    def close(self) -> None:
        self.client.close()


class Events:
    """An open event stream: next() is the next `data:` object, None at its end; a dropped
    connection or a silent server is one RemoteError sentence."""

    def __init__(self, http: Http, r: httpx.Response, path: str) -> None:
        self.http, self.r, self.path = http, r, path
        self.lines = r.iter_lines()

    def next(self) -> dict | None:
        try:
            for line in self.lines:
                if line.startswith("data:"):
                    data = line[5:].strip()
                    return None if data == "[DONE]" else json.loads(data)
                if line.startswith("error:"):
                    raise RemoteError(f"{self.http.who} failed mid-answer: {line[6:].strip()[:300]}")
        except httpx.TimeoutException:
            raise RemoteError(
                f"{self.http.who} did not answer within {self.http.endpoint.timeout:g} s; "
                f"raise --timeout or check the server."
            ) from None
        except httpx.TransportError:
            raise RemoteError(f"{self.http.who} closed the connection mid-answer; did it stop or crash?") from None
        except ValueError:
            raise RemoteError(f"{self.http.who} sent an event that is not JSON on {self.path}.") from None
        return None

    def close(self) -> None:
        self.r.close()


def error_message(r: httpx.Response) -> str:
    """The server's own error sentence (OpenAI error objects, FastAPI's `detail`), or its status text."""
    try:
        body = r.json()
    except ValueError:
        return r.reason_phrase or "no details"
    err = body.get("error", body.get("detail")) if isinstance(body, dict) else None
    if isinstance(err, dict):
        err = err.get("message")
    text = str(err or r.reason_phrase or "no details").strip().rstrip(".")
    return (text[:300] + "...") if len(text) > 300 else text + "."


def detect_api(http: Http) -> str:
    """llama-server has /props; Ollama /api/tags; anything else answering /v1/models is OpenAI-compatible."""
    for path, api in (("/props", "llama-server"), ("/api/tags", "ollama"), ("/v1/models", "openai")):
        try:
            body = http.get(path)
        except RemoteError as e:
            if e.status == 503:  # llama-server while it loads its model
                said = str(e).split(" with ", 1)[-1].rstrip(".")
                raise RemoteError(
                    f"{http.who} is not ready ({said}); try again when its /health answers 200.", 503
                ) from None
            if e.status is None or e.status in (401, 403) or e.status >= 500:  # unreachable, slow, refusing
                raise
            continue
        if api != "llama-server" or "default_generation_settings" in body:
            return api
    raise RemoteError(
        f"{http.who} does not answer llama-server's /props nor OpenAI's /v1/models; is it a serving engine?"
    )


def check_api(http: Http, api: str) -> None:
    """A server named as llama-server that is not one is told so (its /props is what it lacks)."""
    if api == "llama-server":
        try:
            body = http.get("/props")
        except RemoteError as e:
            if e.status is None or e.status in (401, 403) or e.status >= 500:
                raise
            body = {}
        if "default_generation_settings" not in body:
            raise RemoteError(
                f"{http.who} is not llama-server (no /props); use --{flag(http.role)}-api auto or openai."
            )


def connect(endpoint: Endpoint, role: str) -> RemoteModel | TextRemoteModel:
    """The model served at `endpoint`, checked to answer with probabilities."""
    if endpoint.api not in APIS:
        raise NudgeError(f"Unknown --{flag(role)}-api {endpoint.api!r}; choose one of {', '.join(APIS)}.")
    http = Http(endpoint, role)
    try:
        api = detect_api(http) if endpoint.api == "auto" else endpoint.api
        check_api(http, api)
        if api == "ollama":
            raise RemoteError(
                f"{http.who} is Ollama, which nudge-local does not drive yet (it could not be tested here); "
                f"serve the model with llama-server or an OpenAI-compatible engine."
            )
        model = RemoteModel(http) if api == "llama-server" else TextRemoteModel(http)
        model.check()
        return model
    except BaseException:
        http.close()
        raise


# -- lookahead ----------------------------------------------------------------------------------


class ChunkSizer:
    """How many tokens to ask ahead: twice the recent run of rows used, doubled while whole chunks
    are used, between 1 and CHUNK_MAX."""

    def __init__(self) -> None:
        self.size = 8
        self.mean_used = 4.0

    def used(self, used: int, asked: int) -> None:
        if used >= asked:
            self.size = min(CHUNK_MAX, max(self.size, asked) * 2)
            return
        self.mean_used = 0.7 * self.mean_used + 0.3 * used
        self.size = max(1, min(CHUNK_MAX, round(2 * self.mean_used) + 1))


@dataclass
class Chunk:
    """What one request returned: the rows after key[:n], key[:n] + ahead[:1], ... (key is the
    prefix sent; ahead the server's greedy tokens after it). Rows are kept as the server listed them
    (ids and log-probabilities) and made `width`-long TopRows only when asked: a stream may hold
    hundreds, and a full row of a 262k vocabulary is a megabyte."""

    key: list | bytes
    ahead: list
    rows: list[list[tuple[int, float]]]
    width: int
    used: int = 0
    written: int = 0  # text-only models: answer tokens written when it was asked
    prompt_n: int = 0  # ... and the prompt tokens its server counted
    events: Events | None = None  # a stream still open: more rows to come
    timings: dict = field(default_factory=dict)  # the server's latest figures for it

    def row(self, i: int) -> TopRow:
        self.used = max(self.used, i + 1)
        return top_row(self.width, self.rows[i])


# -- llama-server -------------------------------------------------------------------------------


class RemoteModel:
    """A model on llama.cpp's llama-server, through its native API (token ids in and out)."""

    remote = True
    text_only = False
    scores_drafts = False  # llama-server has no prompt logprobs: speculative nudging falls back

    def __init__(self, http: Http) -> None:
        self.http, self.role = http, http.role
        self.path = http.endpoint.root
        self._pieces: dict[int, bytes] = {}
        self._eog: set[int] = set()
        self._chunk: Chunk | None = None
        self._split_at: list[int] | None = None  # where a stream stopped inside a character
        self.sizer = ChunkSizer()
        self.vocab_matches: dict = {}
        self.evaluated_tokens = 0  # prompt tokens the server reports reading, plus tokens it generated
        self.prompt_read = 0  # ... of which prompt tokens
        self.forward_calls = 0  # requests that evaluated something
        self.decode_seconds = 0.0

    def check(self) -> None:
        props = self.http.get("/props")
        models = self.http.get("/v1/models").get("data") or [{}]
        meta = models[0].get("meta") or {}
        if not meta.get("n_vocab"):
            raise RemoteError(f"{self.http.who} has not loaded its model yet; try again when it is ready.")
        self.n_vocab, self.vocab_type = int(meta["n_vocab"]), meta.get("vocab_type")
        self.n_ctx = int((props.get("default_generation_settings") or {}).get("n_ctx") or meta.get("n_ctx") or 0)
        names = [str(m.get("id")) for m in models if m.get("id")]
        want = self.http.endpoint.model
        if want and names and want not in names:
            raise RemoteError(
                f"{self.http.who} serves {', '.join(names)}, not {want}; give --{flag(self.role)}-model one of them."
            )
        self._name = want or (names[0] if names else self.path)
        self._model = {"model": want} if want else {}  # a llama-server routing several models
        self._template = props.get("chat_template") or None
        bos, eos = props.get("bos_token") or "", props.get("eos_token") or ""
        special = self._tokenize(bos + eos)
        with_bos = self.http.post("/tokenize", {"content": "a", "add_special": True})["tokens"]
        plain = self.http.post("/tokenize", {"content": "a", "add_special": False})["tokens"]
        self.add_bos = len(with_bos) > len(plain) and with_bos[0] != plain[0]
        self.bos = with_bos[0] if self.add_bos else (special[0] if bos and special else -1)
        self.eos = special[-1] if eos and special else -1
        if self.eos >= 0:
            self._eog.add(self.eos)

    # -- metadata ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return PurePosixPath(self._name).name or self._name

    @property
    def chat_template(self) -> str | None:
        return self._template

    def metadata(self, key: str) -> str | None:  # noqa: ARG002 - the native API exposes no GGUF metadata
        return None

    # -- tokens -----------------------------------------------------------------------------------

    def _tokenize(self, text: str) -> list[int]:
        out = self.http.post("/tokenize", {"content": text, "add_special": False, "parse_special": True,
                                           "with_pieces": True})["tokens"]  # fmt: skip
        ids = []
        for t in out:
            p = t["piece"]
            self._pieces[t["id"]] = p.encode("utf-8") if isinstance(p, str) else bytes(p)
            ids.append(t["id"])
        return ids

    def tokenize(self, text: str | bytes) -> list[int]:
        """As Model.tokenize, by the server's /tokenize: special tokens parsed, BOS added where the
        vocabulary asks. Bytes ending inside a UTF-8 character are decoded with a replacement
        character (JSON carries text, not bytes)."""
        data = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        ids = self._tokenize(data) if data else []
        if self.add_bos and self.bos >= 0 and (not ids or ids[0] != self.bos):
            ids.insert(0, self.bos)
        return ids

    def piece(self, token: int) -> bytes:
        p = self._pieces.get(token)
        if p is None:
            text = self.http.post("/detokenize", {"tokens": [token]}).get("content", "")
            p = self._pieces[token] = text.encode("utf-8")
        return p

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    # -- rows -------------------------------------------------------------------------------------

    def logits(self, tokens: list[int]) -> TopRow:
        """The row after `tokens`: from the current chunk when it holds that prefix, else from a new
        greedy chunk the server writes after `tokens`."""
        if len(tokens) >= self.n_ctx > 0:
            raise ContextFull(
                f"The {self.role} model needs {len(tokens) + 1} tokens but its server's context holds "
                f"{self.n_ctx}; shorten the prompt or start the server with a larger -c."
            )
        c = self._chunk
        if c is not None:
            n = len(c.key)
            i = len(tokens) - n
            if 0 <= i <= len(c.rows) and tokens[:n] == c.key and tokens[n:] == c.ahead[:i]:
                if i == len(c.rows) and c.events is not None:
                    self._pull(c)  # the server is writing it, or has
                if i < len(c.rows):
                    return c.row(i)
            self._end(c)
        if tokens == self._split_at:  # inside a character: a whole response says which tokens wrote it
            size = max(1, min(self.sizer.size, self.n_ctx - len(tokens))) if self.n_ctx else self.sizer.size
            self._chunk = self._generate(list(tokens), size)
        else:
            self._chunk = self._stream(list(tokens))
        return self._chunk.row(0)

    def _stream(self, tokens: list[int]) -> Chunk:
        """A greedy continuation of `tokens`, streamed: its rows are read as the answer asks for them,
        and the stream is closed (the server stops) once the answer leaves it. Only what the answer
        used is generated, give or take the token in flight."""
        room = self.n_ctx - len(tokens) if self.n_ctx else STREAM_MAX
        body = {"prompt": tokens, "n_predict": max(1, min(STREAM_MAX, room)), "n_probs": TOP_K, "temperature": 0.0,
                "top_k": 1, "samplers": ["top_k"], "cache_prompt": True, "stream": True, "timings_per_token": True,
                **self._model}  # fmt: skip
        c = Chunk(tokens, [], [], self.n_vocab, events=self.http.events("/completion", body))
        self._pull(c)
        if not c.rows:
            self._end(c)
            raise RemoteError(
                f"{self.http.who} wrote nothing after a {len(tokens)}-token prompt; its context may be full."
            )
        return c

    def _pull(self, c: Chunk) -> None:
        """Read the stream's next token and row (nothing at its end); a token that completes a
        character written over several tokens ends the stream there (the stream does not say which
        tokens came before it: a whole response will)."""
        while c.events is not None:
            e = c.events.next()
            if e is None:
                self._end(c)
                return
            c.timings = e.get("timings") or c.timings
            probs = e.get("completion_probabilities") or []
            if e.get("stop"):
                if e.get("stop_type") == "eos" and c.ahead:
                    self._eog.add(c.ahead[-1])
                self._end(c)
                return
            if not probs:
                continue
            p = probs[0]
            top = p.get("top_logprobs") or []
            for alt in top:
                self._pieces.setdefault(alt["id"], bytes(alt["bytes"]))
            if bytes(p.get("bytes") or []) != self._pieces.get(p["id"]):
                self._split_at = c.key + c.ahead
                self._end(c)
                return
            c.rows.append([(alt["id"], alt["logprob"]) for alt in top])
            c.ahead.append(p["id"])
            return

    def _end(self, c: Chunk) -> None:
        """Close the chunk's stream, if open, and count what the server did for it."""
        if c.events is not None:
            c.events.close()
            c.events = None
            self._count({"timings": c.timings})
            c.timings = {}

    def _generate(self, tokens: list[int], n: int) -> Chunk:
        body = {"prompt": tokens, "n_predict": n, "n_probs": TOP_K, "temperature": 0.0, "top_k": 1,
                "samplers": ["top_k"], "cache_prompt": True, "return_tokens": True, "stream": False,
                **self._model}  # fmt: skip
        r = self.http.post("/completion", body)
        self._count(r)
        probs = r.get("completion_probabilities") or []
        written = r.get("tokens") or [p["id"] for p in probs]
        ahead, rows, pending, j = [], [], [], 0
        for t in written:
            ahead.append(t)
            if j < len(probs) and probs[j]["id"] == t:
                p, j = probs[j], j + 1
                top = p.get("top_logprobs")
                if top is None:
                    raise RemoteError(f"{self.http.who} answered without token log-probabilities; is it llama-server?")
                for alt in top:
                    self._pieces.setdefault(alt["id"], bytes(alt["bytes"]))
                rows.append([(alt["id"], alt["logprob"]) for alt in top])
                if pending:
                    self._learn_pieces(pending, t, bytes(p["bytes"]))
                    pending = []
            else:  # part of a character: llama-server reports nothing until the character is whole
                rows.append([(t, 0.0)])  # its greedy token, taken as sure
                pending.append(t)
        if pending:  # the chunk ended inside a character: those tokens are asked again next time
            del ahead[-len(pending) :], rows[-len(pending) :]
        if r.get("stop_type") == "eos" and ahead and ahead[-1] == written[-1]:
            self._eog.add(ahead[-1])
        if not rows:
            raise RemoteError(
                f"{self.http.who} wrote nothing after a {len(tokens)}-token prompt; its context may be full."
            )
        return Chunk(tokens, ahead, rows, self.n_vocab)

    def _learn_pieces(self, pending: list[int], last: int, whole: bytes) -> None:
        """The bytes of tokens that wrote part of a character: llama-server reports the whole
        character on the token that completes it (and that token's own bytes in its top list)."""
        own = self._pieces.get(last, b"")
        rest = whole[: len(whole) - len(own)] if whole.endswith(own) else b""
        if len(pending) == 1 and rest:
            self._pieces.setdefault(pending[0], rest)
        elif len(rest) == len(pending):  # byte tokens, one byte each
            for t, b in zip(pending, rest, strict=True):
                self._pieces.setdefault(t, bytes([b]))

    def _count(self, r: dict) -> None:
        timings = r.get("timings") or {}
        read = int(timings.get("prompt_n", r.get("tokens_evaluated", 0)) or 0)
        self.prompt_read += read
        self.evaluated_tokens += read + int(timings.get("predicted_n", 0) or 0)
        self.forward_calls += 1
        self.decode_seconds += (float(timings.get("prompt_ms", 0)) + float(timings.get("predicted_ms", 0))) / 1000

    def evaluate(self, tokens: list[int], rows: list[int]) -> np.ndarray:  # noqa: ARG002
        raise NudgeError(f"{self.http.who} cannot score given tokens (llama-server has no prompt log-probabilities).")

    def complete(self, text: str, max_tokens: int):
        """A completion call as paper mode makes it: one request, greedy, top-1 probabilities."""
        from nudge_local.paper_mode import Completion, CompletionToken

        # as ids: a text prompt that starts with the BOS text would get a second BOS from the server
        body = {"prompt": self.tokenize(text), "n_predict": max_tokens, "n_probs": 1, "temperature": 0.0, "top_k": 1,
                "samplers": ["top_k"], "cache_prompt": True, "return_tokens": True, "stream": False,
                **self._model}  # fmt: skip
        r = self.http.post("/completion", body)
        self._count(r)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        out = []
        for p in r.get("completion_probabilities") or []:
            if p["id"] in self._eog or (r.get("stop_type") == "eos" and p is r["completion_probabilities"][-1]):
                self._eog.add(p["id"])
                return Completion(out, "stop")
            top = p.get("top_logprobs") or [p]
            out.append(CompletionToken(p["id"], decoder.decode(bytes(p["bytes"])), math.exp(top[0]["logprob"])))
        return Completion(out, "stop" if r.get("stop_type") == "eos" else "length")

    # -- cache ------------------------------------------------------------------------------------

    @property
    def held_tokens(self) -> list[int]:
        """What the server's prefix cache is believed to hold: the last prompt and what it wrote."""
        c = self._chunk
        return list(c.key) + list(c.ahead) if c else []

    def reset(self) -> None:
        """Forget the chunk (the server keeps its own prefix cache)."""
        self.settle()
        self._chunk = None

    def settle(self) -> None:
        """An answer ended: stop the server writing ahead."""
        if self._chunk is not None:
            self._end(self._chunk)

    def close(self) -> None:
        self.settle()
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- OpenAI /v1/completions ---------------------------------------------------------------------


END = 0  # a text-only model's id for its end of generation


def token_logprobs(lp: dict | None, full_text: str | None = None) -> list[tuple[str, list[tuple[str, float]]]]:
    """Each generated token's text and its listed (text, logprob) alternatives, from either shape a
    /v1/completions `logprobs` takes: OpenAI's legacy lists (`tokens`, `top_logprobs` as mappings:
    vLLM, SGLang, llama-cpp-python) or the chat-style `content` list (llama-server). Given the
    prompt and completion text, the legacy `text_offset`s say each token's text: llama-cpp-python
    names a token that is part of a character "" (so the character would be lost), while its
    offsets give the whole character to the token that completes it."""
    if not lp:
        return []
    if isinstance(lp.get("content"), list):
        return [(c.get("token", ""), [(t.get("token", ""), float(t["logprob"])) for t in c.get("top_logprobs") or []])
                for c in lp["content"]]  # fmt: skip
    raw, tops, offsets = lp.get("tokens") or [], lp.get("top_logprobs") or [], lp.get("text_offset") or []
    chosen = lp.get("token_logprobs") or [None] * len(raw)
    tokens = raw
    if full_text is not None and len(offsets) == len(raw) and offsets == sorted(offsets):
        ends = [*offsets[1:], len(full_text)]
        tokens = [full_text[a:b] for a, b in zip(offsets, ends, strict=True)]
    out = []
    for tok, was, top, lp_tok in zip(tokens, raw, tops, chosen, strict=False):
        alts = list((top or {}).items())
        if tok != was and lp_tok is not None:  # the chosen token listed under its lossy name
            alts = [(t, v) for t, v in alts if not (t == was and v == lp_tok)] + [(tok, float(lp_tok))]
        out.append((tok, alts))
    return out


def served_model(http: Http) -> str:
    """The model name to put in OpenAI requests: the endpoint's own where it names one the server
    lists, else the only one the server's /v1/models lists; several or a wrong one is one sentence."""
    data = http.get("/v1/models").get("data") or []
    names = [str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id")]
    want = http.endpoint.model
    if want:
        if names and want not in names:
            shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise RemoteError(f"{http.who} serves {shown}, not {want}; give --{flag(http.role)}-model one of them.")
        return want
    if len(names) == 1:
        return names[0]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    raise RemoteError(
        f"{http.who} serves {len(names)} models ({shown or 'none listed'}); name one with --{flag(http.role)}-model."
    )


class TextRemoteModel:
    """A model behind OpenAI's /v1/completions: text in, token texts and their log-probabilities
    out. Its token ids are this process's own numbering of the texts the server returned, so it
    works in text space only."""

    remote = True
    text_only = True
    scores_drafts = False

    def __init__(self, http: Http) -> None:
        self.http, self.role = http, http.role
        self.path = http.endpoint.root
        self._ids: dict[str, int] = {}
        self._texts: list[str] = [""]  # id 0 is END: no text has it
        self._chunk: Chunk | None = None
        self.sizer = ChunkSizer()
        self.vocab_matches: dict = {}
        self.evaluated_tokens = self.prompt_read = self.forward_calls = 0
        self.decode_seconds = 0.0
        self.prompt_sent = 0  # prompt tokens the server reports per request (usage.prompt_tokens)
        self.last_prompt = 0  # ... in the last request
        self.n_ctx = 0  # not reported by the OpenAI API: the server says when a prompt is too long
        self.chat_template = None
        self.bos = self.eos = -1

    def check(self) -> None:
        self.model = served_model(self.http)
        self._completion("a", 1)  # answers with log-probabilities, or says which option enables them

    @property
    def name(self) -> str:
        return PurePosixPath(self.model).name or self.model

    def metadata(self, key: str) -> str | None:  # noqa: ARG002
        return None

    def _id(self, text: str) -> int:
        i = self._ids.get(text)
        if i is None:
            i = self._ids[text] = len(self._texts)
            self._texts.append(text)
        return i

    def piece(self, token: int) -> bytes:
        return self._texts[token].encode("utf-8")

    def is_eog(self, token: int) -> bool:
        return token == END

    def tokenize(self, text: str | bytes) -> list[int]:  # noqa: ARG002
        raise NudgeError(f"The {self.role} model behind {self.path} is served by text only; it runs in text space.")

    def _completion(self, prompt: str, max_tokens: int, logprobs: int = TOP_K) -> dict:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "logprobs": logprobs,
                "temperature": 0.0, "stream": False}  # fmt: skip
        try:
            r = self.http.post("/v1/completions", body)
        except RemoteError as e:
            if "logits_all" in str(e) or "logprobs" in str(e).lower():
                raise RemoteError(
                    f"{self.http.who} does not return log-probabilities; start it with them on "
                    f"(llama-cpp-python's server: --logits_all true; vLLM: --max-logprobs {TOP_K} or more)."
                ) from None
            raise
        choice = (r.get("choices") or [{}])[0]
        choice["full_text"] = prompt + (choice.get("text") or "")  # what text_offset counts in
        if max_tokens and choice.get("text") and not any(top for _, top in token_logprobs(choice.get("logprobs"))):
            raise RemoteError(
                f"{self.http.who} answered without log-probabilities; start it with them on "
                f"(llama-cpp-python's server: --logits_all true; vLLM: --max-logprobs {TOP_K} or more)."
            )
        usage = r.get("usage") or {}
        self.forward_calls += 1
        self.prompt_sent += int(usage.get("prompt_tokens", 0) or 0)
        self.last_prompt = int(usage.get("prompt_tokens", 0) or 0)
        cached = int(((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
        self.prompt_read += int(usage.get("prompt_tokens", 0) or 0) - cached
        self.evaluated_tokens += (
            int(usage.get("prompt_tokens", 0) or 0) - cached + int(usage.get("completion_tokens", 0) or 0)
        )
        return choice

    def _rows(self, choice: dict, max_tokens: int) -> tuple[list[str], list[list[tuple[int, float]]]]:
        steps = token_logprobs(choice.get("logprobs"), choice.get("full_text"))
        rows = []
        for tok, top in steps:
            listed = sorted(((self._id(t), v) for t, v in top), key=lambda x: -x[1])
            if self._id(tok) not in dict(listed):
                listed.append((self._id(tok), -1e30))
            rows.append(listed)
        texts = [tok for tok, _ in steps]
        if choice.get("finish_reason") == "stop" and len(texts) < max_tokens:
            rows.append([(END, 0.0)])  # the server stopped: its end of text was the argmax
            texts.append("")
        return texts, rows

    def text_logits(self, data: bytes, written: int) -> TopRow:
        """The row after the text `data`: a prompt and an answer of `written` tokens so far. From
        the chunk when the answer's last tokens are its greedy ones (a token whose text is empty,
        part of a character, counts too), else from a new request."""
        c = self._chunk
        if c is not None:
            i = written - c.written
            if 0 <= i < len(c.rows) and data == c.key + "".join(c.ahead[:i]).encode("utf-8"):
                return c.row(i)
            self.sizer.used(c.used, len(c.rows))
        n = self.sizer.size
        choice = self._completion(data.decode("utf-8", "replace"), n)
        texts, rows = self._rows(choice, n)
        if not rows:
            raise RemoteError(f"{self.http.who} wrote nothing; its context may be full.")
        width = len(self._texts) + TEXT_TAIL  # every id numbered so far, and unlisted ones
        self._chunk = Chunk(bytes(data), texts, rows, width, written=written, prompt_n=self.last_prompt)
        return self._chunk.row(0)

    def chunk_prompt_tokens(self, prompt: bytes) -> int:
        """The prompt tokens the server counted for `prompt`, when the current chunk was asked for it."""
        c = self._chunk
        return c.prompt_n if c is not None and c.key == prompt else 0

    def complete(self, text: str, max_tokens: int):
        """A completion call exactly as the authors' run_api.py makes it: the prompt text,
        max_tokens, logprobs 1, temperature 0."""
        from nudge_local.paper_mode import Completion, CompletionToken

        choice = self._completion(text, max_tokens, 1)
        out = []
        for tok, top in token_logprobs(choice.get("logprobs"), choice.get("full_text")):
            p = math.exp(max(v for _, v in top)) if top else 1.0
            out.append(CompletionToken(self._id(tok), tok, p))
        return Completion(out, "stop" if choice.get("finish_reason") == "stop" else "length")

    @property
    def held_tokens(self) -> list[int]:
        return []

    def reset(self) -> None:
        self._chunk = None

    def settle(self) -> None:
        """An answer ended: nothing to stop (its chunks are whole responses)."""

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
