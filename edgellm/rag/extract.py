"""Plain text and heading structure out of the files `edgellm rag index` accepts.

`extract(path, data)` turns a file's bytes into a `Document`: the plain text every later offset refers to, and its
sections (heading path + the char span of the section's body). Kinds:

- markdown: ATX (`#`..`######`) and setext (`===` / `---`) headings; not inside fenced code blocks or YAML front
  matter. Body text stays verbatim, markdown syntax included.
- html: lxml (libxml2's HTML parser). Scripts, styles, `<head>`, `<nav>` and DocBook/Sphinx navigation
  (`.nav`, `.navheader`, `.navfooter`, `.toc`, `.headerlink`, ...) are dropped; each block (p, li, pre, table row,
  dt/dd, heading, ...) becomes one paragraph, separated by a blank line; `<pre>` keeps its line breaks, whitespace is
  collapsed elsewhere. h1..h6 build the heading path; DocBook FAQ questions (`.question`) nest one level below.
- pdf: pypdf, one section per page headed ("page N",) or (title, "page N"); pages separated by a blank line.
- text: one section, heading () (blank lines split paragraphs at chunking time, they are not headings).
- code: heading (filename,); for a few languages, top-level definitions (`def`, `class`, `fn`, `func`, ...) start a
  section (filename, "def name") that includes the definition line and the comments/decorators right above it.

Bytes that are not text (a NUL in the first 8 KiB, invalid UTF-8; a UTF-8 BOM and UTF-16/32 with a BOM are fine)
and PDFs pypdf cannot read raise `ExtractError`, whose message is short enough for the ingest summary.
"""

from __future__ import annotations

import codecs
import io
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class ExtractError(Exception):
    """The file cannot be turned into text; str(e) is a short reason ("binary file", "PDF: encrypted")."""


@dataclass(frozen=True)
class Section:
    heading: tuple[str, ...]  # heading path, outermost first; () before the first heading
    start: int  # char offsets into Document.text of this section's body (the heading line is not part of it),
    end: int  # trimmed: text[start] and text[end - 1] are not whitespace


@dataclass(frozen=True)
class Document:
    text: str  # the extracted plain text; every offset in edgellm.rag refers to it
    kind: str  # "text" | "markdown" | "html" | "pdf" | "code"
    title: str | None  # <title>, first H1, PDF metadata title, else None
    sections: tuple[Section, ...]  # document order, non-overlapping, covering all non-blank body text


_KIND_BY_SUFFIX: dict[str, str] = {
    **dict.fromkeys((".md", ".markdown", ".mdown", ".mkd"), "markdown"),
    **dict.fromkeys((".html", ".htm", ".xhtml"), "html"),
    ".pdf": "pdf",
    **dict.fromkeys((".txt", ".text", ".rst", ".log", ".org", ".adoc", ".asciidoc", ".csv", ".tsv"), "text"),
    **dict.fromkeys(
        (
            ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx", ".inl", ".cu", ".m", ".mm",
            ".rs", ".go", ".java", ".kt", ".kts", ".scala", ".swift", ".cs", ".fs", ".js", ".mjs", ".cjs", ".jsx",
            ".ts", ".tsx", ".vue", ".svelte", ".rb", ".php", ".pl", ".pm", ".lua", ".r", ".jl", ".dart", ".zig",
            ".nim", ".hs", ".ml", ".mli", ".ex", ".exs", ".erl", ".clj", ".el", ".lisp", ".scm", ".sh", ".bash",
            ".zsh", ".fish", ".ps1", ".bat", ".cmake", ".mk", ".make", ".gradle", ".proto", ".sql", ".css",
            ".scss", ".sass", ".less", ".toml", ".yaml", ".yml", ".json", ".jsonl", ".xml", ".ini", ".cfg",
            ".conf", ".properties", ".env", ".tex", ".bib", ".s", ".asm", ".glsl", ".hlsl", ".metal", ".wgsl",
        ),
        "code",
    ),
}  # fmt: skip
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(_KIND_BY_SUFFIX)
# Files that usually carry no suffix.
_KIND_BY_NAME: dict[str, str] = {
    **dict.fromkeys(
        ("readme", "license", "copying", "authors", "changelog", "news", "todo", "install"), "text"
    ),
    **dict.fromkeys(("makefile", "gnumakefile", "dockerfile", "containerfile", "justfile"), "code"),
}

