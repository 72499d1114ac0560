"""Speculative decoding and the q8_0 KV cache: edgellm against llama.cpp (llama-cpp-python) in the same run.

Run: python bench/spec.py [--threads 2] [--gen-tokens 256] [--repeats 2] [--quick] [--no-llamacpp]

Not a test. Every generation is greedy (temperature 0) through the chat template, n_ctx 2048, n_batch 512,
the same thread count for both engines, the cache cleared before every run so the prompt is evaluated fresh.
Each configuration gets one warm-up run, then every prompt is timed --repeats times and the best kept.
decode tok/s = (generated tokens - 1) / (time after the first token), the same for both engines: edgellm's
`last_stats`; for llama.cpp the clock starts when `Llama.sample` returns the first token of a streamed
`create_chat_completion` and stops when the stream ends (end-of-generation tokens are not counted).

1. Prompt lookup on quoting tasks: three passages of 250-400 words from /usr/share/common-licenses, each in
   a task that makes SmolLM2-135M-Instruct copy it (chosen because it does: "copied" = the share of output
   words inside an 8-word span of the passage, "passage covered" = the share of passage words reproduced
   so, low when the output loops on one copied sentence). Files smollm2-q4_1 (the shipped default) and
   smollm2-f16. edgellm plain vs speculative="lookup" (draft_max 8); llama.cpp plain vs
   `LlamaPromptLookupDecoding(num_pred_tokens=N)` as `draft_model` (which needs logits_all=True) with N=8
   (edgellm's budget) and N=2 (llama-cpp-python's advice for CPUs); the ratio uses the better N.
   Goal: edgellm lookup >= 2x its plain decode (geometric mean over the prompts, on every file).
2. Draft model: target smollm2-f16, drafts smollm2-q4_0 (plain conversion) and smollm2-q4_0-awq (the same
   type calibrated: AWQ scales and importance-weighted rounding from the Python language reference that
   pydoc ships, a text unrelated to the prompts), on the three quoting prompts and two open-ended ones;
   plain vs speculative="draft" with draft_max 4, 8 and 16, all configurations interleaved prompt by prompt
   (the host's speed drifts by tens of percent over minutes; run one after another, the later configuration
   loses), the warm-up once per configuration, at least DRAFT_MIN_REPEATS repeats. A prompt's speedup is
   the median over repeats of draft / plain decode tok/s within the same repeat: paired runs seconds apart
   (best over best, also reported, follows single fast or slow outliers: the host once ran five plain runs
   in a row 25% faster than every run before and after). Goal:
   >= 1.5x (geometric mean over the prompts, best draft and draft_max), reported also per kind of prompt.
   llama-cpp-python has no draft-model decoding, so there is nothing to compare. Next to it, the ceiling
   any draft could reach on this machine at this moment: the time of one target pass over n tokens and one
   draft pass over n tokens (smollm2-q4_0; the calibrated file has the same types and size), measured
   right before and after the section (median of PASS_REPEATS passes after a PASS_CONTEXT-token prompt), and
   the speedup of a draft whose every token is accepted: each step then makes draft_max + 1 tokens for a
   draft pass over 2 tokens (the last draft and the target's token), draft_max - 1 single-token draft passes
   and one target pass over draft_max + 1 tokens, against draft_max + 1 single-token target passes.
3. KV cache: for smollm2-q4_1 and smollm2-f16, kv_bytes at n_ctx 2048 with kv_type f16 / f32 / q8_0,
   perplexity of /usr/share/common-licenses/GPL-3 (windows of 512 tokens) under each, and plain decode
   tok/s on the first quoting prompt. Goal: q8_0 perplexity within 0.5% of f16.

Greedy output must not change with speculation: every edgellm mode's text is compared with plain decoding
of the same file and prompt (a mismatch is reported and makes the exit status 1). llama.cpp's lookup
output is compared with its plain output for information only.
--quick: one prompt per section, 1 repeat, 128 tokens. Files are built once and cached (bench/run.py).
Prints markdown tables; writes every number, the settings and the machine to bench/results/spec-<date>.json.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from run import (
    BenchError,
    calibration_text,
    converted,
    ensure_llama_cpp,
    log,
    prepare,
    script_main,
    smollm2_checkpoint,
    smollm2_q4_1,
    write_report,
)

LICENSES = Path("/usr/share/common-licenses")
N_CTX = 2048
N_BATCH = 512
LOOKUP_DRAFT_MAX = 8  # edgellm's default draft_max
LLAMA_LOOKUP_PRED = (8, 2)  # num_pred_tokens: edgellm's budget; llama-cpp-python's README advice for CPUs
DRAFT_MAXES = (4, 8, 16)
DRAFT_MIN_REPEATS = 3  # the draft section's speedups are medians of paired ratios: at least 3 pairs
DRAFTS = ("smollm2-q4_0", "smollm2-q4_0-awq")  # draft files (bench/run.py prepare() names)
KV_TYPES = ("f16", "f32", "q8_0")
PPL_TEXT = LICENSES / "GPL-3"
PPL_CTX = 512
COPY_SPAN = 8  # words: an output word counts as copied when it lies in such a span of the passage
PASS_CONTEXT = 500  # tokens before the timed passes of the draft ceiling (about the prompts' length)
PASS_REPEATS = 30
GOAL_LOOKUP = 2.0
GOAL_DRAFT = 1.5
GOAL_PPL_PCT = 0.5


# ------------------------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class Prompt:
    name: str
    messages: list[dict[str, str]]
    passage: str | None = None  # the text a quoting task should copy
    source: str | None = None  # file@offset of the passage


# (name, file under /usr/share/common-licenses, offset in characters, task). The passage starts at the first
# paragraph after the offset and follows the task after a blank line. Kept because SmolLM2-135M-Instruct
# copies these passages through all 256 tokens (93-99% of its output words copied, 57-67% of the passage
# reproduced; Q4_1 and f16 alike). At most other offsets and wordings it writes its own summary, or loops
# on one sentence of the passage: prompt lookup speeds that up too, but it is not the quoting case.
QUOTE_TASKS = (
    ("apache-rewrite", "Apache-2.0", 9000, ("Rewrite the following text with every occurrence of 'software' "
                                            "replaced by 'program'. Output only the rewritten text.")),
    ("lgpl-spelling", "LGPL-2.1", 6000, "Fix the spelling in this text and output the whole corrected text:"),
    ("gfdl-copy", "GFDL-1.3", 18000, "Copy the following passage, correcting nothing:"),
)
OPEN_TASKS = (
    ("fridge", "Explain how a refrigerator works."),
    ("lighthouse", "Write a short story about a lighthouse keeper who finds a message in a bottle."),
)


def license_text(name: str) -> str:
    path = LICENSES / name
    if not path.is_file():
        raise BenchError(f"{path}: missing (Debian/Ubuntu ship it in the base-files package)")
    return path.read_text()


def passage(name: str, offset: int, min_words: int = 250, max_words: int = 400) -> str:
    """Whole paragraphs of a license text from the first paragraph after offset, min_words to max_words
    words, each paragraph's lines joined into one."""
    text = license_text(name)
    start = text.find("\n\n", offset)
    if start < 0:
        raise BenchError(f"{name}: no paragraph after offset {offset}")
    paragraphs: list[str] = []
    words = 0
    for raw in re.split(r"\n\s*\n", text[start:]):
        para = " ".join(raw.split())
        if not para:
            continue
        n = len(para.split())
        if words + n > max_words:
            break
        paragraphs.append(para)
        words += n
        if words >= min_words:
            return "\n\n".join(paragraphs)
    raise BenchError(f"{name}@{offset}: no run of paragraphs with {min_words}-{max_words} words")


