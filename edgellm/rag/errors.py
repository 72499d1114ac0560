"""Errors of the RAG layer, all EdgeLLMError subclasses so one `except` catches the project's errors."""

from edgellm.errors import EdgeLLMError


class RagError(EdgeLLMError):
    """An index could not be opened, written or searched: the message names the file and what to do."""


class EmbedderMismatchError(RagError):
    """The index was built with another embedding model or dimension than the one given."""


class IndexLockedError(RagError):
    """Another process holds the index's write lock past the timeout."""
