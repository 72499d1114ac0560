"""Quantization quality: SmolLM2 converted by edgellm versus quantized by llama.cpp, per --quant type.

Not a test. Both sides start from the same f16 source: the SmolLM2 checkpoint with its weights stored as
float16 (as a released checkpoint is f16 or bf16; the test fixture's fp32 weights, dequantized from a Q4_1
file, are not, and --source f32 keeps them). For each type: our converter makes the GGUF straight from that
checkpoint, plain and (with --methods) calibrated: `imatrix` (importance-weighted quantization) and `awq`
(AWQ scales folded, then importance-weighted), calibrated on other license texts (CALIB_TEXTS, never the
eval text); llama.cpp quantizes our f16 GGUF of the same checkpoint with `llama_model_quantize` (plain).
Every file is scored with llama.cpp's runtime (llama-cpp-python) on the same text, windows and threads:

    windows of n_ctx tokens, BOS first, the second half of each window scored, PPL = exp(mean NLL).

Next to it, the mean KL divergence of each file's next-token distributions from the f16 file's on the same
scored tokens: how far quantization moved the model, which perplexity on one text measures only noisily
(a quantized model can score a text better than the model it came from). The ratio's 95% interval comes
from the paired per-token differences of the two files' NLL on the same tokens (see ratio_interval): an
interval that holds 1 means the text cannot tell the two files apart.

With --jitter N, the plain files are made again from N copies of the fp32 checkpoint whose every weight is
multiplied by 1 + u 2^-11 (u uniform in [-1, 1], seeds 1..N: below f16's resolution, as a checkpoint saved
in another precision or by another tool may differ), then stored as the source is, both sides alike
(llama.cpp from an f16 GGUF of each copy). Which file a single text prefers can turn on such differences;
the mean ratio over the copies, and on how many ours is better, say which quantizer is better in
expectation.

Run: python bench/quant_quality.py [--types q4_0,q4_k_m] [--methods plain,imatrix,awq] [--n-ctx 512] [--jitter 5]
                                   [--source f16|f32]
The goal's text is GPL-3; --text scores another (for plain files, a check that a gap on GPL-3 is not
that one text's: a calibration text is refused for calibrated methods).
Installs llama-cpp-python from its sdist when missing, as bench/run.py does (pip caches the built wheel).
Writes bench/results/quant_quality-<date>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the SmolLM2 fp32 checkpoint builder lives with the test fixtures

EVAL_TEXT = Path("/usr/share/common-licenses/GPL-3")
# Calibration: license texts that are not the GPL family (GPL-1/2 share much of GPL-3's wording).
CALIB_TEXTS = ["Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.3", "MPL-1.1", "MPL-2.0"]
METHODS = ["plain", "imatrix", "awq"]
ALL_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
             "q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k"]
# our --quant name -> llama.cpp's llama_ftype constant name
LLAMA_FTYPE = {
    "f32": "LLAMA_FTYPE_ALL_F32", "f16": "LLAMA_FTYPE_MOSTLY_F16", "bf16": "LLAMA_FTYPE_MOSTLY_BF16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1", "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}


def load_llama_cpp():
    """llama-cpp-python, installed when missing; a build that would crash here is refused (run.py)."""
    from run import ensure_llama_cpp

    ensure_llama_cpp()
    import llama_cpp

    return llama_cpp


def llama_quantize(llama_cpp, src: Path, dst: Path, quant: str, threads: int) -> float:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_FTYPE[quant])
    params.nthread = threads
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed for {quant} (rc={rc})")
    return time.perf_counter() - t0


def perplexity(llama_cpp, path: Path, text: str, n_ctx: int, threads: int,
               reference: list[np.ndarray] | None = None, source: Path = EVAL_TEXT
               ) -> tuple[float, int, list[np.ndarray] | float | None, np.ndarray]:
    """PPL as defined above, computed with llama.cpp's runtime. Returns (ppl, scored tokens, kl, nll): with
    `reference` (the log-probabilities another file gives the same scored tokens), kl is the mean
    KL(reference || this file) over them; without, this file's log-probabilities (float16, for use as a
    reference). nll: (windows, scored tokens per window), each scored token's negative log-likelihood."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
    bos = llm.token_bos()
    n_windows = len(tokens) // n_ctx
    if n_windows == 0:
        raise ValueError(f"{source}: {len(tokens)} tokens, fewer than one window of {n_ctx}")
    kl = 0.0
    first = n_ctx // 2
    logprobs, nll = [], []
    for w in range(n_windows):
        window = list(tokens[w * n_ctx:(w + 1) * n_ctx])
        window[0] = bos
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[first:n_ctx - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll.append(-lp[np.arange(len(lp)), window[first + 1:n_ctx]])
        if reference is None:
            logprobs.append(lp.astype(np.float16))
        else:
            ref = reference[w].astype(np.float64)
            kl += (np.exp(ref) * (ref - lp)).sum()
    llm.close()
    token_nll = np.stack(nll)
    count = token_nll.size
    return math.exp(token_nll.mean()), count, (logprobs if reference is None else kl / count), token_nll


JITTER = 2.0 ** -11  # relative size of the weight perturbation of --jitter


def checkpoint_copy(src: Path, dst: Path, dtype: str, seed: int = 0) -> Path:
    """A copy of the checkpoint folder src in dst whose floating-point weights are stored as dtype ("f16",
    or "f32": as they are), after (with a seed other than 0) multiplying each by 1 + JITTER * u, u uniform in
    [-1, 1] from a numpy generator seeded with seed. Other files are linked."""
    from safetensors.numpy import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for f in sorted(src.iterdir()):
        target = dst / f.name
        if target.exists() or target.is_symlink():
            target.unlink()
        if f.suffix != ".safetensors":
            target.symlink_to(f.resolve())
            continue
        tensors = load_file(str(f))
        for name, t in tensors.items():
            if np.issubdtype(t.dtype, np.floating):
                if seed:
                    t = t * (1.0 + JITTER * rng.uniform(-1.0, 1.0, t.shape))
                tensors[name] = t.astype(np.float16 if dtype == "f16" else tensors[name].dtype)
        save_file(tensors, str(target), metadata={"format": "pt"})
    return dst


def add_source_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--source", choices=["f16", "f32"], default="f16",
                    help="the weights both sides start from: the checkpoint as f16 (default) or its fp32 weights")


