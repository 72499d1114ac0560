"""The native sampler chain held to a numpy reference.

Reference semantics (sampler.h): penalties over the last penalty_last_n accepted tokens, greedy at
temperature 0, then top-k, top-p and min-p on the untempered distribution, then temperature and one draw from
xoshiro256** seeded through splitmix64 (u = top 53 bits / 2^53). Candidates are in descending logit order
(ascending id on ties) once top-k or top-p has sorted them, otherwise in id order; the draw is the first
candidate whose running weight exceeds u times the total.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import edgellm
from edgellm.gguf import GGUFReader

MASK64 = (1 << 64) - 1


@pytest.fixture(scope="module")
def vocab_llm(convert_tiny):
    """A vocab-only LLM over the tiny SentencePiece model (about 1,000 tokens keeps the draws fast)."""
    path = convert_tiny("llama_spm")
    with edgellm.LLM(str(path), vocab_only=True) as llm:
        yield llm, len(GGUFReader(path)["tokenizer.ggml.tokens"])


@pytest.fixture
def make_sampler(vocab_llm):
    llm, _ = vocab_llm

    def make(**params):
        return edgellm.Sampler(llm, **params)

    return make


@pytest.fixture
def n_vocab(vocab_llm) -> int:
    return vocab_llm[1]


# ---------------------------------------------------------------------------------------------- references

OFF = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}


def penalized(logits: np.ndarray, history: list[int], *, repeat_penalty=1.0, frequency_penalty=0.0,
              presence_penalty=0.0, penalty_last_n=64) -> np.ndarray:
    out = logits.astype(np.float64)
    recent = history[-penalty_last_n:] if penalty_last_n > 0 else []
    ids, counts = np.unique(np.asarray(recent, dtype=np.int64), return_counts=True)
    for t, c in zip(ids, counts):
        x = out[t]
        x = x / repeat_penalty if x > 0 else x * repeat_penalty
        out[t] = x - c * frequency_penalty - presence_penalty
    return out.astype(np.float32).astype(np.float64)  # the sampler keeps penalized logits as float32


def reference(logits: np.ndarray, history: list[int] = (), *, temperature=0.8, top_k=40, top_p=0.95,
              min_p=0.05, seed=0, **pen) -> tuple[np.ndarray, np.ndarray]:
    """(candidate ids in draw order, their probabilities) of the chain for one row."""
    del seed
    x = penalized(logits, list(history), **pen)
    ids = np.arange(len(x))
    finite = np.isfinite(x)
    order = np.lexsort((ids, -x))  # descending logit, ascending id
    order = order[finite[order]]
    if temperature == 0:
        return order[:1], np.ones(1)
    keep, sorted_ = order, False
    if 0 < top_k < len(keep):
        keep, sorted_ = keep[:top_k], True
    if top_p < 1:
        p = np.exp(x[keep] - x[keep].max())
        cum = np.cumsum(p / p.sum())
        keep, sorted_ = keep[: int(np.argmax(cum >= top_p)) + 1 if cum[-1] >= top_p else len(keep)], True
    if not sorted_:
        keep = np.sort(keep)  # id order
    if min_p > 0:
        p = np.exp(x[keep] - x[keep].max())
        keep = keep[p >= min_p]
    w = np.exp((x[keep] - x[keep].max()) / temperature)
    return keep, w / w.sum()


def splitmix_xoshiro(seed: int):
    """The sampler's random stream in Python: xoshiro256** seeded with four splitmix64 outputs."""
    s, x = [], seed
    for _ in range(4):
        x = (x + 0x9E3779B97F4A7C15) & MASK64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        s.append(z ^ (z >> 31))

    def rotl(v: int, k: int) -> int:
        return ((v << k) | (v >> (64 - k))) & MASK64

    while True:
        result = (rotl((s[1] * 5) & MASK64, 7) * 9) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        yield (result >> 11) * 2.0**-53


