"""The index file: one SQLite database with plain tables a user can open with the `sqlite3` shell.

    meta(key, value)            embedder id and dimension, embedding_text (what is embedded of a chunk:
                                see ingest.embedding_text), created_at, edgellm version
    documents(id, path, ...)    one row per indexed file: content hash, size, mtime, kind, title, metadata
    chunks(id, doc_id, ...)     text (a verbatim slice of the extracted document text), char offsets,
                                heading path (JSON array), token count
    chunks_fts                  FTS5 over chunks(heading, text), external content kept in step by triggers
    chunks_vec                  sqlite-vec vec0 table: chunk id -> float32[dim] embedding (cosine distance)
    keyword_postings(term, ...) per term held by many chunks: the chunk ids, the term's weighted count and
                                the chunk's length in tokens of each (see keywords.py), written by an ingest
    keyword_dead(id)            chunks deleted (or rewritten) since the postings were written, by a trigger
    meta's chunks_epoch counts every change to the chunks (a trigger); postings_build every postings write

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

# The tokenizer of chunks_fts (migration 1); keywords.py tokenizes query words with it.
FTS_TOKENIZE = "porter unicode61 remove_diacritics 2"

# meta's embedding_text: the recipe by which a chunk becomes the text its vector embeds (ingest.embedding_text).
# A new index records EMBED_TITLE; an index without the key was made with EMBED_HEADING.
EMBED_TITLE, EMBED_HEADING = "title", "heading"
EMBED_RECIPES = (EMBED_TITLE, EMBED_HEADING)


def _recipe(meta: dict[str, str]) -> str:
    """meta's embedding_text as recorded (EMBED_HEADING when the index predates the key), unchecked."""
    return meta.get("embedding_text", EMBED_HEADING)


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


def _migration_3(conn: Any, dim: int) -> None:
    """keyword_cache (bm25 scores per query word, dropped at every change) gives way to keyword_postings,
    which stay right as chunks come and go."""
    for event in ("insert", "delete", "update"):
        conn.execute(f"DROP TRIGGER chunks_epoch_{event}")
        conn.execute(f"""
            CREATE TRIGGER chunks_epoch_{event} AFTER {event.upper()} ON chunks BEGIN
                UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'chunks_epoch';
            END""")
    conn.execute("DROP TABLE keyword_cache")
    conn.execute("""
        CREATE TABLE keyword_postings (
            term        TEXT PRIMARY KEY,       -- an FTS5 term (stemmed) held by many chunks
            ids         BLOB NOT NULL,          -- int32 chunk ids, ascending, little-endian
            counts      BLOB NOT NULL,          -- uint16 each: the term's occurrences, weighted by column
            lengths     BLOB NOT NULL           -- uint16 each: the chunk's tokens, all columns
        )""")
    conn.execute("CREATE TABLE keyword_dead (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('postings_build', '0')")
    for event in ("delete", "update"):
        conn.execute(f"""
            CREATE TRIGGER chunks_dead_{event} AFTER {event.upper()} ON chunks
            WHEN old.id <= (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'postings_max_id') BEGIN
                INSERT OR IGNORE INTO keyword_dead(id) VALUES (old.id);
            END""")


