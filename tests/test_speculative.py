"""Speculative decoding (draft model and prompt lookup): greedy output identical to plain greedy decoding,
sampled output with the target's distribution (chi-square over many seeds), the vocabulary check, the CLI flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from edgellm import LLM, Sampler, _core
from edgellm.errors import InvalidArgumentError
from helpers.cache import cached_dir, transformers_tag
from helpers.smollm2 import smollm2_checkpoint, smollm2_gguf_path
from helpers.tiny_models import PROMPT_IDS

# Token-id prompts for the tiny random models: plain, a repeated phrase (lookup finds matches), a long one.
TINY_PROMPTS = [
    PROMPT_IDS,
    [5, 17, 300, 42, 9, 5, 17, 300, 42, 9, 5, 17, 300],
    [(t * 13 + 7) % 900 + 2 for t in range(90)] + PROMPT_IDS[:6],
]

SMOLLM2_PROMPTS = [
    # a question
    [{"role": "user", "content": "What is the capital of France? Answer in two sentences."}],
    # quoting a source (the case prompt lookup is for)
    [{"role": "user", "content": "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog "
                                 "while the farmer watches from the porch of the old red barn."}],
    # code
    [{"role": "user", "content": "Write a Python function that returns the factorial of n."}],
    # a list
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "List five fruits, one per line."}],
]


def smollm2_converted(quant: str) -> Path:
    """Our conversion of the SmolLM2 checkpoint at `quant`, cached between sessions."""
    from edgellm.converters.convert import ConvertOptions, convert

    def build(dst: Path) -> None:
        convert(smollm2_checkpoint(), dst / "model.gguf", ConvertOptions(quant=quant, progress=False))

    return cached_dir(f"smollm2-converted-{quant}-v1-{transformers_tag()}", build) / "model.gguf"


@pytest.fixture(scope="module")
def smollm2_pair():
    """Target: our q8_0 conversion of SmolLM2; draft: our q4_0 conversion."""
    target, draft = smollm2_converted("q8_0"), smollm2_converted("q4_0")
    with LLM(target, n_ctx=1024, n_threads=2, draft_model=draft, draft_max=6) as llm:
        yield llm


def greedy_three_ways(llm: LLM, prompt, n: int, chat: bool) -> dict[str | None, str]:
    out = {}
    for mode in (None, "lookup", "draft"):
        llm.reset()
        run = llm.chat if chat else llm.generate
        out[mode] = run(prompt, n, temperature=0, speculative=mode)
        s = llm.last_stats
        assert s.speculative == mode
        if mode is not None:
            assert s.accepted_tokens <= s.drafted_tokens
    return out


@pytest.mark.parametrize("messages", SMOLLM2_PROMPTS, ids=["question", "quote", "code", "list"])
def test_smollm2_greedy_speculative_equals_plain(smollm2_pair, messages):
    out = greedy_three_ways(smollm2_pair, messages, 64, chat=True)
    assert out["lookup"] == out[None]
    assert out["draft"] == out[None]
    assert out[None].strip()


def test_smollm2_draft_and_lookup_accept_tokens(smollm2_pair):
    llm = smollm2_pair
    llm.reset()
    llm.chat(SMOLLM2_PROMPTS[1], 48, temperature=0, speculative="draft")
    draft = llm.last_stats
    # the same model quantized two ways agrees on most tokens
    assert draft.drafted_tokens > 0 and draft.acceptance_rate > 0.5, draft
    llm.reset()
    llm.chat(SMOLLM2_PROMPTS[1], 48, temperature=0, speculative="lookup")
    lookup = llm.last_stats
    # the sentence is copied from the prompt: a good share of the reply comes from accepted drafts
    assert lookup.accepted_tokens >= max(3, lookup.generated_tokens // 4), lookup
    # accepted drafts save target passes: fewer evaluations than tokens would need one by one
    assert lookup.evaluated_tokens >= lookup.prompt_tokens


@pytest.fixture(scope="module")
def tiny_pair(convert_tiny):
    """A tiny llama (f32) with its q8_0 conversion as the draft (same vocabulary, close predictions)."""
    return convert_tiny("llama"), convert_tiny("llama", "q8_0")


@pytest.mark.parametrize("prompt", TINY_PROMPTS, ids=["plain", "repeated", "long"])
@pytest.mark.parametrize("draft_max", [1, 3, 8])
def test_tiny_greedy_speculative_equals_plain(tiny_pair, prompt, draft_max):
    target, draft = tiny_pair
    with LLM(target, n_ctx=256, n_threads=1, draft_model=draft, draft_max=draft_max) as llm:
        out = greedy_three_ways(llm, prompt, 40, chat=False)
    assert out["lookup"] == out[None]
    assert out["draft"] == out[None]


@pytest.mark.parametrize("prompt", TINY_PROMPTS, ids=["plain", "repeated", "long"])
def test_tiny_greedy_with_a_draft_vocabulary_equals_plain(tiny_pair, prompt):
    """draft_vocab=32768 of the 49,152 ids: the draft proposes only ids below it and ids in the context (its
    other logits are -inf), so the random tiny target picks a token the draft cannot propose about a third of
    the time; the output is still the target's own."""
    target, draft = tiny_pair
    with LLM(target, n_ctx=256, n_threads=1, draft_model=draft, draft_max=4, draft_vocab=32768,
             draft_p_min=0.0) as llm:
        assert llm.n_vocab == 49152
        plain = llm.generate(prompt, 40, temperature=0, speculative=None)
        spec = llm.generate(prompt, 40, temperature=0, speculative="draft")
        assert 0 < llm.last_stats.accepted_tokens < llm.last_stats.drafted_tokens
    assert spec == plain


