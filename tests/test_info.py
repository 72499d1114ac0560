"""`edgellm info` on the real SmolLM2 file (checked against gguf-py) and on broken files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from test_gguf import real_model, real_model_reference

from edgellm.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, ["info", *args])


def test_text_output_on_the_real_file() -> None:
    path = real_model()
    ref = real_model_reference()
    result = run(str(path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"file: {path}" in out
    assert "GGUF v3, 33 keys, 272 tensors, alignment 32" in out
    assert "llama.block_count" in out and "  30\n" in out
    assert "llama.attention.layer_norm_rms_epsilon  1e-05" in out  # float32 shown by its shortest text
    assert "[string x 49152] ['<|endoftext|>', '<|im_start|>'," in out  # long arrays summarised
    assert "[string x 48900]" in out and "[int32 x 49152]" in out
    assert "You are a helpful AI assistant named SmolLM" in out  # the chat template in full
    assert "token_embd.weight" in out and "49152 x 576" in out and "30,081,024" in out
    n_params = sum(int(np.prod(t.shape)) for t in ref.tensors)
    n_bytes = sum(int(t.n_bytes) for t in ref.tensors)
    bpw = n_bytes * 8 / n_params
    assert f"totals: 272 tensors, {n_params:,} parameters" in out
    assert f"{bpw:.2f} bits per weight" in out
    assert len(out.splitlines()) < 400  # nothing dumps 49k tokens


def test_default_model_and_no_tensors() -> None:
    result = run("--no-tensors")
    assert result.exit_code == 0, result.output
    assert f"file: {real_model()}" in result.stdout
    assert "token_embd.weight" not in result.stdout
    assert "totals: 272 tensors" in result.stdout


def test_json_output_matches_gguf_py() -> None:
    path = real_model()
    ref = real_model_reference()
    result = run(str(path), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["version"] == 3 and doc["alignment"] == ref.alignment
    meta = doc["metadata"]
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 30
    assert meta["llama.attention.layer_norm_rms_epsilon"] == 1e-05  # float32 given by its shortest text
    assert meta["tokenizer.chat_template"] == ref.fields["tokenizer.chat_template"].contents()
    tokens = meta["tokenizer.ggml.tokens"]
    assert tokens["length"] == 49152 and tokens["head"] == ref.fields["tokenizer.ggml.tokens"].contents()[:8]
    assert len(doc["tensors"]) == 272
    for t, mine in zip(ref.tensors, doc["tensors"]):
        assert mine["name"] == t.name and mine["ne"] == [int(d) for d in t.shape]
        assert mine["shape"] == mine["ne"][::-1]
        assert mine["type"] == t.tensor_type.name and mine["nbytes"] == int(t.n_bytes)
        assert mine["offset"] == int(t.data_offset)
    assert doc["totals"]["parameters"] == sum(int(np.prod(t.shape)) for t in ref.tensors)
    assert doc["totals"]["file_size"] == path.stat().st_size


def test_corrupt_file_gives_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(real_model().read_bytes()[:300_000])  # cut inside the vocabulary
    result = run(str(bad))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {bad}: key 'tokenizer.ggml.tokens'")
    assert len(result.stderr.splitlines()) == 1
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_corrupt_file_in_a_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 16)
    proc = subprocess.run([sys.executable, "-m", "edgellm", "info", str(bad)], capture_output=True, text=True,
                          timeout=120, check=False, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"error: {bad}: n_kv: count {2**64 - 1} is more than the file could hold (size 24)\n"


def test_missing_file(tmp_path: Path) -> None:
    result = run(str(tmp_path / "none.gguf"))
    assert result.exit_code == 1
    assert result.stderr == f"error: {tmp_path / 'none.gguf'}: cannot open: No such file or directory\n"
