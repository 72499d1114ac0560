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
from typing import TYPE_CHECKING

import numpy as np

from edgellm import quant
from edgellm.errors import ConversionError
from edgellm.gguf import GGUFValueType, GGUFWriter

from .base import ModelConverter, TensorPlan, converter_for, kv_bool, kv_str, kv_u32
from .checkpoint import Checkpoint
from .lora import LoraSet
from .recipes import FILE_TYPES, QUANT_TYPES, RecipeContext, TensorChoice
from .recipes import plan as plan_types
from .vocab import KV, load_vocab

if TYPE_CHECKING:
    from .awq import Scales
    from .calib import Calibration

GGUF_QUANTIZATION_VERSION = 2


@dataclass
class ConvertOptions:
    quant: str = "f16"
    loras: list[tuple[Path, float]] = field(default_factory=list)
    n_threads: int = 0  # 0: all cores
    allow_pickle: bool = False
    progress: bool = True
    calib: Path | None = None  # calibration text: activation statistics of every linear layer
    calib_tokens: int = 8192
    awq: bool = False  # search and fold AWQ scales (needs calib)
    imatrix: bool = True  # with calib: the statistics weight the quantizers' error (an importance matrix)


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
    calibration: str | None = None  # what calibration did, one line

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
        if self.calibration:
            lines.append(f"  calib      {self.calibration}")
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
    if out.is_dir():
        raise ConversionError(f"{out}: output is a folder; give a file name such as {out / 'model.gguf'}")
    check_parent(out)
    if out.exists() and not os.access(out, os.W_OK):
        raise ConversionError(f"{out}: exists and is not writable")
    return out


def check_parent(out: Path) -> Path:
    """The folder out goes in: it exists and is writable (ConversionError naming out otherwise)."""
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ConversionError(f"{out}: output folder '{folder}' does not exist")
    try:  # a real probe: permission bits do not tell the whole story (root, read-only mounts)
        with tempfile.TemporaryFile(dir=folder, prefix=".edgellm-probe-"):
            pass
    except OSError as e:
        raise ConversionError(f"{out}: output folder '{folder}' is not writable: {e.strerror or e}") from None
    return folder


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
    weights = _Weights(ckpt, model, loras, extra, src, options)
    if options.awq and options.calib is None:
        raise ConversionError("--awq needs calibration text: --calib FILE")
    if options.calib is not None:
        weights.calibrate(plans, choices)

    kvs = (
        _general(model, src, options.quant)
        + model.metadata()
        + [
            kv_u32("general.file_type", FILE_TYPES[options.quant]),
            kv_u32("general.quantization_version", GGUF_QUANTIZATION_VERSION),
        ]
        + weights.metadata()
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
            data = weights.tensor_bytes(p, qtype)
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
        calibration=weights.describe(),
    )


# Tensors larger than this (as float32) are read, quantized and copied into the output in blocks of rows, so
# the peak memory holds the quantized tensor plus one block instead of the whole float32 tensor.
BLOCK_BYTES = 16 * 1024 * 1024


