"""End-to-end conversion of tiny random checkpoints of every architecture, checked with transformers and
gguf-py.

transformers loading our GGUF (`from_pretrained(dir, gguf_file=...)`) is an independent reader of the file: it
undoes the Q/K permutation, the Gemma norm offset and maps our names and keys back to its own model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgellm.converters.convert import ConvertOptions, convert
from edgellm.converters.recipes import FILE_TYPES, QUANT_TYPES, RecipeContext
from edgellm.converters.recipes import plan as plan_types
from helpers.tiny_models import (
    PROMPT_IDS,
    TINY,
    gguf_fields,
    gguf_greedy,
    gguf_logits,
    hf_greedy,
    hf_logits,
    hf_rope_kwargs,
    tiny_checkpoint,
)

ARCHS = list(TINY)


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_logits_match_transformers(arch, convert_tiny):
    path = convert_tiny(arch, "f32")
    ours = gguf_logits(path, PROMPT_IDS)
    ref = hf_logits(tiny_checkpoint(arch), PROMPT_IDS)
    assert ours.shape == ref.shape
    assert np.abs(ref).max() > 1.0, "logits too flat to tell models apart"
    assert np.abs(ours - ref).max() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_f16_greedy_tokens_match(arch, convert_tiny):
    path = convert_tiny(arch, "f16")
    ref = hf_greedy(tiny_checkpoint(arch), PROMPT_IDS, 32)
    assert gguf_greedy(path, PROMPT_IDS, 32) == ref


def _types(path: Path) -> dict[str, int]:
    return {t.name: int(t.tensor_type) for t in gguf.GGUFReader(str(path)).tensors}


def _dequantized(path: Path) -> dict[str, np.ndarray]:
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        out[t.name] = (
            gguf.quants.dequantize(t.data, t.tensor_type)
            .astype(np.float32)
            .reshape(tuple(int(d) for d in reversed(t.shape)))
        )
    return out


# Relative RMS reconstruction error allowed per base type (loose: it catches wrong data, not quality).
_REL_RMS = {
    "f32": 0.0,
    "f16": 1e-3,
    "bf16": 8e-3,
    "q8_0": 0.01,
    "q6_k": 0.03,
    "q5_0": 0.06,
    "q5_1": 0.06,
    "q5_k_m": 0.06,
    "q4_0": 0.12,
    "q4_1": 0.12,
    "q4_k_m": 0.12,
    "q3_k_m": 0.25,
    "q2_k": 0.45,
}


@pytest.mark.parametrize("quant", list(QUANT_TYPES))
def test_every_quant_type_reads_back(quant, convert_tiny):
    """llama_spm has rows of 256/512: every type fits, and gguf-py reads each tensor with the planned type."""
    path = convert_tiny("llama_spm", quant)
    reader = gguf.GGUFReader(str(path))
    types = {t.name: int(t.tensor_type) for t in reader.tensors}
    cfg = json.loads((tiny_checkpoint("llama_spm") / "config.json").read_text())
    ctx = RecipeContext(
        quant=quant,
        n_layer=cfg["num_hidden_layers"],
        n_head=cfg["num_attention_heads"],
        n_head_kv=cfg["num_key_value_heads"],
        has_output=True,
        arch="llama",
    )
    shapes = [(t.name, tuple(int(d) for d in reversed(t.shape))) for t in reader.tensors]
    expected = plan_types(ctx, shapes)
    assert types == {name: int(c.qtype) for name, c in expected.items()}
    assert all(c.fallback_from is None for c in expected.values())
    base = int(QUANT_TYPES[quant])
    assert sum(1 for t in types.values() if t == base) >= 8  # most 2-D weights at the base type
    assert all(types[n] == gguf.GGMLQuantizationType.F32 for n in types if n.endswith("norm.weight"))
    ref = _dequantized(convert_tiny("llama_spm", "f32"))
    for name, w in _dequantized(path).items():
        rel = np.sqrt(np.mean((w - ref[name]) ** 2) / np.mean(ref[name] ** 2))
        if types[name] == gguf.GGMLQuantizationType.F32:
            np.testing.assert_array_equal(w, ref[name], err_msg=name)
        else:
            assert rel <= max(_REL_RMS[quant], 1e-3), (name, types[name], rel)
    file_type = reader.fields["general.file_type"].contents()
    assert file_type == FILE_TYPES[quant]


def test_row_fallback_is_reported(tmp_path):
    """Rows of 64 do not fit K-quant blocks of 256: the summary says which tensors fell back and to what."""
    out = tmp_path / "qwen2.gguf"
    summary = convert(tiny_checkpoint("qwen2"), out, ConvertOptions(quant="q4_k_m", progress=False))
    assert summary.fallbacks
    assert all("q4_K" in f or "q6_K" in f or "q5_K" in f for f in summary.fallbacks)
    types = _types(out)
    assert gguf.GGMLQuantizationType.Q4_K not in types.values()  # no row of this model fits 256
    assert "fallbacks" in summary.render()


def test_metadata_keys(convert_tiny):
    f = gguf_fields(convert_tiny("llama", "f32"))
    assert f["general.architecture"] == "llama"
    assert f["general.quantization_version"] == 2
    assert f["general.file_type"] == 0
    assert f["llama.block_count"] == 2 and f["llama.embedding_length"] == 64
    assert f["llama.attention.head_count"] == 4 and f["llama.attention.head_count_kv"] == 2
    assert f["llama.rope.dimension_count"] == 16 and f["llama.vocab_size"] == 49152
    assert f["llama.rope.scaling.type"] == "linear" and f["llama.rope.scaling.factor"] == 2.0
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "smollm"
    g = gguf_fields(convert_tiny("gemma3", "f32"))
    assert g["gemma3.attention.sliding_window"] == 8
    assert g["gemma3.attention.key_length"] == 256 and g["gemma3.rope.freq_base"] == 1e6
    assert g["gemma3.rope.freq_base_swa"] == 10000.0
    m = gguf_fields(convert_tiny("mistral", "f32"))
    assert m["llama.attention.key_length"] == 32 and m["llama.rope.dimension_count"] == 32


def test_tied_embeddings_have_no_output(convert_tiny):
    assert "output.weight" not in _types(convert_tiny("qwen2", "f32"))
    assert "output.weight" in _types(convert_tiny("llama", "f32"))


def test_gemma_norms_are_offset_and_embedding_not_scaled(convert_tiny):
    from safetensors.numpy import load_file

    src = load_file(str(tiny_checkpoint("gemma3") / "model.safetensors"))
    ours = _dequantized(convert_tiny("gemma3", "f32"))
    for hf, name in (
        ("model.norm.weight", "output_norm.weight"),
        ("model.layers.5.self_attn.q_norm.weight", "blk.5.attn_q_norm.weight"),
        ("model.layers.0.post_feedforward_layernorm.weight", "blk.0.post_ffw_norm.weight"),
    ):
        np.testing.assert_array_equal(ours[name], src[hf] + np.float32(1))
    np.testing.assert_array_equal(ours["token_embd.weight"], src["model.embed_tokens.weight"])


def test_llama_qk_rows_are_permuted(convert_tiny):
    """Written rows follow GGUF's interleaved rotary pairs: row 2j / 2j+1 of a head = rows j / j+d/2 in HF."""
    from safetensors.numpy import load_file

    src = load_file(str(tiny_checkpoint("llama") / "model.safetensors"))
    ours = _dequantized(convert_tiny("llama", "f32"))
    q_hf, q = src["model.layers.1.self_attn.q_proj.weight"], ours["blk.1.attn_q.weight"]
    d = 16
    for h in range(4):
        for j in range(d // 2):
            np.testing.assert_array_equal(q[h * d + 2 * j], q_hf[h * d + j])
            np.testing.assert_array_equal(q[h * d + 2 * j + 1], q_hf[h * d + d // 2 + j])
    np.testing.assert_array_equal(ours["blk.1.attn_v.weight"], src["model.layers.1.self_attn.v_proj.weight"])


def test_llama3_rope_factors_match_transformers(tmp_path):
    """Llama 3 rope scaling is stored as rope_freqs.weight: default inv_freq / scaled inv_freq."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    src = tmp_path / "llama3"
    shutil.copytree(tiny_checkpoint("llama"), src)
    cfg = json.loads((src / "config.json").read_text())
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 500000.0,
    }
    cfg.pop("rope_scaling", None)
    cfg["rope_parameters"] = scaling
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "llama3.gguf"
    convert(src, out, ConvertOptions(quant="q8_0", progress=False))
    ours = _dequantized(out)["rope_freqs.weight"]
    assert _types(out)["rope_freqs.weight"] == gguf.GGMLQuantizationType.F32
    hf_cfg = LlamaConfig(
        **{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version", "rope_parameters",
                                                      "rope_theta")},
        **hf_rope_kwargs(scaling),
    )
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, torch.device("cpu"))
    base = 1.0 / (500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    np.testing.assert_allclose(ours, (base / scaled).numpy(), rtol=1e-5)
    assert ours.min() == 1.0 and ours.max() == 8.0


def test_sharded_and_bf16_checkpoints(tmp_path, convert_tiny):
    """A sharded bf16 save of the tiny llama converts to the same tensors as the bf16-rounded weights."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("llama"), dtype=torch.bfloat16)
    src = tmp_path / "sharded"
    model.save_pretrained(src, max_shard_size="1MB")
    for f in tiny_checkpoint("llama").glob("tokenizer*"):
        shutil.copy(f, src / f.name)
    shutil.copy(tiny_checkpoint("llama") / "special_tokens_map.json", src)
    assert (src / "model.safetensors.index.json").is_file() and len(list(src.glob("*.safetensors"))) > 1
    out = tmp_path / "sharded.gguf"
    convert(src, out, ConvertOptions(quant="f32", progress=False))
    ours = _dequantized(out)
    ref = _dequantized(convert_tiny("llama", "f32"))
    assert ours.keys() == ref.keys()
    for name, w in ref.items():
        rounded = torch.from_numpy(w).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(ours[name], rounded, err_msg=name)


def test_cli_convert_prints_summary(tmp_path):
    out = tmp_path / "cli.gguf"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgellm",
            "convert",
            str(tiny_checkpoint("qwen3")),
            "-o",
            str(out),
            "--quant",
            "q8_0",
            "--threads",
            "2",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "peak RSS" in r.stdout and "bits per weight" in r.stdout and "q8_0" in r.stdout
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == ["cli.gguf"]


def test_cli_help_lists_every_quant():
    from edgellm.cli.convert import QUANT_NAMES

    assert list(QUANT_NAMES) == list(QUANT_TYPES)
    r = subprocess.run(
        [sys.executable, "-m", "edgellm", "convert", "--help"], check=False, capture_output=True, text=True
    )
    assert r.returncode == 0
    for word in ("--quant", "--lora", "--threads", "--allow-pickle", "q4_k_m", "DIR[:SCALE]"):
        assert word in r.stdout


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_row_blocks_give_the_same_file(arch, tmp_path, monkeypatch, convert_tiny):
    """Big tensors are streamed in blocks of rows; with tiny blocks the file is byte for byte the same."""
    from edgellm.converters import convert as convert_mod

    ref = convert_tiny(arch, "q8_0")
    monkeypatch.setattr(convert_mod, "BLOCK_BYTES", 3000)  # a few rows per block, blocks not a divisor
    out = tmp_path / "blocks.gguf"
    convert(tiny_checkpoint(arch), out, ConvertOptions(quant="q8_0", progress=False))
    assert out.read_bytes() == ref.read_bytes()


def test_gemma3_conditional_generation_text_part(tmp_path, convert_tiny):
    """A Gemma3ForConditionalGeneration folder (text_config, language_model prefixes, vision tensors) converts to
    the same file as the text-only model: vision tensors are skipped, names and config are unwrapped."""
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "gemma3-mm"
    shutil.copytree(tiny_checkpoint("gemma3"), src)
    state = load_file(str(src / "model.safetensors"))
    renamed = {k.replace("model.", "model.language_model.", 1): v for k, v in state.items()}
    renamed["model.vision_tower.vision_model.post_layernorm.weight"] = np.ones(8, dtype=np.float32)
    save_file(renamed, str(src / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    text = {k: v for k, v in cfg.items() if k not in ("architectures", "tie_word_embeddings")}
    wrapped = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "tie_word_embeddings": cfg.get("tie_word_embeddings", True),  # omitted when it is the default
        "text_config": text,
    }
    (src / "config.json").write_text(json.dumps(wrapped))
    out = tmp_path / "mm.gguf"
    convert(src, out, ConvertOptions(quant="f32", progress=False))
    ours, ref = _dequantized(out), _dequantized(convert_tiny("gemma3", "f32"))
    assert ours.keys() == ref.keys()
    for name, w in ref.items():
        np.testing.assert_array_equal(ours[name], w, err_msg=name)
