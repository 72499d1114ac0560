"""Keyword scoring for big indexes: FTS5's bm25 of frequent terms computed from postings the index keeps.

FTS5's bm25 of a query is a sum over its phrases (here: its words) of

    idf * f * (K1 + 1) / (f + K1 * (1 - B + B * D / avgdl)),   idf = ln((N - n + 0.5) / (n + 0.5))

with f the phrase's weighted count in the chunk (each occurrence counts its column's weight), D the chunk's
length in tokens (all columns), avgdl the mean length, N the chunks and n the chunks that hold the phrase.
What makes an OR query slow on a big index is SQLite scoring every chunk that holds a frequent word (~0.8 us
per chunk and word, about 6,000 chunks per frequent word at 100k chunks), and nearly every question holds
several. So an ingest that changed the index ends by writing, for each term held by at least
POSTINGS_MIN_ROWS chunks, its postings: the chunk ids, f and D of each (keyword_postings). f and D of a chunk
never change while it exists, and N, avgdl and n are read at search time, so postings stay right when
chunks come and go:
- chunks deleted since (keyword_dead, filled by a trigger) are left out;
- chunks added since (ids above meta's postings_max_id, never reused below it) are scored by FTS5;
- a change to the chunks large enough (REBUILD_FRACTION of them) has the next ingest write them again.
A search word that is one such term is scored from them with numpy; the other words go to FTS5, all in one
statement. Rankings and scores are FTS5's own for the OR of the words (the tests check this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgellm.rag.store import FTS_TOKENIZE, Store

K1, B = 1.2, 0.75  # FTS5's bm25 constants
# Weights of the FTS columns (heading, text): a word in a chunk's heading path says more about it. Whole
# numbers, so a chunk's weighted count of a term is an integer (kept as uint16).
WEIGHTS = (2, 1)
BM25_SQL = f"bm25(chunks_fts, {float(WEIGHTS[0])}, {float(WEIGHTS[1])})"
POSTINGS_MIN_ROWS = 1000  # terms held by fewer chunks are cheap for FTS5
POSTINGS_MAX_BYTES = 64 << 20  # most frequent terms first; 8 bytes a posting
REBUILD_FRACTION = 0.1  # chunks added or deleted since the postings were written, of all chunks
_COLUMNS = ("heading", "text")


def quoted(word: str) -> str:
    """`word` as an FTS5 string: never read as query syntax."""
    return '"' + word.replace('"', '""') + '"'


def any_of(words: list[str]) -> str:
    """The FTS5 query that matches a chunk holding any of `words`."""
    return " OR ".join(quoted(w) for w in words)


def _varints(blob: bytes) -> list[int]:
    """SQLite's varints (big-endian, 7 bits a byte, the ninth byte whole), as FTS5 writes its sizes."""
    out, i = [], 0
    while i < len(blob):
        value = 0
        for j in range(9):
            byte = blob[i]
            i += 1
            if j == 8:
                value = (value << 8) | byte
                break
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
        out.append(value)
    return out


def fts_totals(store: Store) -> tuple[int, int]:
    """(chunks, tokens in all of them) as FTS5's bm25 reads them: its 'averages' record (id 1 of the
    %_data table: the row count, then one token total per column)."""
    row = store._query_one("SELECT block FROM chunks_fts_data WHERE id = 1")
    values = _varints(row[0]) if row and row[0] else []
    return (values[0], sum(values[1:])) if values else (0, 0)


def _vocab(store: Store, kind: str) -> str:
    """A connection-local fts5vocab table of `kind` ('row' or 'instance') over chunks_fts."""
    name = f"edgellm_vocab_{kind}"
    store.conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{name} USING fts5vocab(main, chunks_fts, '{kind}')")
    return f"temp.{name}"


