"""`nudge-local serve`: one nudged pair behind the OpenAI HTTP API (docs/server.md).

Starlette routes on uvicorn, server-sent events through sse-starlette (the stack llama-cpp-python's
own server runs on). The engine runs in one thread (worker.py); this module only checks requests,
queues them and turns their events into OpenAI objects (responses.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator

import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Done, TokenEvent
from nudge_local.server.requests import ApiError, parse_chat, parse_completion
from nudge_local.server.responses import Answer
from nudge_local.server.worker import Job, Pair, Worker

MAX_BODY = 4 * 1024 * 1024  # bytes; a long conversation is far less
SHUTTING_DOWN = "The server is shutting down; the answer was cut short."


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _json_body(request: HttpRequest, limit: int) -> dict:
    """The request's JSON object, read at most `limit` bytes far (413 beyond)."""
    too_big = ApiError(413, f"The request body is larger than {limit} bytes.", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise too_big
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


async def _watch_disconnect(request: HttpRequest, job: Job) -> None:
    """Cancel the job when the client goes away (while it waits, or during a non-streamed answer)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel.set()
            return


class Api:
    """The routes, bound to one pair and its worker."""

    def __init__(self, pair: Pair, *, api_key: str | None, queue_size: int, max_body: int = MAX_BODY) -> None:
        self.pair, self.api_key, self.max_body = pair, api_key, max_body
        self.worker = Worker(pair, queue_size=queue_size)

    def _authorize(self, request: HttpRequest) -> None:
        if not self.api_key:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        # Constant time: the comparison takes as long whatever prefix of the key a guess gets right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "A valid API key is required: send 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")  # fmt: skip

    def _model_card(self) -> dict:
        """The pair as one model, listed under its id (the catalog alias, where it is one) with its
        files' long label in `aliases`, so a client finds it by either name."""
        files = {role: str(m.path) for role, m in self.pair.models.items()}
        return {"id": self.pair.model_id, "object": "model", "created": 0, "owned_by": "nudge-local",
                "aliases": self.pair.aliases, "nudge": files}  # fmt: skip

    async def health(self, request: HttpRequest) -> JSONResponse:
        w = self.worker
        return JSONResponse({"status": "ok", "loaded": True, "busy": w.busy, "queue": w.waiting,
                             "model": self.pair.model_id})  # fmt: skip

    async def models(self, request: HttpRequest) -> JSONResponse:
        self._authorize(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: HttpRequest) -> JSONResponse:
        """The card by the pair's id or an alias; another name is 404, as this asks what exists."""
        self._authorize(request)
        name = request.path_params["model"]
        if name not in (self.pair.model_id, *self.pair.aliases):
            raise ApiError(404, f"The model {name!r} does not exist; this server serves {self.pair.model_id!r}.",
                           param="model", code="model_not_found")  # fmt: skip
        return JSONResponse(self._model_card())

    @staticmethod
    def _check_model(name) -> None:
        """Any name, as llama-server takes any: one pair is served, and clients that send a fixed name
        (most do) reach it. The response's `model` says what answered."""
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "'model' must be a text.", param="model")

    async def chat(self, request: HttpRequest):
        return await self._generate(request, parse_chat)

    async def completions(self, request: HttpRequest):
        return await self._generate(request, parse_completion)

    async def _generate(self, request: HttpRequest, parse):
        self._authorize(request)
        body = await _json_body(request, self.max_body)
        self._check_model(body.get("model"))
        r = parse(body, self.pair.settings)
        job = Job(r, asyncio.get_running_loop())
        self.worker.submit(job)
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        try:
            first = await job.items.get()  # an error before the first token is the whole response
            if isinstance(first, ApiError):
                raise first
            if not r.stream:
                return JSONResponse(await self._whole(job, first))
        except BaseException:
            job.cancel.set()
            raise
        finally:
            watcher.cancel()
        return EventSourceResponse(self._events(job, first), ping=15, sep="\n")

    async def _whole(self, job: Job, item) -> dict:
        events: list[TokenEvent] = []
        while not isinstance(item, Done):
            if isinstance(item, ApiError):
                raise item
            events.append(item)
            item = await job.items.get()
        return Answer(self.pair, job.request).whole(events, item)

    async def _events(self, job: Job, item) -> AsyncIterator[dict]:
        """The stream: the role chunk, one chunk per token, the last chunk with `nudge`, [DONE].
        Ending early (the client left, the server stops) cancels the answer at its next token."""
        answer = Answer(self.pair, job.request)
        try:
            opening = answer.first_chunk()
            if opening:
                yield {"data": json.dumps(opening)}
            while True:
                if isinstance(item, Done):
                    for chunk in answer.last_chunks(item):
                        yield {"data": json.dumps(chunk)}
                    break
                if isinstance(item, ApiError):  # after the first token: an error event ends the stream
                    yield {"data": json.dumps(item.body())}
                    break
                yield {"data": json.dumps(answer.chunk(item), ensure_ascii=False)}
                item = await job.items.get()
            yield {"data": "[DONE]"}
        finally:
            job.cancel.set()

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app):
            self.worker.start()
            yield
            self.worker.stop()

        async def api_error(request, e: ApiError):
            return _error(e)

        async def http_error(request, e: HTTPException):
            kind = "not_found" if e.status_code == 404 else "invalid_request_error"
            message = f"{request.method} {request.url.path}: {e.detail}."
            return _error(ApiError(e.status_code, message, kind=kind, headers=e.headers))  # 405's Allow, for one

        async def server_error(request, e: Exception):
            return _error(ApiError(500, "The server failed; its log has the details.", kind="server_error"))

        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ]
        handlers = {ApiError: api_error, HTTPException: http_error, Exception: server_error}
        return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


