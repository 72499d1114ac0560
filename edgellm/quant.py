"""GGUF block formats: quantize float arrays to GGUF tensor bytes and back (native code)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

import numpy as np

from edgellm import _core


class GGMLType(IntEnum):
    """Tensor type ids as stored in GGUF files."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    BF16 = 30


def type_name(qtype: int) -> str:
    """Name as GGUF tools print it, e.g. "q4_K"."""
    return _core.type_traits(int(qtype))[0]


def block_size(qtype: int) -> int:
    """Elements per block (1 for plain types)."""
    return _core.type_traits(int(qtype))[1]


def type_size(qtype: int) -> int:
    """Bytes per block."""
    return _core.type_traits(int(qtype))[2]


def row_size(qtype: int, n: int) -> int:
    """Bytes of one row of n elements; EdgeLLMError when n is not a multiple of the block size."""
    return _core.row_size(int(qtype), int(n))


def quantize(
    array: np.ndarray, qtype: int, imatrix: np.ndarray | None = None, n_threads: int = 0
) -> np.ndarray:
    """Quantize along the last axis. Returns uint8 of shape (*array.shape[:-1], row bytes).

    imatrix: optional importance weight per column (length array.shape[-1], non-negative).
    n_threads: 0 uses every core; the bytes do not depend on it.
    """
    a = np.asarray(array)
    if a.ndim == 0:
        raise ValueError("quantize needs at least one dimension")
    rows = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, a.shape[-1])
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
    out = _core.quantize(rows, int(qtype), im, int(n_threads))
    return out.reshape(*a.shape[:-1], out.shape[-1])


def dequantize(data: np.ndarray, qtype: int, shape: Sequence[int], n_threads: int = 0) -> np.ndarray:
    """Decode GGUF tensor bytes to float32 of the given shape (numpy order, last axis = row)."""
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("dequantize needs a shape with at least one dimension")
    raw = np.ascontiguousarray(data).view(np.uint8)
    out = _core.dequantize(raw, int(qtype), shape[-1], int(n_threads))
    if out.size != int(np.prod(shape)):
        raise ValueError(f"data decodes to {out.size} elements, shape {shape} needs {int(np.prod(shape))}")
    return out.reshape(shape)


__all__ = ["GGMLType", "block_size", "dequantize", "quantize", "row_size", "type_name", "type_size"]
