"""The KV cache that remembers: rewinding, reuse across chat turns, saved sessions, and the q8_0 cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgellm import LLM
from edgellm.errors import StateFileError
from helpers.smollm2 import smollm2_gguf_path
from helpers.tiny_models import PROMPT_IDS

GPL3 = Path("/usr/share/common-licenses/GPL-3")
LONG = [(t * 31 + 11) % 950 + 3 for t in range(70)]


@pytest.fixture(scope="module")
def smollm2():
    with LLM(smollm2_gguf_path(), n_ctx=1024, n_threads=2) as llm:
        yield llm


# ---------------------------------------------------------------- rewind


@pytest.mark.parametrize("kv_type", ["f16", "q8_0", "f32"])
def test_rewind_gives_the_logits_of_recomputation(convert_tiny, kv_type):
    path = convert_tiny("llama")
    other = [(t * 7 + 5) % 900 + 2 for t in range(25)]
    with LLM(path, n_ctx=128, n_threads=1, kv_type=kv_type) as m:
        m.eval(LONG)
        for cut in (50, 64, 13):  # inside a key tile, on a tile boundary, far back
            m.truncate(cut)
            assert m.n_past == cut and m.cache_tokens == LONG[:cut]
            m.eval(other, logits_all=True)
            rewound = np.array(m.last_logits())
            m.reset()
            m.eval(LONG[:cut] + other, logits_all=True)
            fresh = np.array(m.last_logits())[cut:]
            assert np.array_equal(rewound, fresh), (kv_type, cut)
            m.truncate(0)
            m.eval(LONG)


# ------------------------------------------------------------ chat turns


def test_second_chat_turn_evaluates_only_the_new_tokens(smollm2):
    smollm2.reset()
    messages = [{"role": "user", "content": "Name a color of the sky on a clear day."}]
    first = smollm2.chat(messages, 24, temperature=0)
    turn1 = smollm2.last_stats
    assert turn1.cached_tokens == 0
    n0 = smollm2.n_evaluated
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And at night?"}]
    smollm2.chat(messages, 24, temperature=0)
    s = smollm2.last_stats
    # the whole first turn (its prompt and the reply) is reused from the cache
    assert s.cached_tokens >= turn1.prompt_tokens + turn1.generated_tokens - 2, (turn1, s)
    new_prompt = s.prompt_tokens - s.cached_tokens
    assert new_prompt < 25  # the new user message and the template's few tokens around it
    # counted by the core: the new prompt tokens, then one evaluation per generated token but the last
    decode = s.generated_tokens - (1 if s.stop_reason == "max_tokens" else 0)
    assert smollm2.n_evaluated - n0 == s.evaluated_tokens == new_prompt + decode


# --------------------------------------------------------- saved sessions


def test_save_load_continue_equals_never_stopping(smollm2, tmp_path):
    ids = smollm2.tokenize("Once upon a time, in a small village by the sea, there lived")
    smollm2.reset()
    smollm2.generate(ids, 40, temperature=0)
    assert smollm2.last_stats.stop_reason == "max_tokens"
    never_stopped = smollm2.cache_tokens  # ids + the first 39 generated tokens

    smollm2.reset()
    smollm2.generate(ids, 20, temperature=0)
    saved = smollm2.cache_tokens
    state = tmp_path / "session.state"
    smollm2.save_state(state)
    logits = np.array(smollm2.last_logits())

    with LLM(smollm2_gguf_path(), n_ctx=1024, n_threads=1) as other:
        other.load_state(state)
        assert other.cache_tokens == saved and other.n_past == len(saved)
        assert np.array_equal(np.array(other.last_logits()), logits)
        n0 = other.n_evaluated
        other.generate(saved, 40 - 19, temperature=0)
        assert other.last_stats.cached_tokens == len(saved) - 1  # only the last token is evaluated again
        assert other.cache_tokens == never_stopped
        assert other.n_evaluated - n0 == 1 + 40 - 19 - 1
    assert not [p for p in tmp_path.iterdir() if p.name != "session.state"]  # no temporary files left


@pytest.fixture
def tiny_state(convert_tiny, tmp_path):
    path = convert_tiny("llama")
    with LLM(path, n_ctx=128, n_threads=1) as m:
        m.eval(LONG)
        m.save_state(tmp_path / "s.state")
    return path, tmp_path / "s.state"


def assert_refused(path: Path, state: Path, match: str, **kw) -> None:
    """Loading fails with StateFileError(match) and leaves the context as it was."""
    with LLM(path, n_ctx=kw.pop("n_ctx", 128), n_threads=1, **kw) as m:
        m.eval(PROMPT_IDS)
        before = np.array(m.last_logits())
        with pytest.raises(StateFileError, match=match):
            m.load_state(state)
        assert m.cache_tokens == PROMPT_IDS
        assert np.array_equal(np.array(m.last_logits()), before)
        m.eval([7], logits_all=True)  # still usable


def test_state_of_another_model_is_refused(convert_tiny, tiny_state):
    _, state = tiny_state
    assert_refused(convert_tiny("qwen2"), state, "saved with another model")
    # the same architecture and shapes, other weights
    assert_refused(convert_tiny("llama", "q8_0"), state, "saved with another model")


def test_state_of_another_context_is_refused(tiny_state):
    path, state = tiny_state
    assert_refused(path, state, "n_ctx: saved with a context of 128 tokens; this context has 256", n_ctx=256)
    assert_refused(path, state, "kv_type: saved with a f16 KV cache; this context's is q8_0", kv_type="q8_0")


def test_corrupt_truncated_and_foreign_state_files_are_refused(tiny_state, tmp_path):
    path, state = tiny_state
    data = state.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    (tmp_path / "flipped").write_bytes(bytes(flipped))
    assert_refused(path, tmp_path / "flipped", "corrupt")
    (tmp_path / "short").write_bytes(data[:-100])
    assert_refused(path, tmp_path / "short", "truncated")
    (tmp_path / "long").write_bytes(data + b"\0")
    assert_refused(path, tmp_path / "long", "trailing bytes")
    (tmp_path / "tiny").write_bytes(data[:10])
    assert_refused(path, tmp_path / "tiny", "truncated")
    (tmp_path / "foreign").write_bytes(b"GGUF" + bytes(200))
    assert_refused(path, tmp_path / "foreign", "not an edgellm state file")
    assert_refused(path, tmp_path / "missing", "cannot read")
    # a header claiming more tokens than n_ctx
    big = bytearray(data)
    big[20 + 4 * 6:20 + 4 * 7] = (10**6).to_bytes(4, "little")
    (tmp_path / "big").write_bytes(bytes(big))
    assert_refused(path, tmp_path / "big", "n_tokens")


def test_unwritable_state_path(tiny_state, tmp_path):
    path, _ = tiny_state
    with LLM(path, n_ctx=128, n_threads=1) as m:
        m.eval(PROMPT_IDS)
        with pytest.raises(StateFileError, match="cannot write"):
            m.save_state(tmp_path / "no-such-dir" / "s.state")


def test_q8_0_state_round_trip(convert_tiny, tmp_path):
    path = convert_tiny("llama")
    with LLM(path, n_ctx=128, n_threads=1, kv_type="q8_0") as m:
        m.eval(LONG)
        m.save_state(tmp_path / "q.state")
        m.eval([5, 6, 7], logits_all=True)
        want = np.array(m.last_logits())
    with LLM(path, n_ctx=128, n_threads=1, kv_type="q8_0") as m:
        m.load_state(tmp_path / "q.state")
        m.eval([5, 6, 7], logits_all=True)
        assert np.array_equal(np.array(m.last_logits()), want)


# ------------------------------------------------------------ q8_0 cache


def test_q8_0_cache_halves_memory_and_keeps_the_predictions():
    text = GPL3.read_text()[:6000]
    with LLM(smollm2_gguf_path(), n_ctx=512, n_threads=2) as f16:
        ids = f16.tokenize(text)[:400]
        ref = np.array(f16.logits(ids))
        f16_bytes = f16.kv_bytes
    with LLM(smollm2_gguf_path(), n_ctx=512, n_threads=2, kv_type="q8_0") as q8:
        got = np.array(q8.logits(ids))
        assert q8.kv_bytes <= 0.54 * f16_bytes  # 34 bytes per 32 values against 64
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    assert agree >= 0.97, agree
    # the cache is really quantized: the logits move, a little
    diff = np.abs(got - ref)
    assert 0 < np.median(diff) < 0.1, np.median(diff)
