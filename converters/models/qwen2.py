"""Qwen2ForCausalLM: llama-like blocks with q/k/v biases and no Q/K row permutation."""

from __future__ import annotations

from ..base import ModelConverter, register


@register
class Qwen2Converter(ModelConverter):
    hf_architectures = ("Qwen2ForCausalLM",)
    gguf_arch = "qwen2"

    def extra_layer_tensors(self) -> tuple[str, ...]:
        return ("ffn_norm",)

    def required(self) -> list[str]:
        names = super().required()
        for i in range(self.n_layer):
            names += [f"blk.{i}.{n}.bias" for n in ("attn_q", "attn_k", "attn_v")]
        return names
