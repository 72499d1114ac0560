"""One measurement of bench/run.py in a fresh process: one engine, one file, one thread count.

Not meant to be run by hand. run.py starts it as
    python bench/_bench_worker.py ENGINE MODEL THREADS PROMPT_TOKENS GEN_TOKENS REPEATS SEED OUT_JSON
or, for the memory probe, `python bench/_bench_worker.py bandwidth THREADS OUT_JSON`; it writes one JSON object
to OUT_JSON. A process per measurement makes load time and peak RSS those of one engine on one file; the worker
imports only its own engine.

Procedure, the same for both engines (the "trial"):
  reset the context; evaluate the prompt in one call (logits of the last position only); argmax of those
  logits = the first token; then GEN_TOKENS single-token evaluations, each fed the argmax of the previous
  logits (greedy, no EOS stop). prefill = the eval call; time to first token = prefill + that argmax.
One warm-up trial (16 generated tokens) comes first, then REPEATS trials; the best of each timing is kept.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

WARMUP_GEN_TOKENS = 16


def rss_mb() -> float:
    """Current resident set size, MB (1e6 bytes)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # ru_maxrss is in KiB on Linux


def prompt_ids(n: int, seed: int) -> list[int]:
    """The benchmark prompt: n token ids in [100, 40000) from a seeded RNG (the same for both engines)."""
    return np.random.default_rng(seed).integers(100, 40000, size=n).tolist()


class Engine:
    """eval(ids) appends ids to the context and computes the logits of the last one; last() returns them."""

    load_s: float
    n_vocab: int
    reset: Callable[[], None]
    eval: Callable[[Sequence[int]], None]
    last: Callable[[], np.ndarray]
    keep: object  # the engine's model object, alive as long as the closures above use it


def open_edgellm(path: str, threads: int, n_ctx: int, n_batch: int) -> Engine:
    import edgellm

    e = Engine()
    t0 = time.perf_counter()
    llm = edgellm.LLM(path, n_ctx=n_ctx, n_threads=threads, n_batch=n_batch)
    e.load_s = time.perf_counter() - t0
    e.n_vocab = llm.n_vocab
    e.reset = llm.reset
    e.eval = llm.eval  # logits_all=False: the core computes the logits of the last position only
    e.last = lambda: llm.last_logits()[-1]
    e.keep = llm
    return e


def open_llamacpp(path: str, threads: int, n_ctx: int, n_batch: int) -> Engine:
    import llama_cpp

    e = Engine()
    t0 = time.perf_counter()
    # logits_all=False: llama-cpp-python marks only the last token of each batch for output, so llama.cpp, like
    # edgellm, computes the output projection for one position of the prompt, not all of them.
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          n_batch=n_batch, n_ubatch=n_batch, logits_all=False, verbose=False)
    e.load_s = time.perf_counter() - t0
    e.n_vocab = llm.n_vocab()
    e.reset = llm.reset
    e.eval = llm.eval
    n_vocab = e.n_vocab
    # The last position's logits, read in place (llm.scores is not filled when logits_all is False).
    e.last = lambda: np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
    e.keep = llm
    return e


def trial(e: Engine, prompt: list[int], gen_tokens: int) -> dict[str, float]:
    e.reset()
    t0 = time.perf_counter()
    e.eval(prompt)
    t1 = time.perf_counter()
    tok = int(np.argmax(e.last()))
    t2 = time.perf_counter()
    for _ in range(gen_tokens):
        e.eval([tok])
        tok = int(np.argmax(e.last()))
    t3 = time.perf_counter()
    return {"prefill_s": t1 - t0, "ttft_s": t2 - t0, "decode_s": t3 - t2}


def measure(engine: str, path: str, threads: int, prompt_tokens: int, gen_tokens: int, repeats: int,
            seed: int) -> dict[str, object]:
    n_batch = 512
    n_ctx = max(1024, prompt_tokens + gen_tokens)
    rss_before = rss_mb()
    opener = {"edgellm": open_edgellm, "llamacpp": open_llamacpp}[engine]
    e = opener(path, threads, n_ctx, n_batch)
    rss_loaded = rss_mb()
    prompt = prompt_ids(prompt_tokens, seed)
    if e.n_vocab <= max(prompt):
        raise SystemExit(f"{path}: vocabulary of {e.n_vocab} tokens is too small for the prompt ids (< 40000)")
    trial(e, prompt, min(gen_tokens, WARMUP_GEN_TOKENS))
    trials = [trial(e, prompt, gen_tokens) for _ in range(repeats)]
    best = {k: min(t[k] for t in trials) for k in trials[0]}
    return {
        "engine": engine, "threads": threads, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
        "repeats": repeats, "n_ctx": n_ctx, "n_batch": n_batch,
        "load_s": e.load_s,
        "prefill_s": best["prefill_s"], "prefill_tok_s": prompt_tokens / best["prefill_s"],
        "ttft_s": best["ttft_s"],
        "decode_s": best["decode_s"], "decode_tok_s": gen_tokens / best["decode_s"] if gen_tokens else 0.0,
        "trials": trials,
        "rss_before_load_mb": rss_before, "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[0] == "bandwidth":
        from edgellm import _core

        threads, out = int(argv[1]), Path(argv[2])
        result: dict[str, object] = {"threads": threads, "size_mb": 1024, "passes": 10,
                                     "gb_s": _core.bench_read_bandwidth(threads, 1024, 10)}
    elif len(argv) == 8 and argv[0] in ("edgellm", "llamacpp"):
        engine, path = argv[0], argv[1]
        threads, prompt_tokens, gen_tokens, repeats, seed = (int(a) for a in argv[2:7])
        out = Path(argv[7])
        result = measure(engine, path, threads, prompt_tokens, gen_tokens, repeats, seed)
    else:
        raise SystemExit(f"usage: see {__file__}'s docstring (got {argv})")
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