def quote_prompts() -> list[Prompt]:
    out = []
    for name, file, offset, task in QUOTE_TASKS:
        text = passage(file, offset)
        out.append(Prompt(name, [{"role": "user", "content": f"{task}\n\n{text}"}], text,
                          f"{file}@{offset}"))
    return out


def open_prompts() -> list[Prompt]:
    return [Prompt(name, [{"role": "user", "content": text}]) for name, text in OPEN_TASKS]


def span_overlap(text: str, other: str, span: int = COPY_SPAN) -> float:
    """Share of text's words inside a run of `span` consecutive words of text that also occurs in other.
    (output, passage): how much of the output is copied; (passage, output): how much of the passage is
    reproduced, which stays low when the output loops on one copied sentence."""
    words = text.split()
    haystack = " ".join(other.split())
    hit = [False] * len(words)
    for i in range(len(words) - span + 1):
        if " ".join(words[i:i + span]) in haystack:
            hit[i:i + span] = [True] * span
    return sum(hit) / len(words) if words else 0.0


# ------------------------------------------------------------------------------------------- timing
@dataclass
class Trial:
    """One timed generation."""

    text: str
    prompt_tokens: int
    generated_tokens: int  # end-of-generation token not counted
    ttft_s: float  # the call to the first token (template, tokenizer and prefill included)
    decode_tok_s: float  # (generated_tokens - 1) / time after the first token
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    stop_reason: str = ""

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None


@dataclass
class Measurement:
    """Every trial of one configuration on one prompt; `best` is the fastest decode."""

    trials: list[Trial] = field(default_factory=list)

    @property
    def best(self) -> Trial:
        return max(self.trials, key=lambda t: t.decode_tok_s)

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {"best": {**asdict(best), "acceptance_rate": best.acceptance_rate},
                "trials": [{k: v for k, v in asdict(t).items() if k != "text"} for t in self.trials]}


Runner = Callable[[Prompt], Trial]
Rows = list[dict[str, Any]]  # a section's results, one dict per table row


def measure(run_one: Runner, prompts: Sequence[Prompt], repeats: int, label: str) -> dict[str, Measurement]:
    """One warm-up run (first prompt), then `repeats` timed runs per prompt."""
    run_one(prompts[0])
    out: dict[str, Measurement] = {}
    for p in prompts:
        m = Measurement([run_one(p) for _ in range(repeats)])
        out[p.name] = m
        b = m.best
        acc = f", accepted {b.accepted_tokens}/{b.drafted_tokens}" if b.drafted_tokens else ""
        log(f"  {label}, {p.name}: {b.generated_tokens} tokens, decode {b.decode_tok_s:.1f} tok/s{acc}")
    return out


