"""Check a GGUF file before llama.cpp sees it, so a bad file is one sentence, never a crash."""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from nudge_local.engine.errors import NudgeError

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)

# The architectures of the llama.cpp vendored in llama-cpp-python 0.3.36 (LLM_ARCH_NAMES in
# src/llama-arch.cpp); the dependency is pinned, so this list moves with the pin.
SUPPORTED_ARCHITECTURES = frozenset(
    """
llama llama4 deci falcon grok gpt2 gptj gptneox mpt baichuan starcoder refact bert modern-bert
nomic-bert nomic-bert-moe neo-bert jina-bert-v2 jina-bert-v3 eurobert bloom stablelm qwen qwen2
qwen2moe qwen2vl qwen3 qwen3moe qwen3next qwen3vl qwen3vlmoe qwen35 qwen35moe qwen4exp phi2 phi3
phimoe plamo plamo2 plamo3 codeshell orion internlm2 minicpm minicpm3 gemma gemma2 gemma3 gemma3n
gemma4 gemma4-assistant gemma-embedding starcoder2 mamba mamba2 maple jamba falcon-h1 xverse
command-r cohere2 cohere2moe dbrx olmo olmo2 olmoe muse-glimmer openelm arctic deepseek deepseek2
deepseek2-ocr deepseek32 deepseek4 chatglm glm4 glm4moe glm-dsa bitnet t5 t5encoder jais jais2
nemotron nemotron_h nemotron_h_moe exaone exaone4 exaone-moe rwkv6 rwkv6qwen2 rwkv7 arwkv7 granite
granitemoe granitehybrid graniteswitch granite_swa chameleon wavtokenizer-dec plm bailingmoe
bailingmoe2 bailingmoe3 dots1 dots3note arcee afmoe laguna ernie4_5 ernie4_5-moe hunyuan-moe
hunyuan-dense hunyuan_vl hy_v3 hy_v4 smollm3 gpt-oss lfm2 lfm2moe dream smallthinker llada
llada-moe seed_oss grovemoe apertus minimax-01 hrm_text minimax-m2 minimax-m3 cogvlm rnd1
pangu-embedded mistral3 eagle3 dflash mistral4 paddleocr mimo2 step35 spark2_5 llama-embed
maincoder kimi-linear kimi-k3 glm5-next talkie mellum nanbeige qwen3tts pockettts
""".split()
)


def check_gguf(path: str | os.PathLike, *, role: str = "model") -> Path:
    """Raise NudgeError unless `path` is a readable GGUF with a supported architecture whose
    tensor data lies inside the file. Returns the resolved path."""
    p = Path(path).expanduser()
    if not p.exists():
        raise NudgeError(f"The {role} file {p} does not exist; check the path.")
    if not p.is_file():
        raise NudgeError(f"The {role} path {p} is not a file; give the path of a .gguf file.")
    try:
        with p.open("rb") as f:
            head = f.read(8)
    except OSError as e:
        raise NudgeError(f"The {role} file {p} cannot be read ({e.strerror}).") from None
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise NudgeError(f"The {role} file {p} is not a GGUF file; give a .gguf model file.")
    version = struct.unpack("<I", head[4:8])[0]
    if version not in GGUF_VERSIONS:
        raise NudgeError(
            f"The {role} file {p} is GGUF version {version}, which this llama.cpp cannot read "
            f"(it reads versions 2 and 3); convert or download it again."
        )
    arch, tensors_end = _scan(p, role)
    if arch is None:
        raise NudgeError(f"The {role} file {p} names no architecture; it is not a usable model file.")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise NudgeError(
            f"The {role} file {p} has architecture '{arch}', which this llama.cpp build does not support; "
            f"upgrade llama-cpp-python or choose another model."
        )
    if tensors_end == 0:
        raise NudgeError(f"The {role} file {p} holds no weights (a vocabulary-only GGUF); give a model file.")
    size = p.stat().st_size
    if tensors_end > size:
        raise NudgeError(f"The {role} file {p} is truncated ({size} of {tensors_end} bytes); download it again.")
    return p.resolve()


