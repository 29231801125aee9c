"""A model behind OpenAI's /v1/completions (vLLM, SGLang, llama-cpp-python's server): text in,
token texts and their log-probabilities out, so it works in text space only."""

from __future__ import annotations

import math
from pathlib import PurePosixPath

import numpy as np

from nudge_local.engine.errors import NudgeError
from nudge_local.engine.interface import Completion, CompletionToken
from nudge_local.remote.chunks import Chunk, ChunkSizer
from nudge_local.remote.http import Http, RemoteError, ServedModel, flag
from nudge_local.remote.llama_server import TOP_K
from nudge_local.remote.rows import TopRow, token_logprobs

TEXT_TAIL = 4096  # unlisted ids in a text-only model's rows
END = 0  # a text-only model's id for its end of generation


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


class TextRemoteModel(ServedModel):
    """A model behind OpenAI's /v1/completions: text in, token texts and their log-probabilities
    out. Its token ids are this process's own numbering of the texts the server returned, so it
    works in text space only."""

    has_token_ids = False
    vocab_type = None  # no vocabulary: its ids number the token texts its server returned

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
        self.reading = False

    def check(self) -> None:
        self.model = served_model(self.http)
        self._completion("a", 1)  # answers with log-probabilities, or says which option enables them

    @property
    def name(self) -> str:
        return PurePosixPath(self.model).name or self.model

    @property
    def n_vocab(self) -> int:
        """The ids numbered so far and the unlisted tail every row carries."""
        return len(self._texts) + TEXT_TAIL

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

    def count_tokens(self, text: str | bytes) -> None:  # noqa: ARG002
        """Not known: an OpenAI server does not tokenize on request."""
        return None

    def logits(self, tokens: list[int]) -> np.ndarray:  # noqa: ARG002
        raise NudgeError(f"The {self.role} model behind {self.path} is served by text only; it runs in text space.")

    def evaluate(self, tokens: list[int], rows: list[int]) -> np.ndarray:  # noqa: ARG002
        raise NudgeError(f"The {self.role} model behind {self.path} is served by text only; it scores no given tokens.")

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

    def prompt_length(self, prompt: bytes) -> int:
        """As its server counts them, in its answer to the prompt alone (asked for before the answer
        starts, when it is the first row needed anyway)."""
        self.text_logits(prompt, 0)
        c = self._chunk
        return c.prompt_n if c is not None and c.key == prompt else 0

    def complete(self, text: str, max_tokens: int, *, reading: bool = True) -> Completion:  # noqa: ARG002
        """A completion call exactly as the authors' run_api.py makes it: the prompt text,
        max_tokens, logprobs 1, temperature 0."""
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
