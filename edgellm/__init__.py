"""edgellm: offline, on-device LLM runtime and SDK.

The runtime needs numpy and the native module only; converters (torch, safetensors, ...) are
imported lazily by `edgellm convert` and live behind the `convert` extra.
"""

from edgellm._core import isa, set_isa
from edgellm.errors import (
    ChatTemplateError,
    ContextFullError,
    ConversionError,
    EdgeLLMError,
    GGUFError,
    InvalidArgumentError,
    ModelFileError,
    StateFileError,
    UnsupportedError,
)
from edgellm.llm import LLM, GenerationStats, Perplexity, Sampler

__version__ = "0.1.0"

__all__ = ["LLM", "ChatTemplateError", "ContextFullError", "ConversionError", "EdgeLLMError", "GGUFError",
           "GenerationStats", "InvalidArgumentError", "ModelFileError", "Perplexity", "Sampler",
           "StateFileError", "UnsupportedError", "__version__", "isa", "set_isa"]