_SNIFF_BYTES = 8192  # a NUL byte in this prefix marks a binary file (as git and grep decide)


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in _KIND_BY_SUFFIX:
        return _KIND_BY_SUFFIX[suffix]
    return _KIND_BY_NAME.get(path.name.lower()) if not suffix else None


def is_supported(path: Path) -> bool:
    """True if `extract` knows the file's type (by suffix, or by a few well-known names such as Makefile)."""
    return _kind(Path(path)) is not None


def extract(path: Path, data: bytes) -> Document:
    """The text and sections of the file `path` whose bytes are `data`; raises ExtractError."""
    path = Path(path)
    kind = _kind(path)
    if kind is None:
        suffix = path.suffix.lower()
        raise ExtractError(
            f"unsupported file type {suffix}" if suffix else "unsupported file type (no suffix)"
        )
    if kind == "pdf":
        return _extract_pdf(data)
    text = _decode(data, html=kind == "html")
    if kind == "markdown":
        return _extract_markdown(text)
    if kind == "html":
        return _extract_html(text)
    if kind == "code":
        return _extract_code(text, path.name, path.suffix.lower())
    return Document(text=text, kind="text", title=None, sections=_one_section(text, ()))


# ---------------------------------------------------------------------------------------------------------------
# Bytes -> str


