"""scripts/device_check.sh (the GPU check) on a machine without one, and the tree scripts/prepare_device.sh makes.

The check itself runs on the GPU machine; here it must refuse with one sentence and exit code 2, before
it builds or imports anything."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.sh"
PREPARE = ROOT / "scripts" / "prepare_device.sh"
PREPARED = ROOT / ".device"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the device scripts are bash scripts")


def fake_nvidia_smi(folder: Path, *, works: bool) -> dict:
    """An environment whose PATH starts with a stand-in nvidia-smi that answers like one GPU, or fails."""
    folder.mkdir(exist_ok=True)
    stub = folder / "nvidia-smi"
    body = 'echo "NVIDIA H200, 143771 MiB, 580.159.03"' if works else 'echo "NVIDIA-SMI has failed" >&2; exit 9'
    stub.write_text(f"#!/bin/sh\n{body}\n")
    stub.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}


def check(env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**env, "NUDGE_DEVICE_WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out")}
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def assert_one_sentence(r: subprocess.CompletedProcess, *phrases: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("device_check.sh: ") and line.endswith(".") and line.count(". ") == 0, line
    assert "Traceback" not in r.stderr
    for phrase in phrases:
        assert phrase in line, line


def test_refuses_where_nvidia_smi_fails(tmp_path):
    r = check(fake_nvidia_smi(tmp_path / "bin", works=False), tmp_path)
    assert_one_sentence(r, "no NVIDIA GPU is present", "nvidia-smi")
    assert not (tmp_path / "work").exists()  # nothing was built or installed


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_refuses_on_this_machine_without_a_gpu(tmp_path):
    r = check(dict(os.environ), tmp_path)
    assert_one_sentence(r, "no NVIDIA GPU is present")


def test_refuses_without_the_prepared_folder(tmp_path):
    env = fake_nvidia_smi(tmp_path / "bin", works=True)
    env["NUDGE_DEVICE_DIR"] = str(tmp_path / "no-such-folder")
    r = check(env, tmp_path)
    assert_one_sentence(r, "scripts/prepare_device.sh", str(tmp_path / "no-such-folder"))
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("script", [SCRIPT, PREPARE], ids=lambda p: p.name)
def test_scripts_parse(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(
    not (PREPARED / "llama.cpp").is_dir(),
    reason="no .device/ here: `bash scripts/prepare_device.sh` makes it (downloads ~80 MB; not run in CI)",
)
def test_prepared_folder():
    tree = PREPARED / "llama.cpp"
    assert (tree / "CMakeLists.txt").is_file()
    assert (tree / "ggml" / "src" / "ggml-cuda" / "CMakeLists.txt").is_file()
    assert (tree / "ggml" / "src" / "ggml-cpu" / "CMakeLists.txt").is_file()
    assert (tree / "src" / "llama.cpp").is_file() and (tree / "include" / "llama.h").is_file()
    assert not list(tree.rglob("*.gguf")), "bundled models must be left out"
    for backend in ("ggml-vulkan", "ggml-sycl", "ggml-metal", "ggml-cann", "ggml-opencl", "ggml-musa", "ggml-hip"):
        assert not (tree / "ggml" / "src" / backend).exists(), backend
    for left_out in ("models", "docs", "examples", "tests", "tools"):
        assert not (tree / left_out).exists(), left_out
    assert (PREPARED / "python" / "llama_cpp" / "llama_cpp.py").is_file()
    wheels = {w.name.split("-")[0] for w in (PREPARED / "wheels").glob("*.whl")}
    assert {"gguf", "platformdirs", "diskcache", "pytest"} <= wheels, wheels
    assert list((PREPARED / "buildreq").glob("setuptools-*.whl"))
    size = sum(f.stat().st_size for f in PREPARED.rglob("*") if f.is_file())
    assert size < 40 * 2**20, f".device/ is {size / 2**20:.1f} MiB; with the repository it must stay under 64 MiB"