def source_checkpoint(work: Path, source: str) -> Path:
    """The SmolLM2 checkpoint both sides start from: the test fixture's fp32 folder, or its f16 copy in work."""
    from helpers.smollm2 import smollm2_checkpoint

    ckpt = smollm2_checkpoint()
    return checkpoint_copy(ckpt, work / "smollm2-135m-instruct-f16", "f16") if source == "f16" else ckpt


def write_calib_text(path: Path) -> Path:
    """The calibration texts (CALIB_TEXTS) joined into one file."""
    path.write_text("\n\n".join((EVAL_TEXT.parent / name).read_text() for name in CALIB_TEXTS))
    return path


def ratio_interval(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """95% interval of PPL(ours) / PPL(theirs) from the paired per-token NLL differences on the same
    tokens. Tokens of one window are not independent, so the standard error is the larger of the
    per-token one and the one over window means (few windows, but it carries their correlation)."""
    d = ours - theirs
    se_tokens = d.std(ddof=1) / math.sqrt(d.size)
    means = d.mean(axis=1)
    se_windows = means.std(ddof=1) / math.sqrt(len(means)) if len(means) > 1 else se_tokens
    se = max(se_tokens, se_windows)
    return math.exp(d.mean() - 1.96 * se), math.exp(d.mean() + 1.96 * se)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default=",".join(ALL_TYPES))
    ap.add_argument("--methods", default="plain", help=f"comma-separated, of {','.join(METHODS)}")
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", type=Path, default=EVAL_TEXT, help=f"text to score (default {EVAL_TEXT})")
    ap.add_argument("--work", type=Path, default=None, help="folder for the GGUF files (default: test cache)")
    add_source_option(ap)
    ap.add_argument("--jitter", type=int, default=0, metavar="N",
                    help="also score plain files made from N jittered copies of the checkpoint (see above)")
    args = ap.parse_args()

    from edgellm.converters.convert import ConvertOptions, convert
    from helpers.cache import cache_dir
    from helpers.smollm2 import smollm2_checkpoint

    llama_cpp = load_llama_cpp()
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not set(methods) <= set(METHODS):
        ap.error(f"--methods: choose from {', '.join(METHODS)}")
    if args.jitter < 0 or (args.jitter and "plain" not in methods):
        ap.error("--jitter: a count >= 0 of copies, for the plain method (keep plain in --methods)")
    work = args.work or (cache_dir() / "bench-quant-quality")
    work.mkdir(parents=True, exist_ok=True)
    ckpt = source_checkpoint(work, args.source)
    calib = work / "calib-licenses.txt"
    calib_files = {(EVAL_TEXT.parent / name).resolve() for name in CALIB_TEXTS} | {calib.resolve()}
    if methods != ["plain"] and args.text.resolve() in calib_files:
        ap.error(f"--text {args.text}: a calibration text; score calibrated methods on another")
    text = args.text.read_text()
    write_calib_text(calib)

    f16_src = work / "smollm2-edgellm-f16.gguf"
    convert(ckpt, f16_src, ConvertOptions(quant="f16", n_threads=args.threads, progress=False))
    # KL divergence from the f16 file both sides quantize from, on the same scored tokens
    _, _, reference, _ = perplexity(llama_cpp, f16_src, text, args.n_ctx, args.threads, source=args.text)

    rows = []
    for quant in types:
        theirs = work / f"smollm2-llamacpp-{quant}.gguf"
        t_theirs = llama_quantize(llama_cpp, f16_src, theirs, quant, args.threads)
        ppl_theirs, n, kl_theirs, nll_theirs = perplexity(llama_cpp, theirs, text, args.n_ctx, args.threads,
                                                          reference)
        for method in methods:
            ours = work / f"smollm2-edgellm-{quant}-{method}.gguf"
            opts = {} if method == "plain" else {"calib": calib, "calib_tokens": args.calib_tokens,
                                                 "awq": method == "awq"}
            t0 = time.perf_counter()
            summary = convert(ckpt, ours, ConvertOptions(quant=quant, n_threads=args.threads, progress=False,
                                                         **opts))
            t_ours = time.perf_counter() - t0
            ppl_ours, n, kl_ours, nll_ours = perplexity(llama_cpp, ours, text, args.n_ctx, args.threads,
                                                        reference)
            low, high = ratio_interval(nll_ours, nll_theirs)
            row = {
                "quant": quant, "method": method, "ppl_edgellm": ppl_ours, "ppl_llamacpp": ppl_theirs,
                "ratio": ppl_ours / ppl_theirs, "ratio_95": [low, high], "kl_edgellm": kl_ours,
                "kl_llamacpp": kl_theirs, "size_edgellm": ours.stat().st_size,
                "size_llamacpp": theirs.stat().st_size, "time_edgellm_s": t_ours, "time_llamacpp_s": t_theirs,
                "scored_tokens": n, "calibration": summary.calibration,
            }
            rows.append(row)
            print(f"{quant} {method}: edgellm {ppl_ours:.4f}  llama.cpp {ppl_theirs:.4f}  KL from f16 edgellm "
                  f"{kl_ours:.5f}  llama.cpp {kl_theirs:.5f}  ({t_ours:.0f} s)",
                  file=sys.stderr, flush=True)

    plain = [r for r in rows if r["method"] == "plain"] if args.jitter else []
    for r in plain:
        r["jitter"] = {"seeds": [0], "ppl_edgellm": [r["ppl_edgellm"]], "ppl_llamacpp": [r["ppl_llamacpp"]],
                       "kl_edgellm": [r["kl_edgellm"]], "kl_llamacpp": [r["kl_llamacpp"]]}
    for seed in range(1, args.jitter + 1):
        copy = checkpoint_copy(smollm2_checkpoint(), work / "jittered-checkpoint", args.source, seed)
        f16_copy = work / "smollm2-edgellm-f16-jittered.gguf"
        convert(copy, f16_copy, ConvertOptions(quant="f16", n_threads=args.threads, progress=False))
        for r in plain:
            ours, theirs = work / "jittered-edgellm.gguf", work / "jittered-llamacpp.gguf"
            convert(copy, ours, ConvertOptions(quant=r["quant"], n_threads=args.threads, progress=False))
            llama_quantize(llama_cpp, f16_copy, theirs, r["quant"], args.threads)
            j = r["jitter"]
            j["seeds"].append(seed)
            for path, side in ((ours, "edgellm"), (theirs, "llamacpp")):
                ppl, _, kl, _ = perplexity(llama_cpp, path, text, args.n_ctx, args.threads, reference)
                j[f"ppl_{side}"].append(ppl)
                j[f"kl_{side}"].append(kl)
                path.unlink()
            print(f"{r['quant']} jittered copy {seed}: edgellm {j['ppl_edgellm'][-1]:.4f}  llama.cpp "
                  f"{j['ppl_llamacpp'][-1]:.4f}", file=sys.stderr, flush=True)
        f16_copy.unlink()
    if plain:
        shutil.rmtree(work / "jittered-checkpoint", ignore_errors=True)
    for r in plain:
        j = r["jitter"]
        ratios = np.array(j["ppl_edgellm"]) / np.array(j["ppl_llamacpp"])
        j["ratios"] = ratios.tolist()
        j["mean_ratio"] = float(ratios.mean())
        j["edgellm_better"] = int((ratios < 1).sum())

    print(f"\nSmolLM2-135M-Instruct ({args.source} source), {args.text}, n_ctx {args.n_ctx}, "
          f"{rows[0]['scored_tokens']} scored tokens, PPL by llama.cpp's runtime, {args.threads} threads\n")
    print("| quant | method | PPL edgellm | PPL llama.cpp (plain) | ratio | ratio 95% | KL edgellm | KL llama.cpp "
          "| size edgellm MB | size llama.cpp MB | convert s | quantize s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        low, high = r["ratio_95"]
        print(f"| {r['quant']} | {r['method']} | {r['ppl_edgellm']:.4f} | {r['ppl_llamacpp']:.4f} | {r['ratio']:.4f} | "
              f"{low:.4f}-{high:.4f} | "
              f"{r['kl_edgellm']:.5f} | {r['kl_llamacpp']:.5f} | "
              f"{r['size_edgellm'] / 1e6:.1f} | {r['size_llamacpp'] / 1e6:.1f} | {r['time_edgellm_s']:.1f} | "
              f"{r['time_llamacpp_s']:.1f} |")
    if plain:
        print(f"\nplain files from the checkpoint and {args.jitter} jittered copies (weights x (1 + u 2^-11)): "
              f"PPL ratio edgellm / llama.cpp\n")
        print("| quant | copies | ratio (checkpoint) | mean ratio | min - max | edgellm better on | mean KL edgellm "
              "| mean KL llama.cpp |")
        print("|---|---|---|---|---|---|---|---|")
        for r in plain:
            j = r["jitter"]
            print(f"| {r['quant']} | {len(j['ratios'])} | {j['ratios'][0]:.4f} | {j['mean_ratio']:.4f} | "
                  f"{min(j['ratios']):.4f} - {max(j['ratios']):.4f} | {j['edgellm_better']} of {len(j['ratios'])} | "
                  f"{np.mean(j['kl_edgellm']):.5f} | {np.mean(j['kl_llamacpp']):.5f} |")
    out = ROOT / "bench" / "results" / f"quant_quality-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"source": args.source, "text": str(args.text), "n_ctx": args.n_ctx,
                               "threads": args.threads,
                               "calib_texts": CALIB_TEXTS,
                               "calib_tokens": args.calib_tokens, "jitter": args.jitter, "llama_cpp_python":
                               getattr(llama_cpp, "__version__", "?"), "rows": rows}, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from run import guarded_main

    sys.exit(guarded_main("quant_quality.py", main))