_BOMS = (  # longest first: the UTF-32-LE BOM starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def _decode(data: bytes, *, html: bool = False) -> str:
    """UTF-8 (or UTF-16/32 with a BOM) bytes -> str with "\\n" newlines. An HTML file that is not UTF-8 may also
    be in the charset its <meta> declares."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError:
                raise ExtractError(f"not valid {codec.upper().removesuffix('-SIG')} text") from None
            if "\x00" in text[:_SNIFF_BYTES]:
                raise ExtractError("binary file")
            return _normalise_newlines(text)
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise ExtractError("binary file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = _decode_declared_charset(data) if html else None
        if text is None:
            raise ExtractError("not valid UTF-8 text") from None
    return _normalise_newlines(text)


def _decode_declared_charset(data: bytes) -> str | None:
    m = _META_CHARSET.search(data[:4096])
    if m is None:
        return None
    try:
        return data.decode(m.group(1).decode("ascii"))
    except (LookupError, UnicodeDecodeError):
        return None


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


# ---------------------------------------------------------------------------------------------------------------
# Sections from heading positions


def _line_offsets(lines: list[str]) -> list[int]:
    """Char offset of each line's start in the text the lines were split from (on "\n")."""
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    return offsets


def trim_span(text: str, start: int, end: int) -> tuple[int, int]:
    """(start, end) moved inwards past whitespace; start == end when the span is blank."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _one_section(text: str, heading: tuple[str, ...]) -> tuple[Section, ...]:
    start, end = trim_span(text, 0, len(text))
    return (Section(heading, start, end),) if end > start else ()


@dataclass(frozen=True)
class _Heading:
    level: int  # 1..6 (deeper = larger)
    title: str
    start: int  # span of the heading's own line(s) in the text: not part of any body
    end: int


def _sections_from_headings(
    text: str, headings: list[_Heading], root: tuple[str, ...] = ()
) -> tuple[Section, ...]:
    """Bodies between consecutive headings, each under the path of the headings open at that point (a heading
    closes every open heading of its level or deeper). Blank bodies are left out."""
    sections = []
    stack: list[tuple[int, str]] = []
    pos = 0
    path = root
    for h in [*headings, None]:
        body_end = h.start if h is not None else len(text)
        start, end = trim_span(text, pos, body_end)
        if end > start:
            sections.append(Section(path, start, end))
        if h is None:
            break
        while stack and stack[-1][0] >= h.level:
            stack.pop()
        stack.append((h.level, h.title))
        path = root + tuple(title for _, title in stack)
        pos = h.end
    return tuple(sections)


_WS = re.compile(r"\s+")


def _squash(s: str) -> str:
    return _WS.sub(" ", s).strip()


# ---------------------------------------------------------------------------------------------------------------
# Markdown

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*")
# Lines that cannot be the text of a setext heading (they open another block: list item, quote, table, code).
_NOT_SETEXT_TEXT = re.compile(r" {0,3}(?:[-*+>|]|\d{1,9}[.)](?:[ \t]|$))| {4}|\t")


def _extract_markdown(text: str) -> Document:
    headings: list[_Heading] = []
    lines = text.split("\n")
    offsets = _line_offsets(lines)
    fence: str | None = None  # the opening fence's run ("```", "~~~~", ...) while inside a fenced block
    para_first: int | None = None  # index of the first line of the current paragraph (setext heading text)
    i = 0
    if lines and lines[0].rstrip() == "---":  # YAML front matter: not headings, not setext underlines
        for j in range(1, len(lines)):
            if lines[j].rstrip() in ("---", "..."):
                i = j + 1
                break
    while i < len(lines):
        line = lines[i]
        if fence is not None:
            m = _FENCE.match(line)
            if (
                m
                and m.group(1)[0] == fence[0]
                and len(m.group(1)) >= len(fence)
                and not line[m.end() :].strip()
            ):
                fence = None
            i += 1
            continue
        m = _FENCE.match(line)
        if m and not (m.group(1)[0] == "`" and "`" in line[m.end() :]):
            fence, para_first = m.group(1), None
            i += 1
            continue
        if not line.strip():
            para_first = None
            i += 1
            continue
        m = _ATX.fullmatch(line)
        if m:
            start, end = offsets[i], offsets[i] + len(line)
            headings.append(_Heading(len(m.group(1)), _squash(m.group(2) or ""), start, end))
            para_first = None
            i += 1
            continue
        m = _SETEXT.fullmatch(line)
        if m and para_first is not None:
            start, end = offsets[para_first], offsets[i] + len(line)
            title = _squash(" ".join(lines[para_first:i]))
            headings.append(_Heading(1 if m.group(1)[0] == "=" else 2, title, start, end))
            para_first = None
            i += 1
            continue
        if para_first is None and not _NOT_SETEXT_TEXT.match(line):
            para_first = i
        i += 1
    title = next((h.title for h in headings if h.level == 1 and h.title), None)
    return Document(text=text, kind="markdown", title=title, sections=_sections_from_headings(text, headings))


# ---------------------------------------------------------------------------------------------------------------
# HTML

_DROP_TAGS = frozenset(
    ("head", "script", "style", "noscript", "template", "nav", "svg", "math", "iframe", "object", "embed",
     "canvas", "select", "button", "input", "textarea", "audio", "video")
)  # fmt: skip
# Navigation chrome of DocBook (valgrind, many GNU manuals), Sphinx and similar generators.
_DROP_CLASSES = frozenset(
    (
        "nav",
        "navheader",
        "navfooter",
        "toc",
        "breadcrumb",
        "breadcrumbs",
        "headerlink",
        "sphinxsidebar",
        "skip-link",
    )
)
_BLOCK_TAGS = frozenset(
    ("address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details", "dialog", "dir",
     "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hgroup", "hr", "html",
     "legend", "li", "main", "menu", "ol", "p", "section", "summary", "table", "tbody", "tfoot", "thead", "tr", "ul")
)  # fmt: skip
_CELL_TAGS = frozenset(("td", "th"))
_HEADING_TAGS = {f"h{n}": n for n in range(1, 7)}
_PSEUDO_HEADING_CLASSES = frozenset(("question",))  # DocBook qandaset: each FAQ question heads its answer


def _classes(el) -> list[str]:
    return (el.get("class") or "").split()


def _dropped(el) -> bool:
    if el.tag in _DROP_TAGS or "hidden" in el.attrib:
        return True
    if el.get("aria-hidden") == "true" or el.get("role") == "navigation":
        return True
    if any(c in _DROP_CLASSES for c in _classes(el)):
        return True
    return el.tag in _LIST_TAGS and _is_link_list(el)


_LIST_TAGS = frozenset(("ul", "ol", "dl"))


def _is_link_list(el) -> bool:
    """A list that is mostly links (a table of contents, a menu): navigation, not content."""
    links = [a for a in el.iter("a") if a.get("href") is not None]
    if len(links) < 2:
        return False
    link_chars = sum(len(_WS.sub("", a.text_content())) for a in links)
    return link_chars >= 0.8 * len(_WS.sub("", el.text_content()))


def _contents(el) -> list:
    """el's children in document order, text included: its text, then each child element followed by its tail
    (comments and processing instructions are skipped, their tails are not)."""
    out: list = [el.text] if el.text else []
    for child in el:
        if isinstance(child.tag, str):
            out.append(child)
        if child.tail:
            out.append(child.tail)
    return out


def _plain_strings(node, *, keep_newlines: bool) -> Iterator[str]:
    """The text under `node` (document order), skipping dropped elements and comments; <br> -> "\\n"."""
    stack: list = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, str):
            yield n
            continue
        if n is not node and _dropped(n):
            continue
        if n.tag == "br":
            yield "\n" if keep_newlines else " "
            continue
        if not keep_newlines and (n.tag in _BLOCK_TAGS or n.tag in _CELL_TAGS or n.tag == "pre"):
            stack.append(" ")  # a block inside a heading still separates words (after its contents)
            yield " "
        stack.extend(reversed(_contents(n)))


# libxml2's tree builder drops whatever follows </html> (a browser puts it in the body): the end tags of html
# and body are left out, and the parser closes both at the end of the text.
_HTML_END_TAGS = re.compile(r"</\s*(?:html|body)\s*>", re.IGNORECASE)


def _parse_html(source: str):
    """The document's <html> element, parsed by lxml (libxml2's HTML parser, forgiving like a browser)."""
    import lxml.html

    parser = lxml.html.HTMLParser(encoding="utf-8")  # bytes in: a str may not carry an encoding declaration
    data = _HTML_END_TAGS.sub("", source).encode("utf-8", "surrogatepass")
    return lxml.html.document_fromstring(data, parser=parser)


class _HtmlText:
    """Accumulates paragraphs (blocks) and heading positions while the tree is walked."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.headings: list[_Heading] = []
        self.inline: list[str] = []  # strings of the paragraph being built
        self.cell_open = False  # a table cell ended in the current paragraph: the next text is another cell

    def _emit(self, block: str) -> tuple[int, int]:
        if self.parts:
            self.parts.append("\n\n")
            self.pos += 2
        start = self.pos
        self.parts.append(block)
        self.pos += len(block)
        return start, self.pos

    def line_break(self) -> None:  # <br>
        self.inline.append("\n")

    def text(self, s: str) -> None:
        """Inline text; its newlines are plain whitespace (only <br> breaks a line)."""
        if self.cell_open and s.strip():
            self.inline.append(" | ")
            self.cell_open = False
        self.inline.append(_WS.sub(" ", s))

    def flush(self) -> None:
        self.cell_open = False
        if not self.inline:
            return
        raw, self.inline = "".join(self.inline), []
        lines = [_squash(line) for line in raw.split("\n")]
        block = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        if block:
            self._emit(block)

    def pre(self, s: str) -> None:
        self.flush()
        lines = s.split("\n")
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        if lines:
            self._emit("\n".join(line.rstrip() for line in lines))

    def heading(self, level: int, title: str) -> None:
        self.flush()
        start, end = self._emit(title)
        self.headings.append(_Heading(level, title, start, end))


