"""The RAG index on real parts: SQLite (+ FTS5, sqlite-vec), the all-MiniLM-L6-v2 ONNX embedder, real files.

Incremental ingest (re-ingest, change, prune), a SIGKILL mid-ingest, the schema read by the plain `sqlite3`
shell, hybrid retrieval where either list alone misses, and the errors a user can hit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import rag as rag_helpers
from helpers.cache import cache_dir

pytest.importorskip("sqlite_vec")
pytest.importorskip("fastembed")


@pytest.fixture(scope="module")
def embedder():
    return rag_helpers.embedder()


def _index(db: Path, embedder):
    from edgellm.rag import Index

    return Index(db, embedder)


def _chunk_rows(index) -> dict[str, list[tuple]]:
    """path -> [(seq, text, start, end, heading)] for the whole index."""
    rows = index.store.conn.execute(
        "SELECT d.path, c.seq, c.text, c.char_start, c.char_end, c.heading FROM chunks c "
        "JOIN documents d ON d.id = c.doc_id ORDER BY d.path, c.seq").fetchall()
    out: dict[str, list[tuple]] = {}
    for path, *rest in rows:
        out.setdefault(path, []).append(tuple(rest))
    return out


def _check_consistent(index) -> None:
    """Every chunk has exactly one vector and the FTS index matches the chunks table."""
    conn = index.store.conn
    n_chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    n_vec = conn.execute("SELECT count(*) FROM chunks_vec").fetchone()[0]
    orphans = conn.execute("SELECT count(*) FROM chunks_vec WHERE chunk_id NOT IN (SELECT id FROM chunks)").fetchone()[0]
    assert (n_vec, orphans) == (n_chunks, 0)
    conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")


# ---- embedder --------------------------------------------------------------------------------------------

def test_default_embedder_matches_transformers(embedder):
    """Our ONNX export (int8) against the safetensors model run by transformers with sentence-transformers'
    mean pooling: the same vectors up to quantization error, and the same nearest neighbours."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModel, AutoTokenizer

    from edgellm.rag.embed import default_model_source

    texts = ["How do I find memory leaks in a C program?", "Valgrind's Memcheck reports invalid reads.",
             "Sourdough bread needs a long rise.", "The cat sat on the warm windowsill all afternoon.",
             "Cache misses slow down the inner loop."]
    src = default_model_source()
    tok = AutoTokenizer.from_pretrained(str(src))
    model = AutoModel.from_pretrained(str(src)).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)

    fp32 = rag_helpers.embedder("fp32").embed_documents(texts)
    int8 = embedder.embed_documents(texts)
    assert fp32.shape == int8.shape == (5, 384)
    assert np.min(np.sum(fp32 * ref, axis=1)) > 0.9999
    assert np.min(np.sum(int8 * ref, axis=1)) > 0.97
    # the similarity structure survives quantization: same nearest neighbour for every text
    sim_ref, sim_int8 = ref @ ref.T - 2 * np.eye(5), int8 @ int8.T - 2 * np.eye(5)
    assert list(sim_ref.argmax(1)) == list(sim_int8.argmax(1))
    q = embedder.embed_query("memory leak detection")
    assert abs(np.linalg.norm(q) - 1) < 1e-5 and int(np.argmax(int8 @ q)) in (0, 1)


def test_a_text_embeds_the_same_whatever_it_is_embedded_with(embedder):
    """The int8 model quantizes its activations on the fly, over all the inputs of one run: a text shares a
    run with no other, so its vector does not depend on which texts, or how many, it was embedded with; on
    one session or several; and it equals the query side's for the same text."""
    from edgellm.rag.embed import OnnxEmbedder

    texts = [f"Note {i}: " + "Valgrind's Memcheck reports invalid reads of freed heap blocks. " * (1 + i % 4)
             for i in range(9)]
    alone = np.stack([embedder.embed_documents([t])[0] for t in texts])
    assert np.array_equal(embedder.embed_documents(texts), alone)
    assert np.array_equal(embedder.embed_documents(texts[::-1])[::-1], alone)
    assert np.array_equal(embedder.embed_query(texts[3]), alone[3])
    one = OnnxEmbedder(embedder.folder, model_id=embedder.model_id, dim=embedder.dim, threads=2, sessions=1,
                       batch_size=1)
    assert np.array_equal(one.embed_documents(texts), alone)
    batched = OnnxEmbedder(embedder.folder, model_id=embedder.model_id, dim=embedder.dim, threads=2, sessions=1,
                           batch_size=4)  # runs of four texts: each one's vector moves with its company
    close = np.sum(batched.embed_documents(texts) * alone, axis=1)
    assert close.min() > 0.99


