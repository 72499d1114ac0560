"""Shared fixtures: tiny checkpoints and their conversions, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.tiny_models import tiny_checkpoint, trained_checkpoint


@pytest.fixture(autouse=True, scope="session")
def _run_outside_the_source_tree(tmp_path_factory):
    """Tests (and the `python -m edgellm` subprocesses they start) import the installed package: from the
    repository root, the source folder `edgellm/` (without the compiled core) would shadow it."""
    import os

    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


def _converter(out_dir: Path, checkpoint):
    from edgellm.converters.convert import ConvertOptions, convert

    done: dict[tuple[str, str], Path] = {}

    def run(arch: str, quant: str = "f32") -> Path:
        key = (arch, quant)
        if key not in done:
            out = out_dir / f"{arch}-{quant}.gguf"
            convert(checkpoint(arch), out, ConvertOptions(quant=quant, progress=False))
            done[key] = out
        return done[key]

    return run


@pytest.fixture(scope="session")
def convert_tiny(tmp_path_factory):
    """convert_tiny(arch, quant) -> our GGUF of the tiny random `arch` checkpoint, converted once per session."""
    return _converter(tmp_path_factory.mktemp("tiny-gguf"), tiny_checkpoint)


@pytest.fixture(scope="session")
def convert_trained(tmp_path_factory):
    """convert_trained(arch, quant) -> our GGUF of the trained tiny `arch` checkpoint, converted once."""
    return _converter(tmp_path_factory.mktemp("trained-gguf"), trained_checkpoint)
