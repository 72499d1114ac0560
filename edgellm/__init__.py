"""edgellm: offline, on-device LLM runtime and SDK.

The runtime needs numpy and the native module only; converters (torch, safetensors, ...) are
imported lazily by `edgellm convert` and live behind the `convert` extra.
"""

from edgellm.errors import ConversionError, EdgeLLMError, GGUFError

__version__ = "0.1.0"

__all__ = ["ConversionError", "EdgeLLMError", "GGUFError", "__version__"]