def _extract_html(source: str) -> Document:
    try:
        root = _parse_html(source)
    except Exception:  # noqa: BLE001 - lxml finds no element at all (blank or comment-only text)
        return Document(text="", kind="html", title=None, sections=[])
    title_el = next(root.iter("title"), None)
    title = _squash("".join(_plain_strings(title_el, keep_newlines=False))) if title_el is not None else ""
    out = _HtmlText()
    level = 0  # level of the innermost heading seen (pseudo-headings nest below it)
    exit_marker = object()
    stack: list = [root]
    while stack:
        node = stack.pop()
        if node is exit_marker:  # end of a block or cell
            kind = stack.pop()
            if kind == "cell":
                out.cell_open = True
            else:
                out.flush()
            continue
        if isinstance(node, str):
            out.text(node)
            continue
        if node is not root and _dropped(node):
            continue
        name = node.tag
        if name in _HEADING_TAGS or any(c in _PSEUDO_HEADING_CLASSES for c in _classes(node)):
            heading = _squash("".join(_plain_strings(node, keep_newlines=False)))
            if heading:  # an empty heading (an anchor, an icon) is ignored
                h = _HEADING_TAGS.get(name) or level + 1
                level = h if name in _HEADING_TAGS else level
                out.heading(h, heading)
            continue
        if name == "pre":
            out.pre("".join(_plain_strings(node, keep_newlines=True)))
            continue
        if name == "br":
            out.line_break()
            continue
        if name in _BLOCK_TAGS:
            out.flush()
            stack.extend(("block", exit_marker))
        elif name in _CELL_TAGS:
            stack.extend(("cell", exit_marker))
        stack.extend(reversed(_contents(node)))
    out.flush()
    text = "".join(out.parts)
    if not title:
        title = next((h.title for h in out.headings if h.level == 1), "")
    return Document(
        text=text, kind="html", title=title or None, sections=_sections_from_headings(text, out.headings)
    )


