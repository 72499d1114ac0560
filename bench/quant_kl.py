"""Model-level quality of our quantizers vs llama.cpp's: KL divergence of the logits (not a test).

Every 2-D weight of an f32 Hugging Face checkpoint (default: the rebuilt SmolLM2-135M the tests cache, made
when missing) is replaced by its quantize->dequantize round trip, by our quantizer and by ggml's
(llama-cpp-python's libggml-base through ctypes), and the mean KL(f32 || quantized) of next-token
distributions and the perplexity over a text are printed. Rows not a multiple of 256 are regrouped as rows
of 256 for k-quants.

    python bench/quant_kl.py [--types q4_0,q4_K] [--checkpoint DIR] [--text FILE] [--tokens N]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from edgellm.quant import GGMLType, dequantize, quantize, row_size

ROOT = Path(__file__).resolve().parent.parent


def ggml_roundtrip_fn():
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]

    def roundtrip(x: np.ndarray, qt: GGMLType) -> np.ndarray:
        lib.ggml_quantize_init(int(qt))
        out = np.zeros((x.shape[0], row_size(qt, x.shape[1])), np.uint8)
        lib.ggml_quantize_chunk(int(qt), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
        deq = gguf.quants.dequantize(out, gguf.GGMLQuantizationType(int(qt)))
        return np.asarray(deq, np.float32).reshape(x.shape)

    return roundtrip


def ours_roundtrip(x: np.ndarray, qt: GGMLType) -> np.ndarray:
    return dequantize(quantize(x, qt), qt, x.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q4_0,Q5_0,Q8_0,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K")
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the tests' SmolLM2 checkpoint")
    ap.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    ap.add_argument("--tokens", type=int, default=768)
    args = ap.parse_args()
    if args.checkpoint is None:
        sys.path.insert(0, str(ROOT / "tests"))  # the SmolLM2 checkpoint builder lives with the test fixtures
        from helpers.smollm2 import smollm2_checkpoint

        args.checkpoint = smollm2_checkpoint()

    tok = AutoTokenizer.from_pretrained(str(args.checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(args.checkpoint), dtype=torch.float32).eval()
    ids = tok(args.text.read_text(), return_tensors="pt").input_ids[:, : args.tokens]
    params = dict(model.named_parameters())
    orig = {n: p.detach().clone() for n, p in params.items() if p.ndim == 2}

    def logprobs() -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(model(ids).logits[0].double(), -1)

    ref = logprobs()

    def metrics(lp: torch.Tensor) -> tuple[float, float]:
        kl = float((ref.exp() * (ref - lp)).sum(-1).mean())
        nll = float(-lp[:-1].gather(1, ids[0, 1:, None]).mean())
        return kl, float(np.exp(nll))

    print(f"{ids.shape[1]} tokens; f32 perplexity {metrics(ref)[1]:.3f}")
    ggml = ggml_roundtrip_fn()
    print(f"{'type':6} {'KL ours':>9} {'KL ggml':>9} {'ppl ours':>9} {'ppl ggml':>9}")
    for name in args.types.split(","):
        qt = GGMLType[name.upper()]
        res = {}
        for who, fn in (("ours", ours_roundtrip), ("ggml", ggml)):
            for n, w in orig.items():
                x = np.ascontiguousarray(w.numpy())
                xx = x.reshape(-1, 256) if x.shape[1] % 256 and qt.name.endswith("_K") else x
                params[n].data.copy_(torch.from_numpy(fn(xx, qt).reshape(x.shape)))
            res[who] = metrics(logprobs())
        print(f"{qt.name:6} {res['ours'][0]:9.5f} {res['ggml'][0]:9.5f} {res['ours'][1]:9.3f} {res['ggml'][1]:9.3f}",
              flush=True)
    for n, w in orig.items():
        params[n].data.copy_(w)


if __name__ == "__main__":
    main()
