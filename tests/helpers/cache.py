"""Where test fixtures (tiny checkpoints, the rebuilt SmolLM2, converted GGUFs) are cached.

Fixtures are large, so they live outside the repository. Builders create them in a temporary folder next to
the final one and rename it into place, so an interrupted build never leaves a half-made fixture behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """`$EDGELLM_TEST_CACHE`, or `~/.cache/edgellm-tests`; created when missing."""
    root = os.environ.get("EDGELLM_TEST_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "edgellm-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def transformers_tag() -> str:
    """"tf4.57" for transformers 4.57.x: part of the name of every fixture transformers writes (checkpoints),
    since a config.json written by one major version can read differently in another (rope settings moved
    from `rope_scaling`/`rope_theta` to `rope_parameters` in 5.0)."""
    import importlib.metadata

    major, minor = importlib.metadata.version("transformers").split(".")[:2]
    return f"tf{major}.{minor}"


def cached_dir(name: str, build: Callable[[Path], None]) -> Path:
    """`cache_dir()/name`, made by `build(tmp_folder)` on first use and renamed into place atomically."""
    final = cache_dir() / name
    if final.is_dir():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir()))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # lost a race to another builder: theirs is as good as ours
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
