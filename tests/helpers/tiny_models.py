"""Tiny checkpoints of every architecture we convert, and logits from transformers for them.

`tiny_checkpoint(arch)` builds a small model with transformers from a fixed config and seed, saves it with
its tokenizer (the SmolLM2 BPE tokenizer, or a small SentencePiece model) and caches the folder under
`cache_dir()`. `trained_checkpoint(arch)` is the same model trained on a page of GPL-3 until it predicts that
text with clear margins (what quantized files are measured on). `hf_logits` runs transformers on a checkpoint
folder; `gguf_logits` runs transformers on one of our GGUF files (`from_pretrained(folder, gguf_file=name)`),
the independent reader we compare against.

transformers' GGUF loader does not read rope scaling keys, so `gguf_config` maps the rope keys of our file
back into the config before loading: the rope-scaled models are then checked through those keys (without
that mapping their logits differ by several units).
"""

from __future__ import annotations

import importlib.metadata
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .cache import cached_dir, transformers_tag
from .tokenizers import write_bpe_tokenizer, write_spm_tokenizer

SEED = 1234
# A fixed prompt of 24 ids, valid for every tokenizer used here (all have more than 1000 tokens).
PROMPT_IDS = [
    1,
    17,
    254,
    3,
    999,
    42,
    100,
    7,
    512,
    31,
    64,
    800,
    2,
    77,
    300,
    9,
    650,
    11,
    123,
    5,
    400,
    88,
    700,
    13,
]

