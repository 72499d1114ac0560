"""Quantization recipes: which GGUF type each tensor gets for a `--quant` name.

The mixes follow llama.cpp's `llama-quantize` (src/llama-quant.cpp), so a file made with `--quant q4_k_m` has the
same tensor types as one made by `llama-quantize ... Q4_K_M` from the same model:

- every `--quant` name has a base type (QUANT_TYPES); 2-D weights get it, 1-D tensors (norms, biases) stay F32;
- with a quantized base type, the output matrix (or token_embd when the embeddings are tied, since it doubles as
  the output) goes to Q6_K, or to Q8_0 when its rows do not fit the base type's block (llama.cpp's rule);
- the `_m` mixes and q2_k raise attn_v / ffn_down / attn_output as llama.cpp does (see `_mix_type`);
- a tensor whose row length (last numpy dim) is not a multiple of the chosen type's block falls back to a type
  with 32-element blocks, or to F16 when even that does not fit; `TensorChoice.fallback_from` records it.

Tensors are visited in llama.cpp's order (by layer number, then by name), because the attn_v / ffn_down
counters that drive the use-more-bits rule count tensors in that order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgellm.errors import ConversionError
from edgellm.quant import GGMLType, block_size

# "--quant" name -> base type of the 2-D weights.
QUANT_TYPES: dict[str, GGMLType] = {
    "f32": GGMLType.F32,
    "f16": GGMLType.F16,
    "bf16": GGMLType.BF16,
    "q8_0": GGMLType.Q8_0,
    "q4_0": GGMLType.Q4_0,
    "q4_1": GGMLType.Q4_1,
    "q5_0": GGMLType.Q5_0,
    "q5_1": GGMLType.Q5_1,
    "q2_k": GGMLType.Q2_K,
    "q3_k_m": GGMLType.Q3_K,
    "q4_k_m": GGMLType.Q4_K,
    "q5_k_m": GGMLType.Q5_K,
    "q6_k": GGMLType.Q6_K,
}

# "--quant" name -> `general.file_type` value (llama.cpp's llama_ftype numbering).
FILE_TYPES: dict[str, int] = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q8_0": 7,
    "q5_0": 8,
    "q5_1": 9,
    "q2_k": 10,
    "q3_k_m": 12,
    "q4_k_m": 15,
    "q5_k_m": 17,
    "q6_k": 18,
    "bf16": 32,
}

_PLAIN = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)

# Replacement when a row does not fit the chosen type's block (256 for k-quants). llama.cpp maps Q2_K/Q3_K to
# Q4_0 (it used IQ4_NL before, which we do not have; Q4_0 has the same 4.5 bits per weight), Q4_K to Q5_0, Q5_K to
# Q5_1 and Q6_K to Q8_0. Types with 32-element blocks have no smaller-block relative: their fallback is F16.
_FALLBACK: dict[GGMLType, GGMLType] = {
    GGMLType.Q2_K: GGMLType.Q4_0,
    GGMLType.Q3_K: GGMLType.Q4_0,
    GGMLType.Q4_K: GGMLType.Q5_0,
    GGMLType.Q5_K: GGMLType.Q5_1,
    GGMLType.Q6_K: GGMLType.Q8_0,
}

_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass
class RecipeContext:
    quant: str  # one of QUANT_TYPES
    n_layer: int
    n_head: int
    n_head_kv: int
    has_output: bool  # False when embeddings are tied (token_embd doubles as output)
    arch: str  # GGUF arch name: "llama", "qwen2", "qwen3", "gemma3"
    # Counters filled by plan() (llama.cpp's quantize state): attn_v tensors in the model and seen so far,
    # ffn_down tensors in the model (one per layer) and seen so far.
    n_attention_wv: int = 0
    i_attention_wv: int = 0
    n_ffn_down: int = 0
    i_ffn_down: int = 0

    @property
    def n_gqa(self) -> int:
        """Query heads per KV head (integer division, as llama.cpp's n_gqa())."""
        return self.n_head // self.n_head_kv if self.n_head_kv > 0 else 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B for the archs we convert: 80 layers (llama: with GQA; 80 layers without it
        is the 65B)."""
        if self.n_layer != 80:
            return False
        if self.arch == "llama":
            return self.n_head != self.n_head_kv
        return self.arch == "qwen2"


@dataclass
class TensorChoice:
    qtype: GGMLType
    fallback_from: GGMLType | None = None  # set when the row length did not fit the chosen type's block


def _use_more_bits(i_layer: int, n_layer: int) -> bool:
    """The first and last eighth of the layers and every third layer between them."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def _category(name: str) -> str:
    """llama.cpp's tensor categories, by the same substring tests in the same order."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for part in ("attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight", "attn_k.weight", "attn_q.weight",
                 "attn_output.weight", "ffn_up", "ffn_gate", "ffn_down"):
        if part in name:
            return part.removesuffix(".weight")
    return "other"


def _is_attn_v(category: str) -> bool:
    return category in ("attn_qkv", "attn_kv_b", "attn_v")


def _quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """Weights of 2 or more dims; norms stay F32 even if 2-D."""
    return len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name


def _mix_type(ctx: RecipeContext, base: GGMLType, category: str, n_per_row: int) -> GGMLType:
    """The type llama.cpp's mixes choose before the block-fit check (llama_tensor_get_type_impl, restricted to the
    file types we offer: no IQ types, no MoE, no Falcon)."""
    q = ctx.quant
    qtype = base
    if category == "output" or (not ctx.has_output and category == "token_embd"):
        if n_per_row % block_size(base) != 0:
            qtype = GGMLType.Q8_0
        elif base != GGMLType.Q8_0:
            qtype = GGMLType.Q6_K
    elif category == "token_embd":
        pass  # untied token_embd keeps the base type for every type we offer
    elif _is_attn_v(category):
        if q == "q2_k":
            qtype = GGMLType.Q4_K if ctx.n_gqa >= 4 else GGMLType.Q3_K
        elif q == "q3_k_m":
            qtype = GGMLType.Q5_K if ctx.i_attention_wv < 2 else GGMLType.Q4_K
        elif q in ("q4_k_m", "q5_k_m") and _use_more_bits(ctx.i_attention_wv, ctx.n_attention_wv):
            qtype = GGMLType.Q6_K
        # 70B models share each attn_v over 8 heads: the tensor is small, more bits are cheap.
        if ctx.is_70b and qtype in (GGMLType.Q3_K, GGMLType.Q4_K):
            qtype = GGMLType.Q5_K
        ctx.i_attention_wv += 1
    elif category == "ffn_down":
        i_layer, n_layer = ctx.i_ffn_down, ctx.n_ffn_down
        if q == "q2_k":
            qtype = GGMLType.Q3_K
        elif q == "q3_k_m":
            qtype = GGMLType.Q5_K if i_layer < n_layer // 16 else GGMLType.Q4_K
        elif q in ("q4_k_m", "q5_k_m") and _use_more_bits(i_layer, n_layer):
            qtype = GGMLType.Q6_K
        ctx.i_ffn_down += 1
    elif category == "attn_output":
        if q == "q2_k":
            qtype = GGMLType.Q3_K
        elif q == "q3_k_m":
            qtype = GGMLType.Q4_K
    return qtype


def _fit(qtype: GGMLType, n_per_row: int) -> TensorChoice:
    """Fall back to a compatible type when rows of n_per_row elements do not fill whole blocks."""
    if n_per_row % block_size(qtype) == 0:
        return TensorChoice(qtype)
    used = _FALLBACK.get(qtype, GGMLType.F16)
    if n_per_row % block_size(used) != 0:
        used = GGMLType.F16
    return TensorChoice(used, fallback_from=qtype)


def _visit_order(item: tuple[int, tuple[str, tuple[int, ...]]]) -> tuple[int, str]:
    """llama.cpp's weight order: tensors outside blocks first, then by layer number, then by name."""
    name = item[1][0]
    m = _LAYER.match(name)
    return (int(m.group(1)) if m else -1, name)


