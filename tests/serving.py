"""`nudge-local serve` as a subprocess for tests/test_server.py: started on a free loopback port
(--port 0, the port read from the line it prints once it listens), stopped by signal, with a bound
on every wait; and the server-sent events of a raw stream."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx

ANNOUNCE = re.compile(r"nudge-local: serving (\S+) at http://127\.0\.0\.1:(\d+)/v1 ")
START_TIMEOUT = 30.0  # seconds for the models to load and the port to open
# One thread per model: the tiny models gain nothing from more, and llama.cpp's threads spin-wait for
# each other, so on a machine whose cores are all busy (CI, tests side by side) every decode stalls.
THREADS = ("--threads", "1")


def command(*args: str) -> list[str]:
    """A nudge-local command line run by this interpreter."""
    return [sys.executable, "-m", "nudge_local.cli", *args]


class Served:
    """One running `nudge-local serve`; its stderr is read on a thread so no wait can block."""

    def __init__(self, base: Path | None, nudger: Path | None, *flags: str, env: dict | None = None) -> None:
        """`base` and `nudger` None: the pair `serve` chooses itself (a catalog alias in `flags`, or none)."""
        files = ["--base", str(base), "--nudge", str(nudger)] if base is not None else []
        argv = command("serve", *files, "--port", "0", *THREADS, *flags)
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.model_id, self.port = self._wait_for_announce()
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            self._new.put(line)
        self._new.put(None)

    def _wait_for_announce(self) -> tuple[str, int]:
        deadline = time.monotonic() + START_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._new.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            m = ANNOUNCE.match(line)
            if m:
                return m.group(1), int(m.group(2))
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"the server did not announce its port; stderr:\n{self.stderr}")

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30.0), **kw)

    def openai(self, api_key: str = "unused"):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=30.0)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Send `sig` and wait; SIGKILL as a last resort. The exit code (None where it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
                self._reader.join(timeout)
                return None
        self._reader.join(timeout)  # all of stderr is in self.lines
        return self.proc.returncode


def events(response: httpx.Response | Iterator[str]):
    """The `data:` payloads of a server-sent event stream (a response, or the rest of its lines), in
    order ("[DONE]" as the text)."""
    for line in response.iter_lines() if isinstance(response, httpx.Response) else response:
        if line.startswith("data:"):
            yield line[5:].strip()


def read_stream(response: httpx.Response | Iterator[str]) -> tuple[list[dict], bool]:
    """Every JSON event of a stream, and whether it ended with [DONE] (nothing may follow it)."""
    out, done = [], False
    for data in events(response):
        assert not done, f"an event after [DONE]: {data}"
        if data == "[DONE]":
            done = True
        else:
            out.append(json.loads(data))
    return out, done
