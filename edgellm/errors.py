"""The project's exceptions. Native errors arrive as subclasses of EdgeLLMError."""

from edgellm._core import EdgeLLMError

try:  # registered by the gguf bindings
    from edgellm._core import GGUFError
except ImportError:  # pragma: no cover - only while the bindings are being built up
    class GGUFError(EdgeLLMError):
        pass


class ConversionError(EdgeLLMError):
    """A checkpoint could not be converted: the message names the file and the field."""


__all__ = ["EdgeLLMError", "GGUFError", "ConversionError"]