def fts_terms(store: Store, words: list[str]) -> list[tuple[str, ...]]:
    """The FTS5 terms each word becomes under the index's own tokenizer (stemmed, folded; a word of
    several parts, such as 'x86_64', becomes a phrase of several terms)."""
    conn = store.conn
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.edgellm_query_words "
                 f"USING fts5(word, tokenize='{FTS_TOKENIZE}')")
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.edgellm_query_terms "
                 "USING fts5vocab(temp, edgellm_query_words, 'instance')")
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        conn.executemany("INSERT INTO temp.edgellm_query_words(rowid, word) VALUES (?, ?)", enumerate(words))
        rows = conn.execute("SELECT doc, term FROM temp.edgellm_query_terms ORDER BY doc, offset").fetchall()
        conn.execute("DELETE FROM temp.edgellm_query_words")
    finally:
        if own:
            conn.execute("COMMIT")
    terms: list[list[str]] = [[] for _ in words]
    for doc, term in rows:
        terms[doc].append(term)
    return [tuple(t) for t in terms]


def _lengths(store: Store) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids, their lengths in tokens over all columns) from FTS5's %_docsize table."""
    rows = store._query("SELECT id, sz FROM chunks_fts_docsize ORDER BY id")
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    lengths = np.fromiter((sum(_varints(r[1])) for r in rows), np.int64, len(rows))
    return ids, lengths


