"""Robustness: a seeded corpus of 2,000 mutated and truncated GGUF files (tests/helpers/fuzz.py) through
the loader and a short generation. Each file must be rejected with the project's error type, or load and
run; the worker runs in a subprocess so that a crash (a signal) fails the test and names the case."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.fuzz import DEFAULT_BASES

FUZZ = Path(__file__).parent / "helpers" / "fuzz.py"
N_CASES = 2000


def test_mutated_gguf_files_never_crash(convert_tiny, tmp_path):
    bases = [convert_tiny(arch, quant) for arch, quant in DEFAULT_BASES]
    proc = subprocess.run([sys.executable, str(FUZZ), str(tmp_path), *map(str, bases), "--run",
                           "--n", str(N_CASES), "--seed", "7"],
                          check=False, capture_output=True, text=True, timeout=900)
    progress = (tmp_path / "progress").read_text().splitlines() if (tmp_path / "progress").exists() else []
    last = progress[-1] if progress else "(none)"
    assert proc.returncode == 0, (f"worker exited with {proc.returncode} at case {last}\n"
                                  f"{proc.stderr[-3000:]}")
    assert len(progress) == N_CASES
    counts = dict(kv.split("=") for kv in proc.stdout.split())
    # both outcomes must occur, or the corpus is not testing anything
    assert int(counts["rejected"]) > 200 and int(counts["ran"]) > 100, counts