# name -> (HF architecture class, tokenizer kind, config overrides)
_SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
}
TINY: dict[str, tuple[str, str, dict[str, Any]]] = {
    # BPE, GQA, linear rope scaling, untied output
    "llama": (
        "LlamaForCausalLM",
        "bpe",
        dict(_SMALL, rope_scaling={"rope_type": "linear", "factor": 2.0}, tie_word_embeddings=False),
    ),
    # SentencePiece, rows of 256 and 512 so every quant type fits without fallback
    "llama_spm": (
        "LlamaForCausalLM",
        "spm-llama",
        dict(_SMALL, hidden_size=256, intermediate_size=512, tie_word_embeddings=False),
    ),
    # head_dim (32) differs from hidden_size / num_attention_heads (16), one KV head
    "mistral": (
        "MistralForCausalLM",
        "bpe",
        dict(_SMALL, num_key_value_heads=1, head_dim=32, sliding_window=None, tie_word_embeddings=False),
    ),
    # q/k/v biases, tied embeddings
    "qwen2": ("Qwen2ForCausalLM", "bpe", dict(_SMALL, tie_word_embeddings=True)),
    # QK-norm, head_dim 128 (transformers' GGUF loader assumes Qwen3's default), yarn rope scaling
    "qwen3": (
        "Qwen3ForCausalLM",
        "bpe",
        dict(
            _SMALL,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=128,
            rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
            tie_word_embeddings=False,
        ),
    ),
    # SentencePiece (gemma style), 6 layers = 5 sliding-window layers + 1 global, window 8 < prompt length
    "gemma3": (
        "Gemma3ForCausalLM",
        "spm-gemma",
        dict(
            _SMALL,
            num_hidden_layers=6,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=8,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
    ),
}


def _config(hf_arch: str, vocab_size: int, overrides: dict[str, Any]):
    import transformers

    cls = {
        "LlamaForCausalLM": transformers.LlamaConfig,
        "MistralForCausalLM": transformers.MistralConfig,
        "Qwen2ForCausalLM": transformers.Qwen2Config,
        "Qwen3ForCausalLM": transformers.Qwen3Config,
        "Gemma3ForCausalLM": transformers.Gemma3TextConfig,
    }[hf_arch]
    kwargs = dict(overrides, vocab_size=vocab_size, architectures=[hf_arch])
    if hf_arch == "Gemma3ForCausalLM":
        kwargs.update(bos_token_id=2, eos_token_id=1, pad_token_id=0)
    return cls(**kwargs)


def _randomize(model, gemma: bool) -> None:
    """Weights with a spread that gives clear logits (the default init gives near-uniform ones).

    Every value is rounded to the nearest float16, so an f16 file holds exactly the source weights: random
    models have near-ties among their 49k logits that any rounding could flip, and the f16 greedy-token check
    would then test luck instead of the file.
    """
    import torch

    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                value = (0.0 if gemma else 1.0) + 0.2 * noise
            elif name.endswith(".bias"):
                value = 0.2 * noise
            else:
                value = noise * (1.5 / p.shape[-1] ** 0.5)
            p.copy_(value.half().float())


def build_tiny(dst: Path, arch: str, dtype: str = "float32") -> None:
    """Write the tiny `arch` checkpoint (config, model.safetensors, tokenizer) into the folder dst."""
    import torch
    import transformers

    hf_arch, tok, overrides = TINY[arch]
    if tok == "bpe":
        vocab_size = write_bpe_tokenizer(dst)
    else:
        vocab_size = write_spm_tokenizer(dst, tok.split("-")[1])
    config = _config(hf_arch, vocab_size, overrides)
    torch.manual_seed(SEED)
    model = getattr(transformers, hf_arch)(config).eval()
    _randomize(model, gemma=arch == "gemma3")
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(dst)


def _check_name(arch: str) -> None:
    if arch not in TINY:
        raise KeyError(f"unknown tiny model {arch!r} (have: {', '.join(TINY)})")


def tiny_checkpoint(arch: str) -> Path:
    """The cached tiny checkpoint folder of one of TINY's names."""
    _check_name(arch)
    return cached_dir(f"tiny-{arch}-v2-{transformers_tag()}", lambda d: build_tiny(d, arch))


# Trained tiny models: the same configs and tokenizers, from transformers' own initialisation (seeded), trained
# with Adam on the first TRAIN_TOKENS tokens of GPL-3 until they know that text by heart.
TRAIN_TOKENS = 1024
TRAIN_STEPS = 400
GPL3 = Path("/usr/share/common-licenses/GPL-3")


def build_trained(dst: Path, arch: str) -> None:
    """Write the trained tiny `arch` checkpoint into dst, with the ids it was trained on (train_ids.json).

    Random models' logits are near-Gaussian over 49k tokens, so weight rounding flips their top token on
    5-60% of positions whatever the runtime does; a model that has learnt its text has clear winners there,
    which is what quantized files must keep. The loss is taken over the tokens that occur in the text only
    (the other rows of the output matrix keep their small initial values and never win), which makes a step
    ~30x cheaper than a full 49k-way softmax; the saved model is an ordinary full-vocabulary checkpoint."""
    import shutil

    import torch
    import transformers

    src = tiny_checkpoint(arch)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, dst / f.name)
    tok = transformers.AutoTokenizer.from_pretrained(src)
    ids = tok(GPL3.read_text(), add_special_tokens=False)["input_ids"][:TRAIN_TOKENS]
    config = transformers.AutoConfig.from_pretrained(src)
    torch.manual_seed(SEED)
    model = getattr(transformers, TINY[arch][0])(config).train()
    data = torch.tensor(ids)
    used = torch.unique(data)
    column = torch.zeros(config.vocab_size, dtype=torch.long)
    column[used] = torch.arange(len(used))
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    seq, batch = 64, 8
    for _ in range(TRAIN_STEPS):
        starts = torch.randint(0, len(ids) - seq, (batch,), generator=gen)
        x = torch.stack([data[s : s + seq] for s in starts])
        hidden = model.model(x).last_hidden_state[:, :-1]
        logits = hidden @ model.lm_head.weight[used].T
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(used)), column[x[:, 1:]].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(dst)
    (dst / "train_ids.json").write_text(json.dumps(ids))


def trained_checkpoint(arch: str) -> Path:
    """The cached trained tiny checkpoint folder of one of TINY's names."""
    _check_name(arch)
    return cached_dir(f"tiny-trained-{arch}-v1-{transformers_tag()}", lambda d: build_trained(d, arch))


def trained_ids(model_dir: Path) -> list[int]:
    return json.loads((model_dir / "train_ids.json").read_text())


