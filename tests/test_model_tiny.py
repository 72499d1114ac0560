"""The forward pass on tiny random models of every architecture, against transformers.

Each tiny checkpoint (tests/helpers/tiny_models.py) is converted to GGUF by our converter and run by the
native core through `edgellm.LLM`. The configs exercise what the runtime must get right: GQA, head_dim
different from n_embd / n_head, linear and yarn rope scaling, q/k/v biases, QK-norm, tied embeddings, and
gemma3's sliding window (8 positions, shorter than the prompts) with its global every-6th layer.

transformers computes attention in f32; our default KV cache is f16, whose rounding of K and V moves these
random models' logits by up to ~8e-3. The 1e-3 comparison therefore runs with an f32 cache (kv_type="f32"),
and the f16 cache is held to transformers more loosely and to the f32 cache by top-1 agreement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgellm import LLM
from edgellm.errors import ContextFullError, GGUFError, InvalidArgumentError, UnsupportedError
from edgellm.gguf import GGUFReader, GGUFWriter
from helpers.tiny_models import (
    PROMPT_IDS,
    gguf_logits,
    hf_logits,
    tiny_checkpoint,
    trained_checkpoint,
    trained_ids,
)

ARCHS = ["llama", "llama_spm", "mistral", "qwen2", "qwen3", "gemma3"]
PROMPT = PROMPT_IDS[:16]
# 64 ids valid in every tiny vocabulary (all have more than 1000 tokens), fixed by the seed.
LONG_PROMPT = [int(i) for i in np.random.default_rng(7).integers(3, 1000, size=64)]


def llm(path: Path, **kw: Any) -> LLM:
    kw = {"n_ctx": 128, "n_threads": 2, **kw}
    return LLM(path, **kw)


def decode_one_by_one(model: LLM, ids: list[int]) -> np.ndarray:
    model.reset()
    rows = []
    for t in ids:
        model.eval([t])
        rows.append(np.array(model.last_logits()[-1]))
    return np.stack(rows)


def llama_variant_f32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, **config: Any) -> tuple[Path, Path]:
    """(checkpoint, our f32 GGUF) of the tiny llama with `config` over its overrides, registered as `name`."""
    from edgellm.converters.convert import ConvertOptions, convert
    from helpers import tiny_models

    _, tok, overrides = tiny_models.TINY["llama"]
    monkeypatch.setitem(tiny_models.TINY, name, ("LlamaForCausalLM", tok, dict(overrides, **config)))
    ckpt = tmp_path / "ckpt"
    tiny_models.build_tiny(ckpt, name)
    out = tmp_path / f"{name}.gguf"
    convert(ckpt, out, ConvertOptions(quant="f32", progress=False))
    return ckpt, out


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(convert_tiny, arch):
    ref = hf_logits(tiny_checkpoint(arch), PROMPT)
    with llm(convert_tiny(arch), kv_type="f32") as m:
        exact = m.logits(PROMPT)
    assert exact.shape == ref.shape
    assert np.abs(exact - ref).max() < 1e-3
    # the default f16 cache: the same model up to the rounding of K and V
    with llm(convert_tiny(arch)) as m:
        f16 = m.logits(PROMPT)
    assert np.abs(f16 - ref).max() < 2e-2
    assert (f16.argmax(1) == ref.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_through_the_cache_equals_one_batched_pass(convert_tiny, arch):
    with llm(convert_tiny(arch)) as m:
        batched = np.array(m.logits(PROMPT))
        stepped = decode_one_by_one(m, PROMPT)
        assert m.n_past == len(PROMPT)
    assert np.abs(stepped - batched).max() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_small_batches_threads_and_truncate_give_the_same_logits(convert_tiny, arch):
    path = convert_tiny(arch)
    with llm(path) as m:
        full = np.array(m.logits(LONG_PROMPT))
    # prefill split into chunks of 5 tokens (sliding windows and tiles cross chunk boundaries)
    with llm(path, n_batch=5, n_threads=1) as m:
        chunked = np.array(m.logits(LONG_PROMPT))
        assert np.abs(chunked - full).max() < 1e-4
        # rewind into the middle of the prompt and evaluate other tokens: same as a fresh context
        other = [(t * 7 + 3) % 997 + 2 for t in LONG_PROMPT[30:50]]
        m.truncate(30)
        assert m.n_past == 30
        m.eval(other, logits_all=True)
        resumed = np.array(m.last_logits())
    with llm(path) as m:
        fresh = np.array(m.logits(LONG_PROMPT[:30] + other))[30:]
    assert np.abs(resumed - fresh).max() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_f16_file_keeps_the_top_token(convert_tiny, arch):
    with llm(convert_tiny(arch)) as m:
        ref = np.array(m.logits(LONG_PROMPT))
    with llm(convert_tiny(arch, "f16")) as m:
        got = np.array(m.logits(LONG_PROMPT))
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    # the tiny weights are f16 values, so the files hold the same model: only the kernels differ
    assert np.abs(got - ref).max() < 1e-3


# The SentencePiece models have rows of 256 and 512, so q4_k_m really uses the K-quant formats there.
@pytest.mark.parametrize("arch", ["llama_spm", "gemma3"])
@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quantized_files_match_transformers_on_the_same_file(convert_tiny, arch, quant):
    """Our quantized matmuls against transformers running the same file (dequantized by gguf-py).

    Top-1 agreement with the f32 file is not a useful measure on these random models: their 49k logits
    are near-Gaussian with top-2 gaps of ~0.3, which q8_0 / q4_k_m weight noise flips on 5-60% of positions
    in transformers exactly as in our runtime. The same file run by both must agree: our quantized
    matmuls round the activations to 16-bit integers per block of 32 (relative error <= 2^-16 of the
    block's largest value), which moves these logits by up to ~1e-3, typically 1e-4."""
    path = convert_tiny(arch, quant)
    ref = gguf_logits(path, LONG_PROMPT)
    with llm(path, kv_type="f32") as m:
        got = np.array(m.logits(LONG_PROMPT))
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert np.abs(got - ref).max() < 3e-3
    assert np.median(np.abs(got - ref)) < 2e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_files_keep_the_top_token_of_a_trained_model(convert_trained, arch):
    """f16, q8_0 and q4_k_m files of a tiny model that has learnt its text keep the f32 file's top token.

    Teacher-forced over 256 positions of the text the model was trained on, where its predictions have
    margins (a random model's have none: see the test above). llama_spm and gemma3 have rows of 256 and 512,
    so q4_k_m runs the K-quant formats there; the others' rows of 64 fall back to the formats that fit."""
    checkpoint = trained_checkpoint(arch)
    ids = trained_ids(checkpoint)[:256]
    ref = hf_logits(checkpoint, ids)
    with llm(convert_trained(arch), n_ctx=512, kv_type="f32") as m:
        exact = np.array(m.logits(ids))
    assert np.abs(exact - ref).max() < 1e-3
    top = exact.argmax(1)
    # the model does know its text (so its top tokens are decisions, not near-ties)
    assert (top[:-1] == np.array(ids[1:])).mean() >= 0.7
    for quant in ("f16", "q8_0", "q4_k_m"):
        with llm(convert_trained(arch, quant), n_ctx=512) as m:
            got = np.array(m.logits(ids)).argmax(1)
        agreement = (got == top).mean()
        print(f"{arch} {quant}: top-1 agreement with f32 {agreement:.4f}")
        assert agreement >= 0.95, (quant, agreement)


# ---------------------------------------------------------------- bad input


def rewrite(
    src: Path,
    dst: Path,
    *,
    kv: dict[str, Any] | None = None,
    drop_keys: tuple[str, ...] = (),
    drop: tuple[str, ...] = (),
    reshape: dict[str, tuple[int, ...]] | None = None,
) -> Path:
    """A copy of src with metadata values replaced (same type) or dropped, tensors dropped, or tensors
    re-declared with another numpy-order shape (f32 zeros)."""
    r = GGUFReader(src)
    kv, reshape = kv or {}, reshape or {}
    with GGUFWriter(dst, alignment=r.alignment) as w:
        for key in r.keys():  # noqa: SIM118  (a reader, not a dict)
            if key in drop_keys or key == "general.alignment":
                continue
            vtype, elem = r.value_type(key)
            w.add_value(key, kv.get(key, r[key]), vtype, elem)
        tensors = [t for t in r.tensors if t.name not in drop]
        for t in tensors:
            if t.name in reshape:
                w.add_tensor_info(t.name, reshape[t.name], 0)  # f32
            else:
                w.add_tensor_info(t.name, t.shape, t.type)
        w.write_header()
        for t in tensors:
            if t.name in reshape:
                w.write_tensor_data(t.name, np.zeros(reshape[t.name], dtype=np.float32))
            else:
                w.write_tensor_data(t.name, r.tensor_bytes(t.name))
        w.finish()
    return dst


def load_error(path: Path, error: type[Exception]) -> str:
    with pytest.raises(error) as info:
        LLM(path, n_ctx=32)
    return str(info.value)


def test_missing_tensor(convert_tiny, tmp_path):
    bad = rewrite(convert_tiny("qwen2"), tmp_path / "bad.gguf", drop=("blk.1.ffn_up.weight",))
    msg = load_error(bad, GGUFError)
    assert str(bad) in msg and "'blk.1.ffn_up.weight'" in msg and "missing" in msg
    # qwen2 needs its biases; llama-arch files may go without
    bad = rewrite(convert_tiny("qwen2"), tmp_path / "bias.gguf", drop=("blk.0.attn_k.bias",))
    assert "'blk.0.attn_k.bias'" in load_error(bad, GGUFError)
    bad = rewrite(convert_tiny("qwen3"), tmp_path / "qnorm.gguf", drop=("blk.1.attn_q_norm.weight",))
    assert "'blk.1.attn_q_norm.weight'" in load_error(bad, GGUFError)


def test_wrong_tensor_shape(convert_tiny, tmp_path):
    src = convert_tiny("llama")
    rows, cols = GGUFReader(src).tensor("blk.0.attn_k.weight").shape
    bad = rewrite(src, tmp_path / "bad.gguf", reshape={"blk.0.attn_k.weight": (rows * 2, cols)})
    msg = load_error(bad, GGUFError)
    assert str(bad) in msg and "'blk.0.attn_k.weight'" in msg and "shape" in msg
    assert f"[{cols}, {rows}]" in msg  # the expected shape, GGUF order
    n_embd = GGUFReader(src)["llama.embedding_length"]
    bad = rewrite(src, tmp_path / "norm.gguf", reshape={"output_norm.weight": (n_embd + 1,)})
    assert "'output_norm.weight'" in load_error(bad, GGUFError)


def test_unsupported_architecture(convert_tiny, tmp_path):
    bad = rewrite(convert_tiny("llama"), tmp_path / "bad.gguf", kv={"general.architecture": "gpt2"})
    msg = load_error(bad, UnsupportedError)
    assert str(bad) in msg and "general.architecture" in msg and "gpt2" in msg


def test_bad_hyperparameters(convert_tiny, tmp_path):
    src = convert_tiny("llama")
    msg = load_error(rewrite(src, tmp_path / "a.gguf", drop_keys=("llama.block_count",)), GGUFError)
    assert "'llama.block_count'" in msg and "missing" in msg
    msg = load_error(rewrite(src, tmp_path / "b.gguf", kv={"llama.attention.head_count_kv": 3}), GGUFError)
    assert "'llama.attention.head_count_kv'" in msg and "does not divide" in msg
    msg = load_error(
        rewrite(src, tmp_path / "c.gguf", kv={"llama.rope.scaling.type": "longrope"}), UnsupportedError
    )
    assert "'llama.rope.scaling.type'" in msg and "longrope" in msg
    msg = load_error(rewrite(src, tmp_path / "d.gguf", kv={"llama.feed_forward_length": 96}), GGUFError)
    assert "'blk.0.ffn_gate.weight'" in msg and "shape" in msg


def test_token_ids_out_of_range(convert_tiny):
    with llm(convert_tiny("qwen2")) as m:
        m.eval(PROMPT[:4])
        before = np.array(m.last_logits())
        for bad in (m.n_vocab, -1):
            with pytest.raises(InvalidArgumentError) as info:
                m.eval([5, 6, bad])
            assert f"token id {bad} at position 2" in str(info.value)
            assert m.n_past == 4
        m.eval(PROMPT[4:8])
        after = np.array(m.last_logits())
    with llm(convert_tiny("qwen2")) as m:
        fresh = np.array(m.logits(PROMPT[:8]))
    assert np.abs(after[-1] - fresh[-1]).max() < 1e-4
    assert np.abs(before[-1] - fresh[3]).max() < 1e-4


def test_context_full_evaluates_nothing(convert_tiny):
    with llm(convert_tiny("gemma3"), n_ctx=16) as m:
        assert m.n_ctx == 16
        m.eval(LONG_PROMPT[:10])
        with pytest.raises(ContextFullError) as info:
            m.eval(LONG_PROMPT[10:17])
        assert "n_ctx 16" in str(info.value)
        assert m.n_past == 10
        m.eval(LONG_PROMPT[10:16], logits_all=True)  # exactly fills the context
        assert m.n_past == 16
        last = np.array(m.last_logits())
    with llm(convert_tiny("gemma3")) as m:
        fresh = np.array(m.logits(LONG_PROMPT[:16]))[10:]
    assert np.abs(last - fresh).max() < 1e-4


def test_sliding_window_limits_what_local_layers_see(convert_tiny, tmp_path):
    """gemma3's local layers attend over the last 8 positions: widening the window in the file changes
    the logits from position 8 on, and only there."""
    src = convert_tiny("gemma3")
    assert GGUFReader(src)["gemma3.attention.sliding_window"] == 8
    wide = rewrite(src, tmp_path / "wide.gguf", kv={"gemma3.attention.sliding_window": 4096})
    with llm(src) as m:
        narrow_logits = np.array(m.logits(PROMPT))
    with llm(wide) as m:
        wide_logits = np.array(m.logits(PROMPT))
    diff = np.abs(narrow_logits - wide_logits).max(axis=1)
    assert diff[:8].max() == 0.0
    assert diff[8:].min() > 1e-2


def test_llama3_rope_scaling_matches_transformers(tmp_path, monkeypatch):
    """Llama 3 rope scaling (per-frequency divisors in rope_freqs.weight), on a checkpoint made here."""
    rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    ckpt, out = llama_variant_f32(tmp_path, monkeypatch, "llama3", rope_scaling=rope)
    assert "rope_freqs.weight" in {t.name for t in GGUFReader(out).tensors}
    ids = LONG_PROMPT[:40]
    ref = hf_logits(ckpt, ids)
    with llm(out, kv_type="f32") as m:
        got = np.array(m.logits(ids))
    assert np.abs(got - ref).max() < 1e-3


def test_wide_query_groups_match_transformers_at_any_thread_count(tmp_path, monkeypatch):
    """Attention takes the query heads of a KV group together, at most four to a task: eight query heads on
    one KV head are split into runs (two at one or two threads, three at three), and head_dim 24 leaves a
    tail past the 16-float chunks. Every split gives the same bits, and the logits are transformers'."""
    ckpt, out = llama_variant_f32(tmp_path, monkeypatch, "llama_mqa", num_attention_heads=8, num_key_value_heads=1,
                                  head_dim=24)
    ids = LONG_PROMPT[:40]
    ref = hf_logits(ckpt, ids)
    with llm(out, kv_type="f32") as m:
        got = np.array(m.logits(ids))
    assert np.abs(got - ref).max() < 1e-3
    runs = {}
    for threads in (1, 2, 3):
        with llm(out, n_threads=threads) as m:
            runs[threads] = (np.array(m.logits(ids)), decode_one_by_one(m, ids))
    for threads in (2, 3):
        assert np.array_equal(runs[threads][0], runs[1][0])
        assert np.array_equal(runs[threads][1], runs[1][1])
    assert np.abs(runs[1][1] - runs[1][0]).max() < 1e-4


def test_ffn_width_past_the_vector_chunks_matches_transformers_on_every_isa(tmp_path, monkeypatch):
    """SwiGLU takes 16 floats at a time and the rest one by one through the same exp: an FFN width of 120
    (7 x 16 + 8) runs both parts. The logits are transformers' on every instruction set, batched and decoded
    token by token (the f32 file takes the float matmul path, whose bits may differ between instruction
    sets; test_isa.py holds the integer path to the same bits everywhere)."""
    import edgellm

    ckpt, out = llama_variant_f32(tmp_path, monkeypatch, "llama_ff120", intermediate_size=120)
    ids = LONG_PROMPT[:40]
    ref = hf_logits(ckpt, ids)
    before = edgellm.isa()
    ran = []
    try:
        for name in ("avx512", "avx2", "scalar"):
            try:
                edgellm.set_isa(name)
            except UnsupportedError:
                continue
            with llm(out, kv_type="f32") as m:
                batched, decoded = np.array(m.logits(ids)), decode_one_by_one(m, ids)
            assert np.abs(batched - ref).max() < 1e-3, name
            assert np.abs(decoded - batched).max() < 1e-4, name
            ran.append(name)
    finally:
        edgellm.set_isa(before)
    assert "scalar" in ran