def test_token_major_rewrite_keeps_the_encoders_outputs(tmp_path, embedder):
    """The int8 model is quantized from a graph rewritten token-major (edgellm/rag/onnx_graph.py). The
    rewritten float graph gives the plain one's hidden states on a padded batch of real texts, per token; a
    graph with an op the rewrite cannot vouch for (a reduction over the sequence) is left alone; and the
    default int8 model was made from the rewritten graph."""
    import onnx
    import onnxruntime as ort
    from onnx import helper
    from tokenizers import Tokenizer

    from edgellm.rag.embed import optimize_graph
    from edgellm.rag.onnx_graph import token_major_attention

    folder = rag_helpers.embedder_folder("fp32")
    plain = tmp_path / "plain.onnx"
    optimize_graph(folder / "model.onnx", plain, 12, 384, token_major=False)
    model = onnx.load(str(plain))
    rewritten = token_major_attention(model, 12)
    assert rewritten is not None
    ops = [n.op_type for n in rewritten.graph.node]
    # per layer one Transpose (the context back to tokens) where there were four, plus one in and one out
    assert ops.count("Transpose") == 6 + 2 and ops.count("FusedMatMul") == 12 and ops.count("Shape") <= 1

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    texts = ["Memcheck reports uses of uninitialised values.",
             "How do I suppress errors from system libraries that I cannot fix, without hiding my own errors?",
             "Cachegrind"]
    encoded = [tok.encode(t).ids for t in texts]
    width = max(map(len, encoded))
    ids = np.zeros((3, width), np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, :len(e)], mask[i, :len(e)] = e, 1
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    outs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
            for m in (model, rewritten)]
    assert outs[0].shape == outs[1].shape == (3, width, 384)
    for i, e in enumerate(encoded):
        assert np.max(np.abs(outs[0][i, :len(e)] - outs[1][i, :len(e)])) < 1e-4

    # a reduction over the sequence axis reading a hidden state: not an op that acts per token
    hidden = next(n for n in model.graph.node if n.op_type == "LayerNormalization" and "layer.2" in n.name)
    model.graph.node.append(helper.make_node("ReduceMean", [hidden.output[0]], ["pooled"], axes=[1]))
    model.graph.output.append(helper.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, ["batch", 1, 384]))
    assert token_major_attention(model, 12) is None

    names = {n.name for n in onnx.load(str(embedder.folder / "model.onnx")).graph.node}
    assert {"token_major/in", "token_major/out"} <= names


# ---- incremental ingest ----------------------------------------------------------------------------------

def test_reingest_adds_nothing_and_a_change_replaces_only_its_chunks(tmp_path, embedder):
    files = rag_helpers.write_corpus(tmp_path / "docs", 6)
    db = tmp_path / "index.db"
    with _index(db, embedder) as index:
        first = index.add([tmp_path / "docs", files[0]], progress=False)  # named twice, indexed once
        assert len(first.added) == 6 and not first.failed and first.chunks > 6
        before = _chunk_rows(index)
        ids_before = dict(index.store.conn.execute("SELECT id, text FROM chunks").fetchall())

        again = index.add([tmp_path / "docs"], progress=False)
        assert (again.added, again.updated, again.chunks) == ([], [], 0)
        assert len(again.skipped) == 6
        assert _chunk_rows(index) == before

        changed = files[2]
        changed.write_text(changed.read_text() + "\n## A new part\n\nCompletely new words: zeppelin harbour.\n")
        third = index.add([tmp_path / "docs"], progress=False)
        assert third.updated == [str(changed)] and third.added == [] and len(third.skipped) == 5
        after = _chunk_rows(index)
        for path in before:
            if path != str(changed):
                assert after[path] == before[path]
        assert any("zeppelin" in row[1] for row in after[str(changed)])
        # chunks of untouched files keep their ids (they were not rewritten)
        ids_after = dict(index.store.conn.execute("SELECT id, text FROM chunks").fetchall())
        untouched = {i: t for i, t in ids_before.items()
                     if i in ids_after and not any(t == row[1] for row in before[str(changed)])}
        assert untouched and all(ids_after[i] == t for i, t in untouched.items())
        _check_consistent(index)
        hit = index.search("zeppelin harbour", 1, mode="keyword")
        assert hit and hit[0].path == str(changed)


