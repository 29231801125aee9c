"""The wheel built from the working tree: every module and data file of the source tree in it, one
top-level name (nudge_local), and, installed (not editable) into a fresh environment, every console
command's --help and one answer of the chat on a generated pair."""

from __future__ import annotations

import argparse
import ast
import configparser
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import tomllib

from nudge_local.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> its place in the wheel (pyproject's package-dir).
SOURCES = {"nudge_local": "nudge_local", "tui": "nudge_local/tui", "models": "nudge_local/models"}
NOT_SHIPPED = {"README.md"}  # notes for readers of the repository
BUILD_LEFTOVERS = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                         ".pytest_cache", ".ruff_cache", "*.gguf")  # fmt: skip


def source_files() -> set[str]:
    """Every file the installed package needs, as its path inside the wheel."""
    found = set()
    for folder, target in SOURCES.items():
        for path in (ROOT / folder).rglob("*"):
            rel = path.relative_to(ROOT / folder)
            cache = "__pycache__" in rel.parts or path.suffix == ".pyc"
            if path.is_file() and not cache and rel.name not in NOT_SHIPPED:
                found.add(f"{target}/{rel.as_posix()}")
    return found


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    command = " ".join(str(c) for c in cmd)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the working tree, so a stale build/ folder cannot add files to it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=BUILD_LEFTOVERS)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", src, "-w", tmp / "dist"])
    (built,) = (tmp / "dist").glob("nudge_local-*.whl")
    return built


def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def dist_info_file(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        (path,) = [n for n in z.namelist() if n.endswith(f".dist-info/{name}")]
        return z.read(path).decode()


def console_scripts(wheel: Path) -> dict[str, str]:
    entry_points = configparser.ConfigParser()
    entry_points.read_string(dist_info_file(wheel, "entry_points.txt"))
    return dict(entry_points["console_scripts"])


def subcommands() -> list[str]:
    """nudge-local's subcommands, read from its parser, so a new one is smoke-tested too."""
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return [name for a in actions for name in a.choices]


def test_wheel_holds_every_module_and_data_file(wheel):
    names = set(wheel_names(wheel))
    expected = source_files()
    some = {"nudge_local/tui/app.tcss", "nudge_local/tui/screens/compare.py", "nudge_local/models/catalog.yaml"}
    assert some < expected  # the walk above finds the mapped folders
    assert expected - names == set(), "missing from the wheel"


def test_wheel_installs_one_top_level_name(wheel):
    top = {n.split("/")[0] for n in wheel_names(wheel)}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1 and top - dist_info == {"nudge_local"}
    if any(n.endswith(".dist-info/top_level.txt") for n in wheel_names(wheel)):
        assert dist_info_file(wheel, "top_level.txt").split() == ["nudge_local"]
    assert console_scripts(wheel) == {"nudge-local": "nudge_local.cli:main"}


def test_installed_wheel_runs_every_command_and_the_chat(wheel, tmp_path):
    """A fresh environment, the wheel with its dependencies (pip's wheel cache holds the llama.cpp
    build), run from outside the repository so the source tree cannot be imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env = {k: v for k, v in env.items() if not k.startswith("NUDGE_LOCAL_")}
    env["NUDGE_LOCAL_CONFIG"] = str(tmp_path / "no-config.yaml")
    env["NUDGE_LOCAL_DATA_DIR"] = str(tmp_path / "data")
    venv = tmp_path / "venv"
    started = time.perf_counter()
    run([sys.executable, "-m", "venv", venv], env=env)
    run([venv / "bin/python", "-m", "pip", "install", "-q", "--no-compile", wheel], env=env, cwd=tmp_path, timeout=900)
    installed = time.perf_counter() - started
    assert installed < 300, f"installing took {installed:.0f} s: llama-cpp-python rebuilt, not from pip's cache"

    for script in console_scripts(wheel):
        assert "usage:" in run([venv / "bin" / script, "--help"], env=env, cwd=tmp_path).stdout
        for command in subcommands():
            out = run([venv / "bin" / script, command, "--help"], env=env, cwd=tmp_path).stdout
            assert f"{script} {command}" in out

    out = run([venv / "bin/python", ROOT / "scripts/smoke_chat.py"], env=env, cwd=tmp_path, timeout=240).stdout
    assert f"nudge_local from {venv}" in out, out  # the installed copy, not the source tree
    assert "answer: 'the Sure, ok.'" in out, out


def _requirement_name(spec: str) -> str:
    return re.split(r"[\[<>=!~;\s]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_runtime_dependencies_are_ranges_and_every_imported_package_is_declared():
    """Exact pins break installs beside other tools: only llama-cpp-python, whose C API the engine
    calls, is pinned (the tests' exact versions are in tests/constraints.txt). Every package the
    code imports is declared, not borrowed from another's dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    assert [d for d in deps if "==" in d and _requirement_name(d) != "llama-cpp-python"] == []
    declared = {_requirement_name(d) for d in deps}
    imported = set()
    for folder in ("nudge_local", "tui"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"nudge_local", "__future__"}
    dists = importlib.metadata.packages_distributions()
    undeclared = {m: dists.get(m) for m in third_party
                  if not {_requirement_name(d) for d in dists.get(m, [m])} & declared}  # fmt: skip
    assert undeclared == {}
    pins = {_requirement_name(line.split("#")[0]) for line in (ROOT / "tests/constraints.txt").read_text().splitlines()
            if "==" in line.split("#")[0]}  # fmt: skip
    assert {"textual", "starlette", "uvicorn", "httpx2", "gguf"} <= pins
