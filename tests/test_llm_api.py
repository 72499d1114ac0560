"""The Python API over the native core: streaming, determinism, stop strings, the cache, errors."""

from __future__ import annotations

import numpy as np
import pytest

import edgellm
from edgellm import LLM
from helpers.smollm2 import smollm2_gguf_path

PROMPT = "Once upon a time, in a small village by the sea,"
SAMPLING = {"temperature": 0.9, "top_k": 50, "top_p": 0.95, "min_p": 0.02, "repeat_penalty": 1.1}


@pytest.fixture(scope="module")
def smollm2():
    with LLM(smollm2_gguf_path(), n_ctx=1024, n_threads=2) as llm:
        yield llm


def test_stream_pieces_concatenate_to_the_text(smollm2):
    pieces = list(smollm2.generate(PROMPT, 48, stream=True, seed=7, **SAMPLING))
    assert len(pieces) > 5
    assert all(isinstance(p, str) and p for p in pieces)
    for p in pieces:
        p.encode("utf-8")  # no lone surrogates: every piece is whole characters
    full = smollm2.generate(PROMPT, 48, seed=7, **SAMPLING)
    assert "".join(pieces) == full
    # the text is the detokenization of the generated tokens
    ids = smollm2.tokenize(full, add_special=False)
    assert smollm2.detokenize(ids) == full


def test_stream_never_splits_a_character(smollm2):
    # Emoji and CJK are split over several byte tokens in this vocabulary: pieces must still be whole.
    prompt = "<|im_start|>user\nRepeat exactly: 你好世界 🎉🎉 Привет<|im_end|>\n<|im_start|>assistant\n"
    pieces = list(smollm2.generate(prompt, 32, temperature=0, stream=True))
    text = "".join(pieces)
    assert "\ufffd" not in text
    d = edgellm._core.Detokenizer(smollm2._model, False)
    ids = smollm2.tokenize("你好世界 🎉", add_special=False)
    out = [d.push(t) for t in ids] + [d.flush()]
    assert "".join(out) == "你好世界 🎉"
    assert any(p == "" for p in out[:-1]), "a multi-byte character should be held back at least once"


def test_same_seed_same_text_five_runs(smollm2):
    texts = {smollm2.generate(PROMPT, 32, seed=1234, **SAMPLING) for _ in range(5)}
    assert len(texts) == 1
    other = smollm2.generate(PROMPT, 32, seed=4321, **SAMPLING)
    assert other != next(iter(texts))


def test_same_seed_same_text_across_thread_counts():
    path = smollm2_gguf_path()
    out = []
    for n_threads in (1, 2):
        with LLM(path, n_ctx=512, n_threads=n_threads) as llm:
            out.append(llm.generate(PROMPT, 32, seed=99, **SAMPLING))
    assert out[0] == out[1]


def test_greedy_is_the_argmax_path(smollm2):
    text = smollm2.generate(PROMPT, 12, temperature=0)
    ids = smollm2.tokenize(PROMPT, parse_special=True)
    gen = []
    for _ in range(12):
        logits = smollm2.logits(ids + gen)
        t = int(np.argmax(logits[-1]))
        if smollm2.is_eog(t):
            break
        gen.append(t)
    assert smollm2.detokenize(gen) == text


def test_stop_strings_cut_the_output(smollm2):
    full = smollm2.generate(PROMPT, 40, temperature=0)
    words = full.split()
    assert len(words) > 4
    stop = words[3]
    cut = smollm2.generate(PROMPT, 40, temperature=0, stop=[stop, "never-appears"])
    assert cut == full[: full.index(stop)]
    assert smollm2.last_stats.stop_reason == "stop"
    streamed = "".join(smollm2.generate(PROMPT, 40, temperature=0, stop=stop, stream=True))
    assert streamed == cut


def test_prompt_prefix_is_reused(smollm2):
    first = smollm2.generate(PROMPT, 8, temperature=0)
    n_prompt = smollm2.last_stats.prompt_tokens
    again = smollm2.generate(PROMPT, 8, temperature=0)
    assert again == first
    assert smollm2.last_stats.cached_tokens == n_prompt - 1
    longer = smollm2.generate(PROMPT + " there lived", 8, temperature=0)
    assert smollm2.last_stats.cached_tokens >= n_prompt - 1
    smollm2.reset()
    assert smollm2.generate(PROMPT + " there lived", 8, temperature=0) == longer


def test_generation_stops_when_the_context_is_full():
    with LLM(smollm2_gguf_path(), n_ctx=32, n_threads=2) as llm:
        text = llm.generate(PROMPT, 100, temperature=0)
        assert llm.last_stats.stop_reason == "context_full"
        assert llm.n_past == 32
        assert text
        with pytest.raises(edgellm.ContextFullError, match="the prompt has .* tokens; the context holds 32"):
            llm.generate(PROMPT * 4, 10)
        with pytest.raises(edgellm.ContextFullError):
            llm.eval(list(range(40)))


def test_bad_arguments_raise_clear_errors(smollm2):
    n = smollm2.n_vocab
    with pytest.raises(edgellm.InvalidArgumentError, match=f"token id {n} at position 1 is outside"):
        smollm2.logits([1, n, 2])
    with pytest.raises(edgellm.InvalidArgumentError, match="token id -3"):
        smollm2.token_to_piece(-3)
    for kw, field in [({"temperature": -1}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                      ({"min_p": 1.0}, "min_p"), ({"top_k": -2}, "top_k"), ({"repeat_penalty": 0}, "repeat_penalty"),
                      ({"temperature": float("nan")}, "temperature")]:
        with pytest.raises(edgellm.InvalidArgumentError, match=field):
            smollm2.generate(PROMPT, 4, **kw)
    with pytest.raises(edgellm.InvalidArgumentError, match="max_tokens"):
        smollm2.generate(PROMPT, -1)
    with pytest.raises(edgellm.InvalidArgumentError, match="perplexity: the text has"):
        smollm2.perplexity("too short", n_ctx=512)
    with pytest.raises(ValueError):  # InvalidArgumentError is also a ValueError
        edgellm.Sampler(smollm2, top_p=2.0)
    with pytest.raises(edgellm.InvalidArgumentError, match="logits: expected a 1-D array"):
        edgellm.Sampler(smollm2).sample(np.zeros(3, np.float32))


def test_missing_and_closed_models():
    with pytest.raises(edgellm.ModelFileError, match="nope.gguf"):
        LLM("/definitely/nope.gguf")
    llm = LLM(smollm2_gguf_path(), n_ctx=64)
    llm.close()
    with pytest.raises(edgellm.EdgeLLMError, match="closed"):
        llm.tokenize("x")
    vocab = LLM(smollm2_gguf_path(), vocab_only=True)
    assert vocab.tokenize("Hello", add_special=False) == [19556]
    with pytest.raises(edgellm.InvalidArgumentError, match="vocab_only"):
        vocab.generate("Hello", 4)


def test_metadata_and_properties(smollm2):
    assert smollm2.arch == "llama"
    assert smollm2.n_vocab == 49152
    assert smollm2.n_ctx == 1024
    assert "im_start" in smollm2.chat_template
    assert smollm2.metadata("general.architecture") == "llama"
    assert smollm2.metadata("no.such.key") is None
    assert smollm2.is_eog(smollm2.eos)
