"""Bad input to `edgellm convert`: one line naming the file and the field, exit code 1, no traceback, and no
output or temporary file left in the output folder."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgellm.cli import cli
from helpers.tiny_models import PROMPT_IDS, gguf_logits, hf_logits, tiny_checkpoint

ARCH = "qwen2"  # small, with biases and tied embeddings


@pytest.fixture
def src(tmp_path) -> Path:
    """A private copy of a tiny checkpoint, free to break."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_checkpoint(ARCH), dst)
    return dst


@pytest.fixture
def out_dir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def run_fail(src: Path, out_dir: Path, *extra: str) -> str:
    """Run the CLI expecting failure; returns the single error line (without 'error: ')."""
    result = CliRunner().invoke(
        cli, ["convert", str(src), "-o", str(out_dir / "model.gguf"), "--no-progress", *extra]
    )
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # handled: no traceback
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert list(out_dir.iterdir()) == [], "output or temporary file left behind"
    return err.removeprefix("error: ")


def _config(src: Path) -> dict:
    return json.loads((src / "config.json").read_text())


def _write_config(src: Path, cfg: dict) -> None:
    (src / "config.json").write_text(json.dumps(cfg))


def test_missing_config(src, out_dir):
    (src / "config.json").unlink()
    msg = run_fail(src, out_dir)
    assert "config.json" in msg and "missing" in msg


def test_corrupt_config(src, out_dir):
    (src / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,')
    msg = run_fail(src, out_dir)
    assert "config.json" in msg and "not valid JSON" in msg


def test_config_field_of_wrong_type(src, out_dir):
    cfg = _config(src)
    cfg["num_attention_heads"] = "four"
    _write_config(src, cfg)
    msg = run_fail(src, out_dir)
    assert "config.json" in msg and "'num_attention_heads'" in msg and "integer" in msg


def test_config_field_missing(src, out_dir):
    cfg = _config(src)
    del cfg["num_hidden_layers"]
    _write_config(src, cfg)
    msg = run_fail(src, out_dir)
    assert "config.json" in msg and "'num_hidden_layers'" in msg and "missing" in msg


def test_unsupported_architecture(src, out_dir):
    cfg = _config(src)
    cfg["architectures"] = ["GPT2LMHeadModel"]
    _write_config(src, cfg)
    msg = run_fail(src, out_dir)
    assert "config.json" in msg and "'architectures'" in msg and "GPT2LMHeadModel" in msg
    assert "LlamaForCausalLM" in msg  # says what is supported


def _to_pickle(src: Path) -> None:
    import torch
    from safetensors.torch import load_file

    state = load_file(str(src / "model.safetensors"))
    torch.save(state, src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()


def test_pickle_checkpoint_refused(src, out_dir):
    _to_pickle(src)
    msg = run_fail(src, out_dir)
    assert "pytorch_model.bin" in msg and "pickle" in msg and "--allow-pickle" in msg


def test_pickle_checkpoint_allowed(src, out_dir):
    _to_pickle(src)
    out = out_dir / "model.gguf"
    result = CliRunner().invoke(
        cli, ["convert", str(src), "-o", str(out), "--quant", "f32", "--allow-pickle", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    ours = gguf_logits(out, PROMPT_IDS)
    assert np.abs(ours - hf_logits(tiny_checkpoint(ARCH), PROMPT_IDS)).max() < 1e-4


def test_truncated_safetensors(src, out_dir):
    f = src / "model.safetensors"
    size = f.stat().st_size
    os.truncate(f, size - 1000)
    msg = run_fail(src, out_dir)
    assert "model.safetensors" in msg and "truncated" in msg and "tensor '" in msg


def test_safetensors_header_truncated(src, out_dir):
    f = src / "model.safetensors"
    os.truncate(f, 100)  # cut inside the header JSON
    msg = run_fail(src, out_dir)
    assert "model.safetensors" in msg and "header" in msg


def _rewrite_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_safetensors_header_inconsistent(src, out_dir):
    name = "model.layers.0.mlp.up_proj.weight"

    def edit(h):
        h[name]["shape"] = [128, 32]  # half the bytes its data_offsets span

    _rewrite_header(src / "model.safetensors", edit)
    msg = run_fail(src, out_dir)
    assert "model.safetensors" in msg and f"'{name}'" in msg and "data_offsets" in msg


def _shard(src: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    (src / "model.safetensors").unlink()
    model.save_pretrained(src, max_shard_size="1MB")
    assert (src / "model.safetensors.index.json").is_file()


def test_index_names_missing_shard(src, out_dir):
    _shard(src)
    shard = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]["model.norm.weight"]
    (src / shard).unlink()
    msg = run_fail(src, out_dir)
    assert "model.safetensors.index.json" in msg and shard in msg and "missing" in msg


def test_index_names_missing_tensor(src, out_dir):
    _shard(src)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = index["weight_map"]["model.norm.weight"]
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    msg = run_fail(src, out_dir)
    assert "'model.layers.9.mlp.up_proj.weight'" in msg and "not in this shard" in msg


def test_shape_mismatch_with_config(src, out_dir):
    cfg = _config(src)
    cfg["intermediate_size"] = 256
    _write_config(src, cfg)
    msg = run_fail(src, out_dir)
    assert "model.safetensors" in msg and "config.json" in msg and "intermediate_size=256" in msg
    assert "mlp." in msg and "expected" in msg


def test_missing_tensor(src, out_dir):
    def edit(h):
        del h["model.layers.1.mlp.down_proj.weight"]

    _rewrite_header(src / "model.safetensors", edit)
    msg = run_fail(src, out_dir)
    assert "blk.1.ffn_down.weight" in msg and "missing" in msg


def test_unexpected_tensor(src, out_dir):
    def edit(h):
        h["model.layers.0.mlp.extra_proj.weight"] = h.pop("model.layers.0.input_layernorm.weight")

    _rewrite_header(src / "model.safetensors", edit)
    msg = run_fail(src, out_dir)
    assert "'model.layers.0.mlp.extra_proj.weight'" in msg and "not expected" in msg


def test_output_folder_missing(src, tmp_path):
    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(cli, ["convert", str(src), "-o", str(missing / "m.gguf")])
    assert result.exit_code == 1 and "does not exist" in result.stderr and str(missing) in result.stderr
    assert not missing.exists()


def test_output_folder_not_writable(src, tmp_path):
    if os.geteuid() == 0:  # permission bits do not stop root: use a folder the kernel refuses
        folder = Path("/sys")
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    before = set(os.listdir(folder))
    result = CliRunner().invoke(cli, ["convert", str(src), "-o", str(folder / "m.gguf")])
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "not writable" in err and str(folder) in err
    assert set(os.listdir(folder)) == before


def test_interrupted_conversion_leaves_nothing(src, out_dir, monkeypatch):
    """Ctrl-C in the middle of writing tensors removes the temporary file."""
    from edgellm.converters import convert as convert_mod
    from edgellm.converters.convert import ConvertOptions, convert

    calls = {"n": 0}
    real = convert_mod.quant.quantize

    def interrupt_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(convert_mod.quant, "quantize", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        convert(src, out_dir / "model.gguf", ConvertOptions(quant="q8_0", progress=False))
    assert calls["n"] == 3
    assert list(out_dir.iterdir()) == []
