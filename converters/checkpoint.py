"""Reading a Hugging Face checkpoint folder: config.json, generation_config.json and the weights.

Safetensors files are parsed and validated here (header JSON, dtypes, shapes, byte ranges, the shard
index) before any conversion work starts, then read one tensor at a time with positioned reads into a
fresh buffer. Reads go through `os.pread` rather than a memory map so that the pages of tensors already
converted do not stay resident: the peak RSS of a conversion is one tensor, not the checkpoint.

Pickle checkpoints (`pytorch_model.bin`, `*.pt`, `*.pth`, `*.ckpt`) can run code when loaded; they are
refused unless the caller allows them, and then loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgellm._jsonfile import read_json_object
from edgellm.errors import ConversionError

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
PICKLE_INDEX_NAME = "pytorch_model.bin.index.json"
# Adapter and optimizer files that may sit next to a model but are not part of it.
_NOT_WEIGHTS = {
    "adapter_model.safetensors",
    "adapter_model.bin",
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
}

# safetensors dtype -> (numpy dtype of the stored bytes, bytes per element). BF16 is read as uint16.
_ST_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U8": ("u1", 1),
    "BOOL": ("?", 1),
}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the header JSON


class Config:
    """config.json with typed, validated access: every error names the file and the field."""

    def __init__(self, data: dict[str, Any], path: Path, prefix: str = ""):
        self.data = data
        self.path = path
        self.prefix = prefix  # "text_config." when reading a nested text config

    def _fail(self, key: str, what: str) -> ConversionError:
        return ConversionError(f"{self.path}: field '{self.prefix}{key}': {what}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def int(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise self._fail(key, "missing")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"expected an integer, got {json.dumps(value)}")
        if value < minimum:
            raise self._fail(key, f"must be >= {minimum}, got {value}")
        return value

    def float(self, key: str, default: float | None = None) -> float:
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise self._fail(key, "missing")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(key, f"expected a number, got {json.dumps(value)}")
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._fail(key, f"expected true or false, got {json.dumps(value)}")
        return value

    def str(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise self._fail(key, "missing")
            return default
        if not isinstance(value, str):
            raise self._fail(key, f"expected a string, got {json.dumps(value)}")
        return value

    def dict(self, key: str) -> dict[str, Any]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._fail(key, f"expected an object, got {json.dumps(value)[:60]}")
        return value

    def fail(self, key: str, what: str) -> ConversionError:
        return self._fail(key, what)

    def sub(self, key: str) -> Config:
        return Config(self.dict(key), self.path, f"{self.prefix}{key}.")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file; ConversionError naming the file when it is missing or malformed."""
    return read_json_object(path, ConversionError)


