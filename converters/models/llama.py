"""LlamaForCausalLM and MistralForCausalLM (Mistral-style configs are plain llama for GGUF)."""

from __future__ import annotations

import numpy as np

from ..base import ModelConverter, TensorPlan, kv_u32, register
from ..vocab import KV


@register
class LlamaConverter(ModelConverter):
    hf_architectures = ("LlamaForCausalLM", "MistralForCausalLM", "LLaMAForCausalLM")
    gguf_arch = "llama"
    rope_types = ("linear", "yarn", "llama3")

    def metadata(self) -> list[KV]:
        return super().metadata() + [
            kv_u32("llama.vocab_size", self.vocab_size),
            kv_u32("llama.rope.dimension_count", self.head_dim),
        ]

    def transform(self, plan: TensorPlan, w: np.ndarray) -> np.ndarray:
        # GGUF llama rotates adjacent pairs; HF rotates the two halves of each head.
        if plan.gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
            return self.permute_qk(w, self.n_head)
        if plan.gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
            return self.permute_qk(w, self.n_head_kv)
        return w

    def rows_unchanged(self, plan: TensorPlan) -> bool:
        return not plan.gguf_name.startswith("blk.") or plan.gguf_name.split(".")[2] not in (
            "attn_q",
            "attn_k",
        )

    def extra_tensors(self) -> list[tuple[TensorPlan, np.ndarray]]:
        s = self.rope.scaling
        if s.get("rope_type") != "llama3":
            return []
        n_ctx_orig = s.get(
            "original_max_position_embeddings", self.cfg.get("original_max_position_embeddings", 8192)
        )
        factors = self.llama3_rope_factors(self.rope.theta, self.head_dim, s, int(n_ctx_orig))
        return [(TensorPlan("rope_freqs.weight", None, factors.shape), factors)]