class _Weights:
    """Reads output tensors (read -> f32 -> LoRA merge -> arch transform -> AWQ scales) and quantizes them, with
    the calibration's importance weights when there is one."""

    def __init__(self, ckpt: Checkpoint, model: ModelConverter, loras: LoraSet, extra: dict[str, np.ndarray],
                 src: Path, options: ConvertOptions):
        self.ckpt, self.model, self.loras, self.extra, self.src, self.options = ckpt, model, loras, extra, src, options
        self.calib: Calibration | None = None
        self.scales: Scales | None = None

    def calibrate(self, plans: list[TensorPlan], choices: dict[str, TensorChoice]) -> None:
        from . import awq
        from .calib import calibrate

        o = self.options
        self.calib = calibrate(self.src, self.model, self.loras, Path(o.calib), o.calib_tokens,
                               progress=o.progress)
        if not o.awq:
            return
        by_name = {p.gguf_name: p for p in plans}
        m = self.model
        groups = awq.groups(m.n_layer, m.n_head, m.n_head_kv, m.head_dim, set(by_name))
        progress = _progress(o.progress, groups, desc="awq search", unit="group")
        try:
            self.scales = awq.search(self.calib, groups, lambda n: self.read(by_name[n]),
                                     lambda n: choices[n].qtype, use_imatrix=o.imatrix, n_threads=o.n_threads,
                                     progress=lambda: progress.update(1))
        finally:
            progress.close()

    def metadata(self) -> list[KV]:
        """What calibration did, in the keys llama.cpp's quantizer writes for an importance matrix."""
        c = self.calib
        if c is None:
            return []
        kvs = []
        if self.options.imatrix:
            kvs += [
                kv_str("quantize.imatrix.file", c.file.name),
                kv_str("quantize.imatrix.dataset", f"{c.file.name} (sha256 {c.text_sha256[:16]})"),
                kv_u32("quantize.imatrix.entries_count", len(c.inputs)),
                kv_u32("quantize.imatrix.chunks_count", c.n_windows),
            ]
        if self.scales is not None:
            kvs += [kv_bool("quantize.awq", True), kv_u32("quantize.awq.scaled_groups", len(self.scales.alpha)
                                                             - sum(a == 0 for a in self.scales.alpha.values()))]
        return kvs

    def describe(self) -> str | None:
        c = self.calib
        if c is None:
            return None
        what = [f"{c.n_tokens} tokens of {c.file.name} in {c.n_windows} windows"]
        if self.options.imatrix:
            what.append(f"importance weights for {len(c.inputs)} tensors")
        if self.scales is not None:
            alphas = list(self.scales.alpha.values())
            gains = list(self.scales.gain.values())
            what.append(f"AWQ: {sum(a > 0 for a in alphas)}/{len(alphas)} groups scaled, mean alpha "
                        f"{np.mean(alphas):.2f}, output error x{np.mean(gains):.3f} of plain")
        return "; ".join(what)

    def read(self, p: TensorPlan) -> np.ndarray:
        """Tensor p as written before quantization (f32, numpy order), AWQ scales not applied."""
        if p.hf_name is None:
            return self.extra[p.gguf_name]
        w = self.ckpt.read(p.hf_name)
        if w.ndim == 2:
            w = self.loras.merge(p.hf_name, w)
        w = self.model.transform(p, w)
        if w.shape != p.shape:
            raise ConversionError(f"{self.src}: tensor '{p.hf_name}': transformed to {w.shape}, planned {p.shape}")
        return np.ascontiguousarray(w, dtype=np.float32)

    def _imatrix(self, name: str, qtype: int) -> np.ndarray | None:
        if self.calib is None or not self.options.imatrix or quant.block_size(qtype) == 1:
            return None
        im = self.calib.imatrix(name)
        if self.scales is not None:
            im = self.scales.imatrix(name, im)
        # a column no calibration token ever used still gets a little weight (no block is all zeros)
        return None if im is None else np.maximum(im, 1e-6 * float(im.max()) + 1e-30)

    def tensor_bytes(self, p: TensorPlan, qtype: int) -> np.ndarray:
        """The bytes of one output tensor."""
        n_threads = self.options.n_threads
        im = self._imatrix(p.gguf_name, qtype)
        scales = self.scales
        if p.hf_name is None:
            return quant.quantize(self.extra[p.gguf_name], qtype, imatrix=im, n_threads=n_threads)
        rows = p.shape[0] if len(p.shape) == 2 else 0
        row_f32 = 4 * p.shape[-1]
        merged = any(p.hf_name.removesuffix(".weight") in a.pairs for a in self.loras.adapters)
        if rows and rows * row_f32 > BLOCK_BYTES and not merged and self.model.rows_unchanged(p):
            # streamed in blocks of rows: the peak memory holds the quantized tensor plus one block
            step = max(1, BLOCK_BYTES // row_f32)
            out = np.empty((rows, quant.row_size(qtype, p.shape[-1])), dtype=np.uint8)
            for r0 in range(0, rows, step):
                r1 = min(rows, r0 + step)
                block = np.ascontiguousarray(self.ckpt.read(p.hf_name, (r0, r1)), dtype=np.float32)
                if scales is not None:
                    block = scales.apply(p.gguf_name, block, (r0, r1))
                out[r0:r1] = quant.quantize(block, qtype, imatrix=im, n_threads=n_threads)
                del block
            return out
        w = self.read(p)
        if scales is not None:
            w = scales.apply(p.gguf_name, w)
        return quant.quantize(np.ascontiguousarray(w, dtype=np.float32), qtype, imatrix=im, n_threads=n_threads)


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, items: list, desc: str = "converting", unit: str = "tensor"):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=len(items), unit=unit, desc=desc, file=sys.stderr, leave=False)