@dataclass
class TensorRef:
    """Where one tensor lives: its file, numpy-order shape, stored dtype and absolute byte range."""

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name ("F32", "BF16", ...) or "torch" for pickle checkpoints
    begin: int = 0
    end: int = 0

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _parse_safetensors_header(path: Path) -> list[TensorRef]:
    """All tensors of one safetensors file, every byte range checked against the file size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(
                    f"{path}: header: file is {size} bytes, too short for a safetensors file"
                )
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise ConversionError(f"{path}: header: length {n} exceeds the file size {size} (truncated?)")
            raw = f.read(n)
    except OSError as e:
        raise ConversionError(f"{path}: cannot read: {e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConversionError(f"{path}: header: not valid JSON") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: header: expected a JSON object")
    data_start = 8 + n
    data_size = size - data_start
    refs: list[TensorRef] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor '{name}'"
        if not isinstance(info, dict):
            raise ConversionError(f"{where}: header entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _ST_DTYPES:
            raise ConversionError(f"{where}: dtype {dtype!r} is not supported")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ConversionError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise ConversionError(f"{where}: data_offsets {offsets!r} are not a valid [begin, end] pair")
        ref = TensorRef(name, path, tuple(shape), dtype, data_start + offsets[0], data_start + offsets[1])
        expected = ref.n_elements * _ST_DTYPES[dtype][1]
        if offsets[1] - offsets[0] != expected:
            raise ConversionError(
                f"{where}: data_offsets span {offsets[1] - offsets[0]} bytes but shape "
                f"{tuple(shape)} of {dtype} needs {expected}"
            )
        if offsets[1] > data_size:
            raise ConversionError(
                f"{where}: data ends at byte {data_start + offsets[1]} but the file has "
                f"{size} bytes (truncated?)"
            )
        refs.append(ref)
    refs.sort(key=lambda r: r.begin)
    for a, b in itertools.pairwise(refs):
        if b.begin < a.end:
            raise ConversionError(f"{path}: tensor '{b.name}': data overlaps tensor '{a.name}'")
    return refs


@dataclass
class Checkpoint:
    """A checkpoint folder: validated config, optional generation config, and an index of tensors."""

    path: Path
    config: Config
    generation_config: dict[str, Any] | None
    tensors: dict[str, TensorRef] = field(default_factory=dict)  # HF name -> where it is
    format: str = "safetensors"  # or "pickle"
    _pickled: dict[Path, dict[str, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: Path, allow_pickle: bool = False) -> Checkpoint:
        path = Path(path)
        if not path.exists():
            raise ConversionError(f"{path}: checkpoint folder does not exist")
        if not path.is_dir():
            raise ConversionError(f"{path}: not a folder (expected a Hugging Face checkpoint folder)")
        config_path = path / CONFIG_NAME
        if not config_path.is_file():
            raise ConversionError(f"{config_path}: missing (every checkpoint folder needs its config.json)")
        config = Config(read_json(config_path), config_path)
        gen_path = path / GENERATION_CONFIG_NAME
        generation = read_json(gen_path) if gen_path.is_file() else None
        ckpt = cls(path, config, generation)
        if not ckpt._index_safetensors():
            ckpt._index_pickle(allow_pickle)
        return ckpt

    # ---- safetensors ----

    def _index_safetensors(self) -> bool:
        index_path = self.path / SAFETENSORS_INDEX_NAME
        if index_path.is_file():
            self._index_sharded(index_path)
            return True
        files = sorted(p for p in self.path.glob("*.safetensors") if p.name not in _NOT_WEIGHTS)
        model_files = [p for p in files if p.name.startswith("model")]
        files = model_files or files
        if not files:
            return False
        for f in files:
            for ref in _parse_safetensors_header(f):
                if ref.name in self.tensors:
                    raise ConversionError(
                        f"{f}: tensor '{ref.name}': also in {self.tensors[ref.name].file.name}"
                    )
                self.tensors[ref.name] = ref
        return True

    def _index_sharded(self, index_path: Path) -> None:
        index = read_json(index_path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{index_path}: field 'weight_map': missing or empty")
        shards: dict[str, dict[str, TensorRef]] = {}
        for name, shard in weight_map.items():
            if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard.startswith("."):
                raise ConversionError(
                    f"{index_path}: field 'weight_map.{name}': {shard!r} is not a file name"
                )
            if shard not in shards:
                shard_path = self.path / shard
                if not shard_path.is_file():
                    raise ConversionError(
                        f"{index_path}: field 'weight_map.{name}': shard '{shard}' is missing"
                    )
                shards[shard] = {r.name: r for r in _parse_safetensors_header(shard_path)}
            ref = shards[shard].get(name)
            if ref is None:
                raise ConversionError(
                    f"{self.path / shard}: tensor '{name}': listed in {index_path.name} but not in this shard"
                )
            self.tensors[name] = ref
        for shard, refs in shards.items():
            for name in refs:
                if weight_map.get(name) != shard:
                    raise ConversionError(
                        f"{self.path / shard}: tensor '{name}': not listed for this shard "
                        f"in {index_path.name}"
                    )
        # file order: shard by shard, each in data order
        order = {s: i for i, s in enumerate(sorted(shards))}
        self.tensors = dict(
            sorted(self.tensors.items(), key=lambda kv: (order[kv[1].file.name], kv[1].begin))
        )

    # ---- pickle ----

    def _pickle_files(self) -> list[Path]:
        index_path = self.path / PICKLE_INDEX_NAME
        if index_path.is_file():
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{index_path}: field 'weight_map': missing or empty")
            return [self.path / s for s in sorted(set(map(str, weight_map.values())))]
        return sorted(
            p
            for p in self.path.iterdir()
            if p.suffix in PICKLE_SUFFIXES and p.name not in _NOT_WEIGHTS and p.is_file()
        )

    def _index_pickle(self, allow_pickle: bool) -> None:
        files = self._pickle_files()
        if not files:
            raise ConversionError(
                f"{self.path}: no weights found (expected model.safetensors, sharded "
                f"*.safetensors with {SAFETENSORS_INDEX_NAME}, or pytorch_model.bin)"
            )
        if not allow_pickle:
            raise ConversionError(
                f"{files[0]}: pickle checkpoint refused: loading pickle can run code; "
                f"convert it to safetensors, or pass --allow-pickle to load it with "
                f"torch.load(weights_only=True)"
            )
        import torch

        self.format = "pickle"
        for f in files:
            if not f.is_file():
                raise ConversionError(f"{f}: missing (listed in {PICKLE_INDEX_NAME})")
            try:
                try:
                    state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
                    if "mmap" not in str(e):
                        raise
                    state = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001  torch raises many types for corrupt or unsafe files
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConversionError(f"{f}: cannot load with torch.load(weights_only=True): {msg}") from None
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            if not isinstance(state, dict):
                raise ConversionError(f"{f}: expected a dict of tensors, found {type(state).__name__}")
            for name, t in state.items():
                if not isinstance(t, torch.Tensor):
                    raise ConversionError(f"{f}: entry '{name}': not a tensor ({type(t).__name__})")
                if name in self.tensors:
                    raise ConversionError(f"{f}: tensor '{name}': also in {self.tensors[name].file.name}")
                self.tensors[name] = TensorRef(name, f, tuple(t.shape), "torch")
            self._pickled[f] = state

    # ---- reading ----

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: ref.shape for name, ref in self.tensors.items()}

    def read(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """One tensor as a new float32 array of its numpy-order shape; with rows=(r0, r1), only those rows
        (first dimension) of it, read without touching the rest."""
        ref = self.tensors[name]
        r0, r1 = rows if rows is not None else (0, ref.shape[0] if ref.shape else 1)
        shape = (r1 - r0, *ref.shape[1:]) if rows is not None else ref.shape
        if ref.dtype == "torch":
            import torch

            t = self._pickled[ref.file][name]
            t = t[r0:r1] if rows is not None else t
            return t.detach().to(torch.float32).numpy().copy()
        np_dtype = _ST_DTYPES[ref.dtype][0]
        row_bytes = (ref.end - ref.begin) // max(ref.shape[0], 1) if ref.shape else 0
        begin = ref.begin + r0 * row_bytes if rows is not None else ref.begin
        nbytes = (r1 - r0) * row_bytes if rows is not None else ref.end - ref.begin
        buf = np.empty(nbytes, dtype=np.uint8)
        try:
            fd = os.open(ref.file, os.O_RDONLY)
            try:
                view, done = memoryview(buf), 0
                while done < nbytes:
                    got = os.preadv(fd, [view[done:]], begin + done)
                    if got <= 0:
                        raise ConversionError(
                            f"{ref.file}: tensor '{name}': file ended early (truncated while converting?)"
                        )
                    done += got
            finally:
                os.close(fd)
        except OSError as e:
            raise ConversionError(f"{ref.file}: tensor '{name}': cannot read: {e}") from None
        raw = buf.view(np_dtype).reshape(shape)
        if ref.dtype == "F32":
            return raw
        if ref.dtype == "BF16":  # bf16 is the top half of an f32
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32)

    def close(self) -> None:
        self._pickled.clear()
