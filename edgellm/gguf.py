"""GGUF files from Python: a thin layer over the native reader and writer (`edgellm._core`).

The native side validates every count, size and offset of a file on open and raises `GGUFError`
("<path>: <field>: <what>") on bad input. Tensor bytes are zero-copy views into the memory map.

Shapes: GGUF stores `ne` innermost first (`ne[0]` is the contiguous row length); numpy order is the
reverse. `TensorInfo` carries both; `GGUFWriter.add_tensor_info` takes the numpy-order shape.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from edgellm import _core
from edgellm.errors import GGUFError
from edgellm.quant import GGMLType

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DEFAULT_ALIGNMENT", "GGMLType", "GGUFError", "GGUFReader", "GGUFValueType", "GGUFWriter", "TensorInfo"]

DEFAULT_ALIGNMENT = 32


class GGUFValueType(IntEnum):
    """Metadata value types as stored in GGUF files."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file."""

    name: str
    type: GGMLType
    ne: tuple[int, ...]  # GGUF order: ne[0] is the innermost (contiguous) dimension
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order (outermost first), in elements."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n


class GGUFReader:
    """A GGUF file mapped read-only. Raises GGUFError when the file is malformed."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._r = _core.GGUFReader(os.fspath(path))
        self.path: str = self._r.path
        self.version: int = self._r.version
        self.alignment: int = self._r.alignment
        self.data_offset: int = self._r.data_offset
        self.file_size: int = self._r.file_size
        self.tensors: list[TensorInfo] = [
            TensorInfo(name, GGMLType(type_id), tuple(ne), offset, nbytes)
            for name, type_id, ne, offset, nbytes in self._r.tensors()
        ]
        self._by_name = {t.name: t for t in self.tensors}

    def keys(self) -> list[str]:
        """Metadata keys in file order."""
        return self._r.keys()

    def __contains__(self, key: str) -> bool:
        return key in self._r

    def get(self, key: str, default: Any = None) -> Any:
        """Value of `key` (str, int, float, bool, list[str], or a numpy array), or `default`."""
        if key not in self._r:
            return default
        return self._r.get(key)

    def __getitem__(self, key: str) -> Any:
        return self._r.get(key)  # KeyError when absent

    def value_type(self, key: str) -> tuple[GGUFValueType, GGUFValueType | None]:
        """(type, element type for arrays else None)."""
        t, elem = self._r.value_type(key)
        return GGUFValueType(t), None if elem is None else GGUFValueType(elem)

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """Every key -> value, in file order (decoded once, on first use)."""
        keys: list[str] = self._r.keys()
        return {key: self._r.get(key) for key in keys}

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The tensor's bytes: a read-only 1-D uint8 view into the map (keeps the file mapped)."""
        self.tensor(name)
        return self._r.tensor_data(name)

    @property
    def n_parameters(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


class GGUFWriter:
    """Streams a GGUF v3 file: add metadata and tensor infos, `write_header()`, then
    `write_tensor_data()` for every tensor in the order declared, then `finish()`.

    Output goes to a hidden temporary file next to `path`, renamed onto it by `finish()`; `abort()`
    (or leaving a `with` block without having called `finish()`, with or without an exception)
    removes it, so no partial file is ever left. Tensor data is never all held in memory.
    """

    def __init__(self, path: str | os.PathLike[str], alignment: int = DEFAULT_ALIGNMENT) -> None:
        self._w = _core.GGUFWriter(os.fspath(path), alignment)

    @property
    def path(self) -> str:
        return self._w.path

    @property
    def temp_path(self) -> str:
        return self._w.temp_path

    @property
    def alignment(self) -> int:
        return self._w.alignment

    @property
    def finished(self) -> bool:
        return self._w.finished

    # Metadata: integers are range-checked, floats checked against float32 overflow.
    def add_value(self, key: str, value: Any, value_type: GGUFValueType | int,
                  elem_type: GGUFValueType | int | None = None) -> None:
        self._w.add_kv(key, int(value_type), value, -1 if elem_type is None else int(elem_type))

    def add_uint8(self, key: str, value: int) -> None:
        self._w.add_kv(key, GGUFValueType.UINT8, value)

    def add_int8(self, key: str, value: int) -> None:
        self._w.add_kv(key, GGUFValueType.INT8, value)

    def add_uint16(self, key: str, value: int) -> None:
        self._w.add_kv(key, GGUFValueType.UINT16, value)

    def add_int16(self, key: str, value: int) -> None:
        self._w.add_kv(key, GGUFValueType.INT16, value)

    def add_uint32(self, key: str, value: int) -> None:
        self._w.add_kv(key, GGUFValueType.UINT32, value)

    def add_int32(self, key: str, value: int) -> None:
        self._w.add_kv(key, GGUFValueType.INT32, value)

    def add_uint64(self, key: str, value: int) -> None:
        self._w.add_kv(key, GGUFValueType.UINT64, value)

    def add_int64(self, key: str, value: int) -> None:
        self._w.add_kv(key, GGUFValueType.INT64, value)

    def add_float32(self, key: str, value: float) -> None:
        self._w.add_kv(key, GGUFValueType.FLOAT32, value)

    def add_float64(self, key: str, value: float) -> None:
        self._w.add_kv(key, GGUFValueType.FLOAT64, value)

    def add_bool(self, key: str, value: bool) -> None:
        self._w.add_kv(key, GGUFValueType.BOOL, value)

    def add_string(self, key: str, value: str) -> None:
        self._w.add_kv(key, GGUFValueType.STRING, value)

    def add_array(self, key: str, values: Iterable[Any] | np.ndarray, elem_type: GGUFValueType | int) -> None:
        """An array of one element type: a sequence of str for STRING, else a sequence or 1-D numpy array."""
        self._w.add_kv(key, GGUFValueType.ARRAY, values, int(elem_type))

    def add_tensor_info(self, name: str, shape: Sequence[int], qtype: GGMLType | int) -> None:
        """Declare a tensor; `shape` in numpy order, in elements (the last dimension is the row,
        a multiple of the type's block size)."""
        self._w.add_tensor_info(name, [int(d) for d in reversed(shape)], int(qtype))

    def tensor_nbytes(self, name: str) -> int:
        """Bytes `write_tensor_data(name, ...)` expects."""
        return self._w.tensor_nbytes(name)

    def write_header(self) -> None:
        self._w.write_header()

    def write_tensor_data(self, name: str, data: Any) -> None:
        """Bytes of the next declared tensor: any C-contiguous buffer (bytes, numpy array, ...)."""
        self._w.write_tensor_data(name, data)

    def finish(self) -> None:
        self._w.finish()

    def abort(self) -> None:
        self._w.abort()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._w.finished:
            self._w.abort()