def plan(ctx: RecipeContext, tensors: list[tuple[str, tuple[int, ...]]]) -> dict[str, TensorChoice]:
    """The type of every tensor. tensors: (gguf_name, numpy-order shape) in file order; the result is in file
    order too. Fills ctx's counters."""
    if ctx.quant not in QUANT_TYPES:
        raise ConversionError(f"--quant: unknown type '{ctx.quant}' (choose from {', '.join(QUANT_TYPES)})")
    base = QUANT_TYPES[ctx.quant]
    names = [name for name, _ in tensors]
    ctx.has_output = ctx.has_output or "output.weight" in names
    ctx.n_attention_wv = sum(1 for name in names if _is_attn_v(_category(name)))
    ctx.n_ffn_down = ctx.n_layer
    ctx.i_attention_wv = ctx.i_ffn_down = 0

    chosen: dict[str, TensorChoice] = {}
    for _, (name, shape) in sorted(enumerate(tensors), key=_visit_order):
        if not _quantizable(name, shape):
            chosen[name] = TensorChoice(GGMLType.F32)
        elif base in _PLAIN:
            chosen[name] = TensorChoice(base)
        else:
            n_per_row = shape[-1]
            chosen[name] = _fit(_mix_type(ctx, base, _category(name), n_per_row), n_per_row)
    return {name: chosen[name] for name in names}


__all__ = ["FILE_TYPES", "QUANT_TYPES", "RecipeContext", "TensorChoice", "plan"]
