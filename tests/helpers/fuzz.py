"""A seeded corpus of mutated and truncated GGUF model files, for the loader fuzz test and for the
native fuzz driver run under AddressSanitizer/UndefinedBehaviorSanitizer in CI.

Mutations aim where a loader can go wrong: every count, length, type id, dimension and offset of the
header is located by a small independent parser and set to extreme or off-by-one values; scalar
hyperparameters are changed; bytes are flipped; files are truncated; tensor data is overwritten
with garbage (NaN/inf scales) so the forward pass runs on hostile numbers.

    python tests/helpers/fuzz.py OUT_DIR [BASE.gguf ...] [--n 2000] [--seed 7] [--run]

Without BASE files, the DEFAULT_BASES are converted from the tiny test checkpoints (needs the
`convert` extra) into OUT_DIR/bases.
"""

from __future__ import annotations

import argparse
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# (tiny architecture, --quant) of the files the corpus mutates: k-quants, legacy blocks, f16; SentencePiece
# and byte-level BPE vocabularies.
DEFAULT_BASES = [("llama_spm", "q4_k_m"), ("llama_spm", "q8_0"), ("qwen3", "f16")]

_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class Field:
    offset: int
    size: int  # 4 or 8 (integers), 1/2 for small scalars
    what: str


def header_fields(data: bytes) -> tuple[list[Field], int]:
    """Offsets of the header's integer fields, and where the header ends (before alignment padding)."""
    fields: list[Field] = []
    pos = 0

    def take(size: int, what: str, record: bool = True) -> int:
        nonlocal pos
        if record:
            fields.append(Field(pos, size, what))
        v = int.from_bytes(data[pos:pos + size], "little")
        pos += size
        return v

    def string(what: str) -> bytes:
        nonlocal pos
        n = take(8, what + ".len")
        s = data[pos:pos + n]
        pos += n
        return s

    take(4, "magic", record=False)
    take(4, "version")
    n_tensors = take(8, "n_tensors")
    n_kv = take(8, "n_kv")
    for _ in range(n_kv):
        key = string("key").decode(errors="replace")
        vtype = take(4, f"{key}.type")
        if vtype == _STRING:
            string(key)
        elif vtype == _ARRAY:
            etype = take(4, f"{key}.elem_type")
            count = take(8, f"{key}.count")
            if etype == _STRING:
                for i in range(count):
                    # only the first few element lengths are worth mutating
                    if i < 4:
                        string(f"{key}[{i}]")
                    else:
                        n = int.from_bytes(data[pos:pos + 8], "little")
                        pos += 8 + n
            else:
                pos += count * _SCALAR_SIZE[etype]
        else:
            size = _SCALAR_SIZE[vtype]
            take(size, f"{key}.value")
    for _ in range(n_tensors):
        name = string("tensor").decode(errors="replace")
        n_dims = take(4, f"{name}.n_dims")
        for d in range(n_dims):
            take(8, f"{name}.ne[{d}]")
        take(4, f"{name}.type")
        take(8, f"{name}.offset")
    return fields, pos


def _interesting(old: int, size: int, rng: random.Random) -> int:
    top = (1 << (8 * size)) - 1
    choices = [0, 1, 2, top, top - 1, top >> 1, (top >> 1) + 1, old + 1, max(old - 1, 0), old * 2, old * 256,
               rng.randrange(top + 1), 1 << min(31, 8 * size - 1), 255, 65535, 4096]
    return rng.choice(choices) & top


