"""The project's exceptions. Native errors arrive as EdgeLLMError or one of its subclasses:
GGUFError (a malformed or inconsistent model file), ModelFileError (missing or unreadable file),
UnsupportedError (an architecture, tensor type or tokenizer we do not run), ContextFullError (the
tokens do not fit in the context), InvalidArgumentError (also a ValueError: a parameter out of range,
an invalid token id), StateFileError (a saved session that is unreadable, corrupt, or saved for another
model or context)."""

from edgellm._core import (
    ContextFullError,
    EdgeLLMError,
    GGUFError,
    InvalidArgumentError,
    ModelFileError,
    StateFileError,
    UnsupportedError,
)


class ConversionError(EdgeLLMError):
    """A checkpoint could not be converted: the message names the file and the field."""


class ChatTemplateError(EdgeLLMError):
    """A chat template failed to render (syntax, raise_exception in the template, bad messages)."""


__all__ = ["ChatTemplateError", "ContextFullError", "ConversionError", "EdgeLLMError", "GGUFError",
           "InvalidArgumentError", "ModelFileError", "StateFileError", "UnsupportedError"]