def edgellm_runner(llm: Any, max_tokens: int, speculative: str | None) -> Runner:
    def run_one(p: Prompt) -> Trial:
        llm.reset()  # the draft model's cache too
        text = llm.chat(p.messages, max_tokens, temperature=0, speculative=speculative)
        s = llm.last_stats
        return Trial(text, s.prompt_tokens, s.generated_tokens, s.prompt_seconds, s.tokens_per_second,
                     s.drafted_tokens, s.accepted_tokens, s.stop_reason)

    return run_one


def llama_runner(llm: Any, max_tokens: int) -> Runner:
    """Streams create_chat_completion; `Llama.sample` (called once per output token, speculative or not) is
    wrapped on this instance to time the first token and count tokens and accepted drafts."""
    import llama_cpp

    vocab = llm._model.vocab
    lookup = llm.draft_model

    def run_one(p: Prompt) -> Trial:
        picks: list[tuple[float, int]] = []  # (time, token) of every sampled token
        prompt_tokens, accepted = 0, 0
        sample = type(llm).sample

        def timed_sample(*args: Any, **kwargs: Any) -> int:
            nonlocal prompt_tokens, accepted
            token = sample(llm, *args, **kwargs)
            picks.append((time.perf_counter(), token))
            if len(picks) == 1:
                prompt_tokens = llm.n_tokens
            idx = kwargs.get("idx")
            if idx is not None and idx + 1 < llm.n_tokens and token == llm.input_ids[idx + 1]:
                accepted += 1  # the token the drafter placed at this position
            return token

        llm.reset()
        if lookup is not None:
            lookup.drafted = 0
        llm.sample = timed_sample
        try:
            t0 = time.perf_counter()
            pieces, finish = [], ""
            for chunk in llm.create_chat_completion(p.messages, max_tokens=max_tokens, temperature=0,
                                                    stream=True):
                choice = chunk["choices"][0]
                pieces.append(choice["delta"].get("content") or "")
                finish = choice.get("finish_reason") or finish
            t_end = time.perf_counter()
        finally:
            del llm.sample
        if not picks:
            raise BenchError(f"llama.cpp sampled no token for {p.name}")
        n = sum(1 for _, tok in picks if not llama_cpp.llama_vocab_is_eog(vocab, tok))
        t_first = picks[0][0]
        rate = (n - 1) / (t_end - t_first) if n > 1 and t_end > t_first else 0.0
        drafted = lookup.drafted if lookup is not None else 0
        return Trial("".join(pieces), prompt_tokens, n, t_first - t0, rate, drafted, accepted, finish)

    return run_one


def counting_lookup(num_pred_tokens: int) -> Any:
    """llama-cpp-python's prompt lookup drafter, counting the tokens it proposes."""
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    class CountingLookup(LlamaPromptLookupDecoding):
        def __init__(self) -> None:
            super().__init__(num_pred_tokens=num_pred_tokens)
            self.drafted = 0

        def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
            draft = super().__call__(input_ids, **kwargs)
            self.drafted += len(draft)
            return draft

    return CountingLookup()


def open_llama(path: Path, threads: int, lookup: int | None) -> Any:
    import llama_cpp

    extra: dict[str, Any] = {}
    if lookup is not None:  # the drafter reads logits of every position from Llama.scores: an n_ctx array
        extra = {"draft_model": counting_lookup(lookup), "logits_all": True}
    return llama_cpp.Llama(str(path), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads,
                           n_batch=N_BATCH, verbose=False, **extra)


def open_edgellm(path: Path, threads: int, **kwargs: Any) -> Any:
    import edgellm

    return edgellm.LLM(path, n_ctx=N_CTX, n_threads=threads, n_batch=N_BATCH, **kwargs)


def release(obj: Any) -> None:
    """Frees an engine now (its memory and threads), so it cannot disturb the next one's timings."""
    close = getattr(obj, "close", None)
    if callable(close):
        close()
    del obj
    gc.collect()


# ------------------------------------------------------------------------------------------- sections
class GreedyCheck:
    """Collects edgellm texts per (file, prompt): every mode must give plain decoding's text."""

    def __init__(self) -> None:
        self.reference: dict[tuple[str, str], str] = {}
        self.mismatches: list[dict[str, str]] = []

    def plain(self, file: str, results: dict[str, Measurement]) -> None:
        for prompt, m in results.items():
            self.reference[(file, prompt)] = m.trials[0].text
            self.check(file, "plain", {prompt: m})

    def check(self, file: str, mode: str, results: dict[str, Measurement]) -> None:
        for prompt, m in results.items():
            ref = self.reference[(file, prompt)]
            for i, t in enumerate(m.trials):
                if t.text != ref:
                    at = next((k for k, (a, b) in enumerate(zip(t.text, ref)) if a != b),
                              min(len(t.text), len(ref)))
                    self.mismatches.append({"file": file, "prompt": prompt, "mode": mode, "trial": str(i),
                                            "first_difference_at_char": str(at)})
                    log(f"  GREEDY MISMATCH: {file}, {prompt}, {mode}, trial {i}: differs from plain "
                        f"decoding at character {at}")