def test_prune_removes_deleted_files_only_when_asked(tmp_path, embedder):
    files = rag_helpers.write_corpus(tmp_path / "docs", 4)
    outside = rag_helpers.write_corpus(tmp_path / "other", 1)
    with _index(tmp_path / "index.db", embedder) as index:
        index.add([tmp_path / "docs", tmp_path / "other"], progress=False)
        files[1].unlink()
        outside[0].unlink()
        kept = index.add([tmp_path / "docs"], progress=False)
        assert kept.removed == [] and len(index.documents()) == 5
        pruned = index.add([tmp_path / "docs"], prune=True, progress=False)
        assert pruned.removed == [str(files[1])]
        paths = [d.path for d in index.documents()]
        assert str(files[1]) not in paths and str(outside[0]) in paths  # outside the pruned root: kept
        _check_consistent(index)


_INGEST_SCRIPT = """
import sys
from pathlib import Path
from edgellm.rag import Index
from edgellm.rag.embed import default_embedder
with Index(Path(sys.argv[1]), default_embedder(cache=Path(sys.argv[3]))) as index:
    index.add([Path(sys.argv[2])], progress=False)
"""


def test_sigkill_mid_ingest_then_resume(tmp_path, embedder):
    """Kill the ingest process while it writes; the next run completes the index, and every file is
    present exactly once with exactly the chunks a clean run gives it."""
    from edgellm.rag import sqlite

    docs = tmp_path / "docs"
    rag_helpers.write_corpus(docs, 150, paragraphs=4)
    db = tmp_path / "killed.db"
    script = tmp_path / "ingest.py"
    script.write_text(_INGEST_SCRIPT)
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(docs), str(cache_dir())], env=env)
    n_docs = 0
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    conn = sqlite.connect(db, busy_timeout_s=0.05)
                    n_docs = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
                    conn.close()
                except Exception:  # noqa: BLE001 (schema not there yet, or a writer holds the lock)
                    n_docs = 0
            if n_docs > 0:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the ingest finished before it could be killed"
    assert 0 < n_docs < 150

    with _index(db, embedder) as index:
        partial = len(index.documents())
        assert 0 < partial < 150
        resumed = index.add([docs], progress=False)
        assert len(resumed.skipped) == partial and len(resumed.added) == 150 - partial
        _check_consistent(index)
        killed_rows = _chunk_rows(index)
    with _index(tmp_path / "clean.db", embedder) as clean:
        clean.add([docs], progress=False)
        clean_rows = _chunk_rows(clean)
    assert len(killed_rows) == 150
    assert killed_rows == clean_rows


# ---- the file is plain SQLite ----------------------------------------------------------------------------

def test_index_opens_with_the_sqlite3_shell(tmp_path, embedder):
    shell = shutil.which("sqlite3")
    if shell is None:
        if os.environ.get("CI"):
            pytest.fail("the sqlite3 shell is missing on CI (.ci/run installs it)")
        pytest.skip("no sqlite3 shell here (apt-get install sqlite3)")
    rag_helpers.write_corpus(tmp_path / "docs", 3)
    db = tmp_path / "index.db"
    with _index(db, embedder) as index:
        index.add([tmp_path / "docs"], progress=False)
        n_chunks = index.stats()["chunks"]
    schema = subprocess.run([shell, str(db), ".schema"], capture_output=True, text=True, check=True).stdout
    for table in ("documents", "chunks", "chunks_fts", "chunks_vec", "meta"):
        assert f"CREATE TABLE {table}" in schema or f"CREATE VIRTUAL TABLE {table}" in schema
    sql = ("SELECT (SELECT count(*) FROM documents) AS docs, (SELECT count(*) FROM chunks) AS chunks, "
           "(SELECT value FROM meta WHERE key = 'embedder_dim') AS dim, "
           "(SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'tomatoes') AS hits")
    out = subprocess.run([shell, "-json", str(db), sql], capture_output=True, text=True, check=True).stdout
    row = json.loads(out)[0]
    assert row["docs"] == 3 and row["chunks"] == n_chunks and row["dim"] == "384" and row["hits"] > 0


# ---- retrieval -------------------------------------------------------------------------------------------

