"""Retrieval: vector KNN (sqlite-vec), keyword BM25 (FTS5), and their reciprocal rank fusion (hybrid).

Reciprocal rank fusion: score(chunk) = sum over the lists it appears in of 1 / (RRF_K + rank), rank from 1.
It needs no score calibration between cosine distances and BM25, and a chunk both lists agree on wins.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgellm import _core
from edgellm.quant import GGMLType, quantize
from edgellm.rag import keywords
from edgellm.rag.embed import Embedder
from edgellm.rag.store import Store

MODES = ("hybrid", "vector", "keyword")
RRF_K = 60
# Each list contributes this many candidates per requested result to the fusion.
_FUSION_DEPTH = 8
_BM25 = keywords.BM25_SQL  # column weights: keywords.WEIGHTS

STOPWORDS = frozenset({"a", "about", "above", "after", "again", "against", "all", "am", "an", "and",
    "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both",
    "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for",
    "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him",
    "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more",
    "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other",
    "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should", "so", "some", "such",
    "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they",
    "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what",
    "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your",
    "yours", "yourself", "yourselves"})
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class SearchResult:
    chunk_id: int
    text: str
    path: str
    title: str | None
    heading: tuple[str, ...]
    start: int          # char offsets into the document's extracted text
    end: int
    score: float        # hybrid: fused RRF score; vector: cosine similarity; keyword: -bm25 (higher is better)


def keyword_words(text: str) -> list[str]:
    """The words of free text a keyword search looks for: lowercased, stopwords dropped (unless nothing
    else is left), each once, in order."""
    words = [w.lower() for w in _WORD.findall(text)]
    kept = [w for w in words if w not in STOPWORDS] or words
    return list(dict.fromkeys(kept))


def keyword_query(text: str) -> str | None:
    """An FTS5 query for free text: its keyword_words, quoted, joined with OR; BM25 ranks chunks with
    more and rarer words first."""
    words = keyword_words(text)
    return keywords.any_of(words) if words else None


def fuse(vector: list[tuple[int, float]], keyword: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of the two lists of (chunk id, score), best first: (chunk id, fused score).

    Fused scores tie exactly when two chunks hold the same ranks in swapped lists (1 and 2 against 2 and
    1, or rank 1 in one list only each): in the top 5 of 13% (Valgrind) and 15% (Node.js) of the bench's questions.
    A tie goes to the chunk the vector list ranks higher, not to the one ingested first."""
    fused: dict[int, float] = {}
    order: dict[int, int] = {}  # chunk id -> vector rank (past the list's end when absent)
    for rank, (chunk_id, _) in enumerate(vector, start=1):
        fused[chunk_id] = 1.0 / (RRF_K + rank)
        order[chunk_id] = rank
    for rank, (chunk_id, _) in enumerate(keyword, start=1):
        fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
        order.setdefault(chunk_id, len(vector) + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], order[item[0]], item[0]))


