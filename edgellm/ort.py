"""The ONNX Runtime backend: `edgellm.LLM(folder)` on a folder made by `edgellm convert --format onnx`.

The model's forward pass runs in ONNX Runtime; everything else is the native core's: the tokenizer, the chat
template, end-of-generation tokens, the sampler chain and the incremental detokenizer come from
`tokenizer.gguf` (a GGUF without tensors, loaded with vocab_only=True). `OrtContext` stands in for the native
context: it carries the KV cache between calls as numpy arrays fed back as the graph's past_key_values inputs.

Not available on ONNX folders: speculative decoding (draft model, prompt lookup), saved sessions, and choosing
the KV cache type (it is the exported graph's: float32 for every quant type).

onnxruntime is imported only when a folder is opened, so `import edgellm` never loads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgellm import _core
from edgellm._jsonfile import read_json_object
from edgellm.errors import (
    ContextFullError,
    EdgeLLMError,
    InvalidArgumentError,
    ModelFileError,
    UnsupportedError,
)
from edgellm.llm import LLM, GenerationStats, Sampler, _check_sizes, _context_length

FORMAT = "edgellm-onnx"
FORMAT_VERSION = 1
META_NAME = "edgellm.json"
MODEL_NAME = "model.onnx"
DATA_NAME = "model.onnx_data"
TOKENIZER_NAME = "tokenizer.gguf"
_KV_DTYPES = ("float32", "float16")
_SPECULATIVE_ERROR = "speculative decoding runs on GGUF models (the native core)"

__all__ = ["OnnxLLM", "OrtContext", "read_meta"]


def _import_ort(folder: Path) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UnsupportedError(f"{folder}: an ONNX folder runs on ONNX Runtime, which is not installed: "
                               f"pip install 'edgellm[onnx]'") from None
    return onnxruntime


def read_meta(folder: Path) -> dict[str, Any]:
    """edgellm.json of an exported folder, checked (fields, types, the files it needs); ModelFileError names
    the file and the field."""
    path = folder / META_NAME
    if not path.is_file():
        raise ModelFileError(f"{path}: missing: {folder} is not an ONNX folder made by `edgellm convert "
                             f"--format onnx` (a GGUF model is a file)")
    meta = read_json_object(path, ModelFileError)
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: field 'format': expected {FORMAT!r}, got {meta.get('format')!r}")

    def field(key: str, types: type | tuple[type, ...], ok: Any = None, want: str = "") -> Any:
        value = meta.get(key)
        if value is None:
            raise ModelFileError(f"{path}: field '{key}': missing")
        if not isinstance(value, types) or isinstance(value, bool) or (ok is not None and not ok(value)):
            raise ModelFileError(f"{path}: field '{key}': {want or 'wrong type'}, got "
                                 f"{json.dumps(value)[:60]}")
        return value

    version = field("version", int, lambda v: v >= 1, "expected a version number")
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{path}: field 'version': {version} is newer than this edgellm reads "
                             f"({FORMAT_VERSION}); upgrade edgellm or convert the model again")
    for key in ("n_layer", "n_head_kv", "head_dim", "n_vocab", "n_logits"):
        field(key, int, lambda v: v > 0, "expected a positive integer")
    field("n_ctx_train", int, lambda v: v >= 0, "expected an integer >= 0")
    field("kv_dtype", str, lambda v: v in _KV_DTYPES, f"expected one of {', '.join(_KV_DTYPES)}")
    for key in ("inputs", "outputs"):
        field(key, list, lambda v: all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in v),
              "expected a list of {name, type, shape}")
    files = field("files", list, lambda v: MODEL_NAME in v and all(x in (MODEL_NAME, DATA_NAME) for x in v),
                  f"expected {MODEL_NAME} and optionally {DATA_NAME}")
    for name in [*files, TOKENIZER_NAME]:
        if not (folder / name).is_file():
            raise ModelFileError(f"{folder / name}: missing (the ONNX folder is incomplete: convert "
                                 f"the model again)")
    return meta


class OrtContext:
    """The KV cache and the last logits of one sequence, evaluated by an ONNX Runtime session.

    The part of the native context's interface that LLM uses: n_ctx, n_past, n_evaluated, kv_bytes,
    tokens(), eval(), logits(), truncate(), prefill(), close(). The cache: per layer, one array (1, n_head_kv,
    n_past, head_dim) of keys and one of values, replaced by the graph's present.* outputs after every call.
    """

    def __init__(self, folder: Path, meta: dict[str, Any], n_ctx: int, n_batch: int, n_threads: int,
                 n_vocab: int):
        ort = _import_ort(folder)
        self.path = folder / MODEL_NAME
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if n_threads > 0:
            options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001  ONNX Runtime raises its own types for unreadable models
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError(f"{self.path}: ONNX Runtime cannot load it: {text}") from None
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        n_layer = meta["n_layer"]
        self._past = [f"past_key_values.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]
        self._present = [f"present.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]
        known = {"input_ids", "attention_mask", "position_ids", *self._past}
        missing = [n for n in ("input_ids", "attention_mask", *self._past) if n not in inputs]
        missing += [n for n in ("logits", *self._present) if n not in outputs]
        if missing or inputs - known:
            what = f"lacks {missing[0]}" if missing else f"has an input we do not feed: {min(inputs - known)}"
            raise ModelFileError(f"{self.path}: the graph {what} (edgellm.json gives {n_layer} layers)")
        self._position_ids = "position_ids" in inputs
        self._outputs = ["logits", *self._present]
        dtype = np.dtype(meta["kv_dtype"])
        self._empty = np.zeros((1, meta["n_head_kv"], 0, meta["head_dim"]), dtype=dtype)
        self._kv: list[np.ndarray] = [self._empty] * len(self._past)
        self._tokens: list[int] = []
        self._logits = np.zeros((0, n_vocab), dtype=np.float32)
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.n_vocab = n_vocab
        self.n_evaluated = 0
        self.kv_bytes = 2 * n_layer * meta["n_head_kv"] * meta["head_dim"] * n_ctx * dtype.itemsize

    @property
    def n_past(self) -> int:
        return len(self._tokens)

    def tokens(self) -> list[int]:
        return list(self._tokens)

    def logits(self) -> np.ndarray:
        """Logits of the last eval: every row with logits_all, else the last one (rows x n_vocab, float32)."""
        return self._logits.copy()

    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> None:
        n = len(tokens)
        if n == 0:
            raise InvalidArgumentError("eval: no tokens given")
        for i, t in enumerate(tokens):
            if not 0 <= t < self.n_vocab:
                raise InvalidArgumentError(f"token id {t} at position {i} is outside the vocabulary "
                                           f"[0, {self.n_vocab})")
        if self.n_past + n > self.n_ctx:
            raise ContextFullError(f"context full: {self.n_past} cached + {n} new tokens exceed n_ctx "
                                   f"{self.n_ctx}")
        rows: list[np.ndarray] = []
        kv, past = self._kv, self.n_past
        for start in range(0, n, self.n_batch):
            chunk = list(tokens[start:start + self.n_batch])
            logits, kv = self._run(chunk, past, kv)
            past += len(chunk)
            self.n_evaluated += len(chunk)
            if logits_all:
                rows.append(logits)
            elif start + len(chunk) == n:
                rows.append(logits[-1:])
        self._kv = kv
        self._tokens.extend(int(t) for t in tokens)
        self._logits = np.ascontiguousarray(np.concatenate(rows) if len(rows) > 1 else rows[0])

    def _run(self, chunk: list[int], past: int, kv: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One forward pass of chunk after past cached tokens: (logits (len(chunk), n_vocab), the new KV)."""
        if self._session is None:
            raise EdgeLLMError(f"{self.path}: the context is closed")
        n = len(chunk)
        feed: dict[str, np.ndarray] = {
            "input_ids": np.asarray([chunk], dtype=np.int64),
            "attention_mask": np.ones((1, past + n), dtype=np.int64),
        }
        if self._position_ids:
            feed["position_ids"] = np.arange(past, past + n, dtype=np.int64)[None]
        feed.update(zip(self._past, kv))
        try:
            out = self._session.run(self._outputs, feed)
        except Exception as e:  # noqa: BLE001  onnxruntime's errors are not EdgeLLMError
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EdgeLLMError(f"{self.path}: ONNX Runtime failed: {text}") from None
        logits = out[0][0]
        if logits.shape[-1] != self.n_vocab:  # a padded embedding: rows past the tokenizer are never sampled
            logits = logits[:, :self.n_vocab]
        return np.asarray(logits, dtype=np.float32), out[1:]

    def truncate(self, n_past: int) -> None:
        """Forgets cached tokens from position n_past on."""
        if n_past < 0 or n_past > self.n_past:
            raise InvalidArgumentError(f"truncate: n_past {n_past} is beyond the {self.n_past} cached tokens")
        if n_past < self.n_past:
            self._kv = [np.ascontiguousarray(a[:, :, :n_past]) if n_past else self._empty for a in self._kv]
            del self._tokens[n_past:]
        self._logits = self._logits[:0]

    def prefill(self, ids: Sequence[int]) -> int:
        """Reuses the longest cached prefix of ids (keeping at least one token to evaluate, so that there are
        logits), evaluates the rest; returns the number of tokens reused."""
        n = len(ids)
        if n == 0:
            raise InvalidArgumentError("prefill: no tokens given")
        if n > self.n_ctx:
            raise ContextFullError(f"context full: {n} tokens exceed n_ctx {self.n_ctx}")
        common = 0
        limit = min(self.n_past, n - 1)
        while common < limit and self._tokens[common] == ids[common]:
            common += 1
        self.truncate(common)
        self.eval(ids[common:], False)
        return common

    def close(self) -> None:
        self._session = None
        self._kv = []
        self._tokens = []


