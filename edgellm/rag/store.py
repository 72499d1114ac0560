"""The index file: one SQLite database with plain tables a user can open with the `sqlite3` shell.

    meta(key, value)            embedder id and dimension, created_at, edgellm version
    documents(id, path, ...)    one row per indexed file: content hash, size, mtime, kind, title, metadata
    chunks(id, doc_id, ...)     text (a verbatim slice of the extracted document text), char offsets,
                                heading path (JSON array), token count
    chunks_fts                  FTS5 over chunks(heading, text), external content kept in step by triggers
    chunks_vec                  sqlite-vec vec0 table: chunk id -> float32[dim] embedding (cosine distance)
    keyword_cache(word, ...)    per query word: the chunks that hold it and, for a frequent word, their bm25
                                scores, kept for later sessions; emptied by triggers when any chunk changes,
                                which also count meta's chunks_epoch up

The schema is versioned by `PRAGMA user_version` and built by the numbered migrations below, applied
in order inside one transaction each. chunks_vec is written by this module only (not by triggers), so the
plain `sqlite3` shell, which lacks the vec0 module, can still read and query everything else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgellm.rag import sqlite
from edgellm.rag.errors import EmbedderMismatchError, RagError


def _migration_1(conn: Any, dim: int) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("""
        CREATE TABLE documents (
            id          INTEGER PRIMARY KEY,
            path        TEXT NOT NULL UNIQUE,   -- absolute path of the file
            sha256      TEXT NOT NULL,          -- of the file's bytes
            size        INTEGER NOT NULL,       -- bytes
            mtime       REAL NOT NULL,          -- seconds since the epoch
            kind        TEXT NOT NULL,          -- text | markdown | html | pdf | code
            title       TEXT,
            metadata    TEXT NOT NULL DEFAULT '{}',  -- JSON object
            indexed_at  REAL NOT NULL
        )""")
    conn.execute("""
        CREATE TABLE chunks (
            id          INTEGER PRIMARY KEY,
            doc_id      INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            seq         INTEGER NOT NULL,       -- order within the document
            text        TEXT NOT NULL,
            char_start  INTEGER NOT NULL,       -- offsets into the document's extracted text
            char_end    INTEGER NOT NULL,
            heading     TEXT NOT NULL,          -- JSON array: the heading path, outermost first
            n_tokens    INTEGER NOT NULL,       -- embedding-model tokens in text
            UNIQUE (doc_id, seq)
        )""")
    conn.execute("CREATE INDEX chunks_by_doc ON chunks(doc_id)")
    conn.execute("""
        CREATE VIRTUAL TABLE chunks_fts USING fts5(
            heading, text, content='chunks', content_rowid='id',
            tokenize='porter unicode61 remove_diacritics 2')""")
    conn.execute("""
        CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
            INSERT INTO chunks_fts(rowid, heading, text) VALUES (new.id, new.heading, new.text);
        END""")
    conn.execute("""
        CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, heading, text)
            VALUES ('delete', old.id, old.heading, old.text);
        END""")
    conn.execute("""
        CREATE TRIGGER chunks_fts_update AFTER UPDATE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, heading, text)
            VALUES ('delete', old.id, old.heading, old.text);
            INSERT INTO chunks_fts(rowid, heading, text) VALUES (new.id, new.heading, new.text);
        END""")
    conn.execute(f"CREATE VIRTUAL TABLE chunks_vec USING vec0("
                 f"chunk_id INTEGER PRIMARY KEY, embedding float[{int(dim)}] distance_metric=cosine)")


def _migration_2(conn: Any, dim: int) -> None:
    conn.execute("""
        CREATE TABLE keyword_cache (
            word        TEXT PRIMARY KEY,       -- a query word, as the searcher looks it up; the empty word's
                                                -- n_chunks is the bytes of all ids and scores
            scoring     TEXT NOT NULL,          -- the bm25 expression the scores come from
            n_chunks    INTEGER NOT NULL,       -- chunks that hold the word
            ids         BLOB,                   -- frequent words: int32 chunk ids, little-endian
            scores      BLOB                    -- and float32 -bm25 of each
        )""")
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('chunks_epoch', '0')")
    for event in ("insert", "delete", "update"):
        conn.execute(f"""
            CREATE TRIGGER chunks_epoch_{event} AFTER {event.upper()} ON chunks BEGIN
                DELETE FROM keyword_cache;
                UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'chunks_epoch';
            END""")


# Migration N takes the schema from user_version N-1 to N. Append; never edit a released one.
MIGRATIONS: tuple[Callable[[Any, int], None], ...] = (_migration_1, _migration_2)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class DocumentRow:
    id: int
    path: str
    sha256: str
    size: int
    mtime: float
    n_chunks: int


@dataclass(frozen=True)
class NewChunk:
    text: str
    start: int
    end: int
    heading: tuple[str, ...]
    n_tokens: int


class Store:
    """An open index file. Not thread-safe: one Store per thread (SQLite allows many readers and one
    writer across processes; WAL lets searches run while an ingest writes)."""

    def __init__(self, path: Path, *, embedder_id: str | None = None, dim: int | None = None,
                 create: bool = True, busy_timeout_s: float = 5.0) -> None:
        """Opens (and with `create`, creates or migrates) the index at `path`. With an embedder id and
        dimension, checks that the index was built with that model; without them, opens for reading
        statistics only and never creates."""
        self.path = Path(path)
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        if not self.path.exists() and (not create or embedder_id is None or dim is None):
            raise RagError(f"{self.path}: no such index (build one with `edgellm rag index PATH --db FILE`)")
        if self.path.exists() and self.path.is_dir():
            raise RagError(f"{self.path}: is a directory, not an index file")
        self.conn = sqlite.connect(self.path, busy_timeout_s=busy_timeout_s)
        try:
            self._open(embedder_id, dim)
        except BaseException:
            self.conn.close()
            raise

    # ---- schema -------------------------------------------------------------------------------------

    def _open(self, embedder_id: str | None, dim: int | None) -> None:
        version = self._query_one("PRAGMA user_version")[0]
        if version > SCHEMA_VERSION:
            raise RagError(f"{self.path}: index schema version {version} is newer than this edgellm supports "
                           f"({SCHEMA_VERSION}); upgrade edgellm")
        if version == 0 and self._query_one("SELECT count(*) FROM sqlite_master")[0] > 0:
            raise RagError(f"{self.path}: an SQLite database, but not an edgellm index (it has other tables)")
        if version < SCHEMA_VERSION:
            if embedder_id is None or dim is None:
                raise RagError(f"{self.path}: index schema version {version} needs upgrading to "
                               f"{SCHEMA_VERSION}: open it once with its embedder (e.g. `edgellm rag search`)")
            self._migrate(version, embedder_id, dim)
        meta = self.meta()
        if embedder_id is None:
            return
        if meta.get("embedder_id") != embedder_id or int(meta.get("embedder_dim", -1)) != dim:
            raise EmbedderMismatchError(
                f"{self.path}: the index was built with embedding model {meta.get('embedder_id')!r} "
                f"(dimension {meta.get('embedder_dim')}), not {embedder_id!r} (dimension {dim}); "
                "search it with the same model, or index into a new --db file")

    def _migrate(self, version: int, embedder_id: str, dim: int) -> None:
        with self.transaction():
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = self._query_one("PRAGMA user_version")[0]
            for n in range(version, SCHEMA_VERSION):
                MIGRATIONS[n](self.conn, dim)
                self.conn.execute(f"PRAGMA user_version = {n + 1}")
            if version == 0:
                from edgellm import __version__
                self.conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
                    ("embedder_id", embedder_id), ("embedder_dim", str(dim)),
                    ("created_at", str(time.time())), ("created_by", f"edgellm {__version__}")])

    def meta(self) -> dict[str, str]:
        return dict(self._query("SELECT key, value FROM meta"))

    # ---- plumbing -----------------------------------------------------------------------------------

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite.binding().Error as e:
            raise sqlite.database_error(self.path, e) from None

    def _query_one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        rows = self._query(sql, args)
        return rows[0] if rows else None

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    def close(self) -> None:
        self.conn.close()

    # ---- documents ----------------------------------------------------------------------------------

    def document(self, path: str) -> DocumentRow | None:
        row = self._query_one(
            "SELECT d.id, d.path, d.sha256, d.size, d.mtime, "
            "(SELECT count(*) FROM chunks c WHERE c.doc_id = d.id) FROM documents d WHERE d.path = ?", (path,))
        return DocumentRow(*row) if row else None

    def documents(self) -> list[DocumentRow]:
        rows = self._query(
            "SELECT d.id, d.path, d.sha256, d.size, d.mtime, count(c.id) FROM documents d "
            "LEFT JOIN chunks c ON c.doc_id = d.id GROUP BY d.id ORDER BY d.path")
        return [DocumentRow(*r) for r in rows]

    def replace_document(self, path: str, *, sha256: str, size: int, mtime: float, kind: str,
                         title: str | None, metadata: dict[str, Any], chunks: Sequence[NewChunk],
                         vectors: np.ndarray) -> int:
        """Writes one document and all its chunks in one transaction, replacing any earlier version of
        the same path (its old chunks, keywords and vectors go in the same transaction). Returns the id."""
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self.transaction():
            old = self.conn.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
            if old is not None:
                self._delete_document(old[0])
            cur = self.conn.execute(
                "INSERT INTO documents(path, sha256, size, mtime, kind, title, metadata, indexed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (path, sha256, size, mtime, kind, title, json.dumps(metadata), time.time()))
            doc_id = cur.lastrowid
            for seq, (c, v) in enumerate(zip(chunks, vectors)):
                cur = self.conn.execute(
                    "INSERT INTO chunks(doc_id, seq, text, char_start, char_end, heading, n_tokens) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (doc_id, seq, c.text, c.start, c.end, json.dumps(list(c.heading), ensure_ascii=False),
                     c.n_tokens))
                self.conn.execute("INSERT INTO chunks_vec(chunk_id, embedding) VALUES (?, ?)",
                                  (cur.lastrowid, v.tobytes()))
        return doc_id

    def remove_document(self, path: str) -> bool:
        with self.transaction():
            row = self.conn.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
            if row is None:
                return False
            self._delete_document(row[0])
        return True

    def _delete_document(self, doc_id: int) -> None:
        self.conn.execute("DELETE FROM chunks_vec WHERE chunk_id IN (SELECT id FROM chunks WHERE doc_id = ?)",
                          (doc_id,))
        self.conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
        self.conn.execute("DELETE FROM documents WHERE id = ?", (doc_id,))

    # ---- what searches keep -------------------------------------------------------------------------

    def chunks_epoch(self) -> int:
        """Counts every change to the chunks (by any connection): what a searcher caches is valid while
        it stays the same."""
        return int(self._query_one("SELECT value FROM meta WHERE key = 'chunks_epoch'")[0])

    def cached_word(self, word: str, scoring: str) -> tuple[int, np.ndarray | None, np.ndarray | None] | None:
        """(chunks holding word, their int32 ids and float32 scores or None for a rare word) as a searcher
        stored them since the chunks last changed; None when not stored."""
        row = self._query_one("SELECT n_chunks, ids, scores FROM keyword_cache WHERE word = ? AND scoring = ?",
                              (word, scoring))
        if row is None:
            return None
        n, ids, scores = row
        if ids is None or scores is None:
            return int(n), None, None
        return int(n), np.frombuffer(ids, "<i4"), np.frombuffer(scores, "<f4")

    def measure_word(self, word: str, scoring: str,
                     measure: Callable[[], tuple[int, np.ndarray | None, np.ndarray | None]],
                     max_bytes: int, max_words: int) -> tuple[int, np.ndarray | None, np.ndarray | None]:
        """Runs measure() -> (chunks holding word, ids, scores) and stores its result for later sessions.
        measure() reads inside a transaction that then writes the row, so a stored row is never older
        than the chunks it describes: when another connection has written since the read began, SQLite
        refuses the write and the result is only returned. Never waits for a lock (an ingest may hold
        it) and never fails for a read-only file. Stores at most max_words words and max_bytes of ids
        and scores (their total is kept in the row of the empty word, which no query looks up)."""
        error = sqlite.binding().Error
        if self.conn.in_transaction:  # inside a caller's transaction: its snapshot is not ours to keep
            return measure()
        self.conn.execute("BEGIN")
        try:
            n, ids, scores = measure()
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        try:
            self.conn.execute("PRAGMA busy_timeout = 0")
            # rows are only ever removed all at once, so the largest rowid counts the rows written since
            words = self.conn.execute("SELECT coalesce(max(rowid), 0) FROM keyword_cache").fetchone()[0]
            held = self.conn.execute("SELECT n_chunks FROM keyword_cache WHERE word = ''").fetchone()
            held = held[0] if held else 0
            blobs: tuple[bytes | None, bytes | None] = (None, None)
            if (ids is not None and scores is not None and ids.dtype == np.int32
                    and held + ids.nbytes + scores.nbytes <= max_bytes):
                blobs = (ids.astype("<i4").tobytes(), scores.astype("<f4").tobytes())
            # a frequent word's count without its scores would not save the scan
            if words < max_words and (ids is None or blobs[0] is not None):
                self.conn.execute("INSERT OR REPLACE INTO keyword_cache(word, scoring, n_chunks, ids, scores) "
                                  "VALUES (?, ?, ?, ?, ?)", (word, scoring, n, *blobs))
                if blobs[0] is not None:
                    self.conn.execute("INSERT OR REPLACE INTO keyword_cache(word, scoring, n_chunks) "
                                      "VALUES ('', '', ?)", (held + ids.nbytes + scores.nbytes,))
            self.conn.execute("COMMIT")
        except error:
            try:
                self.conn.execute("ROLLBACK")
            except error:
                pass
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        return n, ids, scores

    # ---- statistics ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        n_docs, = self._query_one("SELECT count(*) FROM documents")
        n_chunks, n_tokens = self._query_one("SELECT count(*), coalesce(sum(n_tokens), 0) FROM chunks")
        n_vectors, = self._query_one("SELECT count(*) FROM chunks_vec")
        kinds = dict(self._query("SELECT kind, count(*) FROM documents GROUP BY kind ORDER BY kind"))
        meta = self.meta()
        return {"path": str(self.path), "schema_version": SCHEMA_VERSION, "documents": n_docs,
                "chunks": n_chunks, "tokens": n_tokens, "vectors": n_vectors, "kinds": kinds,
                "embedder_id": meta.get("embedder_id"), "embedder_dim": int(meta.get("embedder_dim", 0)),
                "file_bytes": self.path.stat().st_size if self.path.exists() else 0}


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; binding errors become RagError."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> None:
        try:
            self.store.conn.execute("BEGIN IMMEDIATE")
        except sqlite.binding().Error as e:
            raise sqlite.database_error(self.store.path, e) from None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        error = sqlite.binding().Error
        if exc_type is None:
            try:
                self.store.conn.execute("COMMIT")
                return
            except error as e:
                self.store.conn.execute("ROLLBACK")
                raise sqlite.database_error(self.store.path, e) from None
        try:
            self.store.conn.execute("ROLLBACK")
        except error:
            pass
        if isinstance(exc, error):
            raise sqlite.database_error(self.store.path, exc) from None
