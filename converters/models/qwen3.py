"""Qwen3ForCausalLM: llama-like blocks with per-head RMS norms on Q and K (QK-norm), no biases."""

from __future__ import annotations

from ..base import ModelConverter, register


@register
class Qwen3Converter(ModelConverter):
    hf_architectures = ("Qwen3ForCausalLM",)
    gguf_arch = "qwen3"

    def extra_layer_tensors(self) -> tuple[str, ...]:
        return ("ffn_norm", "attn_q_norm", "attn_k_norm")