def test_hybrid_finds_what_keyword_search_misses(tmp_path, embedder):
    """Keyword search ranks a catalogue that repeats the part number first; vector search ranks the note
    with the fix first but a paraphrase close behind; fusion puts the chunk both lists rank high first."""
    rag_helpers.hybrid_fixture(tmp_path / "docs")
    with _index(tmp_path / "index.db", embedder) as index:
        index.add([tmp_path / "docs"], progress=False)
        top = {mode: index.search(rag_helpers.HYBRID_QUERY, 3, mode=mode) for mode in ("vector", "keyword", "hybrid")}
    names = {mode: [Path(r.path).name for r in results] for mode, results in top.items()}
    assert names["keyword"][0] == "keyword.md" and "semantic.md" not in names["keyword"], names
    assert names["vector"][:2] == ["target.md", "semantic.md"], names
    assert names["hybrid"][0] == "target.md", names
    best = top["hybrid"][0]
    assert "reset button" in best.text and best.heading == ("Field notes, spring",)
    assert best.text == (tmp_path / "docs" / "target.md").read_text()[best.start:best.end]


def test_fusion_breaks_ties_by_the_vector_list():
    """Reciprocal rank fusion: a chunk in both lists outranks one in a single list; chunks with swapped
    ranks (1 and 2 against 2 and 1), or each first in one list only, tie exactly, and the vector list's
    order decides, whatever the chunk ids."""
    from edgellm.rag.search import RRF_K, fuse

    fused = fuse([(9, 0.9), (3, 0.8), (5, 0.7)], [(3, 7.0), (9, 6.0), (4, 5.0)])
    assert [cid for cid, _ in fused] == [9, 3, 5, 4]
    assert fused[0][1] == fused[1][1] == 1 / (RRF_K + 1) + 1 / (RRF_K + 2)
    assert fused[2][1] == fused[3][1] == 1 / (RRF_K + 3)
    assert [cid for cid, _ in fuse([(8, 0.5)], [(2, 3.0)])] == [8, 2]
    assert [cid for cid, _ in fuse([], [(6, 2.0), (1, 1.0)])] == [6, 1]
    assert [cid for cid, _ in fuse([(7, 0.1), (2, 0.2), (4, 0.3)], [(2, 1.0)])][:2] == [2, 7]


def test_search_path_filter_and_modes(tmp_path, embedder):
    rag_helpers.write_corpus(tmp_path / "a", 5)
    rag_helpers.write_corpus(tmp_path / "b", 5)
    with _index(tmp_path / "index.db", embedder) as index:
        index.add([tmp_path / "a", tmp_path / "b"], progress=False)
        for mode in ("vector", "keyword", "hybrid"):
            everywhere = index.search("watering tomatoes in the sun", 4, mode=mode)
            assert len(everywhere) == 4 and "garden" in Path(everywhere[0].path).name
            only_b = index.search("watering tomatoes in the sun", 4, mode=mode, path=str(tmp_path / "b"))
            assert only_b and all(r.path.startswith(str(tmp_path / "b") + os.sep) for r in only_b)
            assert len(index.search("watering tomatoes in the sun", 4, mode=mode, path=os.sep)) == 4
            globbed = index.search("bicycle chain oil", 3, mode=mode, path=str(tmp_path / "*" / "bikes-*.md"))
            assert globbed and all(Path(r.path).name.startswith("bikes-") for r in globbed)
        # the memory-resident vector copy (big indexes) gives sqlite-vec's answers, and follows writes
        from edgellm.rag.search import Searcher

        warm = Searcher(index.store, embedder, warm_min_vectors=1)
        for query, path in [("watering tomatoes in the sun", None), ("saturn rings telescope", str(tmp_path / "a"))]:
            cold_hits = index._searcher.vector_ids(query, 7, path)
            warm_hits = warm.vector_ids(query, 7, path)
            # folders a and b hold the same notes: equal scores come in pairs, in either order. The copy is
            # float16: scores within 2e-4 of sqlite-vec's float32 ones
            assert np.allclose([s for _, s in warm_hits], [s for _, s in cold_hits], atol=2e-4)
            exact = dict(index._searcher.vector_ids(query, 40, path))
            assert all(abs(exact[c] - s) < 2e-4 for c, s in warm_hits)
        assert warm._matrix is not None
        new = rag_helpers.write_corpus(tmp_path / "c", 1)[0]
        new.write_text("# Kites\n\nA diamond kite flies best in a steady breeze over an open field.\n")
        index.add([new], progress=False)
        assert Path(warm.search("flying a kite in the wind", k=1, mode="vector")[0].path) == new
        with pytest.raises(ValueError, match="mode"):
            index.search("x", mode="fuzzy")
        assert index.search("   ") == []


