"""`Index`: the Python API of the RAG layer (the `edgellm rag` verbs call exactly this)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgellm.rag import keywords
from edgellm.rag import rerank as reranking
from edgellm.rag.answer import Answer, attribute, citations, stream_answer
from edgellm.rag.embed import Embedder, default_embedder
from edgellm.rag.ingest import IngestSummary, ingest
from edgellm.rag.search import Searcher, SearchResult
from edgellm.rag.store import Store


class Index:
    """One index file. `embedder` defaults to all-MiniLM-L6-v2 (int8 ONNX); an index only opens with the
    embedder that built it. Use as a context manager or call close().

        with Index("notes.db") as index:
            index.add(["~/notes"])
            for r in index.search("how do I rotate the logs?"):
                print(r.path, r.heading, r.score)
            print(index.answer("how do I rotate the logs?", llm).text)  # llm: an edgellm.LLM
    """

    def __init__(self, path: str | Path, embedder: Embedder | None = None, *, create: bool = True,
                 busy_timeout_s: float = 5.0) -> None:
        self.embedder = embedder if embedder is not None else default_embedder()
        self.store = Store(Path(path), embedder_id=self.embedder.model_id, dim=self.embedder.dim, create=create,
                           busy_timeout_s=busy_timeout_s)
        self._searcher = Searcher(self.store, self.embedder)

    @property
    def path(self) -> Path:
        return self.store.path

    def add(self, paths: Sequence[str | Path], *, prune: bool = False, progress: bool | None = None,
            max_tokens: int = 200, overlap_tokens: int = 32) -> IngestSummary:
        """Indexes files and folders (recursively): new and changed files are (re)indexed, unchanged ones
        skipped; with prune, indexed files under these paths that no longer exist are removed."""
        return ingest(self.store, self.embedder, [Path(p).expanduser() for p in paths], prune=prune,
                      progress=progress, max_tokens=min(max_tokens, self.embedder.max_tokens - 32),
                      overlap_tokens=overlap_tokens)

    def search(self, query: str, k: int = 5, *, mode: str = "hybrid", path: str | None = None,
               rerank_with: Any = None) -> list[SearchResult]:
        """The k best chunks for query. mode: "hybrid" (vector + keyword, fused), "vector" or "keyword";
        path: only files under this folder or file, or matching this glob. rerank_with: a language model
        (an edgellm.LLM) that rereads the best max(4k, 20) chunks and reorders them by how likely each makes
        the query (rerank.py): better ordered, and about 0.15 s a chunk on two cores with the default model."""
        if rerank_with is None:
            return self._searcher.search(query, k=k, mode=mode, path=path)
        candidates = self._searcher.search(query, k=reranking.depth(k), mode=mode, path=path)
        return reranking.rerank(query, candidates, rerank_with, k)

    def answer(self, question: str, llm: Any, k: int = 5, *, mode: str = "hybrid", path: str | None = None,
               rerank: bool = True, on_text: Callable[[str], None] | None = None, **generate: Any) -> Answer:
        """Answers from the k best sources with the model `llm` (an edgellm.LLM), citing them as [n]. The
        same model reranks the search's candidates first (search's rerank_with) unless rerank is False.
        The answer streams through `on_text(piece)` as it is generated; generate options (max_tokens,
        temperature, ...) pass through. With no sources (an empty index, or a path filter that leaves
        nothing) the answer is NO_SOURCES and the model is not asked."""
        answer, pieces = self.answer_stream(question, llm, k, mode=mode, path=path, rerank=rerank, **generate)
        for piece in pieces:
            if on_text is not None:
                on_text(piece)
        return answer

    def answer_stream(self, question: str, llm: Any, k: int = 5, *, mode: str = "hybrid",
                      path: str | None = None, rerank: bool = True,
                      **generate: Any) -> tuple[Answer, Iterator[str]]:
        """(answer, pieces): iterate pieces to stream the text; once exhausted, `answer.text` and
        `answer.cited` are complete. `answer.sources` is known at once (show them before the text)."""
        sources = self.search(question, k, mode=mode, path=path, rerank_with=llm if rerank else None)
        answer = Answer(question, "", sources)

        def pieces() -> Iterator[str]:
            parts: list[str] = []
            for piece in stream_answer(question, sources, llm, **generate):
                parts.append(piece)
                yield piece
            answer.text = "".join(parts)
            answer.cited = citations(answer.text, len(sources))
            if not answer.cited and sources:
                answer.cited = attribute(answer.text, sources)
                answer.attributed = bool(answer.cited)

        return answer, pieces()

    def remove(self, path: str | Path) -> bool:
        import os

        removed = self.store.remove_document(os.path.abspath(path))
        if removed:
            keywords.refresh(self.store)
        return removed

    def stats(self) -> dict[str, Any]:
        return self.store.stats()

    def documents(self) -> list[Any]:
        return self.store.documents()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Index:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
