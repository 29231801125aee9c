"""Talking to one serving engine: where it is (`Endpoint`), one connection pool with retries
(`Http`), server-sent events read one at a time (`Events`), and every failure as one sentence
(`RemoteError`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx2 as httpx

from nudge_local.engine.errors import NudgeError
from nudge_local.engine.interface import ScoringModel


def flag(role: str) -> str:
    """The command line's name for a role's options: --base-..., --nudge-..., --judge-..."""
    return {"base": "base", "judge": "judge"}.get(role, "nudge")



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



class ServedModel(ScoringModel):
    """What a model on a serving engine answers alike, whichever API serves it: its name for users and
    records, no GGUF metadata, no listed vocabulary, no draft scored in one batch."""

    kind = "server"
    scores_drafts = False  # no server here returns prompt log-probabilities: speculative runs as token mode

    @property
    def label(self) -> str:
        return self.name

    @property
    def identity(self) -> str:
        return f"{self.path} ({self.label})"

    def metadata(self, key: str) -> str | None:  # noqa: ARG002 - a server exposes no GGUF metadata
        return None

    def token_texts(self) -> None:
        """A server does not list its vocabulary (views.same_vocabulary compares a probe text)."""
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