def _sum_scores(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(totals indexed by chunk id, the ids with a score) of (chunk ids, scores) lists."""
    if not parts:
        return np.zeros(0), np.zeros(0, np.int64)
    ids = np.concatenate([p[0] for p in parts])
    totals = np.bincount(ids, weights=np.concatenate([p[1] for p in parts]))
    return totals, np.flatnonzero(np.bincount(ids))


def _path_filter(path: str | None) -> tuple[str, list[Any]]:
    """SQL over `d.path` for a filter: a glob when it has glob characters, else a file or folder prefix."""
    if not path:
        return "1", []
    if any(ch in path for ch in "*?["):
        pattern = path if os.path.isabs(path) or path.startswith("*") else os.path.join(os.getcwd(), path)
        return "d.path GLOB ?", [pattern]
    full = os.path.abspath(path)
    prefix = full.rstrip(os.sep) + os.sep  # "/" stays "/"
    return "(d.path = ? OR substr(d.path, 1, ?) = ?)", [full, len(prefix), prefix]


# From this many vectors on, the searcher keeps a float16 copy of them in memory after the first query and
# scores a query against all of them with the native core's matmul kernels: 100k x 384 take about 3.5 ms on
# two cores (77 MB), sqlite-vec's scan of its table about 20 ms. float16 keeps every score within 1e-4 of
# the float32 one. Below it, sqlite-vec's KNN is as fast and costs no memory.
WARM_MIN_VECTORS = 20_000
# Keyword search on a big index scores the words with postings from them (keywords.py); their arrays stay
# in memory up to this many bytes for the index version they describe.
_POSTINGS_CACHE_BYTES = 64 << 20
_TERMS_CACHE_MAX = 100_000  # query words whose FTS5 terms are remembered
_VEC0_MAX_K = 4096  # sqlite-vec refuses a KNN query for more neighbours


class Searcher:
    def __init__(self, store: Store, embedder: Embedder, *, warm_min_vectors: int = WARM_MIN_VECTORS) -> None:
        self.store = store
        self.embedder = embedder
        self.warm_min_vectors = warm_min_vectors
        self._matrix: tuple[np.ndarray, Any] | None = None
        self._matrix_version = -1  # the chunks epoch _matrix and _n_vectors describe
        self._n_vectors = 0
        self._keywords = keywords.KeywordState((-1, -1))
        self._terms: dict[str, tuple[str, ...]] = {}  # query word -> its FTS5 terms

    def search(self, query: str, *, k: int = 5, mode: str = "hybrid", path: str | None = None) -> list[SearchResult]:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if k <= 0 or not query.strip():
            return []
        depth = max(k * _FUSION_DEPTH, 40)
        if mode == "vector":
            ranked = self.vector_ids(query, k, path)
        elif mode == "keyword":
            ranked = self.keyword_ids(query, k, path)
        else:
            ranked = fuse(self.vector_ids(query, depth, path), self.keyword_ids(query, depth, path))[:k]
        return self._results(ranked)

    # ---- the two lists --------------------------------------------------------------------------------

    def vector_ids(self, query: str, k: int, path: str | None = None) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity), best first. Exhaustive search either way: sqlite-vec's KNN over the
        vec0 table, or, once an index of at least WARM_MIN_VECTORS has been searched, one matrix-vector
        product over a memory-resident float16 copy of its vectors (refreshed when the index changes)."""
        q = np.ascontiguousarray(self.embedder.embed_query(query), dtype=np.float32)
        where, args = _path_filter(path)
        matrix = self._warm_matrix()
        total = self._n_vectors
        if matrix is None and (path or k > _VEC0_MAX_K) and total > _VEC0_MAX_K:
            # more neighbours than vec0's KNN returns at once may be needed (a narrow filter, a huge k)
            matrix = self._load_matrix()
        if matrix is not None:
            ids, vectors = matrix
            scores = vectors.matmul(q)
            if path:
                allowed = self._filter_ids(None, where, args)
                scores = np.where(np.isin(ids, np.fromiter(allowed, np.int64, len(allowed))), scores, -np.inf)
            n = min(k, int(np.isfinite(scores).sum()))
            if n <= 0:
                return []
            top = np.argpartition(-scores, n - 1)[:n]
            top = top[np.lexsort((ids[top], -scores[top]))]
            return [(int(ids[i]), float(scores[i])) for i in top]
        want = min(k, _VEC0_MAX_K) if not path else min(total, k * 8)  # total <= _VEC0_MAX_K here
        while True:
            rows = self.store._query(
                "SELECT chunk_id, distance FROM chunks_vec WHERE embedding MATCH ? AND k = ?",
                (q.tobytes(), max(want, 1)))
            if not path:
                return [(cid, 1.0 - dist) for cid, dist in rows[:k]]
            allowed = self._filter_ids([cid for cid, _ in rows], where, args)
            hits = [(cid, 1.0 - dist) for cid, dist in rows if cid in allowed]
            if len(hits) >= k or want >= total:
                return hits[:k]
            want = min(total, want * 4)

    def _version(self) -> int:
        """Changes with every change to the chunks, by any connection."""
        return self.store.chunks_epoch()

    def _warm_matrix(self) -> tuple[np.ndarray, Any] | None:
        """(ids, the vectors' float16 RowMatrix) for a big index, loaded once and reloaded after any
        write; None for a small index. Also keeps _n_vectors, the vector count, for the same version:
        counting costs a scan of vec0's rowids."""
        version = self._version()
        if self._matrix_version == version:
            return self._matrix
        self._matrix, self._matrix_version = None, version
        self._n_vectors = self.store._query_one("SELECT count(*) FROM chunks_vec")[0]
        if self._n_vectors >= self.warm_min_vectors:
            self._matrix = self._load_matrix()
        return self._matrix

    def _load_matrix(self) -> tuple[np.ndarray, Any]:
        """(ids, the vectors as float16 rows in the core's RowMatrix)."""
        rows = self.store._query("SELECT chunk_id, embedding FROM chunks_vec")
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), self.embedder.dim)
        packed = quantize(vectors, GGMLType.F16)
        return ids, _core.RowMatrix(packed, int(GGMLType.F16), self.embedder.dim)

    def keyword_ids(self, query: str, k: int, path: str | None = None) -> list[tuple[int, float]]:
        """(chunk id, -bm25), best first: FTS5's bm25 of the OR of the query's words."""
        words = keyword_words(query)
        if not words:
            return []
        if path:  # FTS5 joined to the documents: only the chunks that pass the filter are scored
            where, args = _path_filter(path)
            rows = self.store._query(
                f"SELECT f.rowid, {_BM25} AS score "
                "FROM chunks_fts f JOIN chunks c ON c.id = f.rowid JOIN documents d ON d.id = c.doc_id "
                f"WHERE chunks_fts MATCH ? AND {where} ORDER BY score LIMIT ?",
                [keywords.any_of(words), *args, k])
            return [(cid, -score) for cid, score in rows]
        with self.store.read():
            version = self.store.version()
            if self._keywords.version != version:
                self._keywords = keywords.load_state(self.store, version)
            state = self._keywords
            scored, terms, rest = [], [], []
            if state.terms:
                for word, word_terms in zip(words, self._fts_terms(words)):
                    if len(word_terms) == 1 and word_terms[0] in state.terms:
                        scored.append(word)
                        terms.append(word_terms[0])
                    elif word_terms:  # a word with no terms (only separators to FTS5) matches nothing
                        rest.append(word)
            else:
                rest = words
            parts = keywords.scores(self.store, state, scored, terms, _POSTINGS_CACHE_BYTES)
            if rest:
                parts.append(self._scores(keywords.any_of(rest)))
        totals, hit = _sum_scores(parts)
        n = min(k, len(hit))
        if n <= 0:
            return []
        top = hit[np.argpartition(-totals[hit], n - 1)[:n]]
        top = top[np.lexsort((top, -totals[top]))]
        return [(int(i), float(totals[i])) for i in top]

    def _fts_terms(self, words: list[str]) -> list[tuple[str, ...]]:
        """Each word's FTS5 terms (remembered)."""
        new = [w for w in words if w not in self._terms]
        if new:
            if len(self._terms) + len(new) > _TERMS_CACHE_MAX:
                self._terms.clear()
            self._terms.update(zip(new, keywords.fts_terms(self.store, new)))
        return [self._terms[w] for w in words]

    def _scores(self, match: str) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, -bm25) of every chunk that matches the FTS5 query `match`."""
        rows = self.store._query(f"SELECT rowid, {_BM25} FROM chunks_fts WHERE chunks_fts MATCH ?", [match])
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        return ids, -np.fromiter((r[1] for r in rows), np.float64, len(rows))

    def _filter_ids(self, ids: list[int] | None, where: str, args: list[Any]) -> set[int]:
        """The chunk ids among `ids` (all chunks when None) whose document passes the path filter."""
        if ids is None:
            rows = self.store._query(f"SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE {where}",
                                     args)
            return {r[0] for r in rows}
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        rows = self.store._query(f"SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id "
                                 f"WHERE c.id IN ({marks}) AND {where}", [*ids, *args])
        return {r[0] for r in rows}

    def _results(self, ranked: list[tuple[int, float]]) -> list[SearchResult]:
        if not ranked:
            return []
        marks = ",".join("?" * len(ranked))
        rows = self.store._query(
            "SELECT c.id, c.text, d.path, d.title, c.heading, c.char_start, c.char_end FROM chunks c "
            f"JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({marks})", [cid for cid, _ in ranked])
        by_id = {r[0]: r for r in rows}
        out = []
        for cid, score in ranked:
            r = by_id.get(cid)
            if r is not None:  # a chunk removed between the two queries is simply not returned
                out.append(SearchResult(cid, r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6], float(score)))
        return out
