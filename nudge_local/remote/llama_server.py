"""A model on llama.cpp's llama-server, through its native API: token ids in and out, the top-N
probabilities of each position, prompts streamed and cached by the server."""

from __future__ import annotations

import codecs
import math
from pathlib import PurePosixPath

import numpy as np

from nudge_local.engine.errors import ContextFull, NudgeError
from nudge_local.engine.interface import Completion, CompletionToken
from nudge_local.remote.chunks import Chunk, ChunkSizer
from nudge_local.remote.http import Http, RemoteError, ServedModel, flag
from nudge_local.remote.rows import TopRow

TOP_K = 8  # probabilities asked per position (vLLM's default cap is 20)
STREAM_MAX = 512  # tokens a stream may write ahead before it is asked again


class RemoteModel(ServedModel):
    """A model on llama.cpp's llama-server, through its native API (token ids in and out)."""

    has_token_ids = True

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
        self.reading = False

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

    def count_tokens(self, text: str | bytes) -> int:
        return len(self.tokenize(text))

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

    def text_logits(self, data: bytes, written: int) -> TopRow:  # noqa: ARG002 - its tokens say it all
        return self.logits(self.tokenize(data))

    def prompt_length(self, prompt: bytes) -> int:
        return len(self.tokenize(prompt))

    def complete(self, text: str, max_tokens: int, *, reading: bool = True) -> Completion:  # noqa: ARG002
        """A completion call as paper mode makes it: one request, greedy, top-1 probabilities (the
        server's prefix cache decides what it re-reads)."""
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

