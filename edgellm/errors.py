"""The project's exceptions. Native errors arrive as EdgeLLMError or its subclass GGUFError."""

from edgellm._core import EdgeLLMError, GGUFError


class ConversionError(EdgeLLMError):
    """A checkpoint could not be converted: the message names the file and the field."""


__all__ = ["ConversionError", "EdgeLLMError", "GGUFError"]