def _fts5_scores(index, query: str, k: int) -> dict[int, float]:
    """FTS5's own top k of the OR query of query's words: chunk id -> -bm25."""
    from edgellm.rag import search

    rows = index.store.conn.execute(
        f"SELECT rowid, -{search._BM25} AS s FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY s DESC LIMIT ?",
        [search.keyword_query(query), k]).fetchall()
    return dict(rows)


def _check_keyword_ids(searcher, index, queries) -> None:
    """searcher's keyword ranking and scores are FTS5's for each query."""
    for query in queries:
        ours = searcher.keyword_ids(query, 6)
        ref = _fts5_scores(index, query, 50)
        assert len(ours) == min(6, len(ref)) and ours, query
        for (cid, score), (_, prev) in zip(ours, [(None, float("inf")), *ours]):
            assert score <= prev and abs(score - ref[cid]) <= 1e-6 * abs(ref[cid]), (query, cid)
        # nothing left out scores higher than the last one we return
        assert sorted(ref.values(), reverse=True)[len(ours) - 1] <= ours[-1][1] * (1 + 1e-6)


KEYWORD_QUERIES = ["watering tomatoes in the sun", "Saturn's rings through a small telescope", "note part 2",
                   "bicycle chain oil and watering"]


def _postings(index) -> tuple[set[str], int | None, int]:
    """(terms with postings, the id they reach, dead chunks)."""
    info = index.store.postings_info()
    terms = {r[0] for r in index.store.conn.execute("SELECT term FROM keyword_postings")}
    return terms, info and info.max_id, index.store.conn.execute("SELECT count(*) FROM keyword_dead").fetchone()[0]


def test_keyword_search_ranks_as_fts5_bm25_of_the_or_query(tmp_path, embedder, monkeypatch):
    """Keyword search scores frequent terms from the index's postings and the other words with FTS5; the
    ranking and scores must be FTS5's own for the OR query: with no postings, right after they are
    written, after chunks are added, deleted and rewritten in place, after they are written again, and
    with a byte budget that keeps only some terms."""
    from edgellm.rag import keywords, search

    check = _check_keyword_ids
    queries = [*KEYWORD_QUERIES, "running tomato x86_64 runs", "the of and", "zzzunknownword watering", "_ note"]
    monkeypatch.setattr(keywords, "POSTINGS_MIN_ROWS", 10**6)  # too few chunks for postings
    rag_helpers.write_corpus(tmp_path / "docs", 12)
    with _index(tmp_path / "index.db", embedder) as index:
        index.add([tmp_path / "docs"], progress=False)
        searcher = search.Searcher(index.store, embedder)
        assert _postings(index) == (set(), None, 0)
        check(searcher, index, queries)  # every word in one FTS5 statement

        monkeypatch.setattr(keywords, "POSTINGS_MIN_ROWS", 2)  # the corpus is small: most terms count
        monkeypatch.setattr(keywords, "REBUILD_FRACTION", 10.0)  # never written again unless asked below
        index.add(rag_helpers.write_corpus(tmp_path / "more", 13)[12:], progress=False)
        terms, max_id, dead = _postings(index)
        assert {"water", "note", "part", "tomato"} <= terms and "zzzunknownword" not in terms and dead == 0
        assert max_id == index.store.conn.execute("SELECT max(id) FROM chunks").fetchone()[0]
        n_postings = index.store.conn.execute("SELECT sum(length(ids)) / 4 FROM keyword_postings").fetchone()[0]
        assert index.stats()["keyword_postings"] == {"terms": len(terms), "bytes": 8 * n_postings}
        check(searcher, index, queries)
        assert {"water", "note", "tomato"} <= set(searcher._keywords.cache)  # scored from the postings
        assert searcher._keywords.beyond is None

        index.add(rag_helpers.write_corpus(tmp_path / "more", 15)[13:], progress=False)  # newer chunks
        check(searcher, index, queries)
        assert searcher._keywords.beyond == "rowid > ?" and _postings(index)[1] == max_id

        docs = sorted((tmp_path / "docs").iterdir())
        index.remove(docs[0])  # deleted chunks
        assert _postings(index)[2] > 0
        check(searcher, index, queries)
        more = sorted((tmp_path / "more").iterdir())
        for path in more:  # the chunks up to the postings' last id and after: SQLite would reuse their ids
            index.remove(path)
        assert index.store.conn.execute("SELECT max(id) FROM chunks").fetchone()[0] < max_id
        check(searcher, index, queries)
        index.add(more[:1], progress=False)
        assert index.store.conn.execute("SELECT min(c.id) FROM chunks c JOIN documents d ON d.id = c.doc_id "
                                        "WHERE d.path = ?", [str(more[0])]).fetchone()[0] > max_id
        check(searcher, index, queries)

        rewritten = index.store.conn.execute("SELECT min(id) FROM chunks").fetchone()[0]
        assert rewritten <= max_id
        index.store.conn.execute("UPDATE chunks SET text = 'tomato tomato running notes' WHERE id = ?",
                                 [rewritten])  # by hand, in the sqlite3 shell, say
        check(searcher, index, queries)
        assert "keyword_dead" in searcher._keywords.beyond

        monkeypatch.setattr(keywords, "REBUILD_FRACTION", 0.0)
        index.remove(docs[1])  # written again: covers every chunk, nothing dead
        terms, max_id, dead = _postings(index)
        assert max_id == index.store.conn.execute("SELECT max(id) FROM chunks").fetchone()[0] and dead == 0
        check(searcher, index, queries)
        assert searcher._keywords.beyond is None

        monkeypatch.setattr(search, "_POSTINGS_CACHE_BYTES", 1)  # the searcher keeps only the latest term
        check(searcher, index, queries)
        assert len(searcher._keywords.cache) == 1

        most = index.store.conn.execute("SELECT max(length(ids)) FROM keyword_postings").fetchone()[0] // 4
        monkeypatch.setattr(keywords, "POSTINGS_MAX_BYTES", 8 * most)  # room for the most frequent term or so
        index.remove(docs[2])
        kept = _postings(index)[0]
        assert 0 < len(kept) < len(terms)
        check(searcher, index, queries)

        monkeypatch.setattr(keywords, "POSTINGS_MIN_ROWS", 10**6)  # too small again: postings dropped
        index.remove(docs[3])
        assert _postings(index) == (set(), None, 0)
        check(searcher, index, queries)
        assert searcher.keyword_ids("zzzunknownword", 3) == []