class _Corrupt(Exception):
    pass


# Scalar value types of the GGUF key-value section: struct format by type id.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Bounds-checked little-endian reads over a memory map (a bad length is corruption, not a crash)."""

    def __init__(self, buf) -> None:
        self.buf, self.pos, self.size = buf, 0, len(buf)

    def take(self, fmt: str):
        n = struct.calcsize("<" + fmt)
        if self.pos + n > self.size:
            raise _Corrupt
        v = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return v[0] if len(v) == 1 else v

    def string(self, keep: bool = True) -> bytes | None:
        n = self.take("Q")
        if self.pos + n > self.size:
            raise _Corrupt
        s = bytes(self.buf[self.pos : self.pos + n]) if keep else None
        self.pos += n
        return s

    def value(self, vtype: int, keep: bool):
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            s = self.string(keep)
            return s.decode("utf-8", "replace") if keep else None
        if vtype != _ARRAY:
            raise _Corrupt
        itype, count = self.take("I"), self.take("Q")
        if itype in _SCALARS:
            width = struct.calcsize("<" + _SCALARS[itype])
            if self.pos + width * count > self.size:
                raise _Corrupt
            items = None
            if keep:
                items = list(struct.unpack_from(f"<{count}{_SCALARS[itype]}", self.buf, self.pos))
            self.pos += width * count
            return items
        if count > (self.size - self.pos) // 8:
            raise _Corrupt
        items = [self.value(itype, keep) for _ in range(count)]
        return items if keep else None


def read_header(path: str | os.PathLike, keys=None) -> tuple[dict, list[tuple[str, int, int]]]:
    """Walk a GGUF header without touching tensor data (gguf's GGUFReader builds a numpy view per
    array item: 6-8 s for a 152k vocabulary). Returns the key-values named by `keys` (a predicate
    on the key; all when None), and (name, data start, byte size) per tensor, with absolute offsets."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        c = _Cursor(buf)
        c.take("4s")
        c.take("I")
        n_tensors, n_kv = c.take("Q"), c.take("Q")
        if n_tensors > c.size or n_kv > c.size:
            raise _Corrupt
        kv = {}
        for _ in range(n_kv):
            key = c.string().decode("utf-8", "replace")
            keep = keys is None or keys(key) or key in ("general.architecture", "general.alignment")
            v = c.value(c.take("I"), keep)
            if keep:
                kv[key] = v
        infos = []
        for _ in range(n_tensors):
            name = c.string().decode("utf-8", "replace")
            n_dims = c.take("I")
            if n_dims > 8:
                raise _Corrupt
            dims = [c.take("Q") for _ in range(n_dims)]
            ttype, offset = c.take("I"), c.take("Q")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            except (ValueError, KeyError):
                raise _Corrupt from None
            n_el = 1
            for d in dims:
                n_el *= d
            infos.append((name, offset, n_el // block * type_size))
        align = kv.get("general.alignment", 32) or 32
        data_start = (c.pos + align - 1) // align * align
    return kv, [(n, data_start + off, size) for n, off, size in infos]


_headers: dict[tuple[str, int, int], tuple[dict, list[tuple[str, int, int]]]] = {}


def model_header(path: str | os.PathLike) -> tuple[dict, list[tuple[str, int, int]]]:
    """read_header's key-values (all but the tokenizer's) and tensors, walked once per file version:
    loading a model reads the header three times (check, context plan, load), 0.2-0.5 s each with a
    128-152k vocabulary."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _headers:
        _headers[key] = read_header(p, keys=lambda k: not k.startswith("tokenizer."))
    return _headers[key]


def _scan(p: Path, role: str) -> tuple[str | None, int]:
    try:
        kv, tensors = model_header(p)
    except (_Corrupt, ValueError, OSError):
        raise NudgeError(
            f"The {role} file {p} is corrupt or truncated (its GGUF header cannot be read); download it again."
        ) from None
    arch = kv.get("general.architecture")
    end = max((off + size for _, off, size in tensors), default=0)
    return arch, end