# Migration N takes the schema from user_version N-1 to N. Append; never edit a released one.
MIGRATIONS: tuple[Callable[[Any, int], None], ...] = (_migration_1, _migration_2, _migration_3)
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
class PostingsInfo:
    max_id: int         # the postings cover the chunks up to this id, as they were when written
    scoring: str        # the bm25 expression they serve


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
                    ("embedder_id", embedder_id), ("embedder_dim", str(dim)), ("embedding_text", EMBED_TITLE),
                    ("created_at", str(time.time())), ("created_by", f"edgellm {__version__}")])

    def meta(self) -> dict[str, str]:
        return dict(self._query("SELECT key, value FROM meta"))

    def embedding_text(self) -> str:
        """The index's recipe for the text a chunk's vector embeds (one of EMBED_RECIPES)."""
        recipe = _recipe(self.meta())
        if recipe not in EMBED_RECIPES:
            raise RagError(f"{self.path}: meta embedding_text {recipe!r} is not one this edgellm knows "
                           f"({', '.join(EMBED_RECIPES)}); upgrade edgellm to add to this index")
        return recipe

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

    def hashes(self) -> dict[str, str]:
        """path -> sha256 of every indexed document."""
        return dict(self._query("SELECT path, sha256 FROM documents"))

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
            # ids are never reused below the postings' reach (SQLite would reuse a deleted largest id)
            next_id, = self.conn.execute(
                "SELECT max(coalesce((SELECT max(id) FROM chunks), 0), coalesce((SELECT CAST(value AS INTEGER) "
                "FROM meta WHERE key = 'postings_max_id'), 0)) + 1").fetchone()
            for seq, (c, v) in enumerate(zip(chunks, vectors)):
                self.conn.execute(
                    "INSERT INTO chunks(id, doc_id, seq, text, char_start, char_end, heading, n_tokens) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (next_id + seq, doc_id, seq, c.text, c.start, c.end,
                     json.dumps(list(c.heading), ensure_ascii=False), c.n_tokens))
                self.conn.execute("INSERT INTO chunks_vec(chunk_id, embedding) VALUES (?, ?)",
                                  (next_id + seq, v.tobytes()))
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

    def version(self) -> tuple[int, int]:
        """(chunks_epoch, postings_build): what a searcher's keyword state is valid for."""
        rows = dict(self._query("SELECT key, value FROM meta WHERE key IN ('chunks_epoch', 'postings_build')"))
        return int(rows["chunks_epoch"]), int(rows["postings_build"])

    def read(self) -> _Read:
        """A read transaction (one snapshot for every statement in it), unless one is open already."""
        return _Read(self)

    def postings_info(self) -> PostingsInfo | None:
        rows = dict(self._query("SELECT key, value FROM meta WHERE key IN ('postings_max_id', 'postings_scoring')"))
        if "postings_max_id" not in rows:
            return None
        return PostingsInfo(int(rows["postings_max_id"]), rows.get("postings_scoring", ""))

    def write_postings(self, rows: Sequence[tuple[str, bytes, bytes, bytes]], max_id: int | None,
                       scoring: str | None) -> None:
        """Replaces the keyword postings with `rows` (term, ids, counts, lengths) covering the chunks up to
        max_id (None: no postings). Inside the caller's transaction."""
        self.conn.execute("DELETE FROM keyword_postings")
        self.conn.execute("DELETE FROM keyword_dead")
        self.conn.executemany("INSERT INTO keyword_postings(term, ids, counts, lengths) VALUES (?, ?, ?, ?)", rows)
        self.conn.execute("DELETE FROM meta WHERE key IN ('postings_max_id', 'postings_scoring')")
        if max_id is not None and scoring is not None:
            self.conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                                  [("postings_max_id", str(max_id)), ("postings_scoring", scoring)])
        self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'postings_build'")

    # ---- statistics ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        n_docs, = self._query_one("SELECT count(*) FROM documents")
        n_chunks, n_tokens = self._query_one("SELECT count(*), coalesce(sum(n_tokens), 0) FROM chunks")
        n_vectors, = self._query_one("SELECT count(*) FROM chunks_vec")
        kinds = dict(self._query("SELECT kind, count(*) FROM documents GROUP BY kind ORDER BY kind"))
        terms, postings_bytes = self._query_one(
            "SELECT count(*), coalesce(sum(length(ids) + length(counts) + length(lengths)), 0) FROM keyword_postings")
        meta = self.meta()
        return {"path": str(self.path), "schema_version": SCHEMA_VERSION, "documents": n_docs,
                "chunks": n_chunks, "tokens": n_tokens, "vectors": n_vectors, "kinds": kinds,
                "embedder_id": meta.get("embedder_id"), "embedder_dim": int(meta.get("embedder_dim", 0)),
                "embedding_text": _recipe(meta),
                "keyword_postings": {"terms": terms, "bytes": postings_bytes},
                "file_bytes": self.path.stat().st_size if self.path.exists() else 0}


class _Read:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.own = False

    def __enter__(self) -> None:
        if not self.store.conn.in_transaction:
            self.store.conn.execute("BEGIN")
            self.own = True

    def __exit__(self, *exc: object) -> None:
        if self.own:
            self.store.conn.execute("COMMIT")


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
