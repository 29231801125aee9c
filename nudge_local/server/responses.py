"""OpenAI response shapes for one answer, with its provenance (docs/server.md#provenance-on-the-wire).

The text stays plain in `content`/`text`; the last chunk of a stream (or the whole response) carries a
`nudge` object on its choice with `spans` and `stats` exactly as `nudge-local run --json` gives them.
With logprobs, each token's entry also carries `source` ("base" or "nudge") and `base_p`."""

from __future__ import annotations

import math
import time
import uuid

from nudge_local.engine.events import Done, TokenEvent
from nudge_local.render import spans
from nudge_local.server.requests import Request
from nudge_local.server.worker import Pair

TINY = 1e-300  # log(0) is not JSON: a probability that underflowed is reported as this


def finish_reason(done: Done) -> str:
    """OpenAI's two reasons: "length" where a budget ended the answer, "stop" otherwise."""
    return "length" if done.stop_reason in ("length", "round") else "stop"


class Answer:
    """Builds one request's response objects (chunks or the whole) from its events."""

    def __init__(self, pair: Pair, request: Request) -> None:
        self.pair, self.request = pair, request
        self.chat = request.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.tokens: list[TokenEvent] = []
        self.offset = 0  # characters so far, for the legacy API's text_offset

    def _piece(self, source: str, token: int) -> bytes:
        model = self.pair.models["base" if source == "base" else "nudger"]
        return model.piece(token)

    def _alternative(self, source: str, token: int, p: float) -> dict:
        piece = self._piece(source, token)
        return {"token": piece.decode("utf-8", "replace"), "logprob": math.log(max(p, TINY)), "bytes": list(piece)}

    def logprob(self, ev: TokenEvent) -> dict:
        """The token's logprobs entry: the OpenAI fields plus `source` and `base_p`. Its `token` and
        `bytes` are the text the answer shows for it, so the entries join to the content as OpenAI's do:
        the model's piece less the whitespace the answer's ends leave out (stream.stripped), or a
        character split between tokens given whole with its last. The alternatives are pieces."""
        entry = {"token": ev.text, "logprob": math.log(max(ev.p, TINY)), "bytes": list(ev.text.encode())}
        entry["top_logprobs"] = [self._alternative(ev.source, t, p) for t, p in ev.top]
        entry["source"], entry["base_p"] = ev.source, ev.base_p
        return entry

    def _logprobs(self, events: list[TokenEvent]) -> dict | None:
        if not self.request.logprobs:
            return None
        content = [self.logprob(e) for e in events]
        if self.chat:
            return {"content": content, "refusal": None}
        offsets = []
        for e in events:
            offsets.append(self.offset)
            self.offset += len(e.text)
        return {  # the legacy completions shape, and the chat shape's entries beside it
            "tokens": [c["token"] for c in content],
            "token_logprobs": [c["logprob"] for c in content],
            "top_logprobs": [{a["token"]: a["logprob"] for a in c["top_logprobs"]} for c in content],
            "text_offset": offsets,
            "content": content,
        }

    def nudge(self, done: Done) -> dict:
        """Provenance and figures: what `run --json` gives beside the text."""
        return {
            "spans": spans(self.tokens),
            "stats": done.stats.as_dict(),
            "stop_reason": done.stop_reason,
            "mode": self.request.mode,
            "gamma": self.pair.auto.get(r.gate) if (r := self.request).gamma is None else r.gamma,
            "gate": self.request.gate,
            "turns_dropped": done.stats.turns_dropped,
            **done.result.figures(),
        }

    def usage(self, done: Done) -> dict:
        prompt = done.stats.prompt_tokens
        n_prompt = prompt.get("base", prompt.get("nudger", 0))
        return {"prompt_tokens": n_prompt, "completion_tokens": done.stats.tokens,
                "total_tokens": n_prompt + done.stats.tokens}  # fmt: skip

    def _envelope(self, choices: list[dict], *, chunk: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.pair.model_id,
                "system_fingerprint": None, "choices": choices}  # fmt: skip

    def _choice(self, events: list[TokenEvent], *, delta: dict | None, finish: str | None) -> dict:
        text = "".join(e.text for e in events)
        choice: dict = {"index": 0}
        if self.chat:
            choice["delta" if delta is not None else "message"] = (
                delta if delta is not None else {"role": "assistant", "content": text, "refusal": None}
            )
        else:
            choice["text"] = text
        choice["logprobs"] = self._logprobs(events) if events or delta is None else None
        choice["finish_reason"] = finish
        return choice

    # --- streaming ---
    def first_chunk(self) -> dict | None:
        """A chat stream opens with the assistant's role, as OpenAI's does."""
        if not self.chat:
            return None
        return self._envelope([self._choice([], delta={"role": "assistant", "content": ""}, finish=None)], chunk=True)

    def chunk(self, ev: TokenEvent) -> dict:
        self.tokens.append(ev)
        delta = {"content": ev.text} if self.chat else None
        return self._envelope([self._choice([ev], delta=delta, finish=None)], chunk=True)

    def last_chunks(self, done: Done) -> list[dict]:
        """The chunk with finish_reason and the `nudge` object, then usage where the client asked."""
        choice = self._choice([], delta={} if self.chat else None, finish=finish_reason(done))
        choice["nudge"] = self.nudge(done)
        out = [self._envelope([choice], chunk=True)]
        if self.request.include_usage:
            out.append({**self._envelope([], chunk=True), "usage": self.usage(done)})
        return out

    # --- whole ---
    def whole(self, events: list[TokenEvent], done: Done) -> dict:
        self.tokens = events
        choice = self._choice(events, delta=None, finish=finish_reason(done))
        choice["nudge"] = self.nudge(done)
        return {**self._envelope([choice], chunk=False), "usage": self.usage(done)}
