"""RAG bench: retrieval quality on a real manual, ingest speed, and search latency on a 100k-chunk index.

    python bench/rag.py                 # the Valgrind HTML manual (Debian package `valgrind`)
    python bench/rag.py --quick         # skip the 100k-chunk latency index
    python bench/rag.py --corpus /usr/share/doc/nodejs/api --exclude all.html --exclude index.html \
        --eval bench/data/rag_eval_nodejs.jsonl --quality-only   # the second, held-out set (Node.js API)

Quality: bench/data/rag_eval_valgrind.jsonl holds 193 questions phrased as users ask them, each with the
one manual page that answers it and a verbatim evidence snippet; bench/data/rag_eval_nodejs.jsonl holds
100 more over the Node.js API pages, written blind as a held-out check (bench/data/README-nodejs-eval.md).
The corpus is the folder's HTML pages (less those named by --exclude). For each configuration we report
recall@5 (a top-5 chunk comes from the answering page), MRR@5 (1 / rank of the first such chunk) and
evidence@5 (a top-5 chunk contains the evidence snippet). Configurations: ours (structure-first chunks,
each embedded with its document's title, or with --embedding-text heading its whole heading path; int8
embedder) in vector, keyword and hybrid mode; ours with the fp32 embedder; and the naive baseline: fixed
150-word chunks of the page text, fp32 embedder, vector only (and naive hybrid). And ours in hybrid mode
reranked by the default model (SmolLM2-135M-Instruct, edgellm/rag/rerank.py), as `Index.answer` and
`edgellm rag ask` retrieve their sources (skip it with --no-rerank: it takes 3-4 s a question).

Speed: the whole ingest (extract, chunk, embed, write) in chunks/s, and as a ratio to the fp32 embedder
alone on the same chunk texts in the same run (rounds of each alternate; medians; the goal's 200 chunks/s
against fp32's 93 is 2.15x); the embedder alone on 150-word chunks, fp32 and int8; search p50/p95 over the
evaluation questions on a synthetic 100k-chunk index (real chunk texts recombined, real vectors perturbed),
query embedding included, each mode in three settings: the first session after the ingest (a fresh searcher), a later
session, and a second pass in that session (see latency()). The keyword postings the ingest writes for a
big index (edgellm/rag/keywords.py) are written again each run and timed (postings_s).
Results: a markdown table on stdout and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = Path("/usr/share/doc/valgrind/html")
DEFAULT_EVAL = HERE / "data" / "rag_eval_valgrind.jsonl"
K = 5


def norm(text: str) -> str:
    return " ".join(text.split()).lower()


def load_eval(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score(index, questions: list[dict], mode: str, rerank_with=None) -> dict:
    """recall@5, MRR@5 and evidence@5 of `index` in `mode` (reranked by the model `rerank_with`, if given)
    over the questions, each question's reciprocal rank (0 when the answering page is not in the top 5),
    and the mean seconds a search took."""
    evidence = 0
    ranks = []
    t = time.perf_counter()
    for q in questions:
        results = index.search(q["question"], K, mode=mode, rerank_with=rerank_with)
        names = [Path(r.path).name for r in results]
        ranks.append(1.0 / (names.index(q["file"]) + 1) if q["file"] in names else 0.0)
        ev = norm(q["evidence"])
        if any(ev in norm(r.text) for r in results):
            evidence += 1
    n = len(questions)
    return {"recall@5": sum(r > 0 for r in ranks) / n, "mrr@5": sum(ranks) / n, "evidence@5": evidence / n,
            "search_s": (time.perf_counter() - t) / n, "rr": ranks}


def paired(a: list[float], b: list[float]) -> dict:
    """Questions where configuration a ranks the answering page higher / lower than b, and the two-sided
    sign test's p-value of that split (ties left out): is one better, or is the gap noise?"""
    better = sum(x > y for x, y in zip(a, b))
    worse = sum(x < y for x, y in zip(a, b))
    n, k = better + worse, min(better, worse)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"better": better, "worse": worse, "sign_test_p": p}


def pages(corpus: Path, exclude: Sequence[str] = ()) -> list[Path]:
    """The corpus's HTML pages, by name, less those named in exclude."""
    return [p for p in sorted(corpus.glob("*.html")) if p.name not in exclude]


def naive_index(db: Path, files: list[Path], embedder):
    """Fixed 150-word chunks of each page's text (BeautifulSoup get_text), no headings, no structure."""
    from bs4 import BeautifulSoup

    from edgellm.rag import Index
    from edgellm.rag.store import NewChunk

    index = Index(db, embedder)
    for path in files:
        text = BeautifulSoup(path.read_bytes(), "lxml").get_text(" ")
        words = text.split()
        pieces = [" ".join(words[i:i + 150]) for i in range(0, len(words), 150)]
        chunks = [NewChunk(p, 0, 0, (), len(p.split())) for p in pieces]
        vectors = embedder.embed_documents(pieces)
        index.store.replace_document(str(path), sha256="-", size=0, mtime=0.0, kind="html", title=None,
                                     metadata={}, chunks=chunks, vectors=vectors)
    return index


