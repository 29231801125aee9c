"""The chat in a real terminal: `nudge-local chat` in tmux, keys sent as a terminal sends them
(`tmux send-keys 'question' Enter` writes them in one burst), the screen read back. Each test has its
own tmux server (-L) and its own HOME, data and config folders, so no user's tmux or history is touched."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import test_tui

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

pair = test_tui.pair  # the fixture: the pair of test_tui.py
ANSWER = "the Sure, ok."  # what the pair writes to any question


class Terminal:
    """One tmux server with one 120x40 window running a command."""

    def __init__(self, tmp_path, command: list[str]) -> None:
        home = tmp_path / "home"
        home.mkdir()
        env = {"HOME": home, "NUDGE_LOCAL_DATA_DIR": tmp_path / "data", "NUDGE_LOCAL_CONFIG": home / "config.yaml",
               "NUDGE_LOCAL_CACHE_DIR": tmp_path / "cache", "HF_HOME": tmp_path / "hf"}  # fmt: skip
        self.env = {**os.environ, **{k: str(v) for k, v in env.items()}, "TERM": "xterm-256color"}
        self.socket = f"nudge-local-test-{uuid.uuid4().hex[:12]}"
        self.path = ""
        line = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *command])
        self.tmux("new-session", "-d", "-x", "120", "-y", "40", "-s", "chat", line)
        self.path = self.tmux("display-message", "-p", "#{socket_path}").strip()

    def tmux(self, *args: str) -> str:
        run = subprocess.run(["tmux", "-L", self.socket, "-f", os.devnull, *args], env=self.env, capture_output=True,
                             text=True, timeout=20)  # fmt: skip
        assert run.returncode == 0, f"tmux {' '.join(args)}: {run.stderr}"
        return run.stdout

    def keys(self, *keys: str) -> None:
        """One send-keys: tmux writes them all at once, as a paste or fast typing reaches the app."""
        self.tmux("send-keys", "-t", "chat", *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "chat")

    def wait(self, cond, what: str, timeout: float = 60.0) -> str:
        end = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if cond(screen):
                return screen
            assert time.monotonic() < end, f"timed out waiting for {what}; the screen:\n{screen}"
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env, capture_output=True, timeout=20)
        if self.path:
            Path(self.path).unlink(missing_ok=True)  # the server's socket file outlives it


def typed(screen: str) -> str:
    """What the input box shows: the lines between its top and bottom edges."""
    lines = screen.splitlines()
    top = next(i for i, line in enumerate(lines) if "▔▔▔" in line)
    bottom = next(i for i in range(top + 1, len(lines)) if "▁▁▁" in lines[i])
    return "\n".join(line.strip(" ▊▎") for line in lines[top + 1 : bottom]).strip()


@pytest.fixture
def chat(tmp_path, pair):
    """Start the chat on a pair (by name in `pair`, with flags); kill its tmux server at the end."""
    started = []

    def start(base: str = "base", *flags: str) -> Terminal:
        command = [sys.executable, "-m", "nudge_local.cli", "chat", "--base", str(pair[base]), "--nudge",
                   str(pair["nudger"]), "--threads", "1", *flags]  # fmt: skip
        terminal = Terminal(tmp_path, command)
        started.append(terminal)
        terminal.wait(lambda s: "· ready" in s, "the models to load")
        return terminal

    try:
        yield start
    finally:
        for terminal in started:
            terminal.close()


def test_a_question_and_enter_in_one_burst_is_sent_by_that_enter(chat):
    t = chat()
    t.keys("Why is the sky blue?", "Enter")
    screen = t.wait(lambda s: "· eos" in s, "the answer")
    assert "› Why is the sky blue?" in screen and ANSWER in screen
    assert typed(screen) == ""
    # two questions in one burst: the second waits for the first, then is answered too
    t.keys("First?", "Enter", "Second?", "Enter")
    screen = t.wait(lambda s: s.count("· eos") == 3, "both answers")
    assert screen.index("› First?") < screen.index("› Second?") and typed(screen) == ""


def test_esc_stops_the_answer_and_puts_the_question_back(chat):
    t = chat("endless", "--max-tokens", "100000", "--ctx", "65536")
    t.keys("Go on", "Enter")
    t.wait(lambda s: "writing…" in s and "› Go on" in s, "the answer to start")
    t.keys("Escape")
    screen = t.wait(lambda s: "· cancelled" in s, "the answer to stop")
    assert typed(screen) == "Go on" and "· ready" in screen
