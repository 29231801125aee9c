"""Which API a server speaks, and the model it serves, checked to answer with probabilities."""

from __future__ import annotations

from nudge_local.engine.errors import NudgeError
from nudge_local.remote import APIS
from nudge_local.remote.completions import TextRemoteModel
from nudge_local.remote.http import Endpoint, Http, RemoteError, flag
from nudge_local.remote.llama_server import RemoteModel


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