def test_keyword_postings_serve_other_connections_and_searches_never_write(tmp_path, embedder, monkeypatch):
    """A searcher on another connection (another process, say) picks up postings written and chunks added
    after it started; a search writes nothing to the index, so it answers at once while another writer
    holds the lock."""
    from edgellm.rag import keywords, search
    from edgellm.rag.sqlite import connect

    monkeypatch.setattr(keywords, "POSTINGS_MIN_ROWS", 2)
    db = tmp_path / "index.db"
    queries = [*KEYWORD_QUERIES, "watering zzzunknownword"]
    with _index(db, embedder) as index:
        index.add(rag_helpers.write_corpus(tmp_path / "docs", 4), progress=False)
        searcher = search.Searcher(index.store, embedder)
        _check_keyword_ids(searcher, index, queries)
        build = index.store.version()[1]
        with _index(db, embedder) as other:
            other.add(rag_helpers.write_corpus(tmp_path / "docs", 12)[4:], progress=False)  # written again
        assert index.store.version()[1] > build
        _check_keyword_ids(searcher, index, queries)
        assert "water" in searcher._keywords.terms
        with _index(db, embedder) as other:
            other.add(rag_helpers.write_corpus(tmp_path / "more", 13)[12:], progress=False)  # newer chunks
        _check_keyword_ids(searcher, index, queries)
        assert searcher._keywords.beyond is not None

        blocker = connect(db)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            t0 = time.monotonic()
            _check_keyword_ids(search.Searcher(index.store, embedder), index, queries)
            assert time.monotonic() - t0 < 4.0  # a write would wait out the store's busy timeout (5 s)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()


def _stored_vectors(index, path: Path) -> list[tuple[str, tuple[str, ...], np.ndarray]]:
    """(text, heading path, stored vector) of each chunk of the document at path, in order."""
    rows = index.store.conn.execute(
        "SELECT c.text, c.heading, v.embedding FROM chunks c JOIN documents d ON d.id = c.doc_id "
        "JOIN chunks_vec v ON v.chunk_id = c.id WHERE d.path = ? ORDER BY c.seq", (str(path),)).fetchall()
    return [(text, tuple(json.loads(heading)), np.frombuffer(vec, np.float32)) for text, heading, vec in rows]


