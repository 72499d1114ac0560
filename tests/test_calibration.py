"""Calibration (`--calib`), importance-weighted quantization and AWQ (`--awq`) on tiny random checkpoints.

The calibration text is a license text from /usr/share/common-licenses (never the GPL-3 the quality bench
evaluates on). AWQ's scale folding must leave the network unchanged before quantization: the test folds
strong random scales (e^-1 .. e^1 per channel, not the searched ones, which on random models are often 1)
into an f32 conversion and compares transformers' logits of the folded GGUF with the checkpoint's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgellm import LLM, quant
from edgellm.cli import cli
from edgellm.converters import awq
from edgellm.converters.convert import ConvertOptions, convert
from edgellm.errors import ConversionError
from edgellm.gguf import GGUFReader
from helpers.tiny_models import PROMPT_IDS, gguf_logits, hf_logits, tiny_checkpoint

CALIB = Path("/usr/share/common-licenses/Apache-2.0")
ARCHS = ["llama", "llama_spm", "mistral", "qwen2", "qwen3", "gemma3"]


def _random_scales(monkeypatch: pytest.MonkeyPatch, seed: int = 1) -> list[awq.Group]:
    """Replaces the AWQ search by strong random scales on every group; returns the groups it scaled."""
    seen: list[awq.Group] = []

    def fake_search(calib, groups, weight, qtype, use_imatrix, **kw):
        rng = np.random.default_rng(seed)
        scales = awq.Scales()
        for g in groups:
            n_prod = weight(g.fold[0]).shape[0]
            scales.set(g, awq.expand(np.exp(rng.uniform(-1, 1, n_prod)).astype(np.float32), g))
            scales.alpha[g.name] = 0.5
            scales.gain[g.name] = 1.0
            seen.append(g)
        return scales

    monkeypatch.setattr(awq, "search", fake_search)
    return seen


@pytest.mark.parametrize("arch", ARCHS)
def test_awq_folding_leaves_the_fp32_model_unchanged(arch, tmp_path, monkeypatch):
    src = tiny_checkpoint(arch)
    groups = _random_scales(monkeypatch)
    out = tmp_path / "folded.gguf"
    convert(src, out, ConvertOptions(quant="f32", calib=CALIB, calib_tokens=256, awq=True, progress=False))
    kinds = {g.name.split(".")[-1] for g in groups}
    assert kinds == {"attn_qkv", "attn_output", "ffn_gate_up", "ffn_down"}, kinds
    ref = hf_logits(src, PROMPT_IDS)
    folded = gguf_logits(out, PROMPT_IDS)
    assert np.abs(folded - ref).max() < 1e-4
    # the weights did change (the test is not vacuous) ...
    plain = tmp_path / "plain.gguf"
    convert(src, plain, ConvertOptions(quant="f32", progress=False))
    a, b = GGUFReader(out), GGUFReader(plain)
    for name in ("blk.0.ffn_down.weight", "blk.0.attn_norm.weight", "blk.0.attn_v.weight"):
        assert not np.allclose(_weights(a, name), _weights(b, name), rtol=0.05), name
    # ... and our runtime computes the same network from them
    with LLM(out, n_ctx=64, kv_type="f32") as m1, LLM(plain, n_ctx=64, kv_type="f32") as m2:
        assert np.abs(m1.logits(PROMPT_IDS) - m2.logits(PROMPT_IDS)).max() < 1e-3


def _weights(r: GGUFReader, name: str) -> np.ndarray:
    """A tensor of a GGUF file decoded to f32 (numpy order)."""
    t = r.tensor(name)
    return quant.dequantize(r.tensor_bytes(name), t.type, t.shape)


def test_importance_weights_lower_the_layer_output_error(tmp_path):
    """With real activations (calibration rows of a tiny model), the imatrix-weighted q4_0 layers reproduce
    their outputs better than the plain ones, summed over every linear layer."""
    from edgellm.converters.base import converter_for
    from edgellm.converters.calib import calibrate
    from edgellm.converters.checkpoint import Checkpoint
    from edgellm.converters.lora import LoraSet

    src = tiny_checkpoint("llama")
    ckpt = Checkpoint.open(src)
    try:
        conv = converter_for(ckpt)
        conv.plan()
        calib = calibrate(src, conv, LoraSet([]), CALIB, 512)
    finally:
        ckpt.close()
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "imatrix.gguf"
    convert(src, plain, ConvertOptions(quant="q4_0", progress=False))
    convert(src, weighted, ConvertOptions(quant="q4_0", calib=CALIB, calib_tokens=512, progress=False))
    f32 = tmp_path / "f32.gguf"
    convert(src, f32, ConvertOptions(quant="f32", progress=False))
    ref = GGUFReader(f32)
    errs = {}
    for label, path in (("plain", plain), ("imatrix", weighted)):
        r = GGUFReader(path)
        total = 0.0
        for name, stats in calib.inputs.items():
            if not name.startswith("blk.") or r.tensor(name).type != quant.GGMLType.Q4_0:
                continue
            x = stats.sample()
            total += float(np.mean((x @ _weights(r, name).T - x @ _weights(ref, name).T) ** 2))
        errs[label] = total
    assert errs["imatrix"] < 0.97 * errs["plain"], errs
    fields = GGUFReader(weighted)
    assert fields["quantize.imatrix.file"] == CALIB.name
    assert fields["quantize.imatrix.chunks_count"] >= 1
    assert "quantize.imatrix.file" not in GGUFReader(plain)


def test_awq_search_never_does_worse_than_plain_on_the_calibration_rows(tmp_path):
    out = tmp_path / "awq.gguf"
    summary = convert(tiny_checkpoint("qwen2"), out,
                      ConvertOptions(quant="q4_0", calib=CALIB, calib_tokens=512, awq=True, progress=False))
    assert "AWQ:" in summary.calibration
    r = GGUFReader(out)
    assert r["quantize.awq"] is True
    with LLM(out, n_ctx=64) as m:  # an ordinary GGUF our runtime (and any llama.cpp runtime) loads
        assert m.logits(PROMPT_IDS).shape[0] == len(PROMPT_IDS)


def test_calibration_errors_leave_no_output(tmp_path):
    src = tiny_checkpoint("llama")
    out = tmp_path / "m.gguf"
    with pytest.raises(ConversionError, match="no such file"):
        convert(src, out, ConvertOptions(quant="q4_0", calib=tmp_path / "missing.txt", progress=False))
    short = tmp_path / "short.txt"
    short.write_text("A few words only.")
    with pytest.raises(ConversionError, match=r"short.txt: \d+ tokens .*; 4096 are needed"):
        convert(src, out, ConvertOptions(quant="q4_0", calib=short, calib_tokens=4096, progress=False))
    with pytest.raises(ConversionError, match="--awq needs calibration"):
        convert(src, out, ConvertOptions(quant="q4_0", awq=True, progress=False))
    assert list(tmp_path.iterdir()) == [short]


def test_cli_calibrated_conversion(tmp_path):
    src = tiny_checkpoint("llama")
    out = tmp_path / "m.gguf"
    runner = CliRunner()
    r = runner.invoke(cli, ["convert", str(src), "-o", str(out), "--quant", "q4_0", "--calib", str(CALIB),
                            "--calib-tokens", "512", "--awq", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "calib" in r.output and "AWQ" in r.output
    r = runner.invoke(cli, ["convert", str(src), "-o", str(out), "--quant", "q4_0", "--awq"])
    assert r.exit_code == 1 and "--awq needs calibration text" in r.output
    r = runner.invoke(cli, ["convert", str(src), "-o", str(out), "--quant", "int4"])
    assert r.exit_code == 1 and "ONNX type" in r.output


def test_calibration_and_folding_see_the_lora_merged_model(tmp_path, monkeypatch):
    """With --lora, calibration runs the merged network, and the folded f32 file computes the merged model."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from edgellm.converters.calib import _build_model
    from edgellm.converters.lora import LoraSet

    src = tiny_checkpoint("llama")
    base = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    torch.manual_seed(3)
    adapter = peft.get_peft_model(base, peft.LoraConfig(init_lora_weights=False, r=4, lora_alpha=8,
                                                        target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    adapter.save_pretrained(str(tmp_path / "adapter"))
    merged = adapter.merge_and_unload().eval()
    loras = LoraSet.load([(tmp_path / "adapter", 1.0)])
    ours = dict(_build_model(src, loras).named_parameters())
    for name, p in merged.named_parameters():
        np.testing.assert_allclose(ours[name].detach().numpy(), p.detach().numpy(), atol=1e-6, err_msg=name)

    _random_scales(monkeypatch)
    out = tmp_path / "folded.gguf"
    convert(src, out, ConvertOptions(quant="f32", loras=[(tmp_path / "adapter", 1.0)], calib=CALIB,
                                     calib_tokens=256, awq=True, progress=False))
    with torch.no_grad():
        ref = merged(torch.tensor([PROMPT_IDS])).logits[0].numpy()
    assert np.abs(gguf_logits(out, PROMPT_IDS) - ref).max() < 1e-4
