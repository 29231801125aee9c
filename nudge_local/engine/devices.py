"""Where the models run: the backend this build has, GPU layers, and a context size that fits memory."""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
from pathlib import Path

import llama_cpp as ll

from nudge_local.engine.errors import NudgeError
from nudge_local.engine.gguf_check import model_header

DEFAULT_CONTEXT = 4096  # enough for a chat of several turns
HEADROOM = 512 * 2**20  # bytes left free for llama.cpp's compute buffers and the app


@ll.llama_log_callback
def _quiet_log(level, text, user_data):  # noqa: ARG001 - llama.cpp's log goes nowhere
    return None


_backend_ready = False


def init_backend() -> None:
    """Once per process: llama.cpp's log silenced (never by redirecting file descriptors, which
    blanks a terminal UI) and its backend initialised."""
    global _backend_ready
    if not _backend_ready:
        ll.llama_log_set(_quiet_log, ctypes.c_void_p(0))  # _quiet_log stays referenced at module level
        ll.llama_backend_init()
        _backend_ready = True


def amx_build() -> bool:
    """Whether this llama.cpp build multiplies quantized weights with Intel AMX. Its AMX kernels crash
    the process inside llama_decode on quantized models (seen with Q4_K_M and Q4_1 on a Xeon with
    AMX, llama-cpp-python 0.3.36), so models load without extra buffer types there."""
    return b"AMX_INT8 = 1" in ll.llama_print_system_info()


def default_threads() -> int:
    """Every core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS has no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def gpu_offload_supported() -> bool:

    init_backend()
    return bool(ll.llama_supports_gpu_offload())


def backend() -> str:
    """ "CUDA", "Metal", "Vulkan", ... when this llama.cpp build can offload to a GPU, else "CPU"."""

    if not gpu_offload_supported():
        return "CPU"
    info = ll.llama_print_system_info().decode("utf-8", "replace")
    for name in ("CUDA", "Metal", "METAL", "Vulkan", "HIP", "SYCL"):
        if name in info:
            return "Metal" if name == "METAL" else name
    return "GPU" if platform.system() != "Darwin" else "Metal"


def rebuild_hint() -> str | None:
    """How to rebuild llama-cpp-python for this machine's GPU, when the build lacks it."""
    if backend() != "CPU":
        return None
    pin = "llama-cpp-python==0.3.36"
    flags = "--force-reinstall --no-cache-dir"
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return f'CMAKE_ARGS="-DGGML_METAL=on" pip install {flags} {pin}'
    if shutil.which("nvidia-smi") or Path("/proc/driver/nvidia").exists():
        return f'CMAKE_ARGS="-DGGML_CUDA=on" pip install {flags} {pin}'
    return None


def gpu_layers(requested: int | None) -> int:
    """All layers (-1) where the build can offload, none otherwise, unless a number was asked for."""
    if requested is not None:
        return requested
    return -1 if gpu_offload_supported() else 0


def model_shape(path: Path) -> dict:
    """Training context and KV-cache bytes per token (F16 cache) from the GGUF header."""
    kv, _ = model_header(path)
    arch = kv.get("general.architecture", "")

    def get(key, default=0):
        v = kv.get(f"{arch}.{key}", default)
        return max(v) if isinstance(v, list) and v else v

    n_layer = get("block_count")
    n_embd = get("embedding_length")
    n_head = get("attention.head_count", 1) or 1
    n_head_kv = get("attention.head_count_kv", n_head) or n_head
    k_len = get("attention.key_length", n_embd // n_head)
    v_len = get("attention.value_length", n_embd // n_head)
    return {
        "context_length": get("context_length", DEFAULT_CONTEXT) or DEFAULT_CONTEXT,
        "kv_bytes_per_token": n_layer * n_head_kv * (k_len + v_len) * 2,
        "weights_bytes": path.stat().st_size,
    }


def available_memory() -> tuple[int, int]:
    """(available, total) bytes of system memory."""
    import psutil

    vm = psutil.virtual_memory()
    return vm.available, vm.total


def plan_context(paths: list[Path], requested: int | None = None, *, memory: tuple[int, int] | None = None) -> int:
    """The context size per model: the request, or what the pair needs (DEFAULT_CONTEXT, at most the
    shortest training context) capped by the memory left after the weights. A pair whose weights do
    not fit is one sentence."""
    shapes = [model_shape(p) for p in paths]
    if requested:
        return requested
    available, total = memory or available_memory()
    weights = sum(s["weights_bytes"] for s in shapes)
    gb = 1e9
    if weights + HEADROOM > total:
        raise NudgeError(
            f"The models need {weights / gb:.1f} GB but this machine has {total / gb:.1f} GB of memory; "
            f"choose a smaller pair (`nudge-local models`)."
        )
    want = min(DEFAULT_CONTEXT, *(s["context_length"] for s in shapes))
    per_token = sum(s["kv_bytes_per_token"] for s in shapes) or 1
    # Weights are memory-mapped: pages already cached count as available, so budget against both.
    budget = min(available, total - weights) - HEADROOM
    fits = budget // per_token
    if fits < 256:
        raise NudgeError(
            f"Only {max(available, 0) / gb:.1f} GB of memory is free, too little for the models' context; "
            f"close other programs or choose a smaller pair (`nudge-local models`)."
        )
    return max(256, min(want, fits) // 256 * 256)
