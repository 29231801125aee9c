"""The served pair and the one thread that runs it (docs/server.md#one-pair-many-clients).

llama.cpp contexts hold one sequence, so requests wait in a first-in first-out queue and one engine
thread runs them one at a time; its events reach the request's asyncio task through a queue. A
request's `cancel` flag is checked at every token: a client that goes away stops its answer at the
next token, and the caches keep what was evaluated (the next prompt reuses its common prefix)."""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from nudge_local.calibrate import calibrate
from nudge_local.config import Settings
from nudge_local.engine.context import Fitted, fit_history
from nudge_local.engine.errors import ContextFull, NudgeError
from nudge_local.engine.events import Done, TokenEvent
from nudge_local.engine.generate import generate
from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.prompts import Prompts
from nudge_local.engine.sampling import Sampling
from nudge_local.engine.speculative import DraftSizer
from nudge_local.remote.http import RemoteError
from nudge_local.server.requests import ApiError, Request

log = logging.getLogger("nudge_local.server")
# A cancelled job's last item: no client reads it (nginx's 499, "client closed request"), but the
# handler waiting for a non-streamed answer ends on it instead of waiting for ever.
CANCELLED = ApiError(499, "The client closed the request.", code="cancelled")


@dataclass
class Pair:
    """The loaded base and nudger, the settings they were loaded with, and the id clients name them by."""

    models: dict[str, ScoringModel]
    settings: Settings
    chat_template: str | None
    model_id: str
    chunk: int = 16  # paper mode's L and round limit, as `run`'s defaults
    max_rounds: int = 150
    sizer: DraftSizer = field(default_factory=DraftSizer)  # the pair's draft costs, kept across requests
    auto: dict[str, float] = field(default_factory=dict)  # gamma "auto" by gate, once calibrated

    @property
    def files_label(self) -> str:
        """The long name of the pair: its models' file (or served) names, `BASE.gguf+NUDGER.gguf`."""
        return "+".join(self.models[role].label for role in ("base", "nudger") if role in self.models)

    @property
    def aliases(self) -> list[str]:
        """The other names the pair answers to: the files' label where the id is a catalog alias."""
        long = self.files_label
        return [long] if long and long != self.model_id else []

    def prompts(self, r: Request) -> Fitted:
        """The request's prompts; its oldest turns left out where they do not fit and it asks so."""
        s = self.settings
        base, nudger = self.models.get("base"), self.models.get("nudger")
        policy = r.context_overflow if base is not None and nudger is not None else "stop"
        return fit_history(base, nudger, r.question, r.history, system=r.system, base_format=s.base_format,
                           chat_template=self.chat_template, max_tokens=r.max_tokens, policy=policy)  # fmt: skip

    def generate(self, r: Request) -> Iterator[TokenEvent | Done]:
        """The request's event stream, exactly as `nudge-local run` would produce it; its Done's
        stats say how many of the oldest turns its prompts left out."""
        fitted = self.prompts(r)
        for item in self._events(r, fitted.prompts):
            if isinstance(item, Done):
                item.stats.turns_dropped = fitted.dropped
            yield item

    def calibrated(self, gate: str) -> float:
        """The pair's gamma for `gate` at the server's nudge target (`gamma: "auto"` in a request):
        calibrated on the first such request (in the worker, one at a time), then from the cache."""
        if gate not in self.auto:
            s = self.settings
            c = calibrate(self.models["base"], self.models["nudger"], gate=gate, target=s.nudge_target,
                          base_format=s.base_format, system=s.system, chat_template=self.chat_template)  # fmt: skip
            self.auto[gate] = c.gamma
        return self.auto[gate]

    def _events(self, r: Request, prompts: Prompts) -> Iterator[TokenEvent | Done]:
        needs_gamma = r.gamma is None and r.mode in ("nudged", "paper")
        return generate(
            prompts,
            mode=r.mode,
            base=self.models.get("base"),
            nudger=self.models.get("nudger"),
            gamma=self.calibrated(r.gate) if needs_gamma else (r.gamma if r.gamma is not None else 0.0),
            gate=r.gate,
            max_tokens=r.max_tokens,
            word_cap=r.word_cap,
            sampling=Sampling(r.temperature, r.top_p, r.seed),
            stop_strings=r.stop,
            chunk=self.chunk,
            max_rounds=self.max_rounds,
            speculative=r.speculative,
            sizer=self.sizer,
            top_n=r.top_logprobs,
        )

    def close(self) -> None:
        for m in self.models.values():
            m.close()


