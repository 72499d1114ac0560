"""ONNX Runtime exports against the native core, on SmolLM2-135M-Instruct: prefill and decode speed.

Run: python bench/onnx_speed.py [--threads 2] [--repeats 3] [--prompt-tokens 512] [--gen-tokens 128]
                                [--quick] [--no-json]

Not a test. Pairs made from the same fp32 SmolLM2 checkpoint (the test fixtures'), at comparable precision:
  ONNX fp32  (`edgellm convert --format onnx`)                  vs  native f32
  ONNX int8  (MatMulNBits 8-bit, blocks of 32, int8 compute)    vs  native q8_0 (blocks of 32)
  ONNX int4  (MatMulNBits 4-bit, blocks of 32, int8 compute)    vs  native q4_0 (blocks of 32)
Each file is measured in a fresh process by bench/_bench_worker.py with its "edgellm" engine: edgellm.LLM,
which runs an ONNX folder with ONNX Runtime and a GGUF file with the native core, through the same calls.
Procedure (see the worker): a prompt of --prompt-tokens seeded random ids in one eval call (n_batch 512), then
--gen-tokens single-token evals, each fed the argmax of the previous logits; best of --repeats trials after
one warm-up. n_ctx 1024, the same thread count for both.

Files are built once and cached with bench/run.py's files (~/.cache/edgellm-bench or $EDGELLM_BENCH_CACHE):
smollm2-onnx-{fp32,int8,int4}-v2 (folders) and smollm2-{f32,q8_0,q4_0}.gguf, in a process of their own (the
workers' peak RSS would otherwise include the exporter's: ru_maxrss is inherited over fork and exec).
Prints a markdown table; writes every number and the machine to bench/results/onnx_speed-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from run import (
    PROMPT_SEED,
    BenchError,
    cached,
    converted,
    fmt,
    int_list,
    log,
    run_worker,
    script_main,
    smollm2_checkpoint,
    write_report,
)

# (ONNX quant, native quant) pairs
PAIRS = (("fp32", "f32"), ("int8", "q8_0"), ("int4", "q4_0"))
EXPORT_VERSION = "v2"  # part of the cached exports' names: raised when the exporter's output changes


def onnx_export(quant: str) -> Path:
    """Our ONNX export of the SmolLM2 checkpoint at quant (a folder), built once."""
    from edgellm.converters.onnx_export import OnnxOptions, export_onnx

    def build(out: Path) -> None:
        log(f"  smollm2-onnx-{quant}: exporting (once; about a minute)...")
        export_onnx(smollm2_checkpoint(), out, OnnxOptions(quant=quant, progress=sys.stderr.isatty()))

    return cached(f"smollm2-onnx-{quant}-{EXPORT_VERSION}", build)


def model_bytes(path: Path) -> int:
    """Bytes of the model's weights file(s): the GGUF file, or model.onnx (+ model.onnx_data)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.glob("model.onnx*"))


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| pair | threads | engine | file MB | prefill tok/s | decode tok/s | load s | peak RSS MB |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        for side in ("onnx", "native"):
            r = row[side]
            lines.append(
                f"| {row['pair']} | {row['threads']} | {r['name']} | {r['size_bytes'] / 1e6:.0f} "
                f"| {fmt(r.get('prefill_tok_s'), '.1f')} | {fmt(r.get('decode_tok_s'), '.1f')} "
                f"| {fmt(r.get('load_s'), '.2f')} | {fmt(r.get('peak_rss_mb'), '.0f')} |")
        ratio = row["ratio"]
        lines.append(f"| {row['pair']} | {row['threads']} | ONNX / native | "
                     f"{row['onnx']['size_bytes'] / row['native']['size_bytes']:.2f} "
                     f"| {fmt(ratio['prefill_tok_s'], '.2f')} | {fmt(ratio['decode_tok_s'], '.2f')} "
                     f"| {fmt(ratio['load_s'], '.2f')} | {fmt(ratio['peak_rss_mb'], '.2f')} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="2", help="comma-separated thread counts (default 2)")
    ap.add_argument("--repeats", type=int, help="trials per measurement, best kept (default 3)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="1 repeat")
    ap.add_argument("--no-json", action="store_true",
                    help="do not write bench/results/onnx_speed-<date>.json")
    # internal: build the files and print their paths as JSON (run in a process of its own)
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    opts.threads = int_list(opts.threads, "--threads")
    opts.repeats = opts.repeats if opts.repeats is not None else (1 if opts.quick else 3)
    if opts.repeats < 1:
        raise BenchError(f"--repeats {opts.repeats}: must be >= 1")
    if not 1 <= opts.prompt_tokens <= 8192 or not 1 <= opts.gen_tokens <= 8192:
        raise BenchError("--prompt-tokens and --gen-tokens: must be in [1, 8192]")
    return opts


def prepare() -> dict[str, Path]:
    """Every file of PAIRS, built when missing: name -> path."""
    files = {}
    for onnx_quant, native_quant in PAIRS:
        files[f"onnx-{onnx_quant}"] = onnx_export(onnx_quant)
        files[f"native-{native_quant}"] = converted(f"smollm2-{native_quant}", smollm2_checkpoint,
                                                    native_quant)
    return files


def run(opts: argparse.Namespace) -> int:
    if opts.prepare:
        print(json.dumps({name: str(path) for name, path in prepare().items()}))
        return 0
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        log(f"warning: load average {load_start[0]:.2f}: other work on this machine lowers and scatters the "
            f"timings")
    p = subprocess.run([sys.executable, __file__, "--prepare"], stdout=subprocess.PIPE, text=True,
                       check=False)
    if p.returncode != 0:
        raise BenchError(f"preparing the files failed (exit status {p.returncode}; see above)")
    files = {name: Path(path) for name, path in json.loads(p.stdout.strip().splitlines()[-1]).items()}

    rows: list[dict[str, Any]] = []
    errors = 0
    for onnx_quant, native_quant in PAIRS:
        for t in opts.threads:
            row: dict[str, Any] = {"pair": f"{onnx_quant} / {native_quant}", "threads": t}
            for side, name in (("onnx", f"onnx-{onnx_quant}"), ("native", f"native-{native_quant}")):
                t0 = time.perf_counter()
                r = run_worker(["edgellm", str(files[name]), str(t), str(opts.prompt_tokens),
                                str(opts.gen_tokens), str(opts.repeats), str(PROMPT_SEED)])
                r.update(name=name, path=str(files[name]), size_bytes=model_bytes(files[name]))
                if "error" in r:
                    errors += 1
                    log(f"{name}, {t} thread(s): FAILED: {r['error']}")
                else:
                    log(f"{name}, {t} thread(s): prefill {r['prefill_tok_s']:.1f} tok/s, decode "
                        f"{r['decode_tok_s']:.1f} tok/s ({time.perf_counter() - t0:.0f} s)")
                row[side] = r
            onnx, native = row["onnx"], row["native"]
            row["ratio"] = {k: onnx[k] / native[k] if onnx.get(k) and native.get(k) else None
                            for k in ("prefill_tok_s", "decode_tok_s", "load_s", "peak_rss_mb")}
            rows.append(row)
    elapsed = time.perf_counter() - t_start

    print(table(rows))
    print()
    print(f"ONNX / native: above 1 ONNX Runtime is faster (prefill, decode) or bigger (file, load time, "
          f"RSS). Best of {opts.repeats} trial(s) after one warm-up; prompt {opts.prompt_tokens} tokens in "
          f"one call, decode {opts.gen_tokens} tokens one at a time; the same edgellm.LLM calls for both "
          f"engines.")
    log(f"total time {elapsed:.0f} s")
    if not opts.no_json:
        import onnxruntime

        write_report("onnx_speed", {
            "onnxruntime": onnxruntime.__version__,
            "options": {k: getattr(opts, k) for k in ("threads", "repeats", "prompt_tokens", "gen_tokens")},
            "prompt_seed": PROMPT_SEED, "rows": rows, "elapsed_s": elapsed, "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        })
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    return script_main("onnx_speed.py", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