@lru_cache(maxsize=8)
def _hf_model(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """Logits (len(ids), vocab) of the HF checkpoint in float32."""
    import torch

    with torch.no_grad():
        return _hf_model(str(model_dir))(torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(model_dir: Path, ids: list[int], n: int = 32) -> list[int]:
    return _greedy(_hf_model(str(model_dir)), ids, n)


TRANSFORMERS_5 = int(importlib.metadata.version("transformers").split(".")[0]) >= 5


def _rope_from_gguf(fields: dict[str, Any], arch: str) -> dict[str, Any] | None:
    """HF rope parameters rebuilt from the `{arch}.rope.*` keys of a GGUF file (None: no scaling)."""
    kind = fields.get(f"{arch}.rope.scaling.type")
    if kind is None:
        return None
    params: dict[str, Any] = {
        "rope_type": kind,
        "factor": fields[f"{arch}.rope.scaling.factor"],
        "rope_theta": fields[f"{arch}.rope.freq_base"],
    }
    if kind == "yarn":
        params["original_max_position_embeddings"] = fields[f"{arch}.rope.scaling.original_context_length"]
        for key, hf_key in (
            ("yarn_beta_fast", "beta_fast"),
            ("yarn_beta_slow", "beta_slow"),
            ("yarn_attn_factor", "attention_factor"),
        ):
            if f"{arch}.rope.scaling.{key}" in fields:
                params[hf_key] = fields[f"{arch}.rope.scaling.{key}"]
    return params


def gguf_fields(path: Path) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file, read with gguf-py (not our reader)."""
    from gguf import GGUFReader

    out: dict[str, Any] = {}
    for key, f in GGUFReader(str(path)).fields.items():
        if len(f.types) == 1 and key.count(".") >= 1:
            out[key] = f.contents()
    return out


def gguf_config(path: Path):
    """transformers' config for our GGUF, with the rope keys its loader ignores mapped back."""
    from transformers import AutoConfig

    from edgellm.gguf import GGUFReader

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    # our reader (held to gguf-py by test_gguf.py) is much faster on 49k-token vocabularies
    reader = GGUFReader(path)
    fields = {
        k: reader.get(k)
        for k in reader.keys()  # noqa: SIM118  (a reader, not a dict)
        if ".rope." in k or k == "general.architecture"
    }
    arch = fields["general.architecture"]
    rope = _rope_from_gguf(fields, arch)
    if rope is not None:
        if not TRANSFORMERS_5:  # 4.x: rope_scaling (of the full-attention layers) and rope_theta
            config.rope_scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
            config.rope_theta = rope["rope_theta"]
        elif arch == "gemma3":
            config.rope_parameters["full_attention"] = rope
        else:
            config.rope_parameters = rope
    return config


def hf_rope_kwargs(rope: dict[str, Any]) -> dict[str, Any]:
    """Config keyword arguments for rope parameters (with rope_theta) in the installed transformers' form."""
    if TRANSFORMERS_5:
        return {"rope_parameters": rope}
    return {"rope_scaling": {k: v for k, v in rope.items() if k != "rope_theta"}, "rope_theta": rope["rope_theta"]}


def load_gguf_model(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, config=gguf_config(path), dtype=torch.float32
    ).eval()


def gguf_logits(path: Path, ids: list[int]) -> np.ndarray:
    """Logits (len(ids), vocab) of transformers running our GGUF file (dequantized to float32)."""
    import torch

    with torch.no_grad():
        return load_gguf_model(path)(torch.tensor([ids])).logits[0].float().numpy()


def gguf_greedy(path: Path, ids: list[int], n: int = 32) -> list[int]:
    return _greedy(load_gguf_model(path), ids, n)


def _greedy(model, ids: list[int], n: int) -> list[int]:
    """n greedy tokens after ids: a plain argmax loop over the KV cache (no generation config involved)."""
    import torch

    out: list[int] = []
    with torch.no_grad():
        step = model(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            out.append(int(torch.argmax(step.logits[0, -1])))
            step = model(torch.tensor([[out[-1]]]), past_key_values=step.past_key_values, use_cache=True)
    return out


def describe(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "config.json").read_text())