class OnnxLLM(LLM):
    """`LLM` over a folder exported by `edgellm convert --format onnx` (LLM(folder) returns one): the same
    API, the forward pass in ONNX Runtime. n_threads sets ONNX Runtime's intra-op threads (0 = its default,
    all cores); n_batch bounds the tokens of one forward pass over a long prompt (and its logits' memory)."""

    def __init__(self, model_path: str | os.PathLike | None = None, *, n_ctx: int = 4096, n_threads: int = 0,
                 n_batch: int = 512, seed: int | None = 0, kv_type: str = "f16", vocab_only: bool = False,
                 draft_model: str | os.PathLike | None = None, draft_max: int = 8,
                 draft_p_min: float | None = None):
        if model_path is None:
            raise InvalidArgumentError("model_path: OnnxLLM needs a folder made by `edgellm convert --format "
                                       "onnx`")
        folder = Path(model_path)
        _check_sizes(n_ctx, n_batch, n_threads)
        if draft_model is not None:
            raise InvalidArgumentError(f"draft_model: {_SPECULATIVE_ERROR}; {folder} is an ONNX folder")
        meta = read_meta(folder)
        if kv_type != "f16":  # the default is accepted: it is what every caller passes without choosing
            raise InvalidArgumentError(f"kv_type={kv_type!r}: {folder} is an ONNX folder; its KV cache has "
                                       f"the exported graph's type ({meta['kv_dtype']}) and cannot be chosen")
        self.path = folder
        self.seed = seed
        self.draft_path = None
        self.draft_max = draft_max
        self.draft_p_min = draft_p_min  # no draft model here: kept for the signature
        self.meta = meta
        self._model: Any = _core.Model(str(folder / TOKENIZER_NAME), True)
        self._ctx: Any = None
        self._draft_model: Any = None
        self._draft_ctx: Any = None
        self.last_stats = GenerationStats()
        if self._model.n_vocab != meta["n_vocab"]:
            raise ModelFileError(f"{folder / META_NAME}: field 'n_vocab': {meta['n_vocab']}, but "
                                 f"{TOKENIZER_NAME} has {self._model.n_vocab} tokens")
        if meta["n_logits"] < meta["n_vocab"]:
            raise ModelFileError(f"{folder / META_NAME}: field 'n_logits': {meta['n_logits']} is smaller "
                                 f"than the {meta['n_vocab']} tokens")
        if not vocab_only:
            n = _context_length(n_ctx, meta["n_ctx_train"])
            if n <= 0:
                raise InvalidArgumentError(f"n_ctx=0: {folder / META_NAME} gives no training context; "
                                           f"pass n_ctx")
            self._ctx = OrtContext(folder, meta, n, n_batch, n_threads, meta["n_vocab"])

    @property
    def n_ctx_train(self) -> int:
        self._model_handle()
        return int(self.meta["n_ctx_train"])

    def save_state(self, path: str | os.PathLike) -> None:
        raise InvalidArgumentError(f"save_state: saved sessions need the native core (a GGUF model); "
                                   f"{self.path} runs on ONNX Runtime")

    def load_state(self, path: str | os.PathLike) -> None:
        raise InvalidArgumentError(f"load_state: saved sessions need the native core (a GGUF model); "
                                   f"{self.path} runs on ONNX Runtime")

    def _speculator(self, speculative: str | None) -> tuple[Any, str | None]:
        if speculative in ("draft", "lookup"):
            raise InvalidArgumentError(f"speculative={speculative!r}: {_SPECULATIVE_ERROR}; {self.path} is "
                                       f"an ONNX folder")
        return super()._speculator(None if speculative == "auto" else speculative)

    def _sample_next(self, ctx: Any, sampler: Sampler) -> int:
        return sampler._s.sample(ctx.logits()[-1])
