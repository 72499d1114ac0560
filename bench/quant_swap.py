"""Where a gap between our file and llama.cpp's comes from: swap one tensor group at a time.

Not a test. For one --quant type, SmolLM2 is converted by us (plain) and quantized by llama.cpp from our f16
GGUF, both from the same source checkpoint (f16 unless --source f32), as in bench/quant_quality.py. Both
files have the same type for every tensor, so each group of tensors (a category such as attn_v, at one
type) can be copied from llama.cpp's file into ours byte for byte. For each hybrid file, the table gives the
perplexity and the mean KL divergence from the f16 file (llama.cpp's runtime, on --text, windows as in
quant_quality.py), next to two errors of that group, ours over llama.cpp's:

  weight    sum (Q - W)^2 over the group's weights (W: the f16 file's)
  output    sum ((Q - W) x)^2 over input rows x sampled from the calibration texts (quant_quality.py's
            CALIB_TEXTS, never the scored text): the error the layer adds to its output

A group whose swap lowers KL while our error in it is lower too is not worse quantized: the model's
response to the sum of every tensor's error has cross terms, so swapping one group moves KL by an amount
that has nothing to do with that group's own error.

Run: python bench/quant_swap.py [--quant q4_k_m] [--text FILE] [--threads 2] [--source f16|f32]
Writes bench/results/quant_swap-<date>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the SmolLM2 fp32 checkpoint builder lives with the test fixtures

from quant_quality import (  # bench/ is the script's folder: on sys.path
    CALIB_TEXTS,
    EVAL_TEXT,
    LLAMA_FTYPE,
    add_source_option,
    llama_quantize,
    load_llama_cpp,
    perplexity,
    source_checkpoint,
    write_calib_text,
)


def tensor_table(path: Path) -> dict[str, tuple[int, int, str, np.ndarray]]:
    """name -> (data offset, bytes, type name, dequantized float32 array) of every tensor of a GGUF file."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(path))
    return {t.name: (int(t.data_offset), int(t.n_bytes), t.tensor_type.name,
                     dequantize(t.data, t.tensor_type).astype(np.float32)) for t in reader.tensors}


def group_of(name: str, type_name: str) -> str | None:
    """The swap group of a tensor: its category and type ("attn_v:Q5_0"); None for F32 tensors (norms)."""
    if type_name == "F32":
        return None
    category = name.removesuffix(".weight").split(".")[-1]
    return f"{category}:{type_name}"


