"""Calibration: run text through the checkpoint in fp32 and collect, for every linear layer, statistics of its
input channels.

The model is transformers' own implementation of the architecture (the reference the tests hold our core
to), loaded from the checkpoint folder with the LoRA adapters merged, so the statistics describe the
network that is being quantized. Per input of a linear layer (q/k/v share
one input, as do gate/up) it keeps the mean square (the importance matrix of llama.cpp's imatrix tool: the
quantizer's error on column j costs mean(x_j^2) in the layer's output), the mean absolute value (AWQ's
activation scale) and a fixed random sample of input rows (AWQ measures each candidate scale's output error
on them).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgellm.errors import ConversionError

from .base import ModelConverter
from .lora import LoraSet

# Tensors whose input is another tensor's input: they share its statistics.
SHARED_INPUT = {"attn_k": "attn_q", "attn_v": "attn_q", "ffn_up": "ffn_gate"}
WINDOW = 512  # tokens per calibration window (BOS first), as llama.cpp's imatrix tool
MIN_TOKENS = 64


@dataclass
class InputStats:
    """Statistics of one linear input (n channels) over the calibration tokens."""

    sum_sq: np.ndarray  # float64 (n,)
    sum_abs: np.ndarray  # float64 (n,)
    count: int = 0
    rows: list[np.ndarray] = field(default_factory=list)  # sampled input rows, float32 (k, n) each

    @property
    def mean_sq(self) -> np.ndarray:
        return (self.sum_sq / max(self.count, 1)).astype(np.float32)

    @property
    def mean_abs(self) -> np.ndarray:
        return (self.sum_abs / max(self.count, 1)).astype(np.float32)

    def sample(self) -> np.ndarray:
        return np.concatenate(self.rows, axis=0) if self.rows else np.zeros((0, len(self.sum_sq)), np.float32)


@dataclass
class Calibration:
    """Input statistics by GGUF tensor name (tensors that share an input share the object)."""

    file: Path
    n_tokens: int
    n_windows: int
    text_sha256: str
    inputs: dict[str, InputStats]

    def stats(self, gguf_name: str) -> InputStats | None:
        return self.inputs.get(gguf_name)

    def imatrix(self, gguf_name: str) -> np.ndarray | None:
        """Importance per column of tensor gguf_name: the mean square of its input channel (None when the
        tensor is not a linear layer the calibration saw)."""
        s = self.inputs.get(gguf_name)
        return None if s is None else s.mean_sq


def _read_text(path: Path) -> str:
    if not path.exists():
        raise ConversionError(f"--calib {path}: no such file")
    if not path.is_file():
        raise ConversionError(f"--calib {path}: not a file")
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ConversionError(f"--calib {path}: cannot read: {e.strerror or e}") from None


def calibration_tokens(src: Path, file: Path, n_tokens: int, n_ctx_train: int) -> tuple[list[list[int]], str]:
    """The calibration windows: the first n_tokens tokens of file in windows of up to WINDOW tokens, each with
    BOS first when the tokenizer has one. Raises ConversionError when the text is too short."""
    from transformers import AutoTokenizer

    if n_tokens < MIN_TOKENS:
        raise ConversionError(f"--calib-tokens {n_tokens}: too few to calibrate on (at least {MIN_TOKENS})")
    text = _read_text(file)
    tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]  # the whole text, windows come after
    if len(ids) < n_tokens:
        raise ConversionError(
            f"--calib {file}: {len(ids)} tokens with this model's tokenizer; {n_tokens} are needed "
            f"(--calib-tokens {n_tokens}): give a longer text or lower --calib-tokens"
        )
    window = min(WINDOW, n_ctx_train) if n_ctx_train > 0 else WINDOW
    bos = tok.bos_token_id
    windows = []
    for start in range(0, n_tokens, window):
        w = list(ids[start:min(start + window, n_tokens)])
        if bos is not None:
            w[0] = bos
        if len(w) >= 2:
            windows.append(w)
    return windows, hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def _build_model(src: Path, loras: LoraSet):
    """transformers' model for the checkpoint in fp32, LoRA adapters merged (the network being quantized)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{src / 'config.json'}: calibration cannot load the model: {first}") from None
    if loras:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim != 2:
                    continue
                w = p.numpy()
                merged = loras.merge(name, w)
                if merged is not w:
                    p.copy_(torch.from_numpy(merged))
    model.eval()
    return model


def calibrate(src: Path, conv: ModelConverter, loras: LoraSet, file: Path, n_tokens: int,
              n_sample: int = 512, seed: int = 0, progress: bool = False) -> Calibration:
    """Runs the first n_tokens tokens of file through the checkpoint; statistics of every linear input."""
    import torch

    n_ctx_train = int(conv.cfg.get("max_position_embeddings", 0) or 0)
    windows, digest = calibration_tokens(src, Path(file), n_tokens, n_ctx_train)
    model = _build_model(src, loras)
    rng = np.random.default_rng(seed)
    per_window = math.ceil(n_sample / len(windows))

    inputs: dict[str, InputStats] = {}
    hooks = []
    picked: list[np.ndarray] = []  # positions of the current window whose rows are sampled

    def hook_for(stats: InputStats):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            stats.sum_sq += (x * x).sum(0).numpy()
            stats.sum_abs += x.abs().sum(0).numpy()
            stats.count += x.shape[0]
            stats.rows.append(x[torch.from_numpy(picked[0])].to(torch.float32).numpy())
        return hook

    linear_names = []
    for hf_module, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        mapped = _gguf_name(conv, hf_module)
        if mapped is None:
            continue
        linear_names.append((mapped, module))
    for name, module in linear_names:
        part = name.split(".")[-2]
        if part in SHARED_INPUT:
            continue
        stats = InputStats(np.zeros(module.in_features), np.zeros(module.in_features))
        inputs[name] = stats
        hooks.append(module.register_forward_pre_hook(hook_for(stats)))
    for name, _ in linear_names:
        part = name.split(".")[-2]
        if part in SHARED_INPUT:
            inputs[name] = inputs[name.replace(f".{part}.", f".{SHARED_INPUT[part]}.")]

    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(windows), unit="window", desc="calibrating", file=sys.stderr, leave=False)
    try:
        with torch.no_grad():
            for w in windows:
                k = min(per_window, len(w))
                picked[:] = [np.sort(rng.choice(len(w), size=k, replace=False))]
                model(torch.tensor([w], dtype=torch.long), use_cache=False)
                if bar is not None:
                    bar.update(1)
    finally:
        for h in hooks:
            h.remove()
        if bar is not None:
            bar.close()
    return Calibration(file=Path(file), n_tokens=sum(len(w) for w in windows), n_windows=len(windows),
                       text_sha256=digest, inputs=inputs)


def _gguf_name(conv: ModelConverter, hf_module: str) -> str | None:
    """The GGUF tensor a linear module of transformers' model writes to (the output matrix is token_embd
    when the embeddings are tied); None for modules the GGUF file does not have."""
    if hf_module.endswith("lm_head"):
        return "token_embd.weight" if conv.tied else "output.weight"
    try:
        mapped = conv.map_name(hf_module + ".weight")
    except (ConversionError, KeyError):
        return None
    return None if mapped is None else mapped[0]


__all__ = ["Calibration", "InputStats", "calibrate", "calibration_tokens"]