def mutate(base: bytes, rng: random.Random) -> tuple[str, bytes]:
    fields, header_end = header_fields(base)
    data = bytearray(base)
    kind = rng.choice(["field", "field", "field", "field", "hparam", "flip", "truncate", "truncate_header",
                       "data", "type"])
    if kind == "field" or kind == "type":
        pool = [f for f in fields if f.what.endswith(".type")] if kind == "type" else fields
        f = rng.choice(pool)
        old = int.from_bytes(data[f.offset:f.offset + f.size], "little")
        new = rng.randrange(40) if kind == "type" else _interesting(old, f.size, rng)
        data[f.offset:f.offset + f.size] = new.to_bytes(f.size, "little")
        return f"{kind} {f.what}: {old} -> {new}", bytes(data)
    if kind == "hparam":
        pool = [f for f in fields if f.what.endswith(".value") and not f.what.startswith("general.")]
        f = rng.choice(pool)
        old = int.from_bytes(data[f.offset:f.offset + f.size], "little")
        if f.size == 4 and rng.random() < 0.3:  # maybe a float: nan, inf, negative, tiny
            new_b = struct.pack("<f", rng.choice([float("nan"), float("inf"), -1.0, 1e-30, 1e30, 0.0]))
            data[f.offset:f.offset + 4] = new_b
            return f"hparam {f.what}: float {struct.unpack('<f', new_b)[0]}", bytes(data)
        new = _interesting(old, f.size, rng)
        data[f.offset:f.offset + f.size] = new.to_bytes(f.size, "little")
        return f"hparam {f.what}: {old} -> {new}", bytes(data)
    if kind == "flip":
        n = rng.randint(1, 8)
        for _ in range(n):
            i = rng.randrange(header_end)
            data[i] ^= 1 << rng.randrange(8)
        return f"flip {n} header bytes", bytes(data)
    if kind == "truncate":
        n = rng.randrange(len(base))
        return f"truncate to {n} of {len(base)}", bytes(data[:n])
    if kind == "truncate_header":
        n = rng.randrange(header_end + 64)
        return f"truncate header to {n}", bytes(data[:n])
    # kind == "data": garbage over a stretch of tensor data (NaN/inf halves and floats, random bytes)
    start = rng.randrange(header_end, len(base))
    n = min(rng.randint(1, 4096), len(base) - start)
    filler = rng.choice([b"\xff\x7f", b"\x00\x7c", b"\x00\x00\xc0\x7f", None])
    chunk = bytes(rng.randrange(256) for _ in range(n)) if filler is None else (filler * n)[:n]
    data[start:start + n] = chunk
    return f"data garbage at {start} ({n} bytes)", bytes(data)


def corpus(bases: list[Path], n: int, seed: int) -> Iterator[tuple[int, str, bytes]]:
    """(index, description, file bytes) for n mutated files, the same for the same seed and bases."""
    rng = random.Random(seed)
    blobs = [(p.name, p.read_bytes()) for p in bases]
    for i in range(n):
        name, base = blobs[i % len(blobs)]
        what, data = mutate(base, rng)
        yield i, f"{name}: {what}", data


def make_default_bases(folder: Path) -> list[Path]:
    """Converts the DEFAULT_BASES tiny checkpoints into folder (tests/ must be importable)."""
    from edgellm.converters.convert import ConvertOptions, convert
    from helpers.tiny_models import tiny_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for arch, quant in DEFAULT_BASES:
        path = folder / f"{arch}-{quant}.gguf"
        if not path.exists():
            convert(tiny_checkpoint(arch), path, ConvertOptions(quant=quant, progress=False))
        out.append(path)
    return out


def run_case(path: Path) -> str:
    """Loads path with edgellm and, when it loads, tokenizes and generates a few tokens.
    Returns "rejected" or "ran"; any exception other than EdgeLLMError propagates."""
    import edgellm

    try:
        with edgellm.LLM(path, n_ctx=64, n_threads=1) as llm:
            ids = llm.tokenize("Hello world, fuzz <s> 123", add_special=True, parse_special=True)
            llm.detokenize(ids)
            llm.generate(ids or [0], 4, temperature=0.8, seed=1)
            return "ran"
    except edgellm.EdgeLLMError:
        return "rejected"


def run(bases: list[Path], n: int, seed: int, work: Path) -> None:
    """Runs the corpus in this process. Before each case its index and description go to
    work/progress (so a crash can be attributed); at the end one line of counts is printed."""
    counts = {"rejected": 0, "ran": 0}
    case = work / "case.gguf"
    with open(work / "progress", "w", buffering=1) as progress:
        for i, what, data in corpus(bases, n, seed):
            case.write_bytes(data)
            progress.write(f"{i}\t{what}\n")
            counts[run_case(case)] += 1
    print(f"rejected={counts['rejected']} ran={counts['ran']}")


def main() -> None:
    ap = argparse.ArgumentParser(description="write (or --run) the GGUF fuzz corpus")
    ap.add_argument("out", type=Path, help="folder for the corpus (or the work folder with --run)")
    ap.add_argument("bases", type=Path, nargs="*")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--run", action="store_true", help="run each case through edgellm instead of writing it")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.bases:
        args.bases = make_default_bases(args.out / "bases")
    if args.run:
        run(args.bases, args.n, args.seed, args.out)
        return
    with open(args.out / "INDEX.txt", "w") as index:
        for i, what, data in corpus(args.bases, args.n, args.seed):
            (args.out / f"case-{i:05d}.gguf").write_bytes(data)
            index.write(f"case-{i:05d}.gguf\t{what}\n")


if __name__ == "__main__":
    import sys

    # Run as a script, this folder would come first on sys.path and its tokenizers.py would shadow the
    # `tokenizers` library: import the helpers as a package from tests/ instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    main()