# ---------------------------------------------------------------------------------------------------------------
# PDF


def _extract_pdf(data: bytes) -> Document:
    import logging

    try:
        from pypdf import PdfReader
    except ImportError:  # pragma: no cover - pypdf is a dependency of the rag extra
        raise ExtractError("PDF: pypdf is not installed (pip install pypdf)") from None
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # broken files are reported through ExtractError
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except Exception as e:  # noqa: BLE001 (missing AES backend, unknown security handler, ...)
                raise ExtractError(f"PDF: encrypted ({_short(e)})") from None
            if not ok:
                raise ExtractError("PDF: encrypted (password required)")
        meta = reader.metadata
        title = _squash(str(meta.title)) if meta is not None and meta.title else ""
        pages = list(reader.pages)
    except ExtractError:
        raise
    except Exception as e:  # noqa: BLE001 (pypdf raises many types on broken files; the caller wants one)
        raise ExtractError(f"PDF: {_short(e)}") from None
    parts: list[str] = []
    sections: list[Section] = []
    failed = 0
    pos = 0
    for n, page in enumerate(pages, 1):
        try:
            page_text = page.extract_text() or ""
        except Exception:  # noqa: BLE001 (one broken page does not lose the others)
            failed += 1
            continue
        page_text = _normalise_newlines(page_text.replace("\x00", ""))
        s, e = trim_span(page_text, 0, len(page_text))
        if e == s:
            continue
        if parts:
            parts.append("\n\n")
            pos += 2
        parts.append(page_text[s:e])
        heading = (title, f"page {n}") if title else (f"page {n}",)
        sections.append(Section(heading, pos, pos + e - s))
        pos += e - s
    if not sections:
        if failed:
            raise ExtractError(f"PDF: text extraction failed on {failed} of {len(pages)} pages")
        raise ExtractError("PDF: no extractable text (scanned images?)")
    return Document(text="".join(parts), kind="pdf", title=title or None, sections=tuple(sections))


