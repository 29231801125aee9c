"""One loaded GGUF model: tokens, pieces, a prefix-cached KV context and logits rows.

Built on llama-cpp-python's low-level API: the high-level `Llama` keeps no logits without
`logits_all` (or keeps all of them: n_ctx x n_vocab floats), truncates pieces longer than 32 bytes
and silences logs by redirecting file descriptors.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import llama_cpp as ll
import numpy as np

from nudge_local.engine.devices import amx_build, default_threads, gpu_layers, init_backend
from nudge_local.engine.errors import ContextFull, NudgeError
from nudge_local.engine.gguf_check import check_gguf
from nudge_local.engine.interface import Completion, CompletionToken, ScoringModel
from nudge_local.engine.retokenize import Retokenizer
from nudge_local.engine.sampling import top1


def split_incomplete_utf8(data: bytes) -> tuple[bytes, bytes]:
    """Split off a trailing, not yet complete UTF-8 character (at most 3 bytes)."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 != 0x80:  # a lead (or ASCII) byte
            need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
            return (data[:-back], data[-back:]) if need > back else (data, b"")
    return data, b""


# Seconds per vocabulary token that reading the vocabulary for cuts costs (measured ~2 us):
# tokenizing from a cut starts once whole texts have cost that much to tokenize.
VOCAB_READ_SECONDS = 2e-6
BATCH_ENDS_KEPT = 4  # rows kept for batches' last positions (1 MB each for a 262k vocabulary)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