def _postings_of(store: Store, vocab: str, term: str, ids: np.ndarray, lengths: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(chunk ids, weighted count, chunk length) of every chunk that holds term."""
    # one row of two strings rather than a row per occurrence: a third of the time
    docs_text, in_heading = store._query_one(
        f"SELECT group_concat(doc), group_concat(col = ?, '') FROM {vocab} WHERE term = ?", (_COLUMNS[0], term))
    docs = np.fromstring(docs_text or "", dtype=np.int64, sep=",")
    weights = np.where(np.frombuffer((in_heading or "").encode(), np.uint8) == ord("1"), WEIGHTS[0], WEIGHTS[1])
    chunk_ids, where = np.unique(docs, return_inverse=True)
    counts = np.bincount(where, weights=weights).astype(np.int64)
    return chunk_ids, counts, lengths[np.searchsorted(ids, chunk_ids)]


def refresh(store: Store) -> bool:
    """Writes the postings again when none are kept or they describe too few of the chunks (run at the end
    of an ingest that changed the index); removes them from an index too small to need them. One
    transaction. True when it wrote."""
    with store.transaction():
        n_rows, _ = fts_totals(store)
        info = store.postings_info()
        if n_rows < POSTINGS_MIN_ROWS:
            if info is not None:
                store.write_postings([], None, None)
            return False
        if info is not None and info.scoring == BM25_SQL:
            added, = store._query_one("SELECT count(*) FROM chunks WHERE id > ?", (info.max_id,))
            dead, = store._query_one("SELECT count(*) FROM keyword_dead")
            if added + dead <= REBUILD_FRACTION * n_rows:
                return False
        ids, lengths = _lengths(store)
        if len(ids) != n_rows or ids[-1] > np.iinfo(np.int32).max or lengths.max() > np.iinfo(np.uint16).max:
            store.write_postings([], None, None)  # beyond the layout (or FTS5 out of step): FTS5 scores all
            return True
        vocab = _vocab(store, "instance")
        terms = store._query(f"SELECT term FROM {_vocab(store, 'row')} WHERE doc >= ? ORDER BY doc DESC, term",
                             (POSTINGS_MIN_ROWS,))
        rows, size = [], 0
        for term, in terms:
            chunk_ids, counts, chunk_lengths = _postings_of(store, vocab, term, ids, lengths)
            if size + 8 * len(chunk_ids) > POSTINGS_MAX_BYTES or counts.max() > np.iinfo(np.uint16).max:
                continue  # FTS5 scores this term; a rarer one may still fit
            size += 8 * len(chunk_ids)
            rows.append((term, chunk_ids.astype("<i4").tobytes(), counts.astype("<u2").tobytes(),
                         chunk_lengths.astype("<u2").tobytes()))
        max_id, = store._query_one("SELECT coalesce(max(id), 0) FROM chunks")
        store.write_postings(rows, int(max_id), BM25_SQL)
    return True


def bm25(counts: np.ndarray, lengths: np.ndarray, n_rows: int, avgdl: float, n_hit: int) -> np.ndarray:
    """FTS5's bm25 term (positive: higher is better) for one phrase in each chunk."""
    idf = math.log((n_rows - n_hit + 0.5) / (n_hit + 0.5))
    if idf <= 0.0:
        idf = 1e-6
    f = counts.astype(np.float64)
    return idf * (f * (K1 + 1.0)) / (f + K1 * (1.0 - B + B * lengths / avgdl))


@dataclass
class _Postings:
    ids: np.ndarray  # int64 chunk ids, sorted
    counts: np.ndarray
    lengths: np.ndarray


@dataclass
class KeywordState:
    """What a searcher keeps between queries for one version of the index (chunks and postings)."""

    version: tuple[int, int]
    terms: frozenset[str] = frozenset()  # terms with postings
    max_id: int = 0
    dead: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted
    # rows FTS5 must score besides the postings: None, those past max_id, or those and the dead ids that
    # exist again (rows rewritten in place)
    beyond: str | None = None
    n_rows: int = 0
    avgdl: float = 1.0
    cache: dict[str, _Postings] = field(default_factory=dict)
    cache_bytes: int = 0


def load_state(store: Store, version: tuple[int, int]) -> KeywordState:
    info = store.postings_info()
    if info is None or info.scoring != BM25_SQL:
        return KeywordState(version)
    n_rows, n_tokens = fts_totals(store)
    dead = np.fromiter((r[0] for r in store._query("SELECT id FROM keyword_dead ORDER BY id")), np.int64)
    beyond = None
    if store._query_one("SELECT 1 FROM chunks WHERE id > ? LIMIT 1", (info.max_id,)):
        beyond = "rowid > ?"
    if store._query_one("SELECT 1 FROM keyword_dead d JOIN chunks c ON c.id = d.id LIMIT 1"):
        beyond = "(+rowid > ? OR +rowid IN (SELECT id FROM keyword_dead))"  # rows rewritten in place
    terms = frozenset(r[0] for r in store._query("SELECT term FROM keyword_postings"))
    return KeywordState(version, terms, info.max_id, dead, beyond, n_rows, n_tokens / max(n_rows, 1))


def postings(store: Store, state: KeywordState, term: str, max_bytes: int) -> _Postings:
    """A term's postings less the dead chunks, from the state's cache (least recently used dropped beyond
    max_bytes) or the index."""
    hit = state.cache.pop(term, None)
    if hit is None:
        row = store._query_one("SELECT ids, counts, lengths FROM keyword_postings WHERE term = ?", (term,))
        ids = np.frombuffer(row[0], "<i4").astype(np.int64)
        keep = ~np.isin(ids, state.dead, assume_unique=True) if len(state.dead) else slice(None)
        hit = _Postings(ids[keep], np.frombuffer(row[1], "<u2")[keep], np.frombuffer(row[2], "<u2")[keep])
        state.cache_bytes += sum(a.nbytes for a in (hit.ids, hit.counts, hit.lengths))
    state.cache[term] = hit  # the most recent last
    while state.cache_bytes > max_bytes and len(state.cache) > 1:
        old = state.cache.pop(next(iter(state.cache)))
        state.cache_bytes -= sum(a.nbytes for a in (old.ids, old.counts, old.lengths))
    return hit


def scores(store: Store, state: KeywordState, words: list[str], terms: list[str], max_bytes: int
           ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(chunk ids, bm25) lists whose sum is FTS5's bm25 of the OR of `words`, each of which is the one
    term of the same place in `terms` and has postings."""
    parts = []
    for word, term in zip(words, terms):
        p = postings(store, state, term, max_bytes)
        n_hit = len(p.ids)
        if state.beyond is not None:
            n_hit += store._query_one(f"SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ? AND {state.beyond}",
                                      (quoted(word), state.max_id))[0]
        parts.append((p.ids, bm25(p.counts, p.lengths, state.n_rows, state.avgdl, n_hit)))
    if state.beyond is not None and words:  # chunks newer than the postings: FTS5 scores them
        rows = store._query(f"SELECT rowid, -{BM25_SQL} FROM chunks_fts WHERE chunks_fts MATCH ? AND {state.beyond}",
                            (any_of(words), state.max_id))
        parts.append((np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                      np.fromiter((r[1] for r in rows), np.float64, len(rows))))
    return parts