class Server(uvicorn.Server):
    """uvicorn with the shutdown nudge-local promises: on SIGTERM or Ctrl+C stop accepting, cancel
    what waits and what runs (a stream ends with an error event), and return, so the command exits 0."""

    def __init__(self, config: uvicorn.Config, api: Api, announce) -> None:
        super().__init__(config)
        self.api, self.announce = api, announce

    def handle_exit(self, sig, frame) -> None:
        self.api.worker.close(SHUTTING_DOWN)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn's own re-raises the signal after shutdown, which would end the process by SIGTERM.
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.announce(host, port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(host: str, port: int) -> None:
    """One sentence, before the models load, where the address cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except OSError as e:
        raise NudgeError(
            f"Cannot listen on {host}:{port} ({e.strerror or e}); choose another address with --host or --port."
        ) from None


def serve(pair: Pair, *, host: str, port: int, api_key: str | None, queue_size: int, max_body: int = MAX_BODY,
          log_level: str = "warning") -> int:  # fmt: skip
    """Serve until SIGTERM or Ctrl+C; the pair is closed on the way out."""
    if not is_loopback(host) and not api_key:
        print(f"nudge-local: warning: serving on {host} without --api-key: anyone who can reach this address "
              "can use the models.", file=sys.stderr)  # fmt: skip
    api = Api(pair, api_key=api_key, queue_size=queue_size, max_body=max_body)

    def announce(bound_host, bound_port):
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"nudge-local: serving {pair.model_id} at http://{shown}:{bound_port}/v1 "
              "(OpenAI API; Ctrl+C stops)", file=sys.stderr, flush=True)  # fmt: skip

    config = uvicorn.Config(api.app(), host=host, port=port, log_level=log_level, access_log=log_level == "info",
                            timeout_graceful_shutdown=5, lifespan="on")  # fmt: skip
    server = Server(config, api, announce)
    try:
        server.run()
    except SystemExit:  # uvicorn's own exit where it cannot bind after all (it has logged why)
        if not server.started:
            raise NudgeError(f"Cannot listen on {host}:{port}; choose another address with --host or --port.") from None
        raise
    finally:
        api.worker.stop()
        pair.close()
    return 0