def embed_speed(embedder, texts: list[str]) -> float:
    embedder.embed_documents(texts[:16])  # warm-up
    t = time.perf_counter()
    embedder.embed_documents(texts)
    return len(texts) / (time.perf_counter() - t)


def ingest_texts(index) -> list[str]:
    """What the ingest gave the embedder: every chunk of `index` as embedding_text makes it."""
    from edgellm.rag.ingest import embedding_text

    rows = index.store._query("SELECT c.heading, d.title, c.text FROM chunks c JOIN documents d ON d.id = c.doc_id "
                              "ORDER BY c.id")
    recipe = index.store.embedding_text()
    return [embedding_text(json.loads(heading), title, text, recipe) for heading, title, text in rows]


def words150(files: list[Path], n: int) -> list[str]:
    from bs4 import BeautifulSoup

    words: list[str] = []
    for path in files:
        words += BeautifulSoup(path.read_bytes(), "lxml").get_text(" ").split()
        if len(words) > 150 * n:
            break
    return [" ".join(words[i:i + 150]) for i in range(0, 150 * n, 150)]


def synthetic_index(db: Path, source, embedder, n_chunks: int, seed: int = 0):
    """An index of n_chunks: texts recombined from the source index's chunk sentences, vectors the source
    vectors plus noise (renormalised), 100 chunks per document. Built once and cached."""
    from edgellm.rag import EmbedderMismatchError, Index
    from edgellm.rag.store import NewChunk

    if db.exists():
        try:
            index = Index(db, embedder)
            if index.stats()["chunks"] == n_chunks:
                return index
            index.close()
        except EmbedderMismatchError:  # made with an earlier embedder: make it again
            pass
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
    rows = source.store.conn.execute("SELECT c.text, v.embedding FROM chunks c JOIN chunks_vec v "
                                     "ON v.chunk_id = c.id").fetchall()
    sentences = [s for text, _ in rows for s in re.split(r"(?<=[.!?])\s+", text) if len(s) > 20]
    base = np.stack([np.frombuffer(v, np.float32) for _, v in rows])
    rng = np.random.default_rng(seed)
    index = Index(db, embedder)
    per_doc = 100
    for d in range(n_chunks // per_doc):
        picks = rng.integers(0, len(base), per_doc)
        vectors = base[picks] + 0.05 * rng.standard_normal((per_doc, base.shape[1])).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        chunks = []
        for _ in range(per_doc):
            text = " ".join(sentences[i] for i in rng.integers(0, len(sentences), 5))
            chunks.append(NewChunk(text, 0, len(text), ("synthetic", f"doc {d}"), len(text.split())))
        index.store.replace_document(f"/synthetic/doc-{d:05d}.txt", sha256=str(d), size=0, mtime=0.0,
                                     kind="text", title=None, metadata={}, chunks=chunks, vectors=vectors)
    return index


def latency(index, questions: list[dict], mode: str) -> dict[str, float]:
    """p50/p95 over the questions in three settings, each with the vector copy loaded beforehand (that is
    the first query's cost, reported apart):
    - first session after the ingest: a new connection and searcher (each frequent term's postings read
      from the index file, every word's FTS5 terms found by the tokenizer);
    - a later session: another new connection and searcher;
    - a second pass in that session (postings and terms in memory)."""
    from edgellm.rag import Index

    passes = []
    session = None
    for fresh in (True, True, False):
        if fresh:
            if session is not None:
                session.close()
            session = Index(index.path, index.embedder)
            session._searcher._warm_matrix()
        times = []
        for q in questions:
            t = time.perf_counter()
            session.search(q["question"], k=K, mode=mode)
            times.append(time.perf_counter() - t)
        times.sort()
        passes.append(times)
    session.close()
    first, later, again = passes

    def p95(times: list[float]) -> float:
        return 1000 * times[int(0.95 * (len(times) - 1))]

    return {"p50_ms": 1000 * statistics.median(first), "p95_ms": p95(first),
            "p50_later_session_ms": 1000 * statistics.median(later), "p95_later_session_ms": p95(later),
            "p50_second_pass_ms": 1000 * statistics.median(again)}


def open_index(db: Path, embedder, recipe: str):
    """A new index at db that embeds chunks by `recipe` (meta embedding_text, see ingest.embedding_text)."""
    from edgellm.rag import Index

    index = Index(db, embedder)
    with index.store.transaction():
        index.store.conn.execute("UPDATE meta SET value = ? WHERE key = 'embedding_text'", (recipe,))
    return index


def ingest_rounds(ours, files: list[Path], int8, fp32, tmp: Path, repeats: int) -> dict:
    """The ingest against its reference: the fp32 model alone on the very texts the ingest embedded (the goal,
    200 chunks/s where fp32 embeds 93, is this ratio >= 2.15 on any machine). The host's speed drifts by
    10-20% within a run, so ingest and reference alternate, and the ratio is the median of the rounds'
    ratios."""
    chunk_texts = ingest_texts(ours)
    recipe = ours.store.embedding_text()
    rounds: dict[str, list[float]] = {"ingest": [], "fp32": [], "int8": []}
    for r in range(repeats):
        with open_index(tmp / f"speed-{r}.db", int8, recipe) as again:
            rounds["ingest"].append(again.add(files, progress=False).chunks_per_second)
        rounds["fp32"].append(embed_speed(fp32, chunk_texts))
        rounds["int8"].append(embed_speed(int8, chunk_texts))
    ratios = [i / f for i, f in zip(rounds["ingest"], rounds["fp32"])]
    return {"rounds": rounds, "chunks_per_s": statistics.median(rounds["ingest"]),
            "fp32_embed_chunks_per_s": statistics.median(rounds["fp32"]),
            "int8_embed_chunks_per_s": statistics.median(rounds["int8"]),
            "ratio_to_fp32_embed": statistics.median(ratios)}


def search_latency(ours, int8, questions: list[dict], n_chunks: int) -> dict:
    """Search latency on the synthetic index of n_chunks made from `ours` (built once and cached), after
    writing its keyword postings again as the ingest of a big index ends."""
    from run import cache_dir  # bench/run.py: the bench file cache ($EDGELLM_BENCH_CACHE)

    from edgellm.rag import keywords

    t = time.perf_counter()
    big = synthetic_index(cache_dir() / f"rag-synthetic-{n_chunks}.db", ours, int8, n_chunks)
    build_s = time.perf_counter() - t
    with big.store.transaction():
        big.store.write_postings([], None, None)
    t = time.perf_counter()
    keywords.refresh(big.store)
    postings_s = time.perf_counter() - t
    first = time.perf_counter()
    big.search(questions[0]["question"], K, mode="hybrid")  # cold: sqlite-vec KNN + loading the copy
    cold_ms = 1000 * (time.perf_counter() - first)
    result = {"chunks": big.stats()["chunks"], "build_s": build_s, "postings_s": postings_s,
              "postings_bytes": big.store.conn.execute(
                  "SELECT coalesce(sum(length(ids) + length(counts) + length(lengths)), 0) "
                  "FROM keyword_postings").fetchone()[0],
              "first_query_ms": cold_ms,
              **{mode: latency(big, questions, mode) for mode in ("hybrid", "vector", "keyword")}}
    big.close()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--eval", type=Path, default=DEFAULT_EVAL)
    ap.add_argument("--quick", action="store_true", help="skip the 100k-chunk latency index")
    ap.add_argument("--synthetic", type=int, default=100_000, help="chunks in the latency index")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of ingest and embedder-alone timings")
    ap.add_argument("--exclude", action="append", default=[], metavar="NAME",
                    help="a page of the corpus to leave out, by file name (repeatable)")
    ap.add_argument("--quality-only", action="store_true", help="retrieval quality only: no speed or latency")
    ap.add_argument("--no-rerank", action="store_true",
                    help="skip reranking by the default model (3-4 s a question on two cores)")
    ap.add_argument("--threads", type=int, default=0, help="threads of the reranking model (0 = all cores)")
    ap.add_argument("--embedding-text", choices=("title", "heading"), default="title",
                    help="what our indexes embed of a chunk besides its text (see edgellm.rag.ingest.embedding_text)")
    args = ap.parse_args(argv)
    if not args.corpus.is_dir():
        print(f"{args.corpus}: missing; on Debian/Ubuntu: apt-get install valgrind", file=sys.stderr)
        return 2

    from edgellm.rag.embed import default_embedder

    questions = load_eval(args.eval)
    files = pages(args.corpus, args.exclude)
    int8, fp32 = default_embedder("int8"), default_embedder("fp32")
    out: dict = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                 "corpus": str(args.corpus), "excluded": args.exclude,
                 "embedding_text": args.embedding_text, "questions": len(questions), "quality": {},
                 "speed": {}}
    rows: list[tuple[str, str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours = open_index(tmp / "ours.db", int8, args.embedding_text)
        summary = ours.add(files, progress=False)
        stats = ours.stats()
        out["speed"]["ingest"] = {"chunks": summary.chunks, "seconds": summary.seconds,
                                  "chunks_per_s": summary.chunks_per_second,
                                  "tokens_per_chunk": stats["tokens"] / max(1, stats["chunks"])}
        for mode in ("vector", "keyword", "hybrid"):
            rows.append(("ours (int8)", mode, score(ours, questions, mode)))
        if not args.no_rerank:  # what `Index.answer` and `edgellm rag ask` give the model
            from edgellm import LLM

            with LLM(n_ctx=1024, n_threads=args.threads) as llm:
                rows.append(("ours (int8), reranked by the default model", "hybrid",
                             score(ours, questions, "hybrid", rerank_with=llm)))
        with open_index(tmp / "ours32.db", fp32, args.embedding_text) as ours32:
            ours32.add(files, progress=False)
            for mode in ("vector", "hybrid"):
                rows.append(("ours (fp32)", mode, score(ours32, questions, mode)))
        with naive_index(tmp / "naive.db", files, fp32) as naive:
            for mode in ("vector", "hybrid"):
                rows.append(("naive 150 words (fp32)", mode, score(naive, questions, mode)))

        if not args.quality_only:
            texts = words150(files, 400)
            out["speed"]["embed_150_words"] = {"fp32_chunks_per_s": embed_speed(fp32, texts),
                                               "int8_chunks_per_s": embed_speed(int8, texts)}
            out["speed"]["ingest"].update(ingest_rounds(ours, files, int8, fp32, tmp, args.repeats))
            if not args.quick:
                out["speed"]["search"] = search_latency(ours, int8, questions, args.synthetic)
        ours.close()

    by = {(c, m): r for c, m, r in rows}
    out["int8_vs_fp32_hybrid"] = paired(by[("ours (int8)", "hybrid")]["rr"], by[("ours (fp32)", "hybrid")]["rr"])
    out["quality"] = [{"config": c, "mode": m, **r} for c, m, r in rows]
    print(f"\n{len(questions)} questions over {args.corpus}\n")
    print("| configuration | mode | recall@5 | MRR@5 | evidence@5 |\n|---|---|---|---|---|")
    for c, m, r in rows:
        print(f"| {c} | {m} | {r['recall@5']:.3f} | {r['mrr@5']:.3f} | {r['evidence@5']:.3f} |")
    pair = out["int8_vs_fp32_hybrid"]
    reranked = by.get(("ours (int8), reranked by the default model", "hybrid"))
    if reranked is not None:
        out["reranked_vs_hybrid"] = paired(reranked["rr"], by[("ours (int8)", "hybrid")]["rr"])
        lift = out["reranked_vs_hybrid"]
        print(f"\nreranked vs hybrid: the answering page ranks higher on {lift['better']} questions, lower on "
              f"{lift['worse']} (sign test p = {lift['sign_test_p']:.3f}); a reranked search takes "
              f"{reranked['search_s']:.2f} s, a hybrid one {by[('ours (int8)', 'hybrid')]['search_s'] * 1000:.0f} ms")
    print(f"\nint8 vs fp32 embedder, hybrid: the answering page ranks higher on {pair['better']} questions, lower on "
          f"{pair['worse']} (sign test p = {pair['sign_test_p']:.2f})")
    ing, emb = out["speed"]["ingest"], out["speed"].get("embed_150_words")
    if emb is not None:
        print(f"\ningest: {ing['chunks']} chunks ({ing['tokens_per_chunk']:.0f} tokens each), median of "
              f"{len(ing['rounds']['ingest'])} rounds {ing['chunks_per_s']:.0f} chunks/s; median ratio "
              f"{ing['ratio_to_fp32_embed']:.2f}x the fp32 embedder alone on the same texts "
              f"({ing['fp32_embed_chunks_per_s']:.0f} chunks/s; int8 alone {ing['int8_embed_chunks_per_s']:.0f})")
        print(f"embedder on 150-word chunks: fp32 {emb['fp32_chunks_per_s']:.0f} chunks/s, "
              f"int8 {emb['int8_chunks_per_s']:.0f} chunks/s")
    if "search" in out["speed"]:
        s = out["speed"]["search"]
        print(f"search on {s['chunks']} chunks: " + ", ".join(
            f"{mode} p50 {s[mode]['p50_ms']:.1f} ms (p95 {s[mode]['p95_ms']:.1f}; later session p50 "
            f"{s[mode]['p50_later_session_ms']:.1f}, p95 {s[mode]['p95_later_session_ms']:.1f}; second pass p50 "
            f"{s[mode]['p50_second_pass_ms']:.1f})" for mode in ("hybrid", "vector", "keyword"))
            + f"; first query {s['first_query_ms']:.0f} ms")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / time.strftime("rag-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(out, indent=1))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