def lookup_section(files: dict[str, Path], prompts: list[Prompt], opts: argparse.Namespace,
                   check: GreedyCheck) -> Rows:
    rows: Rows = []
    for file, path in files.items():
        log(f"prompt lookup, {file}")
        llm = open_edgellm(path, opts.threads, draft_max=LOOKUP_DRAFT_MAX)
        plain = measure(edgellm_runner(llm, opts.gen_tokens, None), prompts, opts.repeats,
                        "edgellm plain")
        lookup = measure(edgellm_runner(llm, opts.gen_tokens, "lookup"), prompts, opts.repeats,
                         "edgellm lookup")
        release(llm)
        check.plain(file, plain)
        check.check(file, "lookup", lookup)
        lc: dict[str, dict[str, Measurement]] = {}
        if opts.llamacpp:
            for n in (None, *LLAMA_LOOKUP_PRED):
                key = "plain" if n is None else f"lookup{n}"
                lm = open_llama(path, opts.threads, n)
                lc[key] = measure(llama_runner(lm, opts.gen_tokens), prompts, opts.repeats,
                                  f"llama.cpp {key}")
                release(lm)
        for p in prompts:
            e_plain, e_lookup = plain[p.name].best, lookup[p.name].best
            row: dict[str, Any] = {
                "file": file, "prompt": p.name,
                "copied": span_overlap(e_plain.text, p.passage or ""),
                "passage_covered": span_overlap(p.passage or "", e_plain.text),
                "edgellm": {"plain": plain[p.name].to_json(), "lookup": lookup[p.name].to_json(),
                            "speedup": e_lookup.decode_tok_s / e_plain.decode_tok_s},
            }
            if lc:
                l_plain = lc["plain"][p.name].best
                by_n = {n: lc[f"lookup{n}"][p.name].best for n in LLAMA_LOOKUP_PRED}
                best_n = max(by_n, key=lambda n: by_n[n].decode_tok_s)
                row["llamacpp"] = {
                    "plain": lc["plain"][p.name].to_json(),
                    **{f"lookup{n}": lc[f"lookup{n}"][p.name].to_json() for n in LLAMA_LOOKUP_PRED},
                    "best_num_pred_tokens": best_n,
                    "speedup": by_n[best_n].decode_tok_s / l_plain.decode_tok_s,
                    "lookup_same_text_as_plain": {n: t.text == l_plain.text for n, t in by_n.items()},
                    "same_text_as_edgellm": l_plain.text == e_plain.text,
                    "copied": span_overlap(l_plain.text, p.passage or ""),
                    "passage_covered": span_overlap(p.passage or "", l_plain.text),
                }
                row["ratio_lookup"] = e_lookup.decode_tok_s / by_n[best_n].decode_tok_s
                row["ratio_plain"] = e_plain.decode_tok_s / l_plain.decode_tok_s
            rows.append(row)
    return rows


def pass_ms(path: Path, threads: int, sizes: Sequence[int], logits_all: bool) -> dict[int, float]:
    """Median milliseconds of one forward pass over n tokens (n in sizes) after a PASS_CONTEXT-token prompt,
    with every position's logits (a verifying target) or the last one's (a drafting model); the cache is
    trimmed back after each pass."""
    import statistics

    llm = open_edgellm(path, threads)
    ids = llm.tokenize(license_text("GPL-3"))[: PASS_CONTEXT + max(sizes)]
    llm.eval(ids[:PASS_CONTEXT])
    out = {}
    for n in sizes:
        times = []
        for _ in range(PASS_REPEATS):
            t = time.perf_counter()
            llm.eval(ids[PASS_CONTEXT:PASS_CONTEXT + n], logits_all=logits_all)
            times.append((time.perf_counter() - t) * 1e3)
            llm.truncate(PASS_CONTEXT)
        out[n] = statistics.median(times)
    release(llm)
    return out


def draft_ceiling(target: Path, draft: Path, threads: int) -> dict[str, Any]:
    """Pass times of both models and the speedup of a draft whose every token is accepted, per draft_max."""
    v = pass_ms(target, threads, sorted({1, *(k + 1 for k in DRAFT_MAXES)}), logits_all=True)
    d = pass_ms(draft, threads, [1, 2], logits_all=False)
    ceiling = {k: (k + 1) * v[1] / (d[2] + (k - 1) * d[1] + v[k + 1]) for k in DRAFT_MAXES}
    log(f"  pass ms: target {', '.join(f'{n}: {t:.2f}' for n, t in v.items())}; draft 1: {d[1]:.2f}, "
        f"2: {d[2]:.2f}; perfect-draft ceiling {', '.join(f'{k}: {c:.2f}x' for k, c in ceiling.items())}")
    return {"target_pass_ms": v, "draft_pass_ms": d, "draft_to_target": d[1] / v[1], "ceiling": ceiling}