def test_tiny_speculative_stops_at_the_context_end(tiny_pair):
    target, draft = tiny_pair
    prompt = TINY_PROMPTS[2]
    with LLM(target, n_ctx=len(prompt) + 7, n_threads=1, draft_model=draft) as llm:
        plain = llm.generate(prompt, 50, temperature=0, speculative=None)
        assert llm.last_stats.stop_reason == "context_full"
        for mode in ("draft", "lookup"):
            llm.reset()
            assert llm.generate(prompt, 50, temperature=0, speculative=mode) == plain
            assert llm.last_stats.stop_reason == "context_full"
            assert llm.n_past == llm.n_ctx


def test_tiny_speculative_respects_max_tokens_and_stop(tiny_pair):
    target, draft = tiny_pair
    with LLM(target, n_ctx=256, n_threads=1, draft_model=draft) as llm:
        for n in (1, 2, 5):
            plain = llm.generate(TINY_PROMPTS[1], n, temperature=0, speculative=None)
            for mode in ("draft", "lookup"):
                assert llm.generate(TINY_PROMPTS[1], n, temperature=0, speculative=mode) == plain
                assert llm.last_stats.generated_tokens == n


def test_sampled_speculative_is_deterministic_per_seed(tiny_pair):
    target, draft = tiny_pair
    with LLM(target, n_ctx=256, n_threads=1, draft_model=draft) as llm:
        kw = {"temperature": 0.9, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 11}
        a = llm.generate(TINY_PROMPTS[0], 30, speculative="draft", **kw)
        b = llm.generate(TINY_PROMPTS[0], 30, speculative="draft", **kw)
        assert a == b
        # lookup drafts are deterministic, so a sampled run draws exactly as plain decoding does
        assert llm.generate(TINY_PROMPTS[1], 30, speculative="lookup", **kw) == \
            llm.generate(TINY_PROMPTS[1], 30, speculative=None, **kw)


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """p-value of observed counts against probabilities, bins with expected count < 5 merged into one."""
    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] < 5:  # fold a small remainder into the last big bin
        obs[-2] += obs[-1]
        exp[-2] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    return float(scipy_stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


@pytest.mark.parametrize("draft_vocab", [0, 32768])
def test_sampled_draft_keeps_the_target_distribution(convert_tiny, draft_vocab):
    """The first token of a speculative step, over many seeds, is distributed as the target's own sampling
    distribution, even though the draft (another model) proposes from a different one (with draft_vocab 32768,
    from the ids below 32768 and the prompt's only)."""
    # the tiny random model and its q4_0 conversion: overlapping, clearly different distributions
    # (total variation distance about 0.5 here)
    target, draft = convert_tiny("llama"), convert_tiny("llama", "q4_0")
    temperature, top_k = 1.0, 40
    prompt = PROMPT_IDS[:10]
    n = 3000
    with LLM(target, n_ctx=64, n_threads=1, draft_model=draft) as llm, \
            LLM(draft, n_ctx=64, n_threads=1) as other:
        # the target's distribution after the prompt: top-k, then softmax at the temperature
        def dist(model: LLM) -> np.ndarray:
            logits = np.asarray(model.logits(prompt)[-1], dtype=np.float64)
            keep = np.argsort(-logits, kind="stable")[:top_k]
            p = np.zeros_like(logits)
            z = np.exp((logits[keep] - logits[keep].max()) / temperature)
            p[keep] = z / z.sum()
            return p

        p, q = dist(llm), dist(other)
        spec = _core.Speculator(llm._ctx, llm._draft_ctx, draft_max=4, p_min=0.0,  # always draft
                                draft_vocab=draft_vocab)
        counts = np.zeros(llm.n_vocab)
        llm.reset()
        llm.eval(prompt[:-1])
        for seed in range(n):
            sampler = Sampler(llm, temperature=temperature, top_k=top_k, top_p=1.0, min_p=0.0, seed=seed)
            llm.truncate(len(prompt) - 1)
            out = spec.step(sampler._s, prompt[-1], 5)
            counts[out[0]] += 1
        _, drafted, accepted = spec.stats()
    assert drafted > 0 and 0 < accepted < drafted  # both the accept and the resample branch ran
    # The test can fail: the draft's distribution is far from the target's.
    assert chi_square_p(counts, q) < 1e-6, chi_square_p(counts, q)
    assert chi_square_p(counts, p) > 1e-3, (chi_square_p(counts, p), accepted / drafted)


@pytest.mark.parametrize("prompt", TINY_PROMPTS[:2], ids=["plain", "repeated"])
def test_draft_stops_below_p_min(tiny_pair, prompt):
    """The draft proposes a token only when its top probability reaches p_min: a p_min just above the
    draft's top probability (softmax of its logits in float64 here) drafts nothing, one just below drafts."""
    target, draft = tiny_pair
    with LLM(draft, n_ctx=64, n_threads=1) as other:
        logits = np.asarray(other.logits(prompt)[-1], dtype=np.float64)
    top = 1.0 / np.exp(logits - logits.max()).sum()
    drafted = {}
    with LLM(target, n_ctx=64, n_threads=1, draft_model=draft) as llm:
        for name, p_min in (("above", top * (1 + 1e-4)), ("below", top * (1 - 1e-4))):
            spec = _core.Speculator(llm._ctx, llm._draft_ctx, draft_max=4, p_min=float(p_min), draft_vocab=0)
            llm.reset()
            llm.eval(prompt[:-1])
            spec.step(Sampler(llm, temperature=0.0)._s, prompt[-1], 5)
            drafted[name] = spec.stats()[1]
    assert drafted["above"] == 0 and drafted["below"] >= 1, (top, drafted)


def test_draft_p_min_reaches_the_core(tiny_pair):
    """LLM(draft_p_min=): 1.0 stops every draft before its first token (a tiny random draft is never that
    sure), 0.0 drafts every step; the greedy text is plain decoding's either way."""
    target, draft = tiny_pair
    with LLM(target, n_ctx=256, n_threads=1) as plain:
        ref = plain.generate(PROMPT_IDS, 24, temperature=0.0)
    drafted = {}
    for p_min in (1.0, 0.0):
        with LLM(target, n_ctx=256, n_threads=1, draft_model=draft, draft_p_min=p_min) as llm:
            assert llm.generate(PROMPT_IDS, 24, temperature=0.0, speculative="draft") == ref
            drafted[p_min] = llm.last_stats.drafted_tokens
    assert drafted[1.0] == 0 and drafted[0.0] > 0, drafted
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(InvalidArgumentError, match="draft_p_min"):
            LLM(target, n_ctx=64, draft_p_min=bad)


def test_draft_with_another_vocabulary_is_refused(convert_tiny):
    with pytest.raises(InvalidArgumentError, match="draft model .*(vocabulary|token)"):
        LLM(convert_tiny("llama"), n_ctx=64, draft_model=convert_tiny("llama_spm"))


def test_bad_speculative_arguments(tiny_pair):
    target, _ = tiny_pair
    with LLM(target, n_ctx=64, n_threads=1) as llm:
        with pytest.raises(InvalidArgumentError, match="needs a draft model"):
            llm.generate(PROMPT_IDS, 4, speculative="draft")
        with pytest.raises(InvalidArgumentError, match="speculative="):
            llm.generate(PROMPT_IDS, 4, speculative="fast")
    with pytest.raises(InvalidArgumentError, match="draft_max"):
        LLM(target, n_ctx=64, draft_max=0)
    with pytest.raises(InvalidArgumentError, match="draft_vocab"):
        LLM(target, n_ctx=64, draft_vocab=-1)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgellm", *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_cli_run_lookup_and_draft_report_drafted_tokens():
    model = str(smollm2_gguf_path())
    prompt = "Repeat this sentence exactly: The old red barn stands at the end of the long dirt road."
    plain = run_cli("run", model, "-p", prompt, "-n", "32", "--temp", "0", "-c", "512")
    assert plain.returncode == 0, plain.stderr
    lookup = run_cli("run", model, "-p", prompt, "-n", "32", "--temp", "0", "-c", "512", "--lookup")
    assert lookup.returncode == 0, lookup.stderr
    assert lookup.stdout == plain.stdout
    assert "lookup: drafted " in lookup.stderr and "accepted " in lookup.stderr
    draft = run_cli("run", model, "-p", prompt, "-n", "16", "--temp", "0", "-c", "512", "--draft", model,
                    "--draft-max", "4")
    assert draft.returncode == 0, draft.stderr
    assert "draft: drafted " in draft.stderr
    both = run_cli("run", model, "-p", prompt, "--lookup", "--draft", model)
    assert both.returncode != 0 and "choose one" in both.stderr
    no_draft = run_cli("run", model, "-p", prompt, "--lookup", "--draft-p-min", "0.5")
    assert no_draft.returncode != 0 and "--draft-p-min: applies to a draft model" in no_draft.stderr
    bad = run_cli("run", model, "-p", prompt, "--draft", model, "--draft-p-min", "2")
    assert bad.returncode != 0 and "--draft-p-min" in bad.stderr