@dataclass
class Job:
    """One request on its way through the queue: what it asks, where its items go, and its cancel flag.
    Items: TokenEvents, then Done; or an ApiError in place of anything not yet sent."""

    request: Request
    loop: asyncio.AbstractEventLoop
    items: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def post(self, item: TokenEvent | Done | ApiError) -> None:
        """Hand an item to the request's task (from the engine thread)."""
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the event loop has closed: the server is gone
            self.cancel.set()


class Worker:
    """The engine thread and its waiting line (at most `queue_size` jobs wait behind the running one)."""

    def __init__(self, pair: Pair, *, queue_size: int) -> None:
        self.pair = pair
        self.queue_size = queue_size
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._stopping = False
        self._mean_seconds = 1.0  # recent seconds per request, for Retry-After
        self._thread = threading.Thread(target=self._loop, name="nudge-engine", daemon=True)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return self._running is not None

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job, or refuse it with 503 and a Retry-After when the line is full or closing."""
        with self._cond:
            if self._stopping:
                raise ApiError(503, "The server is shutting down.", kind="server_error", code="shutting_down")
            # Full when queue_size jobs would wait behind a running one. A job not yet taken by the engine
            # counts as waiting only behind another: an idle server takes the next job (also with --queue 0).
            if len(self._waiting) + (self._running is not None) > self.queue_size:
                wait = max(1, math.ceil(self._mean_seconds * (len(self._waiting) + 1)))
                raise ApiError(
                    503,
                    f"The server is busy: {len(self._waiting)} requests are waiting; retry in {wait} s.",
                    kind="server_error",
                    code="queue_full",
                    headers={"Retry-After": str(wait)},
                )
            self._waiting.append(job)
            self._cond.notify()

    def close(self, reason: str = "The server is shutting down.") -> None:
        """Refuse new jobs; the waiting and the running one end with a 503 carrying `reason`."""
        with self._cond:
            self._stopping = True
            ended = list(self._waiting) + ([self._running] if self._running else [])
            self._waiting.clear()
            for job in ended:
                job.post(ApiError(503, reason, kind="server_error", code="shutting_down"))
                job.cancel.set()
            self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        """close(), then wait for the engine thread to leave the models."""
        self.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._running = self._waiting.popleft()
            try:
                if job.cancel.is_set():  # a client that left while waiting costs nothing
                    job.post(CANCELLED)
                else:
                    t0 = time.perf_counter()
                    self._run(job)
                    self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.perf_counter() - t0)
            finally:
                with self._cond:
                    self._running = None

    def _run(self, job: Job) -> None:
        events = None
        try:
            events = self.pair.generate(job.request)
            for item in events:
                if job.cancel.is_set():
                    job.post(CANCELLED)  # whoever still waits on the job (a handler, a shutdown) stops waiting
                    break
                job.post(item)
        except ContextFull as e:  # the field that holds the prompt: messages, or a completion's prompt
            param = "messages" if job.request.kind == "chat" else "prompt"
            job.post(ApiError(400, str(e), param=param, code="context_length_exceeded"))
        except RemoteError as e:  # a model's own server failed: the gateway's error, not the client's
            job.post(ApiError(502, str(e), kind="server_error", code="model_server_error"))
        except NudgeError as e:
            job.post(ApiError(400, str(e)))
        except Exception:  # never reaches the client as a traceback; the server's log has it
            log.exception("generation failed")
            job.post(ApiError(500, "The server failed while generating; its log has the details.",
                              kind="server_error"))  # fmt: skip
        finally:
            if events is not None:
                events.close()  # stops the mode; the caches keep what they evaluated