def draft_section(target: tuple[str, Path], drafts: dict[str, Path], prompts: list[Prompt],
                  opts: argparse.Namespace, check: GreedyCheck) -> dict[str, Rows]:
    """Plain decoding and every (draft, draft_max) configuration, interleaved: each repeat runs every
    configuration on a prompt before the next prompt, so a slow drift of the host's speed (it moves by
    tens of percent over minutes here) falls on all of them alike. One LLM per draft file, each with the
    target; plain runs take the first."""
    name, path = target
    llms = {d: open_edgellm(path, opts.threads, draft_model=p, draft_max=DRAFT_MAXES[0])
            for d, p in drafts.items()}
    first = next(iter(llms.values()))

    def runner(d: str | None, k: int) -> Runner:
        llm = first if d is None else llms[d]
        run_one = edgellm_runner(llm, opts.gen_tokens, None if d is None else "draft")

        def run(p: Prompt) -> Trial:
            llm.draft_max = k
            return run_one(p)

        return run

    configs: list[tuple[str | None, int]] = [(None, 0)] + [(d, k) for d in drafts for k in DRAFT_MAXES]
    log(f"draft model, {name} + {' / '.join(drafts)}, draft_max {' / '.join(map(str, DRAFT_MAXES))}, "
        f"interleaved")
    for c in configs:  # one warm-up run per configuration
        runner(*c)(prompts[0])
    results: dict[tuple[str | None, int], dict[str, Measurement]] = {c: {} for c in configs}
    for _ in range(draft_repeats(opts)):
        for p in prompts:
            for c in configs:
                results[c].setdefault(p.name, Measurement()).trials.append(runner(*c)(p))
    for c, per_prompt in results.items():
        label = "plain" if c[0] is None else f"{c[0]} draft_max {c[1]}"
        for p in prompts:
            b = per_prompt[p.name].best
            acc = f", accepted {b.accepted_tokens}/{b.drafted_tokens}" if b.drafted_tokens else ""
            log(f"  {label}, {p.name}: {b.generated_tokens} tokens, decode {b.decode_tok_s:.1f} tok/s{acc}")
    for llm in llms.values():
        release(llm)
    plain = results[(None, 0)]
    for p, m in plain.items():
        if (name, p) in check.reference:
            check.check(name, "plain (section 2)", {p: m})
        else:
            check.plain(name, {p: m})
    out: dict[str, Rows] = {}
    for d in drafts:
        for k in DRAFT_MAXES:
            check.check(name, f"draft {d} (draft_max {k})", results[(d, k)])
        out[d] = [{
            "prompt": p.name, "plain": plain[p.name].to_json(),
            "draft": {k: {**results[(d, k)][p.name].to_json(),
                          **paired_speedup(results[(d, k)][p.name], plain[p.name])}
                      for k in DRAFT_MAXES},
        } for p in prompts]
    return out


def draft_repeats(opts: argparse.Namespace) -> int:
    """Timed repeats of the draft section: --repeats, at least DRAFT_MIN_REPEATS unless --quick."""
    return opts.repeats if opts.quick else max(opts.repeats, DRAFT_MIN_REPEATS)


def paired_speedup(spec: Measurement, plain: Measurement) -> dict[str, Any]:
    """speedup: the median over repeats of speculative / plain decode tok/s of the same repeat (measured
    seconds apart, so the host's drift cancels); speedup_of_best: best over best, for reference (one fast
    outlier of either side moves it)."""
    import statistics

    ratios = [t.decode_tok_s / b.decode_tok_s for t, b in zip(spec.trials, plain.trials)]
    return {"speedup": statistics.median(ratios), "speedup_ratios": ratios,
            "speedup_of_best": spec.best.decode_tok_s / plain.best.decode_tok_s}


def kv_section(files: dict[str, Path], prompt: Prompt, opts: argparse.Namespace) -> Rows:
    text = license_text(PPL_TEXT.name)
    rows = []
    for file, path in files.items():
        row: dict[str, Any] = {"file": file, "prompt": prompt.name}
        for kv in KV_TYPES:
            log(f"KV cache, {file}, kv_type {kv}")
            llm = open_edgellm(path, opts.threads, kv_type=kv)
            t0 = time.perf_counter()
            ppl = llm.perplexity(text, n_ctx=PPL_CTX)
            ppl_s = time.perf_counter() - t0
            log(f"  perplexity {ppl.ppl:.4f} ({ppl.n_windows} windows, {ppl_s:.0f} s), "
                f"kv_bytes {llm.kv_bytes}")
            decode = measure(edgellm_runner(llm, opts.gen_tokens, None), [prompt], opts.repeats, "plain")
            row[kv] = {"kv_bytes": llm.kv_bytes, "ppl": ppl.ppl, "nll": ppl.nll,
                       "ppl_scored_tokens": ppl.n_scored, "ppl_windows": ppl.n_windows, "ppl_seconds": ppl_s,
                       "decode": decode[prompt.name].to_json()}
            release(llm)
        f16 = row["f16"]
        row["kv_ratio_q8_0"] = row["q8_0"]["kv_bytes"] / f16["kv_bytes"]
        row["ppl_change_pct_q8_0"] = 100 * (row["q8_0"]["ppl"] / f16["ppl"] - 1)
        row["ppl_change_pct_f32"] = 100 * (row["f32"]["ppl"] / f16["ppl"] - 1)
        row["decode_ratio_q8_0"] = (row["q8_0"]["decode"]["best"]["decode_tok_s"]
                                    / f16["decode"]["best"]["decode_tok_s"])
        row["q8_0_same_text_as_f16"] = row["q8_0"]["decode"]["best"]["text"] == f16["decode"]["best"]["text"]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------- report
def fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def geomean(xs: Sequence[float]) -> float | None:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs and all(x > 0 for x in xs) else None


def best(m: dict[str, Any]) -> dict[str, Any]:
    return m["best"]


def acc(b: dict[str, Any]) -> str:
    return f"{b['accepted_tokens']}/{b['drafted_tokens']}" if b["drafted_tokens"] else "–"


def yes(x: bool) -> str:
    return "yes" if x else "no"


def lookup_table(rows: Rows) -> str:
    lc_lookup = " | ".join(f"lookup N={n}" for n in LLAMA_LOOKUP_PRED)
    lines = [("| file | prompt | copied % | passage covered % | gen tokens edgellm | llama.cpp "
              "| edgellm plain tok/s | lookup tok/s | speedup | accepted/drafted | llama.cpp plain tok/s "
              f"| {lc_lookup} | speedup | accepted/drafted | lookup ratio edgellm / llama.cpp "
              "| llama.cpp text = edgellm's / its lookup text = its plain |"),
             "|---|---|" + "---:|" * (12 + len(LLAMA_LOOKUP_PRED)) + "---|"]
    for r in rows:
        e = r["edgellm"]
        lc = r.get("llamacpp")
        line = (f"| {r['file']} | {r['prompt']} | {100 * r['copied']:.0f} "
                f"| {100 * r['passage_covered']:.0f} | {best(e['plain'])['generated_tokens']} "
                f"| {best(lc['plain'])['generated_tokens'] if lc else '–'} "
                f"| {best(e['plain'])['decode_tok_s']:.1f} | {best(e['lookup'])['decode_tok_s']:.1f} "
                f"| {e['speedup']:.2f} | {acc(best(e['lookup']))} ")
        if lc:
            n = lc["best_num_pred_tokens"]
            line += (f"| {best(lc['plain'])['decode_tok_s']:.1f} "
                     + "".join(f"| {best(lc[f'lookup{m}'])['decode_tok_s']:.1f} " for m in LLAMA_LOOKUP_PRED)
                     + f"| {lc['speedup']:.2f} (N={n}) | {acc(best(lc[f'lookup{n}']))} "
                     f"| {r['ratio_lookup']:.2f} | {yes(lc['same_text_as_edgellm'])} "
                     f"/ {yes(lc['lookup_same_text_as_plain'][n])} |")
        else:
            line += "| – " * (5 + len(LLAMA_LOOKUP_PRED)) + "|"
        lines.append(line)
    return "\n".join(lines)


def draft_table(rows: Rows) -> str:
    head = "| prompt | gen tokens | plain tok/s |" + "".join(
        f" draft_max {k} tok/s | speedup | acceptance % |" for k in DRAFT_MAXES)
    lines = [head, "|---|---:|---:|" + "---:|---:|---:|" * len(DRAFT_MAXES)]
    for r in rows:
        b = best(r["plain"])
        line = f"| {r['prompt']} | {b['generated_tokens']} | {b['decode_tok_s']:.1f} |"
        for k in DRAFT_MAXES:
            d = r["draft"][k]
            rate = best(d)["acceptance_rate"]
            pct = None if rate is None else 100 * rate
            line += f" {best(d)['decode_tok_s']:.1f} | {d['speedup']:.2f} | {fmt(pct, '.0f')} |"
        lines.append(line)
    return "\n".join(lines)


