"""The OpenAI request bodies the server accepts, checked field by field (docs/server.md).

Every problem is an ApiError: the HTTP status and the OpenAI error object's message, type, param and
code. Fields the server does not use (`user`, `presence_penalty`, ...) are accepted and ignored, as
OpenAI-compatible servers do; fields it cannot honour (`n` > 1, tools, images) are refused."""

from __future__ import annotations

import math
from dataclasses import dataclass

from nudge_local.config import Settings
from nudge_local.engine.context import POLICIES
from nudge_local.engine.events import MODES, Mode
from nudge_local.engine.gates import GATES
from nudge_local.engine.prompts import Turn

MAX_STOPS = 4  # as the OpenAI API
MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
    """An error returned to the client as the OpenAI error object with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Request:
    """One generation asked for: the conversation and the settings it runs with."""

    kind: str  # "chat" or "completion"
    question: str
    history: tuple[Turn, ...]
    system: str
    mode: Mode
    gamma: float | None  # None: "auto", the pair's gamma calibrated for `gate` (worker.Pair.calibrated)
    gate: str
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...]
    word_cap: int
    speculative: bool
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    context_overflow: str = "stop"  # messages longer than the context: "stop" (a 400) or "drop_oldest"


def _bad(message: str, param: str, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _number(body: dict, key: str, default, *, kind=float, lo=None, hi=None, lo_open=False):
    """body[key] as a number of `kind` within [lo, hi] ((lo, hi] with lo_open), or `default` when absent/null."""
    v = body.get(key)
    if v is None:
        return default
    whole = kind is int
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (whole and v != int(v)):
        raise _bad(f"'{key}' must be {'a whole number' if whole else 'a number'} (got {v!r}).", key)
    v = kind(v)
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        span = f"{'above' if lo_open else 'at least'} {lo}" + (f" and at most {hi}" if hi is not None else "")
        raise _bad(f"'{key}' must be {span} (got {v!r}).", key)
    return v


def _gate(body: dict, default: str) -> str:
    v = body.get("gate", default)
    if v not in GATES:
        raise _bad(f"'gate' must be one of {', '.join(GATES)} (got {v!r}).", "gate")
    return v


def _gamma(body: dict, s: Settings, gate: str) -> float | None:
    """The request's gamma: a number (a probability for top1 and margin, nats for entropy) or "auto"
    (None). Absent: the server's own for its gate; auto for another gate, whose scale differs."""
    v = body.get("gamma")
    if v == "auto":
        return None
    if v is None:
        return s.gamma if gate == s.gate else None
    return _number(body, "gamma", None, lo=0, hi=None if gate == "entropy" else 1)


def _bool(body: dict, key: str, default: bool) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(f"'{key}' must be true or false (got {v!r}).", key)
    return v


def _stops(body: dict, default: list[str]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return tuple(default)
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v) or len(v) > MAX_STOPS:
        raise _bad(f"'stop' must be a text or a list of at most {MAX_STOPS} texts.", "stop")
    return tuple(s for s in v if s)


def _policy(body: dict, default: str) -> str:
    v = body.get("context_overflow", default)
    if v not in POLICIES:
        raise _bad(f"'context_overflow' must be one of {', '.join(POLICIES)} (got {v!r}).", "context_overflow")
    return v


def _common(body: dict, s: Settings) -> dict:
    """The settings both endpoints share; absent fields take the server's settings (greedy by default)."""
    n = _number(body, "n", 1, kind=int)
    if n != 1:
        raise _bad("Only n=1 is supported: a nudged pair writes one answer at a time.", "n")
    mode = body.get("mode", "nudged")
    if mode not in MODES:
        raise _bad(f"'mode' must be one of {', '.join(MODES)} (got {mode!r}).", "mode")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("'stream_options' must be an object.", "stream_options")
    return dict(
        mode=mode,
        gate=(gate := _gate(body, s.gate)),
        gamma=_gamma(body, s, gate),
        max_tokens=_number({"max_tokens": max_tokens}, "max_tokens", s.max_tokens, kind=int, lo=1),
        temperature=_number(body, "temperature", s.temperature, lo=0, hi=2),
        top_p=_number(body, "top_p", s.top_p, lo=0, hi=1, lo_open=True),
        seed=_number(body, "seed", s.seed, kind=int, lo=0),
        stop=_stops(body, s.stop_strings),
        word_cap=_number(body, "word_cap", s.word_cap, kind=int, lo=1),
        speculative=_bool(body, "speculative", True),
        stream=_bool(body, "stream", False),
        context_overflow=_policy(body, s.context_overflow),
        include_usage=_bool(options or {}, "include_usage", False),
    )


