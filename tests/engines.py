"""Real serving engines for tests/test_remote.py, each on a free loopback port, started and stopped
by the tests with a bound on every wait: llama.cpp's llama-server and rpc-server (built once from the
pinned llama-cpp-python's own llama.cpp source by scripts/build_llama_server.sh, cached outside the
repository) and llama-cpp-python's OpenAI-compatible server."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


@functools.cache
def llama_cpp_bin() -> Path:
    """The directory holding llama-server and rpc-server (built on first use, ~6 min on 2 cores)."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_llama_server.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert out.returncode == 0, f"building llama-server failed:\n{out.stderr[-3000:]}"
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    """One server process on 127.0.0.1:port; `url` once it answers `ready_path`."""

    def __init__(self, argv: list[str], port: int, ready_path: str = "/health", log: Path | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self._out = out
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{argv[0]} exited with {self.proc.returncode} at start: {self.tail()}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{argv[0]} did not answer {ready_path} within {START_TIMEOUT:g} s: {self.tail()}")
            time.sleep(0.1)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log and self.log.exists() else ""

    def kill(self) -> None:
        """Gone at once, as a crash leaves it (SIGKILL)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._out is not subprocess.DEVNULL:
            self._out.close()


def llama_server(model: Path, tmp: Path, *extra: str, ctx: int = 4096) -> Engine:
    """llama.cpp's llama-server on one thread and one slot (so every request finds its cache)."""
    port = free_port()
    argv = [str(llama_cpp_bin() / "llama-server"), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-c", str(ctx), "-t", "1", "-tb", "1", "-np", "1", "--no-webui", *extra]  # fmt: skip
    return Engine(argv, port, log=tmp / f"llama-server-{port}.log")


def rpc_server(tmp: Path) -> Engine:
    """llama.cpp's rpc-server: another process that holds a model's weights and runs its layers."""
    port = free_port()
    argv = [str(llama_cpp_bin() / "rpc-server"), "-H", "127.0.0.1", "-p", str(port), "-t", "1"]
    engine = Engine.__new__(Engine)
    engine.port, engine.url, engine.log = port, f"127.0.0.1:{port}", tmp / f"rpc-server-{port}.log"
    engine._out = open(engine.log, "wb")  # noqa: SIM115 - closed in stop()
    engine.proc = subprocess.Popen(argv, stdout=engine._out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while True:  # it speaks its own protocol: ready once the port accepts
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return engine
        except OSError:
            if engine.proc.poll() is not None or time.monotonic() > deadline:
                engine.stop()
                raise AssertionError(f"rpc-server did not start: {engine.tail()}") from None
            time.sleep(0.1)


def llama_cpp_python_server(model: Path, tmp: Path, *extra: str, logits_all: bool = True, ctx: int = 2048) -> Engine:
    """llama-cpp-python's OpenAI-compatible server (its logprobs need --logits_all true)."""
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
            "--port", str(port), "--n_threads", "1", "--n_ctx", str(ctx),
            "--logits_all", "true" if logits_all else "false", *extra]  # fmt: skip
    ready = "/docs" if "--api_key" in extra else "/v1/models"  # /docs asks no key; the model loads before either
    return Engine(argv, port, ready_path=ready, log=tmp / f"llama-cpp-python-{port}.log")


def llama_cpp_python_multi_server(models: dict[str, Path], tmp: Path, *, ctx: int = 2048) -> Engine:
    """llama-cpp-python's server holding several models, each under its alias (its config file)."""
    port = free_port()
    config = {"host": "127.0.0.1", "port": port,
              "models": [{"model": str(path), "model_alias": alias, "n_threads": 1, "n_ctx": ctx}
                         for alias, path in models.items()]}  # fmt: skip
    path = tmp / f"llama-cpp-python-{port}.json"
    path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "llama_cpp.server", "--config_file", str(path)]
    return Engine(argv, port, ready_path="/v1/models", log=tmp / f"llama-cpp-python-{port}.log")