def kv_table(rows: Rows) -> str:
    lines = [("| file | KV MB f16 | q8_0 | f32 | q8_0 / f16 | PPL f16 | q8_0 | f32 | q8_0 vs f16 % "
              "| f32 vs f16 % | decode tok/s KV f16 | q8_0 | f32 | q8_0 / f16 | q8_0 same text |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        mb = {kv: r[kv]["kv_bytes"] / 2**20 for kv in KV_TYPES}
        dec = {kv: best(r[kv]["decode"])["decode_tok_s"] for kv in KV_TYPES}
        lines.append(
            f"| {r['file']} | {mb['f16']:.1f} | {mb['q8_0']:.1f} | {mb['f32']:.1f} "
            f"| {r['kv_ratio_q8_0']:.3f} "
            f"| {r['f16']['ppl']:.4f} | {r['q8_0']['ppl']:.4f} | {r['f32']['ppl']:.4f} "
            f"| {r['ppl_change_pct_q8_0']:+.3f} | {r['ppl_change_pct_f32']:+.3f} | {dec['f16']:.1f} "
            f"| {dec['q8_0']:.1f} | {dec['f32']:.1f} | {r['decode_ratio_q8_0']:.2f} "
            f"| {yes(r['q8_0_same_text_as_f16'])} |")
    return "\n".join(lines)


def goals(lookup: Rows, draft: dict[str, Rows], kv: Rows, ceilings: list[dict[str, Any]]) -> dict[str, Any]:
    speedups = [r["edgellm"]["speedup"] for r in lookup]
    by_file = {f: geomean([r["edgellm"]["speedup"] for r in lookup if r["file"] == f])
               for f in dict.fromkeys(r["file"] for r in lookup)}
    per_max = {d: {k: geomean([r["draft"][k]["speedup"] for r in rows]) for k in DRAFT_MAXES}
               for d, rows in draft.items()}
    best_d, best_k = max(((d, k) for d in per_max for k in DRAFT_MAXES), key=lambda dk: per_max[dk[0]][dk[1]] or 0.0)
    open_names = {name for name, _ in OPEN_TASKS}
    worst_ppl = max(abs(r["ppl_change_pct_q8_0"]) for r in kv)
    out = {
        "lookup": {"goal": GOAL_LOOKUP, "geomean_speedup_by_file": by_file,
                   "geomean_speedup": geomean(speedups), "min": min(speedups), "max": max(speedups),
                   "met": all((v or 0.0) >= GOAL_LOOKUP for v in by_file.values())},
        "draft": {"goal": GOAL_DRAFT, "geomean_speedup_by_draft_max": per_max, "best_draft": best_d,
                  "best_draft_max": best_k,
                  "geomean_speedup_by_kind": {
                      kind: geomean([r["draft"][best_k]["speedup"] for r in draft[best_d]
                                     if (r["prompt"] in open_names) == (kind == "open")])
                      for kind in ("quote", "open")},
                  "perfect_draft_ceiling": [c["ceiling"] for c in ceilings],
                  "draft_to_target_pass": [c["draft_to_target"] for c in ceilings],
                  "met": (per_max[best_d][best_k] or 0.0) >= GOAL_DRAFT},
        "kv_q8_0_ppl": {"goal_pct": GOAL_PPL_PCT, "worst_abs_change_pct": worst_ppl,
                        "met": worst_ppl <= GOAL_PPL_PCT},
    }
    ratios = [r["ratio_lookup"] for r in lookup if "ratio_lookup" in r]
    if ratios:
        out["lookup"]["geomean_ratio_vs_llamacpp_lookup"] = geomean(ratios)
    return out


def summary(g: dict[str, Any]) -> str:
    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lk, dr, kv = g["lookup"], g["draft"], g["kv_q8_0_ppl"]
    d, k = dr["best_draft"], dr["best_draft_max"]
    by_max = "; ".join(f"{name}: " + ", ".join(f"{m}: {fmt(v, '.2f')}x" for m, v in per.items())
                       for name, per in dr["geomean_speedup_by_draft_max"].items())
    by_file = ", ".join(f"{f} {fmt(v, '.2f')}x" for f, v in lk["geomean_speedup_by_file"].items())
    ceil = ", ".join(f"draft_max {m}: " + " / ".join(f"{c[m]:.2f}x" for c in dr["perfect_draft_ceiling"])
                     for m in DRAFT_MAXES)
    ratio = " / ".join(f"{r:.2f}" for r in dr["draft_to_target_pass"])
    lines = [
        (f"- prompt lookup >= {lk['goal']:.1f}x plain decode on every file: {met(lk['met'])} (geometric "
         f"means {by_file}; all {fmt(lk['geomean_speedup'], '.2f')}x, "
         f"range {lk['min']:.2f}-{lk['max']:.2f}x)"),
        (f"- draft model >= {dr['goal']:.1f}x plain decode: {met(dr['met'])} (geometric mean "
         f"{fmt(dr['geomean_speedup_by_draft_max'][d][k], '.2f')}x with {d} at draft_max {k}: quoting prompts "
         f"{fmt(dr['geomean_speedup_by_kind']['quote'], '.2f')}x, open-ended "
         f"{fmt(dr['geomean_speedup_by_kind']['open'], '.2f')}x; by draft and draft_max {by_max}). A draft whose every "
         f"token were accepted would reach {ceil} (before / after the section; draft pass / target pass "
         f"{ratio})"),
        (f"- KV q8_0 perplexity within {kv['goal_pct']}% of f16: {met(kv['met'])} (worst "
         f"{kv['worst_abs_change_pct']:.3f}%)"),
    ]
    if "geomean_ratio_vs_llamacpp_lookup" in lk:
        lines.append(f"- edgellm lookup / llama.cpp lookup decode tok/s: geometric mean "
                     f"{fmt(lk['geomean_ratio_vs_llamacpp_lookup'], '.2f')}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="threads for both engines (default 2)")
    ap.add_argument("--gen-tokens", type=int, help="max_tokens per generation (default 256; --quick 128)")
    ap.add_argument("--repeats", type=int, help="timed runs per prompt, best kept (default 2; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="one prompt per section, 1 repeat, 128 tokens")
    ap.add_argument("--no-llamacpp", dest="llamacpp", action="store_false", help="edgellm only")
    opts = ap.parse_args(argv)
    opts.gen_tokens = opts.gen_tokens if opts.gen_tokens is not None else (128 if opts.quick else 256)
    opts.repeats = opts.repeats if opts.repeats is not None else (1 if opts.quick else 2)
    if opts.threads < 1 or opts.repeats < 1:
        raise BenchError("--threads and --repeats: must be >= 1")
    if not 2 <= opts.gen_tokens <= N_CTX // 2:
        raise BenchError(f"--gen-tokens {opts.gen_tokens}: must be in [2, {N_CTX // 2}]")
    return opts


def run(opts: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        log(f"warning: load average {load_start[0]:.2f}: other work on this machine lowers and scatters the "
            f"timings")
    if opts.llamacpp:
        ensure_llama_cpp()
    q4_1 = smollm2_q4_1()
    f16 = converted("smollm2-f16", smollm2_checkpoint, "f16")
    drafts = {name: prepare(name) for name in DRAFTS}
    q4_0 = drafts[DRAFTS[0]]
    files = {"smollm2-q4_1": q4_1, "smollm2-f16": f16}
    quotes = quote_prompts()
    chats = open_prompts()
    if opts.quick:
        quotes, chats = quotes[:1], []

    check = GreedyCheck()
    lookup = lookup_section(files, quotes, opts, check)
    log("draft ceiling, before the draft section")
    ceilings = [draft_ceiling(f16, q4_0, opts.threads)]
    draft = draft_section(("smollm2-f16", f16), drafts, quotes + chats, opts, check)
    log("draft ceiling, after the draft section")
    ceilings.append(draft_ceiling(f16, q4_0, opts.threads))
    kv = kv_section(files, quotes[0], opts)
    g = goals(lookup, draft, kv, ceilings)
    elapsed = time.perf_counter() - t_start

    settings = (f"threads {opts.threads}, max_tokens {opts.gen_tokens}, n_ctx {N_CTX}, n_batch {N_BATCH}, "
                f"greedy, chat template, best of {opts.repeats} after one warm-up per configuration")
    print(f"## 1. Prompt lookup on quoting tasks ({settings})\n")
    print(lookup_table(lookup))
    print(f"\ncopied % = share of edgellm's plain output words inside an {COPY_SPAN}-word span of the "
          f"passage; passage covered % = share of the passage's words reproduced so ({opts.gen_tokens} "
          f"tokens cannot cover a whole passage). edgellm draft_max {LOOKUP_DRAFT_MAX} (n-grams 1-4); "
          f"llama.cpp = llama-cpp-python LlamaPromptLookupDecoding(max_ngram_size 2, num_pred_tokens N), "
          f"speedup and ratio at the better N. speedup = lookup / plain decode tok/s of the same engine. "
          f"llama.cpp's greedy text can differ from edgellm's, and its lookup text from its plain text "
          f"(batched and single-token evaluation round differently), which changes what there is to copy.")
    for name, rows in draft.items():
        print(f"\n## 2. Draft model: smollm2-f16 + draft {name} ({settings})\n")
        print(draft_table(rows))
    print(f"\ntok/s: the best of the repeats; speedup: the median over {draft_repeats(opts)} repeats of draft / "
          f"plain tok/s in the same repeat (all configurations interleaved prompt by prompt).")
    print("\nllama-cpp-python 0.3.36 has no draft-model speculative decoding (only prompt lookup), so there "
          "is no llama.cpp column.")
    print(f"\n## 3. KV cache types (n_ctx {N_CTX}; perplexity of {PPL_TEXT} in windows of {PPL_CTX} tokens; "
          f"decode on {quotes[0].name})\n")
    print(kv_table(kv))
    print("\n## Goals\n")
    print(summary(g))
    if check.mismatches:
        print(f"\nGREEDY MISMATCH: {len(check.mismatches)} speculative run(s) changed the greedy output:")
        for m in check.mismatches:
            print(f"- {m['file']}, {m['prompt']}, {m['mode']}, trial {m['trial']}: first difference at "
                  f"character {m['first_difference_at_char']}")
    else:
        print("\nGreedy output identical with and without speculation in every edgellm run.")
    log(f"total time {elapsed:.0f} s")

    write_report("spec", {
        "options": {"threads": opts.threads, "gen_tokens": opts.gen_tokens, "repeats": opts.repeats,
                    "quick": opts.quick, "llamacpp": opts.llamacpp},
        "settings": {"n_ctx": N_CTX, "n_batch": N_BATCH, "temperature": 0, "copy_span": COPY_SPAN,
                     "lookup_draft_max": LOOKUP_DRAFT_MAX, "llamacpp_num_pred_tokens": LLAMA_LOOKUP_PRED,
                     "draft_maxes": DRAFT_MAXES, "kv_types": KV_TYPES, "ppl_text": str(PPL_TEXT),
                     "ppl_n_ctx": PPL_CTX},
        "files": {name: {"path": str(p), "size_bytes": p.stat().st_size}
                  for name, p in {**files, **drafts}.items()},
        "calibration_text": str(calibration_text()),
        "prompts": [{"name": p.name, "source": p.source, "messages": p.messages} for p in quotes + chats],
        "lookup": lookup, "draft": draft, "kv": kv, "goals": g, "greedy_mismatches": check.mismatches,
        "elapsed_s": elapsed, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
    })
    return 1 if check.mismatches else 0


def main(argv: list[str] | None = None) -> int:
    return script_main("spec.py", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