def _content(message: dict, i: int) -> str:
    """A message's text: a string, or a list of text parts (other parts are refused)."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"messages[{i}]: only text content parts are supported.", f"messages[{i}].content")
            texts.append(part["text"])
        return "\n".join(texts)
    raise _bad(f"messages[{i}].content must be a text or a list of text parts.", f"messages[{i}].content")


def _conversation(messages) -> tuple[str, tuple[Turn, ...], str]:
    """System text, earlier turns and the question from OpenAI messages: system (or developer)
    messages first, then user and assistant turns ending with a user message; consecutive messages
    of one role are joined, as one turn."""
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of messages.", "messages")
    system: list[str] = []
    turns: list[tuple[str, list[str]]] = []  # (role, texts)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a 'role'.", f"messages[{i}]")
        role, text = m["role"], _content(m, i)
        if role in ("system", "developer"):
            if turns:
                raise _bad(f"messages[{i}]: system messages must come before the conversation.", f"messages[{i}]")
            system.append(text)
        elif role in ("user", "assistant"):
            if turns and turns[-1][0] == role:
                turns[-1][1].append(text)
            else:
                if not turns and role == "assistant":
                    raise _bad("The conversation must begin with a user message.", f"messages[{i}]")
                turns.append((role, [text]))
        else:
            raise _bad(f"messages[{i}]: role {role!r} is not supported (system, user, assistant).", f"messages[{i}]")
    if not turns or turns[-1][0] != "user":
        raise _bad("The last message must be the user's: the pair writes the assistant's answer.", "messages")
    texts = ["\n\n".join(t) for _, t in turns]
    history = tuple(Turn(q, a) for q, a in zip(texts[0:-1:2], texts[1:-1:2], strict=True))
    return "\n\n".join(system), history, texts[-1]


def parse_chat(body: dict, s: Settings) -> Request:
    """A /v1/chat/completions body."""
    for unsupported in ("tools", "functions", "response_format"):
        if body.get(unsupported) not in (None, [], {"type": "text"}):
            raise _bad(f"'{unsupported}' is not supported by a nudged pair.", unsupported)
    system, history, question = _conversation(body.get("messages"))
    logprobs = _bool(body, "logprobs", False)
    top = _number(body, "top_logprobs", 0, kind=int, lo=0, hi=MAX_TOP_LOGPROBS)
    if top and not logprobs:
        raise _bad("'top_logprobs' needs 'logprobs': true.", "top_logprobs")
    return Request("chat", question, history, system or s.system, logprobs=logprobs, top_logprobs=top,
                   **_common(body, s))  # fmt: skip


def parse_completion(body: dict, s: Settings) -> Request:
    """A /v1/completions body: the prompt is one question, rendered as `nudge-local run` renders it."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("'prompt' must be one text (lists of prompts and token ids are not supported).", "prompt")
    if _bool(body, "echo", False):
        raise _bad("'echo' is not supported: the prompt is rendered for two models.", "echo")
    if body.get("suffix"):
        raise _bad("'suffix' is not supported.", "suffix")
    # The legacy API's logprobs is the number of alternatives to return (0-5; null for none).
    top = body.get("logprobs")
    logprobs = top is not None and top is not False
    top = 0 if top is True else top
    top = _number({"logprobs": top}, "logprobs", 0, kind=int, lo=0, hi=MAX_TOP_LOGPROBS) if logprobs else 0
    return Request("completion", prompt, (), s.system, logprobs=logprobs, top_logprobs=top, **_common(body, s))