def input_samples(ckpt: Path, calib: Path) -> dict[str, np.ndarray]:
    """Sampled input rows of every linear layer over the calibration text, by GGUF tensor name."""
    from edgellm.converters.base import converter_for
    from edgellm.converters.calib import calibrate
    from edgellm.converters.checkpoint import Checkpoint
    from edgellm.converters.lora import LoraSet

    model = converter_for(Checkpoint.open(ckpt, allow_pickle=False))
    model.plan()
    cal = calibrate(ckpt, model, LoraSet.load([]), calib, 8192)
    return {name: stats.sample().astype(np.float64) for name, stats in cal.inputs.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", default="q4_k_m", choices=sorted(set(LLAMA_FTYPE) - {"f32", "f16", "bf16"}))
    ap.add_argument("--text", type=Path, default=EVAL_TEXT, help=f"text to score (default {EVAL_TEXT})")
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="folder for the GGUF files (default: test cache)")
    add_source_option(ap)
    args = ap.parse_args()

    from edgellm.converters.convert import ConvertOptions, convert
    from helpers.cache import cache_dir

    llama_cpp = load_llama_cpp()
    calib_files = {(EVAL_TEXT.parent / name).resolve() for name in CALIB_TEXTS}
    if args.text.resolve() in calib_files:
        ap.error(f"--text {args.text}: a calibration text (the output errors are measured on those)")
    work = args.work or (cache_dir() / "bench-quant-swap")
    work.mkdir(parents=True, exist_ok=True)
    ckpt = source_checkpoint(work, args.source)
    text = args.text.read_text()
    calib = write_calib_text(work / "calib-licenses.txt")

    f16 = work / "smollm2-edgellm-f16.gguf"
    ours = work / f"smollm2-edgellm-{args.quant}.gguf"
    theirs = work / f"smollm2-llamacpp-{args.quant}.gguf"
    hybrid = work / f"smollm2-hybrid-{args.quant}.gguf"
    convert(ckpt, f16, ConvertOptions(quant="f16", n_threads=args.threads, progress=False))
    convert(ckpt, ours, ConvertOptions(quant=args.quant, n_threads=args.threads, progress=False))
    llama_quantize(llama_cpp, f16, theirs, args.quant, args.threads)

    src, ta, tb = tensor_table(f16), tensor_table(ours), tensor_table(theirs)
    for name, (_, size, type_name, _) in ta.items():
        if tb[name][1:3] != (size, type_name):
            raise SystemExit(f"{name}: {type_name} in our file, {tb[name][2]} in llama.cpp's: the files cannot "
                             f"be swapped tensor by tensor")
    groups: dict[str, list[str]] = {}
    for name, (_, _, type_name, _) in ta.items():
        if (g := group_of(name, type_name)) is not None:
            groups.setdefault(g, []).append(name)
    samples = input_samples(ckpt, calib)

    def score(path: Path) -> tuple[float, float]:
        ppl, _, kl, _ = perplexity(llama_cpp, path, text, args.n_ctx, args.threads, reference, source=args.text)
        return ppl, kl

    _, _, reference, _ = perplexity(llama_cpp, f16, text, args.n_ctx, args.threads, source=args.text)
    ppl_ours, kl_ours = score(ours)
    ppl_theirs, kl_theirs = score(theirs)
    theirs_bytes = theirs.read_bytes()
    rows = []
    for g in sorted(groups):
        shutil.copyfile(ours, hybrid)
        err = np.zeros((2, 2))  # [ours, theirs] x [weight, output]
        with open(hybrid, "r+b") as f:
            for name in groups[g]:
                offset, size, _, _ = ta[name]
                f.seek(offset)
                f.write(theirs_bytes[tb[name][0]:tb[name][0] + size])
                x = samples.get(name)
                for i, table in enumerate((ta, tb)):
                    e = table[name][3].astype(np.float64) - src[name][3]
                    err[i, 0] += float((e ** 2).sum())
                    err[i, 1] += float(((x @ e.T) ** 2).sum()) if x is not None else np.nan
        ppl, kl = score(hybrid)
        rows.append({"group": g, "tensors": len(groups[g]), "ppl": ppl, "kl": kl,
                     "weight_err_ratio": err[0, 0] / err[1, 0], "output_err_ratio": err[0, 1] / err[1, 1]})
        print(f"{g}: ppl {ppl:.4f} kl {kl:.5f}", file=sys.stderr, flush=True)
    hybrid.unlink()

    print(f"\nSmolLM2-135M-Instruct {args.quant}, {args.text}: ours PPL {ppl_ours:.4f} KL {kl_ours:.5f}, "
          f"llama.cpp's PPL {ppl_theirs:.4f} KL {kl_theirs:.5f}\n")
    print("| ours with llama.cpp's | tensors | PPL | PPL / ours | KL | KL - ours | weight error ours / theirs "
          "| output error ours / theirs |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['group']} | {r['tensors']} | {r['ppl']:.4f} | {r['ppl'] / ppl_ours:.4f} | {r['kl']:.5f} | "
              f"{r['kl'] - kl_ours:+.5f} | {r['weight_err_ratio']:.3f} | {r['output_err_ratio']:.3f} |")
    out = ROOT / "bench" / "results" / f"quant_swap-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quant": args.quant, "source": args.source, "text": str(args.text),
                               "n_ctx": args.n_ctx, "threads": args.threads, "calib_texts": CALIB_TEXTS,
                               "ours": {"ppl": ppl_ours, "kl": kl_ours},
                               "llamacpp": {"ppl": ppl_theirs, "kl": kl_theirs}, "rows": rows}, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from run import guarded_main

    sys.exit(guarded_main("quant_swap.py", main))