def test_chunks_embed_with_their_title_and_an_older_index_keeps_its_heading_paths(tmp_path, embedder):
    """A new index embeds a chunk as its document's title, a blank line, then its text (meta embedding_text
    "title"); an index made before (no such key) goes on embedding the whole heading path; a recipe this
    version does not know is refused by name before anything is written."""
    from edgellm.rag import RagError

    section = "\n\n".join(f"Paragraph {i} on how the pump primes itself after a dry start." for i in range(30))
    doc = tmp_path / "docs" / "pump.md"
    doc.parent.mkdir()
    doc.write_text(f"# Pump manual\n\nIntro.\n\n## Priming\n\n### After a dry start\n\n{section}\n")
    db = tmp_path / "index.db"
    with _index(db, embedder) as index:
        index.add([doc], progress=False)
        assert index.store.meta()["embedding_text"] == "title" == index.stats()["embedding_text"]
        chunks = _stored_vectors(index, doc)
        assert any(len(heading) == 3 for _, heading, _ in chunks)
        for text, heading, vec in chunks:
            assert np.array_equal(vec, embedder.embed_documents([f"Pump manual\n\n{text}"])[0])
        # an index made before the recipe was recorded
        index.store.conn.execute("DELETE FROM meta WHERE key = 'embedding_text'")
        doc.write_text(doc.read_text() + "\nOne more line.\n")
        index.add([doc], progress=False)
        assert index.stats()["embedding_text"] == "heading"
        for text, heading, vec in _stored_vectors(index, doc):
            path = " > ".join(heading if heading[:1] == ("Pump manual",) else ("Pump manual", *heading))
            assert np.array_equal(vec, embedder.embed_documents([f"{path}\n\n{text}"])[0])
        before = _stored_vectors(index, doc)
        index.store.conn.execute("INSERT INTO meta(key, value) VALUES ('embedding_text', 'summary')")
        doc.write_text(doc.read_text() + "\nAnd another.\n")
        with pytest.raises(RagError, match=r"index\.db: meta embedding_text 'summary' is not one"):
            index.add([doc], progress=False)
        assert [t for t, _, _ in _stored_vectors(index, doc)] == [t for t, _, _ in before]


def test_an_index_of_schema_2_is_migrated(tmp_path, embedder):
    """An index written before the keyword postings (schema 2, with its keyword_cache) opens, loses the
    cache, and ingests and searches as a new one."""
    from edgellm.rag import sqlite, store

    db = tmp_path / "index.db"
    conn = sqlite.connect(db)
    conn.execute("BEGIN")
    for migration in store.MIGRATIONS[:2]:
        migration(conn, embedder.dim)
    conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                     [("embedder_id", embedder.model_id), ("embedder_dim", str(embedder.dim))])
    conn.execute("INSERT INTO keyword_cache(word, scoring, n_chunks) VALUES ('watering', 'bm25', 3)")
    conn.execute("PRAGMA user_version = 2")
    conn.execute("COMMIT")
    conn.close()
    with _index(db, embedder) as index:
        assert index.store.conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION == 3
        tables = {r[0] for r in index.store.conn.execute("SELECT name FROM sqlite_master")}
        assert "keyword_cache" not in tables and {"keyword_postings", "keyword_dead"} <= tables
        epoch = index.store.chunks_epoch()
        index.add(rag_helpers.write_corpus(tmp_path / "docs", 4), progress=False)
        assert index.store.chunks_epoch() > epoch
        _check_keyword_ids(index._searcher, index, KEYWORD_QUERIES)
        _check_consistent(index)


