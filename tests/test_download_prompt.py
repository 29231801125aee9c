"""Downloads ask first: the command line asks on a terminal; the library never reads the terminal."""

from __future__ import annotations

import ast
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nudge_local
from nudge_local.catalog import HubFile
from nudge_local.choose import fetch
from nudge_local.engine.errors import NudgeError
from test_catalog_hub import hub, reachable_hub  # noqa: F401 - the fixtures

ABSENT = HubFile("test-org/absent-GGUF", "base.gguf")


def test_fetch_without_anyone_to_ask_is_one_sentence(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("nudge_local.choose.hub_unreachable", lambda: False)  # as if online
    monkeypatch.setattr("nudge_local.choose.remote_size", lambda f: 1000)
    monkeypatch.setattr("nudge_local.choose.download", lambda f: pytest.fail("downloaded without asking"))
    with pytest.raises(NudgeError, match="add --yes"):
        fetch([ABSENT], yes=False, confirm=None)
    asked = []
    with pytest.raises(NudgeError, match="Nothing was downloaded"):
        fetch([ABSENT], yes=False, confirm=lambda q: asked.append(q) or False)
    assert asked == ["Download now? [y/N] "]


def test_the_library_never_reads_the_terminal():
    """Only the command line may call input(): a chat, a server or a script using the engine must
    never block on a question no one sees."""
    root = Path(nudge_local.__file__).parent
    callers = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "input":
                callers.append(path.relative_to(root).as_posix())
    assert callers == ["commands.py"]


def _run_in_terminal(env: dict, args: list[str], answer: bytes, timeout: float = 60.0) -> tuple[int, str]:
    """Run the command line on a pseudo-terminal, answer its question, return (exit code, output)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "nudge_local.cli", *args], stdin=follower, stdout=follower,
                            stderr=follower, env=env, close_fds=True)  # fmt: skip
    os.close(follower)
    out, answered, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if not answered and b"Download now?" in out:
                os.write(leader, answer)
                answered = True
            if proc.poll() is not None and not ready:
                break
        return proc.wait(timeout=10), out.decode("utf-8", "replace")
    finally:
        proc.kill()
        os.close(leader)


def test_the_command_line_asks_on_a_terminal_and_takes_no_for_an_answer(hub, reachable_hub):  # noqa: F811
    env = dict(hub["env"], HF_ENDPOINT=reachable_hub)
    env.pop("HF_HUB_OFFLINE")
    code, out = _run_in_terminal(env, ["run", "Q", "--pair", "absent"], b"n\n")
    assert "will download 135.8 KB" in out and "Download now? [y/N]" in out
    assert code == 2 and "Nothing was downloaded" in out and "Traceback" not in out
