"""Check the RAG retrieval evaluation set over the Valgrind HTML manual (bench/data/rag_eval_valgrind.jsonl).

Each line is {"id", "question", "file", "evidence"}: `file` is the basename of the one manual page that
answers the question and `evidence` a short snippet copied from that page's visible text. This script
verifies that ids and questions are unique, that every file exists in the corpus directory, and that
every evidence occurs verbatim (case-sensitive, whitespace collapsed to single spaces) in the text of its
file as extracted with BeautifulSoup(html, "lxml").get_text(" "). It prints the number of questions per
file and, as a rough paraphrasing check (informational, never an error), how many questions share a run
of 4+ consecutive words with their evidence or with their page.

    python bench/data/check_rag_eval.py [corpus_dir] [--jsonl PATH]

corpus_dir defaults to /usr/share/doc/valgrind/html (Debian's `valgrind` package). Exit status 1 on any
error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from bs4 import BeautifulSoup

DEFAULT_CORPUS = Path("/usr/share/doc/valgrind/html")
DEFAULT_JSONL = Path(__file__).resolve().parent / "rag_eval_valgrind.jsonl"
FIELDS = ("id", "question", "file", "evidence")
WORD = re.compile(r"[a-z0-9]+(?:['_.+-][a-z0-9]+)*")
NGRAM = 4


def normalize(text: str) -> str:
    """Collapse every run of whitespace (including non-breaking spaces) to one space."""
    return " ".join(text.split())


def page_text(path: Path) -> str:
    html = path.read_text(encoding="utf-8", errors="replace")
    return normalize(BeautifulSoup(html, "lxml").get_text(" "))


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def load(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    records: list[dict[str, str]] = []
    errors: list[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            errors.append(f"line {lineno}: empty line")
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"line {lineno}: bad JSON ({exc})")
            continue
        if not isinstance(rec, dict) or sorted(rec) != sorted(FIELDS):
            errors.append(f"line {lineno}: expected exactly the keys {FIELDS}")
            continue
        if not all(isinstance(rec[k], str) and rec[k].strip() for k in FIELDS):
            errors.append(f"line {lineno}: every field must be a non-empty string")
            continue
        records.append(rec)
    return records, errors


def check(records: list[dict[str, str]], corpus: Path) -> tuple[list[str], list[str]]:
    """Return (errors, ids of questions sharing a 4-word run with their evidence or page)."""
    errors: list[str] = []
    for key in ("id", "question"):
        counts = Counter(normalize(r[key]).lower() if key == "question" else r[key] for r in records)
        errors += [f"duplicate {key}: {value!r}" for value, n in counts.items() if n > 1]

    texts: dict[str, str] = {}
    overlapping: list[str] = []
    for rec in records:
        name = rec["file"]
        if name != Path(name).name:
            errors.append(f"{rec['id']}: file must be a basename, got {name!r}")
            continue
        if name not in texts:
            path = corpus / name
            if not path.is_file():
                errors.append(f"{rec['id']}: {name} not found in {corpus}")
                continue
            texts[name] = page_text(path)
        text = texts[name]
        evidence = normalize(rec["evidence"])
        if evidence not in text:
            errors.append(f"{rec['id']}: evidence not found verbatim in {name}: {evidence!r}")
        question = ngrams(rec["question"])
        if question & ngrams(evidence) or question & ngrams(text):
            overlapping.append(rec["id"])
    return errors, overlapping


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS, help="directory of *.html")
    parser.add_argument("--jsonl", type=Path, default=DEFAULT_JSONL, help="evaluation set to check")
    args = parser.parse_args(argv)

    if not args.corpus.is_dir():
        print(f"corpus directory not found: {args.corpus}", file=sys.stderr)
        return 1
    records, errors = load(args.jsonl)
    more, overlapping = check(records, args.corpus)
    errors += more

    per_file = Counter(r["file"] for r in records)
    print(f"{len(records)} questions over {len(per_file)} files ({args.jsonl.name}, corpus {args.corpus})")
    for name, n in sorted(per_file.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {n:4d}  {name}")
    listed = ", ".join(overlapping) if overlapping else "none"
    print(
        f"questions sharing {NGRAM}+ consecutive words with their evidence or page: "
        f"{len(overlapping)} ({listed})"
    )
    if errors:
        print(f"{len(errors)} error(s):", file=sys.stderr)
        for err in errors:
            print(f"  {err}", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