class Model(ScoringModel):
    """A GGUF model loaded into one llama.cpp context (sequence 0), used from one thread: the model
    interface (interface.py) answered by this process. It has token ids, scores a draft in one batch
    and reads its own prompts (no server reports reading them)."""

    kind = "GGUF"
    has_token_ids = True
    scores_drafts = True
    prompt_read = None

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        role: str = "model",
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        n_batch: int = 512,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        self.role = role
        self.path = check_gguf(path, role=role)
        init_backend()
        self._model = self._ctx = self._batch = None
        self.n_gpu_layers = gpu_layers(n_gpu_layers)
        self.n_threads = n_threads or default_threads()
        self._load_weights(progress)
        try:
            self._make_context(n_ctx, n_batch)
        except BaseException:
            self.close()
            raise
        self.n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self.vocab_type = ll.llama_vocab_type(self._vocab)
        self.bos = ll.llama_vocab_bos(self._vocab)
        self.eos = ll.llama_vocab_eos(self._vocab)
        self.add_bos = bool(ll.llama_vocab_get_add_bos(self._vocab))
        self._mem = ll.llama_get_memory(self._ctx)
        self._pieces: dict[int, bytes] = {}
        self._byte_tokens: dict[int, int] | None = None
        self._retokenizer: Retokenizer | bool | None = None  # None: not made yet; False: cuts not known exact
        self.vocab_matches: dict = {}
        self._tokens: list[int] = []  # what the KV cache holds, position by position
        self._batch_ends: dict[int, np.ndarray] = {}  # rows after the last token of recent batches
        self._last: np.ndarray | None = None  # logits after the last held token, when computed
        self.evaluated_tokens = 0
        self.forward_calls = 0
        # Where the time goes (the benchmark's breakdown): seconds inside llama_decode, the part of them in
        # calls a decoding mode marked as reads (`reading`), and seconds tokenizing.
        self.decode_seconds = 0.0
        self.read_seconds = 0.0
        self.tokenize_seconds = 0.0
        self.reading = False  # set by a mode before it asks: this call reads text (a prompt, the other model's)

    def _load_weights(self, progress: Callable[[float], None] | None) -> None:
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = self.n_gpu_layers
        if amx_build():
            mparams.use_extra_bufts = False  # no AMX (and so no CPU repacking): see amx_build
        if progress is not None:

            @ll.llama_progress_callback
            def on_progress(fraction, user_data):  # noqa: ARG001
                progress(float(fraction))
                return True

            mparams.progress_callback = on_progress  # referenced by this frame until loading returns
        self._model = ll.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise NudgeError(f"llama.cpp could not load the {self.role} file {self.path}; it may be damaged.")

    def _make_context(self, n_ctx: int, n_batch: int) -> None:
        """One sequence, n_ctx tokens, and a batch of n_batch tokens to fill for llama_decode."""
        self._vocab = ll.llama_model_get_vocab(self._model)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = min(n_batch, n_ctx)
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = self.n_threads
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise NudgeError(
                f"llama.cpp could not create a {n_ctx}-token context for the {self.role} model; "
                f"lower the context size or free memory."
            )
        self.n_ctx = ll.llama_n_ctx(self._ctx)
        self.n_batch = ll.llama_n_batch(self._ctx)
        self._batch = ll.llama_batch_init(self.n_batch, 0, 1)

    # -- metadata -----------------------------------------------------------------------------

    def metadata(self, key: str) -> str | None:
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = ll.llama_model_meta_val_str(self._model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", "replace")
            size = n + 1

    @property
    def name(self) -> str:
        return self.metadata("general.name") or Path(self.path).name

    @property
    def label(self) -> str:
        return Path(self.path).name

    @property
    def identity(self) -> str:
        return f"{self.label} ({Path(self.path).stat().st_size} bytes)"

    @property
    def chat_template(self) -> str | None:
        t = ll.llama_model_chat_template(self._model, None)
        return t.decode("utf-8") if t else None

    def token_texts(self) -> list[bytes]:
        """The vocabulary's raw token texts, for comparing two vocabularies."""
        return [ll.llama_vocab_get_text(self._vocab, i) or b"" for i in range(self.n_vocab)]

    # -- tokens -------------------------------------------------------------------------------

    def tokenize(self, text: str | bytes) -> list[int]:
        """tok() (docs/method.md#token-space-and-text-space): special-token text parsed, BOS added
        where the vocabulary asks for it and the text does not already start with it. Bytes that end
        inside a UTF-8 character become this vocabulary's byte tokens (tokenizers would turn them
        into U+FFFD). A text that shares its start with one tokenized lately is tokenized again only
        from its last safe cut (retokenize.py), once the model has spent on tokenizing what reading
        its vocabulary for the cuts costs."""
        t0 = time.perf_counter()
        data = text.encode("utf-8") if isinstance(text, str) else text
        head, tail = split_incomplete_utf8(data)
        if tail:
            head = head.decode("utf-8", "replace").encode("utf-8")
        if self._retokenizer is None and self.tokenize_seconds > self.n_vocab * VOCAB_READ_SECONDS:
            self._retokenizer = self._make_retokenizer()
        tokens = self._retokenizer(head) if self._retokenizer else self._tokenize_whole(head)
        for b in tail:
            tokens.append(self.byte_token(b))
        self.tokenize_seconds += time.perf_counter() - t0
        return tokens

    def count_tokens(self, text: str | bytes) -> int:
        return len(self.tokenize(text))

    def read_cuts(self) -> None:
        """Read the vocabulary for cuts now, not once tokenizing has cost as much (a benchmark's
        timed runs then all tokenize alike)."""
        if self._retokenizer is None:
            self._retokenizer = self._make_retokenizer()

    def _tokenize_whole(self, text: bytes) -> list[int]:
        """tok() of complete UTF-8 text, from its start."""
        tokens = self._tokenize_raw(text)
        if self.add_bos and self.bos >= 0 and (not tokens or tokens[0] != self.bos):
            tokens.insert(0, self.bos)
        return tokens

    def _tokenize_raw(self, text: bytes) -> list[int]:
        """llama.cpp's tokens of complete UTF-8 text: special-token text parsed, no BOS added."""
        cap = len(text) + 8
        while True:
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self._vocab, text, len(text), buf, cap, False, True)
            if n >= 0:
                return buf[:n]
            cap = -n

    def _make_retokenizer(self) -> Retokenizer | bool:
        """A Retokenizer for this vocabulary, or False where cutting is not known to be exact: a
        tokenizer other than SentencePiece or BPE, a space prefix added to what is tokenized (llama.cpp
        adds one for SentencePiece unless the file says not to), a token that strips the whitespace
        beside it. Reads every token once (about 0.5 s for 262k tokens)."""
        prefix = self.metadata("tokenizer.ggml.add_space_prefix")
        if self.vocab_type not in (ll.LLAMA_VOCAB_TYPE_SPM, ll.LLAMA_VOCAB_TYPE_BPE) or prefix == "true":
            return False
        if self.vocab_type == ll.LLAMA_VOCAB_TYPE_SPM and prefix != "false":
            return False
        strips = ll.LLAMA_TOKEN_ATTR_LSTRIP | ll.LLAMA_TOKEN_ATTR_RSTRIP
        buf = ctypes.create_string_buffer(256)
        pieces = []
        for t in range(self.n_vocab):
            if ll.llama_vocab_get_attr(self._vocab, t) & strips:
                return False
            n = ll.llama_token_to_piece(self._vocab, t, buf, 256, 0, True)
            pieces.append(buf.raw[:n] if n >= 0 else self.piece(t))
        followers = frozenset(pair[0] for pair in re.findall(rb"[^\0](?= )", b"\0".join(pieces)))
        return Retokenizer(self._tokenize_whole, self._tokenize_raw, self.piece, followers, self.bos)

    def byte_token(self, byte: int) -> int:
        """The token that prints as the single byte `byte`."""
        if self._byte_tokens is None:
            self._byte_tokens = {}
            for i in range(self.n_vocab):
                p = self.piece(i)
                if len(p) == 1:
                    self._byte_tokens.setdefault(p[0], i)
        t = self._byte_tokens.get(byte)
        if t is None:
            raise NudgeError(f"The {self.role} model's vocabulary has no token for byte {byte:#04x}.")
        return t

    def piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens rendered), possibly part of a UTF-8 character."""
        p = self._pieces.get(token)
        if p is None:
            size = 256  # Llama.detokenize's 32 bytes silently drops long pieces
            while True:
                buf = ctypes.create_string_buffer(size)
                n = ll.llama_token_to_piece(self._vocab, token, buf, size, 0, True)
                if n >= 0:
                    break
                size = -n
            p = self._pieces[token] = buf.raw[:n]
        return p

    def is_eog(self, token: int) -> bool:
        return bool(ll.llama_vocab_is_eog(self._vocab, token))

    # -- evaluation ---------------------------------------------------------------------------

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Next-token logits after `tokens`, evaluating only what the context does not hold."""
        if self._last is not None and tokens == self._tokens:
            return self._last
        self._last = self.evaluate(tokens, [len(tokens) - 1])[0]
        return self._last

    def text_logits(self, data: bytes, written: int) -> np.ndarray:  # noqa: ARG002 - its tokens say it all
        """Next-token logits after the text `data`, tokenized as this model's own tokens."""
        return self.logits(self.tokenize(data))

    def prompt_length(self, prompt: bytes) -> int:
        return len(self.tokenize(prompt))

    def complete(self, text: str, max_tokens: int, *, reading: bool = True) -> Completion:
        """What a completions server returns for `text`: up to `max_tokens` greedy tokens, each with
        its text and top-1 probability, ending early at end of generation (not reported, finish
        "stop"). Only tokens the context does not already hold are evaluated. `reading`: the first
        call reads text the model did not write (a prompt, the other model's words), for the
        timings' breakdown; later calls write."""
        seq = self.tokenize(text)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        out: list[CompletionToken] = []
        self.reading = reading
        for _ in range(max_tokens):
            t, p = top1(self.logits(seq))
            self.reading = False
            if self.is_eog(t):
                return Completion(out, "stop")
            out.append(CompletionToken(t, decoder.decode(self.piece(t)), p))
            seq.append(t)  # `seq` is ours; the context keeps its own list
        return Completion(out, "length")

    def evaluate(self, tokens: list[int], rows: list[int]) -> np.ndarray:
        """Bring the context to hold exactly `tokens` and return the logits rows after the
        positions in `rows` (ascending), one row each. Positions before the first difference from
        what the context holds are not evaluated again, unless a row is asked there that was not
        the last of a recent batch."""
        n = len(tokens)
        if n > self.n_ctx:
            raise ContextFull(
                f"The {self.role} model needs {n} tokens but its context holds {self.n_ctx}; "
                f"shorten the prompt or raise the context size."
            )
        if not n:
            raise NudgeError(f"The {self.role} model was given an empty prompt; give it some text.")
        keep = common_prefix(self._tokens, tokens)
        kept = {p: self._batch_ends[p] for p in rows if p < keep and p in self._batch_ends}
        keep = min([keep, *(p for p in rows if p not in kept)])
        keep = self._cut(keep)
        self._last = None
        out = np.empty((len(rows), self.n_vocab), dtype=np.float32)
        index = {p: i for i, p in enumerate(rows)}
        for p, row in kept.items():
            if p < keep:  # still valid after the cut (a refused cut keeps nothing)
                out[index[p]] = row
        wanted = {p for p in rows if p >= keep}
        for start in range(keep, n, self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            flagged = self._fill(chunk, start, wanted)
            self._decode(chunk)
            for i in flagged:
                row = ll.llama_get_logits_ith(self._ctx, i)
                out[index[start + i]] = np.ctypeslib.as_array(row, shape=(self.n_vocab,))
            if len(chunk) > 1 and flagged and flagged[-1] == len(chunk) - 1:
                self._keep_batch_end(start + len(chunk) - 1, out[index[start + len(chunk) - 1]])
        return out

    def _keep_batch_end(self, pos: int, row: np.ndarray) -> None:
        """Remember the row after the last token of a batch of several (a prompt, a catch-up): asked
        for again while the cache still holds that prefix (the same question again, a regenerated
        answer), it is returned as computed, not re-evaluated alone, which llama.cpp's kernels
        would round differently (docs/method.md#batch-shape-rounding)."""
        self._batch_ends[pos] = row.copy()
        while len(self._batch_ends) > BATCH_ENDS_KEPT:
            del self._batch_ends[next(iter(self._batch_ends))]

    def _fill(self, chunk: list[int], start: int, wanted: set[int]) -> list[int]:
        """Put `chunk` into the batch at positions start, start + 1, ..., asking for logits at the
        positions in `wanted`; returns the batch indices that carry logits."""
        b = self._batch
        b.n_tokens = len(chunk)
        flagged = []
        for i, t in enumerate(chunk):
            b.token[i] = t
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = (start + i) in wanted
            if b.logits[i]:
                flagged.append(i)
        return flagged

    def _decode(self, chunk: list[int]) -> None:
        """Evaluate the filled batch; the context then holds `chunk` after what it held."""
        t0 = time.perf_counter()
        rc = ll.llama_decode(self._ctx, self._batch)
        seconds = time.perf_counter() - t0
        self.forward_calls += 1
        self.decode_seconds += seconds
        if self.reading:
            self.read_seconds += seconds
        if rc != 0:
            self.reset()
            raise NudgeError(
                f"llama.cpp failed to evaluate {len(chunk)} tokens of the {self.role} model "
                f"(code {rc}); the context may be too small or memory short."
            )
        self.evaluated_tokens += len(chunk)
        self._tokens.extend(chunk)

    def _cut(self, keep: int) -> int:
        """Drop the cache past its first `keep` positions; returns how many it really kept. Recurrent
        and hybrid models refuse a partial removal: their cache is cleared, and evaluation must
        start again from position 0."""
        if keep < len(self._tokens):
            if not ll.llama_memory_seq_rm(self._mem, 0, keep, -1):
                ll.llama_memory_clear(self._mem, True)
                keep = 0
            del self._tokens[keep:]
            for p in [p for p in self._batch_ends if p >= keep]:
                del self._batch_ends[p]
        return keep

    def settle(self) -> None:
        """An answer ended (a served model stops its server writing ahead; nothing to do here)."""

    def reset(self) -> None:
        """Forget everything the context holds."""
        if self._ctx:
            ll.llama_memory_clear(self._mem, True)
        self._tokens = []
        self._batch_ends = {}
        self._last = None

    @property
    def held_tokens(self) -> list[int]:
        return list(self._tokens)

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
