"""The converter base class and the registry of HF architectures.

A converter knows one family of checkpoints: which `architectures` names it accepts, the GGUF arch name,
the hyperparameter keys to write (exactly as llama.cpp writes them), the HF -> GGUF tensor names with the
shape each tensor must have given config.json, and the fixed weight transforms GGUF expects (done here, at
conversion time, never at run time).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgellm.errors import ConversionError
from edgellm.gguf import GGUFValueType

from .checkpoint import Checkpoint, Config
from .vocab import KV

# Per-layer HF suffix -> GGUF name (after "blk.N."), shared by the llama-like families.
LAYER_NAMES: dict[str, str] = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GLOBAL_NAMES: dict[str, str] = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}
_LAYER_ORDER = [
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_q_norm",
    "attn_k_norm",
    "attn_output",
    "post_attention_norm",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "post_ffw_norm",
]
# Tensors a checkpoint may carry that GGUF does not need.
SKIPPED_SUFFIXES = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^(.+)\.(weight|bias)$")


def kv_u32(key: str, value: int) -> KV:
    return KV(key, GGUFValueType.UINT32, int(value))


def kv_f32(key: str, value: float) -> KV:
    return KV(key, GGUFValueType.FLOAT32, float(value))


def kv_str(key: str, value: str) -> KV:
    return KV(key, GGUFValueType.STRING, value)


def kv_bool(key: str, value: bool) -> KV:
    return KV(key, GGUFValueType.BOOL, bool(value))


@dataclass
class TensorPlan:
    """One output tensor: where it comes from and its numpy-order shape as written."""

    gguf_name: str
    hf_name: str | None  # None for tensors the converter computes (rope_freqs)
    shape: tuple[int, ...]
    layer: int | None = None


@dataclass
class RopeConfig:
    theta: float
    theta_swa: float | None
    scaling: dict[str, Any]  # of the full-attention layers; {} when none
    scaling_field: str  # config field it came from, for messages


_REGISTRY: dict[str, type[ModelConverter]] = {}


def register(cls: type[ModelConverter]) -> type[ModelConverter]:
    for name in cls.hf_architectures:
        _REGISTRY[name] = cls
    return cls


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def converter_for(ckpt: Checkpoint) -> ModelConverter:
    from . import models  # noqa: F401  (registers the converters)

    archs = ckpt.config.get("architectures")
    if archs is None:
        raise ckpt.config.fail("architectures", "missing (cannot tell which model this is)")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise ckpt.config.fail("architectures", f"expected a list of class names, got {archs!r}")
    for arch in archs:
        if arch in _REGISTRY:
            return _REGISTRY[arch](ckpt, arch)
    raise ckpt.config.fail(
        "architectures", f"{archs[0]!r} is not supported (supported: {', '.join(supported_architectures())})"
    )


class ModelConverter:
    hf_architectures: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[str] = ""
    default_rope_theta: ClassVar[float] = 10000.0
    default_eps: ClassVar[float | None] = None  # None: rms_norm_eps is required
    default_tied: ClassVar[bool] = False
    rope_types: ClassVar[tuple[str, ...]] = ("linear", "yarn")
    layer_names: ClassVar[dict[str, str]] = LAYER_NAMES
    act_field: ClassVar[str] = "hidden_act"
    default_act: ClassVar[str] = "silu"
    acts: ClassVar[tuple[str, ...]] = ("silu",)

    def __init__(self, ckpt: Checkpoint, hf_arch: str):
        self.ckpt = ckpt
        self.hf_arch = hf_arch
        self.cfg = self.text_config(ckpt.config)
        c = self.cfg
        self.n_layer = c.int("num_hidden_layers")
        self.n_embd = c.int("hidden_size")
        self.n_ff = c.int("intermediate_size")
        self.n_head = c.int("num_attention_heads")
        self.n_head_kv = c.int("num_key_value_heads", self.n_head)
        if self.n_head % self.n_head_kv:
            raise c.fail(
                "num_key_value_heads", f"{self.n_head_kv} does not divide num_attention_heads {self.n_head}"
            )
        self.head_dim = self.read_head_dim()
        self.vocab_size = c.int("vocab_size")
        self.eps = c.float("rms_norm_eps", self.default_eps)
        self.n_ctx = c.int("max_position_embeddings", 0, minimum=0) or None
        self.tied = c.bool("tie_word_embeddings", self.default_tied)
        self.rope = self.read_rope()
        act = c.str(self.act_field, self.default_act)
        if act not in self.acts:
            raise c.fail(
                self.act_field,
                f"{act!r} is not supported for {hf_arch} (GGUF {self.gguf_arch} uses {', '.join(self.acts)})",
            )

    # ---- config ----

    def text_config(self, config: Config) -> Config:
        return config

    def read_head_dim(self) -> int:
        if self.cfg.has("head_dim"):
            return self.cfg.int("head_dim")
        if self.n_embd % self.n_head:
            raise self.cfg.fail(
                "hidden_size",
                f"{self.n_embd} is not a multiple of num_attention_heads "
                f"{self.n_head} and no head_dim is given",
            )
        return self.n_embd // self.n_head

    def read_rope(self) -> RopeConfig:
        c = self.cfg
        field = "rope_parameters" if c.has("rope_parameters") else "rope_scaling"
        params = dict(c.dict(field))
        full, swa = params, None
        if "full_attention" in params or "sliding_attention" in params:  # per layer type
            full = c.sub(field).dict("full_attention")
            swa = c.sub(field).dict("sliding_attention")
            field += ".full_attention"
        theta = full.get("rope_theta", c.get("rope_theta", self.default_rope_theta))
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
            raise c.fail(
                f"{field}.rope_theta" if "rope_theta" in full else "rope_theta",
                f"expected a positive number, got {theta!r}",
            )
        theta_swa = (swa or {}).get("rope_theta", c.get("rope_local_base_freq"))
        scaling = {k: v for k, v in full.items() if k != "rope_theta"}
        rope_type = scaling.get("rope_type", scaling.get("type"))
        if rope_type in (None, "default"):
            scaling = {}
        else:
            if rope_type not in self.rope_types:
                raise c.fail(
                    f"{field}.rope_type",
                    f"{rope_type!r} is not supported for {self.hf_arch} "
                    f"(supported: default, {', '.join(self.rope_types)})",
                )
            scaling["rope_type"] = rope_type
            factor = scaling.get("factor")
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
                raise c.fail(f"{field}.factor", f"expected a positive number, got {factor!r}")
            if rope_type == "yarn" and not isinstance(scaling.get("original_max_position_embeddings"), int):
                raise c.fail(f"{field}.original_max_position_embeddings", "missing (required by yarn)")
        return RopeConfig(float(theta), None if theta_swa is None else float(theta_swa), scaling, field)

    # ---- metadata ----

    def metadata(self) -> list[KV]:
        """The `{arch}.*` hyperparameters, as llama.cpp's converter writes them."""
        a = self.gguf_arch
        kvs: list[KV] = [kv_u32(f"{a}.block_count", self.n_layer)]
        if self.n_ctx is not None:
            kvs.append(kv_u32(f"{a}.context_length", self.n_ctx))
        kvs += [
            kv_u32(f"{a}.embedding_length", self.n_embd),
            kv_u32(f"{a}.feed_forward_length", self.n_ff),
            kv_u32(f"{a}.attention.head_count", self.n_head),
            kv_u32(f"{a}.attention.head_count_kv", self.n_head_kv),
        ]
        kvs += self.rope_metadata()
        kvs.append(kv_f32(f"{a}.attention.layer_norm_rms_epsilon", self.eps))
        if self.cfg.has("head_dim") or self.head_dim * self.n_head != self.n_embd:
            kvs.append(kv_u32(f"{a}.attention.key_length", self.head_dim))
            kvs.append(kv_u32(f"{a}.attention.value_length", self.head_dim))
        return kvs

    def rope_metadata(self) -> list[KV]:
        a, s = self.gguf_arch, self.rope.scaling
        kvs: list[KV] = []
        if s.get("rope_type") in ("linear", "yarn"):
            kvs.append(kv_str(f"{a}.rope.scaling.type", s["rope_type"]))
            kvs.append(kv_f32(f"{a}.rope.scaling.factor", s["factor"]))
        if s.get("rope_type") == "yarn":
            kvs.append(
                kv_u32(f"{a}.rope.scaling.original_context_length", s["original_max_position_embeddings"])
            )
            for hf_key, key in (
                ("extrapolation_factor", "yarn_ext_factor"),
                ("attention_factor", "yarn_attn_factor"),
                ("attn_factor", "yarn_attn_factor"),
                ("beta_fast", "yarn_beta_fast"),
                ("beta_slow", "yarn_beta_slow"),
            ):
                if isinstance(s.get(hf_key), (int, float)) and not any(k.key.endswith(key) for k in kvs):
                    kvs.append(kv_f32(f"{a}.rope.scaling.{key}", s[hf_key]))
        kvs.append(kv_f32(f"{a}.rope.freq_base", self.rope.theta))
        if self.rope.theta_swa is not None:
            kvs.append(kv_f32(f"{a}.rope.freq_base_swa", self.rope.theta_swa))
        return kvs

    # ---- tensors ----

    def map_name(self, hf_name: str) -> tuple[str, int | None] | None:
        """(GGUF name, layer) of an HF tensor; None when it is skipped; ConversionError when unknown."""
        name = self.normalize_name(hf_name)
        if name is None or name.endswith(SKIPPED_SUFFIXES):
            return None
        m = _LAYER_RE.match(name)
        if m:
            layer, part, kind = int(m.group(1)), m.group(2), m.group(3)
            if part in self.layer_names and layer < self.n_layer:
                return f"blk.{layer}.{self.layer_names[part]}.{kind}", layer
        else:
            m = _GLOBAL_RE.match(name)
            if m and m.group(1) in GLOBAL_NAMES:
                if m.group(1) == "lm_head" and self.tied:
                    return None  # token_embd doubles as the output matrix
                return f"{GLOBAL_NAMES[m.group(1)]}.{m.group(2)}", None
        raise self.unexpected(hf_name)

    def normalize_name(self, hf_name: str) -> str | None:
        """The checkpoint name in the plain `model.layers.N...` form; None for tensors to skip."""
        return hf_name

    def unexpected(self, hf_name: str) -> ConversionError:
        ref = self.ckpt.tensors[hf_name]
        return ConversionError(
            f"{ref.file}: tensor '{hf_name}': not expected in a {self.hf_arch} checkpoint "
            f"with num_hidden_layers={self.n_layer}"
        )

    def expected_shape(self, gguf_name: str) -> tuple[tuple[int, ...], str] | None:
        """Shape a tensor must have given config.json, with the config fields that define it."""
        e, f, q, kv = self.n_embd, self.n_ff, self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        hd = f"head_dim={self.head_dim}"
        part = gguf_name.split(".")[-2] if gguf_name.startswith("blk.") else gguf_name.split(".")[0]
        bias = gguf_name.endswith(".bias")
        table: dict[str, tuple[tuple[int, ...], str]] = {
            "token_embd": ((self.vocab_size, e), f"vocab_size={self.vocab_size}, hidden_size={e}"),
            "output": ((self.vocab_size, e), f"vocab_size={self.vocab_size}, hidden_size={e}"),
            "attn_q": ((q, e), f"num_attention_heads={self.n_head}, {hd}, hidden_size={e}"),
            "attn_k": ((kv, e), f"num_key_value_heads={self.n_head_kv}, {hd}, hidden_size={e}"),
            "attn_v": ((kv, e), f"num_key_value_heads={self.n_head_kv}, {hd}, hidden_size={e}"),
            "attn_output": ((e, q), f"hidden_size={e}, num_attention_heads={self.n_head}, {hd}"),
            "attn_q_norm": ((self.head_dim,), hd),
            "attn_k_norm": ((self.head_dim,), hd),
            "ffn_gate": ((f, e), f"intermediate_size={f}, hidden_size={e}"),
            "ffn_up": ((f, e), f"intermediate_size={f}, hidden_size={e}"),
            "ffn_down": ((e, f), f"hidden_size={e}, intermediate_size={f}"),
        }
        if part in table:
            shape, why = table[part]
            return ((shape[0],), why) if bias else (shape, why)
        if part.endswith("norm"):
            return (e,), f"hidden_size={e}"
        return None

    def required(self) -> list[str]:
        """GGUF names that must be present (biases and optional norms are not listed)."""
        names = ["token_embd.weight", "output_norm.weight"]
        for i in range(self.n_layer):
            names += [
                f"blk.{i}.{n}.weight"
                for n in (
                    "attn_norm",
                    "attn_q",
                    "attn_k",
                    "attn_v",
                    "attn_output",
                    "ffn_gate",
                    "ffn_up",
                    "ffn_down",
                )
            ]
            names += [f"blk.{i}.{n}.weight" for n in self.extra_layer_tensors()]
        return names

    def extra_layer_tensors(self) -> tuple[str, ...]:
        return ("ffn_norm",)

    def plan(self) -> list[TensorPlan]:
        """Every output tensor in a readable order (embeddings, layer by layer, output), all checked."""
        found: dict[str, TensorPlan] = {}
        for hf_name, ref in self.ckpt.tensors.items():
            mapped = self.map_name(hf_name)
            if mapped is None:
                continue
            gguf_name, layer = mapped
            if gguf_name in found:
                raise ConversionError(
                    f"{ref.file}: tensor '{hf_name}': maps to {gguf_name} like '{found[gguf_name].hf_name}'"
                )
            expected = self.expected_shape(gguf_name)
            if expected is not None and ref.shape != expected[0]:
                raise ConversionError(
                    f"{ref.file}: tensor '{hf_name}': shape {ref.shape} does not match "
                    f"config.json ({expected[1]}): expected {expected[0]}"
                )
            found[gguf_name] = TensorPlan(gguf_name, hf_name, self.output_shape(gguf_name, ref.shape), layer)
        if not self.tied and "output.weight" not in found:
            self.tied = True  # no lm_head: llama.cpp-style loaders use token_embd as the output
        for name in self.required():
            if name not in found:
                raise ConversionError(
                    f"{self.ckpt.path}: tensor for '{name}': missing from the checkpoint "
                    f"({self.hf_arch}, num_hidden_layers={self.n_layer})"
                )
        extra = self.extra_tensors()

        def order(p: TensorPlan) -> tuple[int, int, int, str]:
            if p.layer is not None:  # within a layer: the order of the computation
                part = p.gguf_name.split(".")[2]
                return (1, p.layer, _LAYER_ORDER.index(part) if part in _LAYER_ORDER else 99, p.gguf_name)
            return (0 if p.gguf_name.startswith("token_embd") else 2, 0, 0, p.gguf_name)

        plans = sorted(found.values(), key=order)
        return [p for p, _ in extra] + plans

    def output_shape(self, gguf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def extra_tensors(self) -> list[tuple[TensorPlan, np.ndarray]]:
        """Tensors computed from the config (not read from the checkpoint)."""
        return []

    def transform(self, plan: TensorPlan, w: np.ndarray) -> np.ndarray:
        """Fixed weight transforms GGUF expects; w is float32 in numpy order."""
        return w

    def rows_unchanged(self, plan: TensorPlan) -> bool:
        """True when transform() leaves every row as it is (apart from dropping rows past plan.shape[0]), so
        the tensor may be streamed in blocks of rows."""
        return True

    # ---- helpers ----

    @staticmethod
    def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
        """Reorder each head's rows from HF's half-split rotary layout to GGUF's interleaved pairs.

        w: (n_head * head_dim, ...) -> same shape; within a head, row j of the first half and row j of the
        second half become rows 2j and 2j+1.
        """
        rows = w.shape[0]
        return np.ascontiguousarray(
            w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        )

    @staticmethod
    def llama3_rope_factors(
        theta: float, head_dim: int, scaling: dict[str, Any], n_ctx_orig: int
    ) -> np.ndarray:
        """Per-frequency divisors of Llama 3 rope scaling: (head_dim / 2,) float32."""
        freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
        factor = float(scaling.get("factor", 8.0))
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        low_wavelen, high_wavelen = n_ctx_orig / low, n_ctx_orig / high
        out = []
        for freq in freqs:
            wavelen = 2 * math.pi / float(freq)
            if wavelen < high_wavelen:
                out.append(1.0)
            elif wavelen > low_wavelen:
                out.append(factor)
            else:
                smooth = (n_ctx_orig / wavelen - low) / (high - low)
                out.append(1.0 / ((1 - smooth) / factor + smooth))
        return np.asarray(out, dtype=np.float32)