def chi2_critical(df: int, z: float = 3.719) -> float:
    """Upper chi-square quantile by the Wilson-Hilferty approximation (z = 3.719: alpha = 1e-4)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def random_logits(n: int, seed: int, scale: float = 2.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------- greedy

def test_greedy_is_argmax(make_sampler, n_vocab) -> None:
    s = make_sampler(temperature=0.0, seed=5)
    for seed in range(20):
        row = random_logits(n_vocab, seed)
        assert s.sample(row) == int(np.argmax(row))
    row = np.zeros(n_vocab, dtype=np.float32)
    row[[7, 3, 900]] = 4.0
    assert s.sample(row) == 3  # ties: the lowest id


def test_top_k_1_is_argmax_whatever_the_seed(make_sampler, n_vocab) -> None:
    for seed in range(10):
        s = make_sampler(temperature=1.5, top_k=1, top_p=1.0, min_p=0.0, seed=seed)
        row = random_logits(n_vocab, 100 + seed, scale=0.5)  # a flat distribution: only top-k decides
        for _ in range(5):
            assert s.sample(row) == int(np.argmax(row))


# ---------------------------------------------------------------------------------------------- the draw

# Parameter sets: each filter alone, together, and with penalties over a history longer than the window.
CASES = [
    dict(temperature=1.0, **OFF),
    {"temperature": 0.7, "top_k": 50, "top_p": 1.0, "min_p": 0.0},
    {"temperature": 1.3, "top_k": 0, "top_p": 0.8, "min_p": 0.0},
    {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.1},
    {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "min_p": 0.05},
    {"temperature": 1.1, "top_k": 100, "top_p": 0.9, "min_p": 0.02,
     "repeat_penalty": 1.3, "frequency_penalty": 0.2, "presence_penalty": 0.5, "penalty_last_n": 16},
]


def _history(row: np.ndarray) -> list[int]:
    """40 tokens: likely ones, some repeated, so the penalties change the head of the distribution."""
    top = [int(t) for t in np.argsort(-row)[:12]]
    return [top[i % 12] for i in range(0, 40 * 5, 5)] + top[:3] * 2


@pytest.mark.parametrize("case", range(len(CASES)))
def test_draws_match_the_reference_distribution(make_sampler, n_vocab, case: int) -> None:
    params = CASES[case]
    row = random_logits(n_vocab, 1000 + case)
    history = _history(row) if "penalty_last_n" in params else []
    s = make_sampler(seed=42 + case, **params)
    for t in history:
        s.accept(t)
    ids, probs = reference(row, history, **params)
    expected = np.zeros(n_vocab)
    expected[ids] = probs

    n_draws = 20_000
    counts = np.bincount([s.sample(row) for _ in range(n_draws)], minlength=n_vocab)
    outside = np.nonzero((counts > 0) & (expected == 0))[0]
    assert outside.size == 0, f"tokens outside the filtered set were drawn: {outside[:10]}"

    # chi-square over the bins expected >= 5 times, the rest pooled into one bin
    exp_counts = expected * n_draws
    big = exp_counts >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(exp_counts[big], exp_counts[~big].sum())
    if exp[-1] < 5:  # pool too small to be a bin of its own: fold it into the smallest
        obs, exp = obs[:-1], exp[:-1]
        obs[np.argmin(exp)] += counts[~big].sum()
    assert big.sum() >= 10, "the case should spread over many tokens"
    stat = float(((obs - exp) ** 2 / np.maximum(exp, 1e-12)).sum())
    df = len(obs) - 1
    assert stat < chi2_critical(df), f"chi2 {stat:.1f} over {df} degrees of freedom"


STREAM_CASES = [dict(temperature=0.8, **OFF), {"temperature": 1.2, "top_k": 30, "top_p": 1.0, "min_p": 0.0}]


@pytest.mark.parametrize("params", STREAM_CASES)
def test_draws_follow_the_documented_random_stream(make_sampler, n_vocab, params) -> None:
    """Bit-exact: the Python xoshiro256** stream and the documented inverse-CDF walk pick the same tokens,
    so the tokens for a seed do not depend on the platform or its standard library."""
    row = random_logits(n_vocab, 77)
    ids, probs = reference(row, **params)
    cdf = np.cumsum(probs)
    stream = splitmix_xoshiro(1234)
    s = make_sampler(seed=1234, **params)
    for _ in range(300):
        u = next(stream)
        want = int(ids[min(int(np.searchsorted(cdf, u, side="right")), len(ids) - 1)])
        assert s.sample(row) == want


def test_masked_tokens_are_never_drawn(make_sampler, n_vocab) -> None:
    row = np.full(n_vocab, -np.inf, dtype=np.float32)
    allowed = [2, 50, 51, 600]
    row[allowed] = [0.0, 1.0, -1.0, 0.5]
    s = make_sampler(temperature=5.0, **OFF, seed=3)
    drawn = {s.sample(row) for _ in range(500)}
    assert drawn == set(allowed)


# ---------------------------------------------------------------------------------------------- penalties

def test_penalties_match_the_reference_greedy(make_sampler, n_vocab) -> None:
    rng = np.random.default_rng(9)
    settings = [
        {"repeat_penalty": 1.5},
        {"repeat_penalty": 0.7},  # < 1 rewards repetition: still the documented formula
        {"frequency_penalty": 0.6},
        {"presence_penalty": 1.2},
        {"repeat_penalty": 1.2, "frequency_penalty": 0.3, "presence_penalty": 0.4, "penalty_last_n": 8},
        {"frequency_penalty": -0.5, "penalty_last_n": 3},
    ]
    for pen in settings:
        s = make_sampler(temperature=0.0, **pen)
        for trial in range(10):
            row = (rng.standard_normal(n_vocab) * 0.5).astype(np.float32)
            top = np.argsort(-row)[:6]
            row[top[:3]] = [2.0, -0.2, 1.9]  # a positive and a negative logit among the repeated tokens
            if trial % 2:
                row -= 4.0  # every logit negative: the multiplying branch decides
            history = [int(t) for t in rng.choice(top, size=12)]
            s.reset()
            for t in history:
                s.accept(t)
            ref = penalized(row, history, **pen)
            assert s.sample(row) == int(np.argmax(ref)), (pen, trial)


def test_penalty_window_and_reset(make_sampler, n_vocab) -> None:
    row = np.zeros(n_vocab, dtype=np.float32)
    row[10], row[11] = 3.0, 2.0
    s = make_sampler(temperature=0.0, repeat_penalty=2.0, penalty_last_n=4)
    s.accept(10)
    assert s.sample(row) == 11  # 3 / 2 < 2
    for t in (1, 2, 3, 4):  # pushes 10 out of the 4-token window
        s.accept(t)
    assert s.sample(row) == 10
    s.accept(10)
    s.reset()
    assert s.sample(row) == 10
    off = make_sampler(temperature=0.0, repeat_penalty=2.0, penalty_last_n=0)
    off.accept(10)
    assert off.sample(row) == 10
    neg = np.full(n_vocab, -5.0, dtype=np.float32)
    neg[10], neg[11] = -1.0, -1.5
    s.accept(10)
    assert s.sample(neg) == 11  # a negative logit is multiplied: -2 < -1.5


# ---------------------------------------------------------------------------------------------- seeds

def test_same_seed_same_tokens_different_seed_different(make_sampler, n_vocab) -> None:
    row = random_logits(n_vocab, 5, scale=1.0)
    params = {"temperature": 1.0, "top_k": 0, "top_p": 0.95, "min_p": 0.0}

    def run(seed: int) -> list[int]:
        s = make_sampler(seed=seed, **params)
        return [s.sample(row) for _ in range(200)]

    a = run(11)
    assert run(11) == a
    assert run(12) != a
    s = make_sampler(seed=11, **params)
    first = [s.sample(row) for _ in range(50)]
    s.reset()
    assert [s.sample(row) for _ in range(50)] == first == a[:50]


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1), ("temperature", float("nan")), ("temperature", float("inf")),
        ("top_p", 0.0), ("top_p", 1.5), ("top_p", float("nan")),
        ("min_p", -0.1), ("min_p", 1.0),
        ("repeat_penalty", 0.0), ("repeat_penalty", -1.0), ("repeat_penalty", float("inf")),
        ("frequency_penalty", float("nan")), ("presence_penalty", float("-inf")),
        ("penalty_last_n", -1),
    ],
)
def test_invalid_parameter_names_the_field(make_sampler, field: str, value) -> None:
    with pytest.raises(edgellm.EdgeLLMError, match=field):
        make_sampler(**{field: value})


def test_bad_logits_are_errors(make_sampler, n_vocab) -> None:
    s = make_sampler(temperature=1.0, seed=1)
    row = random_logits(n_vocab, 3)
    row[17] = np.nan
    with pytest.raises(edgellm.EdgeLLMError, match="token 17 is nan"):
        s.sample(row)
    row[17] = np.inf
    with pytest.raises(edgellm.EdgeLLMError, match=r"token 17 is \+inf"):
        s.sample(row)
    for temperature in (0.0, 1.0):
        with pytest.raises(edgellm.EdgeLLMError, match="every logit is -inf"):
            make_sampler(temperature=temperature).sample(np.full(n_vocab, -np.inf, dtype=np.float32))