def test_narrow_path_filter_on_an_index_larger_than_a_knn_query(tmp_path, embedder):
    """sqlite-vec returns at most 4096 neighbours per query: a filter that keeps only a few chunks of a
    bigger index must still find them."""
    from edgellm.rag.store import NewChunk

    rng = np.random.default_rng(0)
    with _index(tmp_path / "index.db", embedder) as index:
        n = 4200
        vectors = rng.standard_normal((n, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        chunks = [NewChunk(f"filler {i}", 0, 8, (), 3) for i in range(n)]
        index.store.replace_document("/elsewhere/filler.txt", sha256="-", size=0, mtime=0.0, kind="text",
                                     title=None, metadata={}, chunks=chunks, vectors=vectors)
        target = rag_helpers.write_corpus(tmp_path / "docs", 1)[0]
        index.add([target], progress=False)
        hits = index.search("watering tomatoes", 3, mode="vector", path=str(tmp_path / "docs"))
        assert hits and all(h.path == str(target) for h in hits)
        assert len(index.search("watering tomatoes", 5000, mode="vector")) == index.stats()["chunks"]
        index.store.remove_document("/elsewhere/filler.txt")  # small again: vec0's KNN with k capped
        assert len(index.search("watering tomatoes", 5000, mode="vector")) == index.stats()["chunks"]


# ---- bad input -------------------------------------------------------------------------------------------

def test_bad_files_are_listed_not_fatal(tmp_path, embedder):
    docs = tmp_path / "docs"
    rag_helpers.write_corpus(docs, 2)
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02 binary" * 100)
    (docs / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (docs / "empty.md").write_text("")
    explicit = tmp_path / "picture.png"
    explicit.write_bytes(b"\x89PNG\r\n")
    with _index(tmp_path / "index.db", embedder) as index:
        summary = index.add([docs, explicit, tmp_path / "missing"], progress=False)
    failed = dict(summary.failed)
    assert set(failed) == {str(docs / "blob.txt"), str(docs / "latin1.txt"), str(explicit),
                           str(tmp_path / "missing")}
    assert "binary" in failed[str(docs / "blob.txt")]
    assert "UTF-8" in failed[str(docs / "latin1.txt")]
    assert "unsupported" in failed[str(explicit)] and "no such" in failed[str(tmp_path / "missing")]
    assert len(summary.added) == 3  # two notes and the empty file (0 chunks: it is known, not failed)


def test_an_unexpected_error_while_extracting_reaches_the_caller(tmp_path, embedder, monkeypatch):
    """Extraction runs on a thread of its own ahead of embedding: an error none of the per-file handlers
    expects comes out of `add` (without hanging, however many files were waiting), and the documents
    written before it stay whole."""
    from edgellm.rag import ingest

    files = sorted(rag_helpers.write_corpus(tmp_path / "docs", 80, paragraphs=1))  # the order of the walk
    real = ingest.extract

    def extract(path, data):
        if path == files[70]:
            raise RuntimeError(f"cannot read {path.name}")
        return real(path, data)

    monkeypatch.setattr(ingest, "_EMBED_BATCH_CHUNKS", 8)
    monkeypatch.setattr(ingest, "_PREPARED_AHEAD", 2)
    monkeypatch.setattr(ingest, "extract", extract)
    with _index(tmp_path / "index.db", embedder) as index:
        with pytest.raises(RuntimeError, match=files[70].name):
            index.add([tmp_path / "docs"], progress=False)
        written = {Path(d.path) for d in index.documents()}
        assert written and written < set(files[:70])
        _check_consistent(index)
        assert all(d.n_chunks > 0 for d in index.documents())
    assert not any(t.name == "edgellm-extract" for t in threading.enumerate())


def test_index_refuses_another_embedder(tmp_path, embedder):
    from edgellm.rag import EmbedderMismatchError, Index, OnnxEmbedder

    db = tmp_path / "index.db"
    with _index(db, embedder) as index:
        index.add([rag_helpers.write_corpus(tmp_path / "docs", 1)[0]], progress=False)
    other = OnnxEmbedder(rag_helpers.embedder_folder(), model_id="someone-else/model", dim=384)
    with pytest.raises(EmbedderMismatchError, match=r"index\.db.*all-MiniLM-L6-v2.*someone-else/model"):
        Index(db, other)
    wrong_dim = OnnxEmbedder(rag_helpers.embedder_folder(), model_id=embedder.model_id, dim=768)
    with pytest.raises(EmbedderMismatchError, match="dimension 384"):
        Index(db, wrong_dim)


def test_corrupt_foreign_and_locked_databases(tmp_path, embedder):
    from edgellm.rag import IndexLockedError, RagError, sqlite
    from edgellm.rag.store import Store

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(RagError, match=r"garbage\.db: not a usable edgellm index"):
        _index(garbage, embedder)
    foreign = tmp_path / "foreign.db"
    conn = sqlite.connect(foreign)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.close()
    with pytest.raises(RagError, match=r"foreign\.db: an SQLite database, but not an edgellm index"):
        _index(foreign, embedder)
    with pytest.raises(RagError, match="no such index"):
        Store(tmp_path / "absent.db", create=False)

    db = tmp_path / "locked.db"
    rag_helpers.write_corpus(tmp_path / "docs", 1)
    _index(db, embedder).close()
    holder = sqlite.connect(db)
    holder.execute("BEGIN IMMEDIATE")
    try:
        from edgellm.rag import Index

        with Index(db, embedder, busy_timeout_s=0.2) as index, pytest.raises(IndexLockedError, match="locked"):
            index.add([tmp_path / "docs"], progress=False)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with _index(db, embedder) as index:  # nothing half-written: the next run indexes normally
        assert len(index.add([tmp_path / "docs"], progress=False).added) == 1
        _check_consistent(index)
