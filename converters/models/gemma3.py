"""Gemma3ForCausalLM (text), and the text part of Gemma3ForConditionalGeneration.

GGUF conventions applied here: every RMS norm weight (including the per-head Q/K norms) gets +1, since
Gemma's norm computes x * (1 + w); the embedding scale sqrt(hidden_size) is NOT baked in (the runtime
applies it); embedding rows past the tokenizer's vocabulary are dropped. llama.cpp's gemma3 runtime uses
1/sqrt(head_dim) as the attention scale and every 6th layer as a global (full attention) layer, so
configs that differ are refused rather than silently converted to a different model.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import LAYER_NAMES, ModelConverter, TensorPlan, kv_f32, kv_u32, register
from ..checkpoint import Config
from ..vocab import KV

_SWA_PATTERN = 6  # fixed in llama.cpp's gemma3 model: layer i is global when (i + 1) % 6 == 0
_VISION_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
    "vision_model.",
    "multimodal_projector.",
)


@register
class Gemma3Converter(ModelConverter):
    hf_architectures = ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")
    gguf_arch = "gemma3"
    default_rope_theta = 1_000_000.0
    default_eps = 1e-6
    default_tied = True
    rope_types = ("linear",)
    act_field, default_act, acts = "hidden_activation", "gelu_pytorch_tanh", ("gelu_pytorch_tanh",)
    layer_names: ClassVar[dict[str, str]] = {
        **LAYER_NAMES,
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
    }

    def __init__(self, ckpt, hf_arch: str):
        super().__init__(ckpt, hf_arch)
        c = self.cfg
        if c.has("attn_logit_softcapping"):
            raise c.fail("attn_logit_softcapping", "must be null for gemma3")
        scale = c.get("query_pre_attn_scalar", 256)
        if scale not in (self.head_dim, self.n_embd // self.n_head):
            raise c.fail(
                "query_pre_attn_scalar",
                f"{scale} is not supported: GGUF gemma3 scales attention by "
                f"head_dim ({self.head_dim}) or hidden_size/num_attention_heads",
            )
        self.swa_pattern = c.get("sliding_window_pattern", c.get("_sliding_window_pattern", _SWA_PATTERN))
        layer_types = c.get("layer_types")
        if layer_types is not None:
            expected = [
                "sliding_attention" if (i + 1) % _SWA_PATTERN else "full_attention"
                for i in range(self.n_layer)
            ]
            if list(layer_types) != expected and set(layer_types) != {"full_attention"}:
                raise c.fail(
                    "layer_types",
                    "not representable in GGUF gemma3 (every 6th layer must be "
                    "full_attention, the others sliding_attention)",
                )
            if set(layer_types) == {"full_attention"}:
                self.swa_pattern = 1
        self.sliding_window = c.int("sliding_window", 4096) if self.swa_pattern != 1 else None
        self.n_tokens: int | None = None  # set by the pipeline once the vocabulary is known

    def text_config(self, config: Config) -> Config:
        if config.has("text_config"):
            sub = config.sub("text_config")
            if not sub.has("tie_word_embeddings") and config.has("tie_word_embeddings"):
                sub.data = {**sub.data, "tie_word_embeddings": config.get("tie_word_embeddings")}
            return sub
        return config

    def read_head_dim(self) -> int:
        return self.cfg.int("head_dim", 256)

    def metadata(self) -> list[KV]:
        a = self.gguf_arch
        kvs = super().metadata()
        if not any(k.key == f"{a}.context_length" for k in kvs):
            kvs.insert(1, kv_u32(f"{a}.context_length", 131072))
        if not any(k.key == f"{a}.attention.key_length" for k in kvs):
            kvs += [
                kv_u32(f"{a}.attention.key_length", self.head_dim),
                kv_u32(f"{a}.attention.value_length", self.head_dim),
            ]
        if self.cfg.has("final_logit_softcapping"):
            kvs.append(kv_f32(f"{a}.final_logit_softcapping", self.cfg.float("final_logit_softcapping")))
        if self.sliding_window is not None:
            kvs.append(kv_u32(f"{a}.attention.sliding_window", self.sliding_window))
        return kvs

    def normalize_name(self, hf_name: str) -> str | None:
        if hf_name.startswith(_VISION_PREFIXES):
            return None
        name = hf_name.replace("model.language_model.", "model.").replace("language_model.model.", "model.")
        return name.replace("language_model.lm_head.", "lm_head.")

    def extra_layer_tensors(self) -> tuple[str, ...]:
        return ("ffn_norm", "post_attention_norm", "post_ffw_norm", "attn_q_norm", "attn_k_norm")

    def output_shape(self, gguf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if gguf_name == "token_embd.weight" and self.n_tokens is not None and shape[0] > self.n_tokens:
            return (self.n_tokens, *shape[1:])
        return shape

    def rows_unchanged(self, plan: TensorPlan) -> bool:
        return not plan.gguf_name.endswith("norm.weight")

    def transform(self, plan: TensorPlan, w: np.ndarray) -> np.ndarray:
        if plan.gguf_name.endswith("norm.weight"):
            return w + np.float32(1.0)
        if w.shape != plan.shape:  # token_embd: drop rows past the vocabulary
            return np.ascontiguousarray(w[: plan.shape[0]])
        return w
