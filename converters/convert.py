"""HF checkpoint folder -> GGUF file: plan everything, write the header, then stream tensor by tensor.

Every check that can fail (output folder, config, architecture, tensor names and shapes, tokenizer,
adapters, quantization types) runs before the first byte is written. The GGUF writer writes to a temporary
file next to the output and renames it at the end; any error or Ctrl-C removes it, so no partial output is
ever left. Tensors are read, merged with LoRA adapters, transformed, quantized and written one at a time,
so the peak memory is a few copies of the largest tensor, not the checkpoint.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgellm import quant
from edgellm.errors import ConversionError
from edgellm.gguf import GGUFValueType, GGUFWriter

from .base import ModelConverter, TensorPlan, converter_for, kv_str, kv_u32
from .checkpoint import Checkpoint
from .lora import LoraSet
from .recipes import FILE_TYPES, QUANT_TYPES, RecipeContext, TensorChoice
from .recipes import plan as plan_types
from .vocab import KV, load_vocab

GGUF_QUANTIZATION_VERSION = 2


@dataclass
class ConvertOptions:
    quant: str = "f16"
    loras: list[tuple[Path, float]] = field(default_factory=list)
    n_threads: int = 0  # 0: all cores
    allow_pickle: bool = False
    progress: bool = True


@dataclass
class TypeCount:
    tensors: int = 0
    params: int = 0
    nbytes: int = 0


@dataclass
class ConvertSummary:
    """What a conversion produced: tensors by type, size, bits per weight, time, peak RSS, fallbacks."""

    src: Path
    out: Path
    quant: str
    hf_arch: str
    arch: str
    by_type: dict[str, TypeCount]
    n_params: int
    tensor_bytes: int
    file_size: int
    seconds: float
    peak_rss: int  # bytes, the whole process's high-water mark (ru_maxrss)
    checkpoint_bytes: int
    fallbacks: list[str] = field(default_factory=list)
    lora: list[str] = field(default_factory=list)
    pre_tokenizer: str | None = None
    n_tokens: int = 0

    @property
    def n_tensors(self) -> int:
        return sum(c.tensors for c in self.by_type.values())

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.tensor_bytes / max(self.n_params, 1)

    def render(self) -> str:
        mib = 1024 * 1024
        lines = [
            f"wrote {self.out}",
            (
                f"  model      {self.hf_arch} -> GGUF {self.arch}, {self.n_params:,} parameters, "
                f"{self.n_tensors} tensors, {self.n_tokens:,} tokens "
                f"(pre-tokenizer: {self.pre_tokenizer or '-'})"
            ),
            (
                f"  quant      {self.quant}: {self.bits_per_weight:.2f} bits per weight, file "
                f"{self.file_size / mib:.1f} MiB (checkpoint {self.checkpoint_bytes / mib:.1f} MiB)"
            ),
            f"  time       {self.seconds:.1f} s, peak RSS {self.peak_rss / mib:.0f} MiB",
            "  tensors by type:",
        ]
        for name, c in sorted(self.by_type.items(), key=lambda kv: -kv[1].nbytes):
            lines.append(
                f"    {name:<6} {c.tensors:>5} tensors {c.params:>14,} params {c.nbytes / mib:>10.2f} MiB"
            )
        if self.fallbacks:
            lines.append("  fallbacks (row length does not fit the wanted type's block):")
            groups: dict[str, list[str]] = {}
            for f in self.fallbacks:
                name, why = f.split(": ", 1)
                groups.setdefault(why, []).append(name)
            for why, names in groups.items():
                shown = ", ".join(names[:3]) + (f", ... ({len(names)} tensors)" if len(names) > 3 else "")
                lines.append(f"    {why}: {shown}")
        for line in self.lora:
            lines.append(f"  lora       {line}")
        return "\n".join(lines)


def _peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux's VmHWM belongs to the process's own address space;
    ru_maxrss also carries the parent's high-water mark over fork + exec (a conversion started from a big
    test process would report the parent's size), so it is only the fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024  # bytes on macOS, KiB elsewhere


def check_output(out: Path) -> Path:
    """The output path, checked before any work: its folder exists and is writable, it is not a folder."""
    out = Path(out)
    folder = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise ConversionError(f"{out}: output is a folder; give a file name such as {out / 'model.gguf'}")
    if not folder.is_dir():
        raise ConversionError(f"{out}: output folder '{folder}' does not exist")
    try:  # a real probe: permission bits do not tell the whole story (root, read-only mounts)
        with tempfile.TemporaryFile(dir=folder, prefix=".edgellm-probe-"):
            pass
    except OSError as e:
        raise ConversionError(f"{out}: output folder '{folder}' is not writable: {e.strerror or e}") from None
    if out.exists() and not os.access(out, os.W_OK):
        raise ConversionError(f"{out}: exists and is not writable")
    return out


def _add_kv(writer: GGUFWriter, kv: KV) -> None:
    writer.add_value(kv.key, kv.value, kv.vtype, kv.elem_type if kv.vtype == GGUFValueType.ARRAY else None)


def _find(kvs: list[KV], key: str) -> object | None:
    for kv in kvs:
        if kv.key == key:
            return kv.value
    return None


def _check_vocab(model: ModelConverter, plans: list[TensorPlan], n_tokens: int, src: Path) -> None:
    for p in plans:
        if p.gguf_name in ("token_embd.weight", "output.weight") and p.shape[0] != n_tokens:
            raise ConversionError(
                f"{src}: tokenizer: {n_tokens} tokens but tensor '{p.hf_name}' has "
                f"{p.shape[0]} rows (config.json vocab_size={model.vocab_size})"
            )


def _general(model: ModelConverter, src: Path, quant_name: str) -> list[KV]:
    name = model.cfg.get("_name_or_path") or src.resolve().name
    return [
        kv_str("general.architecture", model.gguf_arch),
        kv_str("general.type", "model"),
        kv_str("general.name", str(name).rstrip("/").split("/")[-1]),
    ]


def convert(src: Path, out: Path, options: ConvertOptions) -> ConvertSummary:
    """Convert the checkpoint folder src into the GGUF file out; ConversionError names the file and field."""
    t0 = time.perf_counter()
    src, out = Path(src), check_output(Path(out))
    if options.quant not in QUANT_TYPES:
        raise ConversionError(f"--quant {options.quant!r}: unknown (choose from {', '.join(QUANT_TYPES)})")

    # 1. plan: config, tensors, tokenizer, adapters, types (nothing written yet)
    ckpt = Checkpoint.open(src, allow_pickle=options.allow_pickle)
    model = converter_for(ckpt)
    vocab = load_vocab(src, model.cfg.data, model.gguf_arch)
    tokens = _find(vocab, "tokenizer.ggml.tokens")
    n_tokens = len(tokens) if tokens is not None else 0
    if hasattr(model, "n_tokens"):
        model.n_tokens = n_tokens
    plans = model.plan()
    _check_vocab(model, plans, n_tokens, src)
    loras = LoraSet.load(options.loras)
    loras.check(ckpt.shapes())
    ctx = RecipeContext(
        quant=options.quant,
        n_layer=model.n_layer,
        n_head=model.n_head,
        n_head_kv=model.n_head_kv,
        has_output=not model.tied,
        arch=model.gguf_arch,
    )
    choices: dict[str, TensorChoice] = plan_types(ctx, [(p.gguf_name, p.shape) for p in plans])
    extra = {p.gguf_name: data for p, data in model.extra_tensors()}

    kvs = (
        _general(model, src, options.quant)
        + model.metadata()
        + [
            kv_u32("general.file_type", FILE_TYPES[options.quant]),
            kv_u32("general.quantization_version", GGUF_QUANTIZATION_VERSION),
        ]
        + vocab
    )

    # 2. header, then 3. stream the tensors
    by_type: dict[str, TypeCount] = {}
    n_params = tensor_bytes = 0
    writer = GGUFWriter(str(out))
    try:
        for kv in kvs:
            _add_kv(writer, kv)
        for p in plans:
            writer.add_tensor_info(p.gguf_name, p.shape, choices[p.gguf_name].qtype)
        writer.write_header()
        progress = _progress(options.progress, plans)
        for p in plans:
            qtype = choices[p.gguf_name].qtype
            data = _tensor_bytes(p, qtype, ckpt, model, loras, extra, options.n_threads, src)
            writer.write_tensor_data(p.gguf_name, data)
            count = by_type.setdefault(quant.type_name(qtype), TypeCount())
            n = int(np.prod(p.shape))
            count.tensors += 1
            count.params += n
            count.nbytes += data.nbytes
            n_params += n
            tensor_bytes += data.nbytes
            del data
            progress.update(1)
        progress.close()
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        ckpt.close()

    fallbacks = [
        f"{name}: {quant.type_name(c.fallback_from)} -> {quant.type_name(c.qtype)} (row length "
        f"{shape[-1]} is not a multiple of {quant.block_size(c.fallback_from)})"
        for name, shape, c in ((p.gguf_name, p.shape, choices[p.gguf_name]) for p in plans)
        if c.fallback_from is not None
    ]
    pre = _find(vocab, "tokenizer.ggml.pre")
    return ConvertSummary(
        src=src,
        out=out,
        quant=options.quant,
        hf_arch=model.hf_arch,
        arch=model.gguf_arch,
        by_type=by_type,
        n_params=n_params,
        tensor_bytes=tensor_bytes,
        file_size=out.stat().st_size,
        seconds=time.perf_counter() - t0,
        peak_rss=_peak_rss_bytes(),
        checkpoint_bytes=sum(f.stat().st_size for f in {r.file for r in ckpt.tensors.values()}),
        fallbacks=fallbacks,
        lora=loras.describe(),
        pre_tokenizer=None if pre is None else str(pre),
        n_tokens=n_tokens,
    )


# Tensors larger than this (as float32) are read, quantized and copied into the output in blocks of rows, so
# the peak memory holds the quantized tensor plus one block instead of the whole float32 tensor.
BLOCK_BYTES = 16 * 1024 * 1024


def _tensor_bytes(
    p: TensorPlan,
    qtype: int,
    ckpt: Checkpoint,
    model: ModelConverter,
    loras: LoraSet,
    extra: dict[str, np.ndarray],
    n_threads: int,
    src: Path,
) -> np.ndarray:
    """The bytes of one output tensor: read -> f32 -> LoRA merge -> arch transform -> quantize."""
    if p.hf_name is None:
        return quant.quantize(extra[p.gguf_name], qtype, n_threads=n_threads)
    rows = p.shape[0] if len(p.shape) == 2 else 0
    row_f32 = 4 * p.shape[-1]
    merged = any(p.hf_name.removesuffix(".weight") in a.pairs for a in loras.adapters)
    if rows and rows * row_f32 > BLOCK_BYTES and not merged and model.rows_unchanged(p):
        step = max(1, BLOCK_BYTES // row_f32)
        out = np.empty((rows, quant.row_size(qtype, p.shape[-1])), dtype=np.uint8)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            block = ckpt.read(p.hf_name, (r0, r1))
            out[r0:r1] = quant.quantize(
                np.ascontiguousarray(block, dtype=np.float32), qtype, n_threads=n_threads
            )
            del block
        return out
    w = ckpt.read(p.hf_name)
    if w.ndim == 2:
        w = loras.merge(p.hf_name, w)
    w = model.transform(p, w)
    if w.shape != p.shape:
        raise ConversionError(f"{src}: tensor '{p.hf_name}': transformed to {w.shape}, planned {p.shape}")
    return quant.quantize(np.ascontiguousarray(w, dtype=np.float32), qtype, n_threads=n_threads)


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, plans: list[TensorPlan]):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=len(plans), unit="tensor", desc="converting", file=sys.stderr, leave=False)
