"""Ingest: files and folders -> documents, chunks, keywords and vectors in the index.

Incremental: a file whose bytes hash the same as the indexed copy is skipped; a changed file is re-chunked,
re-embedded and replaced in one transaction; with `prune`, indexed files under the given roots that no
longer exist are removed. Each document commits in its own transaction (embedding happens before it, in
batches across documents), so an interrupted run keeps every document it committed and the next run
picks up the rest. Unreadable, binary and undecodable files are listed in the summary, never fatal.
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgellm.rag import keywords
from edgellm.rag.chunking import chunk_document
from edgellm.rag.embed import Embedder
from edgellm.rag.extract import Document, ExtractError, extract, is_supported
from edgellm.rag.store import EMBED_HEADING, EMBED_TITLE, NewChunk, Store

# Documents wait for embedding until this many chunks are pending (one model batch run), then each
# commits alone. Bigger batches keep the model busy; smaller ones lose less work to an interruption.
_EMBED_BATCH_CHUNKS = 128
# Documents extracted ahead of the one being embedded, at most (they wait in memory).
_PREPARED_AHEAD = 64
_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".tox", ".mypy_cache"}


@dataclass
class IngestSummary:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)     # unchanged since the last run
    failed: list[tuple[str, str]] = field(default_factory=list)   # (path, reason)
    removed: list[str] = field(default_factory=list)     # pruned
    chunks: int = 0                                      # chunks written in this run
    seconds: float = 0.0

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{len(self.added)} added, {len(self.updated)} updated, {len(self.skipped)} unchanged, "
                f"{len(self.failed)} failed, {len(self.removed)} removed; {self.chunks} chunks in "
                f"{self.seconds:.1f} s ({self.chunks_per_second:.0f} chunks/s)")


@dataclass
class _Pending:
    path: str
    sha256: str
    size: int
    mtime: float
    doc: Document
    chunks: list[NewChunk]
    is_update: bool


def embedding_text(heading: Sequence[str], title: str | None, text: str, recipe: str = EMBED_TITLE) -> str:
    """What the embedder sees for a chunk (the store's embedding_text recipe):

    - "title" (indexes made from now on): the document's title, then the text. The title places a chunk in its
      document; the section path is left to the keyword side (FTS5 scores the heading column), where its words
      count without diluting the chunk's own in a mean-pooled vector. Against the whole heading path, hybrid
      recall@5 / MRR@5 with the int8 embedder rose from 0.943 / 0.863 to 0.959 / 0.874 on the Valgrind
      manual's questions and from 0.950 / 0.887 to 0.960 / 0.896 on the held-out Node.js API set, with 6% and
      19% fewer tokens to embed (fp32: 0.943 / 0.869 -> 0.933 / 0.863 and 0.960 / 0.880 -> 0.960 / 0.900;
      bench/rag.py --embedding-text). The text alone: 0.964 / 0.889 on the first set, 0.960 / 0.868 on the
      second.
    - "heading" (indexes made before): the heading path, title first, then the text; kept so an older index
      embeds its new chunks as it embedded the rest."""
    if recipe == EMBED_HEADING:
        path = [h for h in heading if h]
        if title and (not path or path[0] != title):
            path.insert(0, title)
    else:
        path = [title] if title else []
    return (" > ".join(path) + "\n\n" + text) if path else text


def iter_files(paths: Iterable[Path], exclude: set[Path]) -> Iterator[tuple[Path, str | None]]:
    """(file, None) for every file to index under `paths`; (file, reason) for a named file we cannot index.
    Folders are walked recursively in sorted order, skipping hidden and tool folders and unsupported files."""
    seen: set[Path] = set()  # a file named twice (itself and inside a named folder) is indexed once
    for root in paths:
        root = Path(os.path.abspath(root))
        if root.is_file():
            if root in exclude or root in seen:
                continue
            seen.add(root)
            yield root, (None if is_supported(root) else f"unsupported file type {root.suffix or '(none)'}")
        elif root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
                for name in sorted(filenames):
                    p = Path(dirpath) / name
                    if name.startswith(".") or p in exclude or p in seen or not is_supported(p) or not p.is_file():
                        continue
                    seen.add(p)
                    yield p, None
        else:
            yield root, "no such file or folder"


def ingest(store: Store, embedder: Embedder, paths: Sequence[Path], *, prune: bool = False,
           progress: bool | None = None, max_tokens: int = 200, overlap_tokens: int = 32) -> IngestSummary:
    start = time.perf_counter()
    summary = IngestSummary()
    db = Path(os.path.abspath(store.path))
    exclude = {db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"),
               db.with_name(db.name + "-journal")}
    files = list(iter_files(paths, exclude))
    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm import tqdm

    bar = tqdm(total=len(files), unit="file", disable=not progress, dynamic_ncols=True, leave=False)
    try:
        _ingest_files(files, store, embedder, summary, bar, max_tokens, overlap_tokens)
        if prune:
            _prune(store, paths, summary)
        if summary.added or summary.updated or summary.removed:
            keywords.refresh(store)  # the keyword postings, when the change is large enough to need it
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _ingest_files(files: list[tuple[Path, str | None]], store: Store, embedder: Embedder, summary: IngestSummary,
                  bar: Any, max_tokens: int, overlap_tokens: int) -> None:
    """Files are read, hashed, extracted and chunked on a thread of their own, in order, while this one embeds
    and writes what came before: extraction and the embedder's sessions share the cores, and the sessions
    take their texts one at a time, so neither waits for the other. On two cores, the Valgrind manual, three
    alternated runs: 201, 194 and 204 chunks/s against 194, 193 and 189 with the steps in turn."""
    pending: list[_Pending] = []
    n_pending = 0
    recipe = store.embedding_text()

    def flush() -> None:
        nonlocal n_pending
        if not pending:
            return
        texts = [embedding_text(c.heading, p.doc.title, c.text, recipe) for p in pending for c in p.chunks]
        vectors = embedder.embed_documents(texts)
        at = 0
        for p in pending:
            n = len(p.chunks)
            store.replace_document(p.path, sha256=p.sha256, size=p.size, mtime=p.mtime, kind=p.doc.kind,
                                   title=p.doc.title, metadata={}, chunks=p.chunks, vectors=vectors[at:at + n])
            at += n
            summary.chunks += n
            (summary.updated if p.is_update else summary.added).append(p.path)
            bar.update(1)
        pending.clear()
        n_pending = 0

    items: queue.Queue[_Prepared | BaseException | None] = queue.Queue(maxsize=_PREPARED_AHEAD)
    stop = threading.Event()
    known = store.hashes()

    def offer(item: _Prepared | BaseException | None) -> None:
        while not stop.is_set():  # the consumer sets stop when it leaves early
            try:
                items.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for path, reason in files:
                if stop.is_set():
                    return
                offer(_prepare(path, reason, known, embedder, max_tokens, overlap_tokens))
            offer(None)
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread, which raises it
            offer(e)

    worker = threading.Thread(target=produce, name="edgellm-extract", daemon=True)
    worker.start()
    try:
        while (item := items.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if item.pending is None:
                (summary.skipped.append(item.path) if item.failure is None
                 else summary.failed.append((item.path, item.failure)))
                bar.update(1)
                continue
            pending.append(item.pending)
            n_pending += len(item.pending.chunks)
            bar.set_postfix_str(item.path[-30:], refresh=False)
            if n_pending >= _EMBED_BATCH_CHUNKS:
                flush()
        flush()
    finally:
        stop.set()
        worker.join()


@dataclass
class _Prepared:
    path: str
    pending: _Pending | None = None  # a new or changed document, chunked
    failure: str | None = None       # why the file could not be indexed (neither: unchanged, skipped)


def _prepare(path: Path, reason: str | None, known: dict[str, str], embedder: Embedder, max_tokens: int,
             overlap_tokens: int) -> _Prepared:
    key = str(path)
    if reason is not None:
        return _Prepared(key, failure=reason)
    try:
        data = path.read_bytes()
        stat = path.stat()
    except OSError as e:
        return _Prepared(key, failure=f"unreadable: {e.strerror or e}")
    sha = hashlib.sha256(data).hexdigest()
    if known.get(key) == sha:
        return _Prepared(key)
    try:
        doc = extract(path, data)
        chunks = [NewChunk(c.text, c.start, c.end, tuple(c.heading), c.n_tokens)
                  for c in chunk_document(doc, embedder.count_tokens, max_tokens=max_tokens,
                                          overlap_tokens=overlap_tokens,
                                          token_offsets=getattr(embedder, "token_offsets", None))]
    except ExtractError as e:
        return _Prepared(key, failure=str(e))
    except (RecursionError, ValueError, MemoryError) as e:  # a parser's limit on a pathological file
        return _Prepared(key, failure=f"could not extract its text ({type(e).__name__}: {e})")
    return _Prepared(key, _Pending(key, sha, len(data), stat.st_mtime, doc, chunks, key in known))


def _prune(store: Store, paths: Sequence[Path], summary: IngestSummary) -> None:
    """Removes indexed files under `paths` that no longer exist."""
    roots = [Path(os.path.abspath(p)) for p in paths]
    for row in store.documents():
        p = Path(row.path)
        if any(p == r or r in p.parents for r in roots) and not p.is_file():
            store.remove_document(row.path)
            summary.removed.append(row.path)
