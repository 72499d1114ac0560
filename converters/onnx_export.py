"""HF checkpoint folder -> an ONNX Runtime folder (`edgellm convert --format onnx`).

Steps: check everything that can be checked (checkpoint, architecture, output folder, adapters, packages);
merge LoRA adapters into a temporary checkpoint; export a decoder with a KV cache with optimum (fp32);
quantize it with ONNX Runtime's own tools; write the tokenizer as a GGUF without tensors (so the native
tokenizer, detokenizer, sampler and chat template serve the ONNX model too) and `edgellm.json`; load the
result with ONNX Runtime and evaluate two tokens. Everything is built in a hidden temporary folder next to the
output and renamed into place at the end: a failed or interrupted export leaves nothing behind, and a previous
export is replaced only once the new one is complete.

The folder (read by edgellm.ort.OnnxLLM):
  model.onnx            inputs input_ids (1, n), attention_mask (1, past + n), position_ids (1, n) when the
                        graph has it, past_key_values.{i}.key/value (1, n_head_kv, past, head_dim); outputs
                        logits (1, n, n_logits) and present.{i}.key/value (1, n_head_kv, past + n, head_dim)
  model.onnx_data       the weights, when they pass 1 GiB (protobuf stops at 2 GiB)
  tokenizer.gguf        the general.*, {arch}.* and tokenizer.* metadata our GGUF converter writes; no tensors
  edgellm.json          format, quant, shapes, token ids, input and output names, KV cache type
  config.json, ...      the checkpoint's config and tokenizer files, copied
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgellm.errors import ConversionError
from edgellm.gguf import GGUFWriter
from edgellm.ort import DATA_NAME, FORMAT, FORMAT_VERSION, META_NAME, MODEL_NAME, TOKENIZER_NAME

from .base import ModelConverter, converter_for
from .checkpoint import Checkpoint
from .convert import _add_kv, _find, _general, check_parent
from .lora import LoraSet
from .vocab import KV, load_vocab

QUANTS = ("fp32", "fp16", "int8", "int4")
# HF architectures whose export the tests hold to transformers.
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
             "Gemma3ForCausalLM")
# Files of the checkpoint copied beside the model (those present).
COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt",
          "added_tokens.json")
EXTERNAL_DATA_BYTES = 1 << 30  # weights above this go to model.onnx_data
BLOCK_SIZE = 32  # int4 / int8: weights per scale

# What each quant type is, for the summary. int8 is weight-only: quantize_dynamic also quantizes the
# activations with one scale per tensor, and SmolLM2-135M's activation outliers then bring its top-1 agreement
# with fp32 down to about 50% (weight-only int8: about 96%). accuracy_level 4 (int8 activations per block)
# decodes 5 to 8 times faster than float compute for a point of top-1 agreement. A quantized output projection
# (the transposed embedding when tied) decodes SmolLM2 15% faster than a float one, at the same agreement.
QUANT_DETAILS = {
    "fp32": "float32 weights, as optimum exports them",
    "fp16": "float16 weights and compute; inputs, outputs and the KV cache stay float32",
    "int8": f"MatMulNBits 8-bit weights, blocks of {BLOCK_SIZE}, symmetric, int8 compute",
    "int4": f"MatMulNBits 4-bit weights (the output projection 8-bit), blocks of {BLOCK_SIZE}, symmetric, "
            f"int8 compute",
}


@dataclass
class OnnxOptions:
    quant: str = "fp32"
    loras: list[tuple[Path, float]] = field(default_factory=list)
    allow_pickle: bool = False
    progress: bool = True


@dataclass
class OnnxSummary:
    """What an export produced: files and sizes, the quantization, time."""

    src: Path
    out: Path
    quant: str
    hf_arch: str
    arch: str  # the GGUF arch name (tokenizer.gguf)
    n_params: int
    n_layer: int
    n_tokens: int
    kv_dtype: str
    files: dict[str, int]  # name -> bytes
    checkpoint_bytes: int
    matmuls: int  # MatMul nodes with a weight (an initializer) in the exported graph
    quantized: int  # ... quantized (int4, int8)
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    lora: list[str] = field(default_factory=list)

    @property
    def model_bytes(self) -> int:
        return sum(size for name, size in self.files.items() if name in (MODEL_NAME, DATA_NAME))

    def render(self) -> str:
        mib = 1024 * 1024
        quant = QUANT_DETAILS[self.quant]
        if self.quant in ("int4", "int8"):
            quant += f" ({self.quantized} of {self.matmuls} MatMul weights)"
        steps = ", ".join(f"{name} {s:.1f} s" for name, s in self.steps.items())
        lines = [
            f"wrote {self.out}",
            (f"  model      {self.hf_arch} -> ONNX (GGUF arch {self.arch} for the tokenizer), "
             f"{self.n_params:,} parameters, {self.n_layer} layers, {self.n_tokens:,} tokens, "
             f"KV cache {self.kv_dtype}"),
            f"  quant      {self.quant}: {quant}",
            (f"  size       model {self.model_bytes / mib:.1f} MiB (checkpoint "
             f"{self.checkpoint_bytes / mib:.1f} MiB)"),
            f"  files      {', '.join(sorted(self.files))}",
            f"  time       {self.seconds:.1f} s ({steps})",
        ]
        lines += [f"  lora       {line}" for line in self.lora]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ checks
def check_output(out: Path) -> Path:
    """The output folder, checked before any work: its parent exists and is writable; it does not exist, is
    empty, or is a previous export (replaced at the end)."""
    out = Path(out)
    check_parent(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConversionError(f"{out}: exists and is not a folder; --format onnx writes a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / META_NAME).is_file():
        raise ConversionError(f"{out}: a folder that is not empty and not an ONNX export of edgellm (no "
                              f"{META_NAME}); choose a new folder name")
    return out


def _architecture(ckpt: Checkpoint) -> str:
    """The HF architecture to export; ConversionError naming config.json when we do not export it."""
    archs = ckpt.config.get("architectures")
    if not (isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs)):
        return converter_for(ckpt).hf_arch  # raises the converter's message for a missing or malformed field
    for arch in archs:
        if arch in SUPPORTED:
            return arch
    raise ckpt.config.fail("architectures", f"{archs[0]} is not supported for ONNX export (supported: "
                                            f"{', '.join(SUPPORTED)})")


def _check_packages(quant: str) -> None:
    """Every package the export needs, checked before any work."""
    needed = ["optimum.exporters.onnx", "onnx", "onnxruntime"]
    if quant in ("int4", "int8"):
        needed.append("onnx_ir")  # onnxruntime.quantization.matmul_nbits_quantizer imports it
    for name in needed:
        try:
            __import__(name)
        except ImportError as e:
            hint = "pip install onnx-ir" if name == "onnx_ir" else "pip install 'edgellm[onnx]'"
            raise ConversionError(f"--format onnx --quant {quant} needs the package '{e.name or name}': "
                                  f"{hint}") from None


# ------------------------------------------------------------------------------------------------ export
def export_onnx(src: Path, out: Path, options: OnnxOptions) -> OnnxSummary:
    """Export the checkpoint folder src to the ONNX folder out; ConversionError names the file and field."""
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    if options.quant not in QUANTS:
        raise ConversionError(f"--quant {options.quant!r}: not an ONNX type (choose from "
                              f"{', '.join(QUANTS)})")
    ckpt = Checkpoint.open(src, allow_pickle=options.allow_pickle)
    try:
        hf_arch = _architecture(ckpt)
        model = converter_for(ckpt)
        vocab = load_vocab(src, model.cfg.data, model.gguf_arch)
        if hasattr(model, "n_tokens"):
            model.n_tokens = len(_find(vocab, "tokenizer.ggml.tokens") or [])
        loras = LoraSet.load(options.loras)
        loras.check(ckpt.shapes())
        check_output(out)
        _check_packages(options.quant)

        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
            summary = _build(src, tmp, out, ckpt, model, hf_arch, vocab, loras, options)
            _replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        ckpt.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _build(src: Path, tmp: Path, out: Path, ckpt: Checkpoint, model: ModelConverter, hf_arch: str,
           vocab: list[KV], loras: LoraSet, options: OnnxOptions) -> OnnxSummary:
    """Writes the whole folder into tmp (messages name out, where it is going)."""
    steps: dict[str, float] = {}
    progress = _Progress(options.progress, 4 + bool(loras))
    work = tmp / ".work"
    work.mkdir()

    source = src
    if loras:
        progress.step("merging the LoRA adapters")
        t = time.perf_counter()
        source = work / "merged"
        _write_merged(ckpt, loras, source)
        steps["lora merge"] = time.perf_counter() - t

    progress.step("exporting with optimum")
    t = time.perf_counter()
    _export(source, work / "export")
    steps["export"] = time.perf_counter() - t

    progress.step(f"quantizing ({options.quant})" if options.quant != "fp32" else "writing the model")
    t = time.perf_counter()
    matmuls, quantized = _quantize(work / "export" / MODEL_NAME, tmp, options.quant)
    if options.quant != "fp32":
        steps["quantize"] = time.perf_counter() - t
    shutil.rmtree(work)

    progress.step("writing the tokenizer and edgellm.json")
    _write_tokenizer_gguf(tmp / TOKENIZER_NAME, model, src, options.quant, vocab)
    for name in COPIED:
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / name)
    meta = _metadata(tmp, out, src, model, hf_arch, vocab, options, loras)
    (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    progress.step("checking with ONNX Runtime")
    t = time.perf_counter()
    _smoke_test(tmp, out, meta)
    steps["check"] = time.perf_counter() - t

    return OnnxSummary(
        src=src, out=out, quant=options.quant, hf_arch=hf_arch, arch=model.gguf_arch,
        n_params=sum(int(np.prod(s)) for s in ckpt.shapes().values()), n_layer=model.n_layer,
        n_tokens=meta["n_vocab"], kv_dtype=meta["kv_dtype"],
        files={p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()},
        checkpoint_bytes=sum(f.stat().st_size for f in {r.file for r in ckpt.tensors.values()}),
        matmuls=matmuls, quantized=quantized, steps=steps, lora=loras.describe(),
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(tmp: Path, out: Path) -> None:
    """Renames the finished folder tmp to out; what was at out (an earlier export) is removed only now."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old / out.name, out)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


