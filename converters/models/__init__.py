"""One converter per HF architecture family; importing this package registers them all."""

from . import gemma3, llama, qwen2, qwen3  # noqa: F401
