"""Offline retrieval over your own documents: one SQLite file per index (documents, chunks, FTS5 keywords,
sqlite-vec vectors), local ONNX embeddings (fastembed), hybrid search, and grounded answers with citations.

    from edgellm.rag import Index
    with Index("docs.db") as index:
        index.add(["./manual"])
        hits = index.search("how do I ...?", k=5)

Needs the `rag` extra: pip install 'edgellm[rag]'. Importing this package is light; the embedder and
SQLite binding load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module under edgellm.rag; imported on first access so `import edgellm.rag` stays light
_EXPORTS = {
    "Answer": "answer", "NO_SOURCES": "answer",
    "Embedder": "embed", "OnnxEmbedder": "embed", "default_embedder": "embed",
    "EmbedderMismatchError": "errors", "IndexLockedError": "errors", "RagError": "errors",
    "Index": "index", "IngestSummary": "ingest", "MODES": "search", "SearchResult": "search",
}

__all__ = ["MODES", "NO_SOURCES", "Answer", "Embedder", "EmbedderMismatchError", "Index", "IndexLockedError",
           "IngestSummary", "OnnxEmbedder", "RagError", "SearchResult", "default_embedder"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgellm.rag' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgellm.rag.{module}"), name)