class _Progress:
    """One line per step on stderr, when enabled."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.n = enabled, total, 0

    def step(self, what: str) -> None:
        self.n += 1
        if self.enabled:
            print(f"[{self.n}/{self.total}] {what} ...", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences the exporters' warnings (tracer warnings, notes on tied weights) and their INFO logs."""
    loggers = [logging.getLogger(name) for name in ("optimum", "transformers", "torch", "onnxruntime",
                                                    "onnx_ir", None)]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _write_merged(ckpt: Checkpoint, loras: LoraSet, dst: Path) -> None:
    """A float32 checkpoint of base + adapters (config and tokenizer copied) for the exporter to load."""
    from safetensors.numpy import save_file

    dst.mkdir()
    for name in COPIED:
        if (ckpt.path / name).is_file():
            shutil.copyfile(ckpt.path / name, dst / name)
    tensors = {}
    for name in ckpt.tensors:
        w = ckpt.read(name)
        tensors[name] = np.ascontiguousarray(loras.merge(name, w) if w.ndim == 2 else w)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})


def _export(src: Path, dst: Path) -> None:
    """optimum's fp32 export of src into dst: a decoder with past_key_values inputs and present outputs."""
    from optimum.exporters.onnx import main_export

    try:
        with _quiet():  # the tests compare the export with transformers: the exporter's own check is not run
            main_export(model_name_or_path=str(src), output=str(dst), task="text-generation-with-past",
                        device="cpu", dtype="fp32", local_files_only=True, do_validation=False)
    except (ConversionError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001  the exporter raises many types (ValueError, RuntimeError, ...)
        raise ConversionError(f"{src}: optimum's ONNX export failed: {_first_line(e)}") from None
    if not (dst / MODEL_NAME).is_file():
        raise ConversionError(f"{src}: optimum's ONNX export wrote no {MODEL_NAME}")


def _weight_matmuls(model: Any) -> int:
    """MatMul nodes whose second input is a weight: an initializer, or a Transpose of one (a tied output
    projection reads the embedding so)."""
    inits = {i.name for i in model.graph.initializer}
    transposed = {n.output[0] for n in model.graph.node if n.op_type == "Transpose" and n.input[0] in inits}
    weights = inits | transposed
    return sum(1 for n in model.graph.node
               if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in weights)


def _output_matmul(model: Any) -> Any | None:
    """The output projection: the MatMul nearest to the logits output (through a softcap, a cast)."""
    producer = {out: n for n in model.graph.node for out in n.output}
    todo, seen = ["logits"], set()
    while todo:
        node = producer.get(todo.pop(0))
        if node is None or node.name in seen:
            continue
        if node.op_type == "MatMul":
            return node
        seen.add(node.name)
        todo.extend(node.input)
    return None


def _untie(model: Any, matmul: Any) -> None:
    """A tied output projection reads the embedding through a Transpose, which weight quantizers skip: give it
    its own weight, the transposed embedding (the Gather keeps the original)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    node = next((n for n in model.graph.node if matmul.input[1] in n.output), None)
    if node is None or node.op_type != "Transpose" or node.input[0] not in inits:
        return
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)  # None: reverse the axes
    weight = np.ascontiguousarray(numpy_helper.to_array(inits[node.input[0]]).transpose(perm))
    name = f"{node.input[0]}.output_projection"
    model.graph.initializer.append(numpy_helper.from_array(weight, name))
    matmul.input[1] = name
    if not any(node.output[0] in n.input for n in model.graph.node):
        model.graph.node.remove(node)


def _quantize(src: Path, dst_dir: Path, quant: str) -> tuple[int, int]:
    """Writes src (optimum's fp32 model.onnx) to dst_dir as model.onnx (+ model.onnx_data) in the quant type.
    Returns (MatMul weights, MatMul weights quantized)."""
    import onnx

    if quant == "fp32" and {p.name for p in src.parent.glob("*.onnx*")} <= {MODEL_NAME, DATA_NAME}:
        matmuls = _weight_matmuls(onnx.load(str(src), load_external_data=False))
        for name in (MODEL_NAME, DATA_NAME):  # the data file keeps the name model.onnx refers to
            if (src.parent / name).is_file():
                os.rename(src.parent / name, dst_dir / name)
        return matmuls, 0
    try:
        model = onnx.load(str(src))
    except Exception as e:  # noqa: BLE001  protobuf and onnx raise several types
        raise ConversionError(f"{src}: cannot read the exported model: {_first_line(e)}") from None
    matmuls = _weight_matmuls(model)
    try:
        with _quiet():
            if quant == "fp16":
                from onnxruntime.transformers.float16 import convert_float_to_float16

                # shape inference serialises the model, which protobuf refuses above 2 GiB
                big = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
                model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=big)
            elif quant in ("int4", "int8"):
                model = _quantize_matmul_nbits(model, 4 if quant == "int4" else 8)
    except (ConversionError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001  the quantizers raise many types
        raise ConversionError(f"{src}: ONNX Runtime's {quant} quantization failed: "
                              f"{_first_line(e)}") from None
    quantized = sum(1 for n in model.graph.node if n.op_type == "MatMulNBits")
    _save(model, dst_dir / MODEL_NAME)
    return matmuls, quantized


def _quantize_matmul_nbits(model: Any, bits: int) -> Any:
    """Block-wise weight-only quantization (MatMulNBits) of every MatMul with a weight. The output projection
    is quantized too (a tied one gets its own copy of the embedding), at 8 bits with int4, as llama.cpp keeps
    it above the base type. accuracy_level 4: int8 activations, quantized per block."""
    for i, node in enumerate(model.graph.node):  # the quantizers select nodes by name
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    output = _output_matmul(model)
    if output is not None:
        _untie(model, output)
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    # importing this module configures the root logger (logging.basicConfig at INFO): undone below
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.setLevel(saved[0])
    root.handlers[:] = saved[1]

    def quantize(model: Any, bits: int, exclude: list[str]) -> Any:
        q = MatMulNBitsQuantizer(model, bits=bits, block_size=BLOCK_SIZE, is_symmetric=True, accuracy_level=4,
                                 nodes_to_exclude=exclude)
        q.process()
        return q.model.model

    if bits < 8 and output is not None:
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name != output.name]
        model = quantize(model, 8, others)
    return quantize(model, bits, [])


def _save(model: Any, path: Path) -> None:
    """model.onnx, with the weights in model.onnx_data when they are large."""
    import onnx

    if sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_NAME, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


# ------------------------------------------------------------------------------------ tokenizer, metadata
def _write_tokenizer_gguf(path: Path, model: ModelConverter, src: Path, quant: str, vocab: list[KV]) -> None:
    """A GGUF without tensors holding what our GGUF converter writes before the tensors (general.*, the
    hyperparameters, tokenizer.*): the native core loads it with vocab_only=True."""
    writer = GGUFWriter(str(path))
    try:
        for kv in _general(model, src, quant) + model.metadata() + vocab:
            _add_kv(writer, kv)
        writer.write_header()
        writer.finish()
    except BaseException:
        writer.abort()
        raise


def _graph_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of the graph: name, element type, shape (sizes, or names of dynamic axes)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values: Any) -> list[dict[str, Any]]:
        return [{"name": v.name,
                 "type": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param
                           for d in v.type.tensor_type.shape.dim]}
                for v in values]

    return describe(graph.input), describe(graph.output)


def _metadata(folder: Path, out: Path, src: Path, model: ModelConverter, hf_arch: str, vocab: list[KV],
              options: OnnxOptions, loras: LoraSet) -> dict[str, Any]:
    """edgellm.json: what the runtime needs, checked against the graph (names, KV cache shapes)."""
    inputs, outputs = _graph_io(folder / MODEL_NAME)
    names = {v["name"]: v for v in inputs + outputs}
    for required in ("input_ids", "attention_mask", "logits"):
        if required not in names:
            raise ConversionError(f"{out / MODEL_NAME}: the exported graph has no '{required}'")
    kv = [names.get(f"past_key_values.{i}.{kind}") for i in range(model.n_layer) for kind in ("key", "value")]
    if any(v is None for v in kv):
        raise ConversionError(f"{out / MODEL_NAME}: the exported graph lacks past_key_values inputs for "
                              f"{model.n_layer} layers")
    if (kv[0]["shape"][1], kv[0]["shape"][3]) != (model.n_head_kv, model.head_dim):
        raise ConversionError(f"{out / MODEL_NAME}: KV cache inputs of shape {kv[0]['shape']}; config.json "
                              f"gives {model.n_head_kv} KV heads of {model.head_dim}")
    bos, eos = _find(vocab, "tokenizer.ggml.bos_token_id"), _find(vocab, "tokenizer.ggml.eos_token_id")
    n_logits = names["logits"]["shape"][-1]
    n_ctx_train = _find(model.metadata(), f"{model.gguf_arch}.context_length")
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "quant": options.quant,
        "architecture": hf_arch,
        "model_type": model.cfg.get("model_type"),
        "arch": model.gguf_arch,
        "n_layer": model.n_layer,
        "n_head": model.n_head,
        "n_head_kv": model.n_head_kv,
        "head_dim": model.head_dim,
        "n_embd": model.n_embd,
        "n_vocab": len(_find(vocab, "tokenizer.ggml.tokens") or []),  # tokens of tokenizer.gguf
        "n_logits": n_logits if isinstance(n_logits, int) else model.vocab_size,  # >= n_vocab (padding)
        "n_ctx_train": int(n_ctx_train or 0),
        "bos": -1 if bos is None else int(bos),
        "eos": -1 if eos is None else int(eos),
        "kv_dtype": kv[0]["type"],
        "files": [name for name in (MODEL_NAME, DATA_NAME) if (folder / name).is_file()],
        "inputs": inputs,
        "outputs": outputs,
        "source": src.resolve().name,
        "lora": loras.describe(),
    }


def _smoke_test(folder: Path, out: Path, meta: dict[str, Any]) -> None:
    """Loads the model with ONNX Runtime and evaluates two tokens: an export that cannot run never ships."""
    from edgellm.ort import OrtContext

    try:
        with _quiet():
            ctx = OrtContext(folder, meta, n_ctx=8, n_batch=8, n_threads=0, n_vocab=meta["n_vocab"])
            try:
                ctx.eval([min(1, meta["n_vocab"] - 1)] * 2, True)
                logits = ctx.logits()
            finally:
                ctx.close()
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001  ONNX Runtime's errors have many types
        raise ConversionError(f"{out / MODEL_NAME}: ONNX Runtime cannot run the exported model: "
                              f"{_first_line(e)}") from None
    if logits.shape != (2, meta["n_vocab"]) or not np.isfinite(logits).all():
        raise ConversionError(f"{out / MODEL_NAME}: ONNX Runtime gives logits of shape {logits.shape}, or "
                              f"non-finite ones (expected (2, {meta['n_vocab']}), finite)")


__all__ = ["QUANTS", "SUPPORTED", "OnnxOptions", "OnnxSummary", "check_output", "export_onnx"]