def _short(e: Exception) -> str:
    msg = str(e).strip().split("\n")[0] or type(e).__name__
    return msg if len(msg) <= 80 else msg[:77] + "..."


# ---------------------------------------------------------------------------------------------------------------
# Code

_IDENT = r"[A-Za-z_][\w]*"
_DEF_PATTERNS: dict[str, re.Pattern[str]] = {}
for _suffixes, _pattern in (
    ((".py", ".pyi"), rf"(?:async[ \t]+)?(def|class)[ \t]+({_IDENT})"),
    (
        (".rs",),
        (
            r"(?:pub(?:\([^)\n]*\))?[ \t]+)?(?:(?:async|unsafe|const|extern[ \t]+\"[^\"\n]*\")[ \t]+)*"
            rf"(fn|struct|enum|trait|mod|union)[ \t]+({_IDENT})"
            r"|(impl)(?:<[^>\n]*>)?[ \t]+([^{\n]*?)[ \t]*(?:where\b.*)?(?:\{|$)"
        ),
    ),
    ((".go",), rf"(func)[ \t]+(?:\([^)\n]*\)[ \t]*)?({_IDENT})|(type)[ \t]+({_IDENT})"),
    (
        (".js", ".mjs", ".cjs", ".jsx", ".ts", ".tsx"),
        (
            r"(?:export[ \t]+(?:default[ \t]+)?)?(?:declare[ \t]+)?(?:abstract[ \t]+)?(?:async[ \t]+)?"
            r"(function\*?|class|interface|enum)[ \t]+([A-Za-z_$][\w$]*)"
        ),
    ),
    (
        (".kt", ".kts"),
        (
            r"(?:(?:public|private|internal|protected|open|abstract|sealed|data|inline|suspend|override|enum)"
            r"[ \t]+)*(fun|class|object|interface)[ \t]+(?:<[^>\n]*>[ \t]*)?([A-Za-z_][\w.]*)"
        ),
    ),
    (
        (".swift",),
        (
            r"(?:(?:public|private|internal|open|fileprivate|final)[ \t]+)*"
            rf"(func|class|struct|enum|protocol|extension)[ \t]+({_IDENT})"
        ),
    ),
    ((".rb",), r"(def|class|module)[ \t]+([A-Za-z_][\w.:]*[?!=]?)"),
    ((".sh", ".bash", ".zsh"), rf"(function)[ \t]+({_IDENT})|({_IDENT})[ \t]*\(\)"),
):
    for _s in _suffixes:
        _DEF_PATTERNS[_s] = re.compile(_pattern)
# Lines kept with the definition below them: decorators, attributes, comments, doc comments.
_DEF_PREAMBLE = re.compile(r"@|#|//|/\*|[ \t]*\*|--")


def _extract_code(text: str, filename: str, suffix: str) -> Document:
    root = (filename,)
    pattern = _DEF_PATTERNS.get(suffix)
    if pattern is None:
        return Document(text=text, kind="code", title=None, sections=_one_section(text, root))
    lines = text.split("\n")
    offsets = _line_offsets(lines)
    starts: list[tuple[int, str]] = []  # (line index where the definition's section starts, label)
    for i, line in enumerate(lines):
        if not line or line[0].isspace():
            continue
        m = pattern.match(line)
        if m is None:
            continue
        groups = [g for g in m.groups() if g]
        label = _squash(" ".join(groups[:2]) if len(groups) >= 2 else f"{groups[0]}()")[:80]
        first = i
        prev_end = starts[-1][0] if starts else -1
        while first - 1 > prev_end and _DEF_PREAMBLE.match(lines[first - 1]):
            first -= 1
        starts.append((first, label))
    sections = []
    bounds = [(0, None)] + [(offsets[first], label) for first, label in starts] + [(len(text), None)]
    for (start, label), (end, _) in itertools.pairwise(bounds):
        s, e = trim_span(text, start, end)
        if e > s:
            sections.append(Section(root + ((label,) if label else ()), s, e))
    return Document(text=text, kind="code", title=None, sections=tuple(sections))
