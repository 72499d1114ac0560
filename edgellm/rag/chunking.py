"""Structure-first chunking of an extracted `Document` to the embedding model's token budget.

1. Sections (from `extract`) are the first unit: a chunk never crosses a section boundary, except to merge small
   sections (< min_tokens) with their neighbours under the same parent (below).
2. A section over max_tokens splits recursively: paragraphs (blank lines), then lines, then sentences, then words,
   then characters (a single "word" over budget); the pieces are packed greedily up to max_tokens, and a chunk
   that is at least half full ends at the strongest boundary it contains rather than at the last one that fits.
3. Consecutive chunks of one section overlap: the next chunk starts at a piece, sentence or word boundary inside the
   previous chunk such that the shared text holds at most overlap_tokens (checked with the tokenizer).

Merging small sections. A run of consecutive sections smaller than min_tokens, all under the parent of the run's
first section (siblings and their children; or a parent's short intro and its children), joins the section that
follows it when that one is under the same parent, else the group just before it when the run lies under the
parent of that group's last section, else it forms its own group. A group is then packed like one section whose section boundaries are the strongest split
points. A chunk's heading is the longest common prefix of the heading paths of the sections it covers: the
section's own path for a chunk inside one section, the parent's path for a chunk that merges siblings.

Every chunk is a verbatim slice `doc.text[start:end]` without leading or trailing whitespace, holds at most
max_tokens tokens and max_chars characters (a bound for text the tokenizer squeezes into [UNK]s), and every
non-blank character of every section lies in at least one chunk.

Token counts. `count_tokens` is called in batches (a handful of calls per document): sections, then the pieces of
the sections over budget, level by level; the candidate chunks and their overlaps are counted once at the end and
adjusted (rarely: only when the tokenizer is not additive over whitespace-separated pieces) until they fit.
Overlap positions inside a piece are estimated in proportion to its characters, then checked by that final count.
With `token_offsets` (a word-splitting tokenizer), most of those counts come from one tokenization of the whole
document instead (_SpanCounts).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgellm.rag.extract import Document, trim_span

CountTokens = Callable[[list[str]], list[int]]  # texts -> token counts (no special tokens)
# text -> each token's (start, end) char offsets into it and the index of the word (pre-token) it belongs to
TokenOffsets = Callable[[str], tuple[Sequence[tuple[int, int]], Sequence[int | None]]]


@dataclass(frozen=True)
class Chunk:
    text: str  # == doc.text[start:end]
    start: int  # char offsets into Document.text
    end: int
    heading: tuple[str, ...]  # common prefix of the heading paths of the sections the chunk covers
    n_tokens: int  # count_tokens([text])[0]


# Strength of the boundary before a piece: where a chunk should preferably end.
_CHAR, _WORD, _SENTENCE, _LINE, _PARAGRAPH, _SECTION = range(6)

# Gaps between pieces, one regex per level, strongest first; a gap is whitespace only (never text), so pieces
# cover every non-blank character.
_SPLITTERS: tuple[tuple[int, re.Pattern[str]], ...] = (
    (_PARAGRAPH, re.compile(r"[ \t\f\v]*\n(?:[ \t\f\v]*\n)+\s*")),
    (_LINE, re.compile(r"\s*\n\s*")),
    (_SENTENCE, re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]’”])\s+|(?<=[。！？])\s*")),
    (_WORD, re.compile(r"\s+")),
)
_SENTENCE_GAP = _SPLITTERS[2][1]
_WORD_GAP = _SPLITTERS[3][1]

_MIN_PARTIAL_OVERLAP = 4  # tokens: below this, an overlap does not reach into a partial piece
_ESTIMATE_MARGIN = 0.9  # proportional estimates aim this far below a limit
_CHARS_PER_TOKEN_OVER = 8  # English averages ~4.5 chars per WordPiece token, code ~3: 8 * max_tokens is over


def chunk_document(
    doc: Document,
    count_tokens: CountTokens,
    *,
    max_tokens: int = 200,
    overlap_tokens: int = 32,
    min_tokens: int = 24,
    max_chars: int | None = None,
    token_offsets: TokenOffsets | None = None,
) -> list[Chunk]:
    """The chunks of `doc`, in document order (see the module docstring). max_chars defaults to 16 * max_tokens.

    With `token_offsets` (for a tokenizer that splits text into words before it splits words into tokens, and
    normalizes each character alone: BERT's WordPiece), the document is tokenized once and a slice whose ends
    both fall between words is counted from that (_SpanCounts); count_tokens counts the rest. The chunks are
    the same either way."""
    if max_tokens < 4:
        raise ValueError(f"max_tokens must be at least 4 (got {max_tokens})")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError(f"overlap_tokens must be in [0, max_tokens) (got {overlap_tokens})")
    if min_tokens < 0:
        raise ValueError(f"min_tokens must not be negative (got {min_tokens})")
    max_chars = 16 * max_tokens if max_chars is None else max_chars
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive (got {max_chars})")
    spans = _SpanCounts(doc.text, token_offsets) if token_offsets is not None and doc.text else None
    return _Chunker(doc, count_tokens, max_tokens, overlap_tokens, min_tokens, max_chars, spans).run()


class _SpanCounts:
    """Token counts of slices of one text from one tokenization of the whole. A word-splitting tokenizer
    tokenizes each word on its own, so a slice whose two ends fall between words (never strictly inside a
    word's span) holds exactly the tokens that start inside it. On the Valgrind manual the chunker tokenizes
    its 40 pages once each instead of ~11,500 slices of them, with the same counts."""

    def __init__(self, text: str, token_offsets: TokenOffsets) -> None:
        offsets, words = token_offsets(text)
        spans = np.asarray(offsets, np.int64).reshape(-1, 2)
        ids = np.fromiter((-1 if w is None else w for w in words), np.int64, len(words))
        self.starts = spans[:, 0]
        # a word's tokens are consecutive: its span runs from its first token's start to its last one's end
        first = np.flatnonzero(np.diff(ids, prepend=-2) != 0)
        last = np.append(first[1:] - 1, len(ids) - 1) if len(ids) else first
        keep = ids[first] >= 0
        self.word_starts = spans[first[keep], 0]
        self.word_ends = spans[last[keep], 1]
        # offsets out of order (a tokenizer this was not meant for): every slice is counted by count_tokens
        self.usable = bool(np.all(np.diff(self.starts) >= 0) and np.all(self.word_ends[:-1] <= self.word_starts[1:]))

    def _between_words(self, p: int) -> bool:
        i = int(np.searchsorted(self.word_starts, p, side="right")) - 1
        return i < 0 or not (self.word_starts[i] < p < self.word_ends[i])

    def count(self, a: int, b: int) -> int | None:
        """Tokens of text[a:b], or None when an end falls inside a word."""
        if not (self.usable and self._between_words(a) and self._between_words(b)):
            return None
        return int(np.searchsorted(self.starts, b) - np.searchsorted(self.starts, a))


class _Piece:
    """A span that ends up whole inside chunks: a section, paragraph, line, sentence, word or characters."""

    __slots__ = ("end", "level", "sec", "start", "tokens")

    def __init__(self, start: int, end: int, tokens: int | None, level: int, sec: int) -> None:
        self.start = start
        self.end = end
        self.tokens = tokens  # exact count_tokens of text[start:end]; None = not counted (long: split it)
        self.level = level  # strength of the boundary before it
        self.sec = sec  # index of its section


class _Draft:
    """A candidate chunk; tokens (and ov_tokens when it overlaps the previous chunk) are filled in by counting."""

    __slots__ = ("end", "ov_tokens", "prev_end", "start", "tokens")

    def __init__(self, start: int, end: int, tokens: int | None, prev_end: int | None) -> None:
        self.start = start
        self.end = end
        self.tokens = tokens
        self.prev_end = prev_end  # end of the previous chunk when this one starts before it (the overlap)
        self.ov_tokens: int | None = None


def _split(text: str, start: int, end: int, gap: re.Pattern[str]) -> list[tuple[int, int]]:
    """Non-blank, trimmed spans of text[start:end] between the matches of `gap`."""
    out = []
    pos = start
    for m in gap.finditer(text, start, end):
        a, b = m.span()
        if a > pos:
            s, e = trim_span(text, pos, a)
            if e > s:
                out.append((s, e))
        pos = max(pos, b)
    if end > pos:
        s, e = trim_span(text, pos, end)
        if e > s:
            out.append((s, e))
    return out


class _Chunker:
    def __init__(
        self,
        doc: Document,
        count: CountTokens,
        max_tokens: int,
        overlap: int,
        min_tokens: int,
        max_chars: int,
        spans: _SpanCounts | None = None,
    ) -> None:
        self.text = doc.text
        self._count_fn = count
        self._spans = spans
        self.max = max_tokens
        self.overlap = overlap
        self.min = min_tokens
        self.max_chars = max_chars
        # Spans longer than this are split without being counted first: they are over budget in any text but one
        # the tokenizer squeezes into [UNK]s, and counting them would only repeat the count of their pieces.
        self.count_chars = min(max_chars, _CHARS_PER_TOKEN_OVER * max_tokens)
        self.secs: list[tuple[tuple[str, ...], int, int]] = []  # (heading, start, end), trimmed and non-blank
        for s in doc.sections:
            a, b = trim_span(self.text, s.start, s.end)
            if b > a:
                self.secs.append((s.heading, a, b))
        self.sec_starts = [s for _, s, _ in self.secs]
        self.gap_tokens: list[int] = [0] * len(self.secs)  # tokens of the heading lines before section i

    def count(self, spans: list[tuple[int, int]]) -> list[int]:
        if not spans:
            return []
        out = [self._spans.count(a, b) for a, b in spans] if self._spans is not None else [None] * len(spans)
        rest = [i for i, n in enumerate(out) if n is None]
        if rest:
            counts = self._count_fn([self.text[spans[i][0] : spans[i][1]] for i in rest])
            if len(counts) != len(rest):
                raise ValueError(f"count_tokens returned {len(counts)} counts for {len(rest)} texts")
            for i, c in zip(rest, counts):
                out[i] = int(c)
        return out  # type: ignore[return-value]

    def over(self, p: _Piece) -> bool:
        return p.tokens is None or p.tokens > self.max or p.end - p.start > self.max_chars

    # -- 1. sections, counted once ------------------------------------------------------------------------------

    def run(self) -> list[Chunk]:
        if not self.secs:
            return []
        text_secs = self.secs
        spans = [(a, b) for _, a, b in text_secs if b - a <= self.count_chars]
        gaps = [trim_span(self.text, text_secs[i - 1][2], text_secs[i][1]) for i in range(1, len(text_secs))]
        counts = self.count(spans + [g for g in gaps if g[1] > g[0]])
        it = iter(counts)
        sec_tokens: list[int | None] = [
            next(it) if b - a <= self.count_chars else None for _, a, b in text_secs
        ]
        for i, g in enumerate(gaps, 1):
            self.gap_tokens[i] = next(it) if g[1] > g[0] else 0
        pieces = [
            [_Piece(a, b, sec_tokens[i], _SECTION, i)] for i, (_, a, b) in enumerate(text_secs)
        ]  # per section; refined below until no piece is over budget
        self.refine(pieces)
        drafts: list[_Draft] = []
        for group in self.groups(sec_tokens):
            drafts.extend(self.pack([p for i in group for p in pieces[i]]))
        return self.verify(drafts)

    def groups(self, sec_tokens: list[int | None]) -> list[list[int]]:
        """Section indices grouped by the small-section merging rule (module docstring)."""
        n = len(self.secs)
        tiny = [t is not None and t < self.min for t in sec_tokens]

        def under_parent_of(first: int, i: int) -> bool:
            parent = self.secs[first][0][:-1]
            return self.secs[i][0][: len(parent)] == parent

        groups: list[list[int]] = []
        i = 0
        while i < n:
            if not tiny[i]:
                groups.append([i])
                i += 1
                continue
            run = [i]
            j = i + 1
            while j < n and tiny[j] and under_parent_of(i, j):
                run.append(j)
                j += 1
            if j < n and under_parent_of(i, j):
                run.append(j)  # a larger section under the same parent follows: lead into it
                j += 1
                groups.append(run)
            elif groups and all(under_parent_of(groups[-1][-1], k) for k in run):
                groups[-1].extend(run)  # else close the group before
            else:
                groups.append(run)
            i = j
        return groups

    # -- 2. recursive split of what is over budget ---------------------------------------------------------------

    def refine(self, pieces: list[list[_Piece]]) -> None:
        """Split, in place, every piece over budget: by paragraphs, lines, sentences, words, then characters.
        One count_tokens call per level for the whole document."""
        for level, gap in _SPLITTERS:
            to_count: list[_Piece] = []
            for plist in pieces:
                if not any(self.over(p) for p in plist):
                    continue
                out: list[_Piece] = []
                for p in plist:
                    parts = _split(self.text, p.start, p.end, gap) if self.over(p) else None
                    if parts is None or len(parts) < 2:
                        out.append(p)  # fits, or cannot split at this level: try the next one
                        continue
                    for k, (a, b) in enumerate(parts):
                        q = _Piece(a, b, None, p.level if k == 0 else level, p.sec)
                        if b - a <= self.count_chars:
                            to_count.append(q)
                        out.append(q)
                plist[:] = out
            for q, n in zip(to_count, self.count([(q.start, q.end) for q in to_count])):
                q.tokens = n
        while True:  # a single "word" over budget: cut it into characters, in proportion, and check
            todo = [(plist, k) for plist in pieces for k, p in enumerate(plist) if self.over(p)]
            todo = [(plist, k) for plist, k in todo if plist[k].end - plist[k].start > 1]
            if not todo:
                return
            uncounted = [plist[k] for plist, k in todo if plist[k].tokens is None]
            for p, n in zip(uncounted, self.count([(p.start, p.end) for p in uncounted])):
                p.tokens = n
            to_count = []
            for plist, k in reversed(todo):  # reversed: replacing plist[k] keeps the earlier indices valid
                p = plist[k]
                cut = self.char_cuts(p)
                new = [
                    _Piece(a, b, None, p.level if i == 0 else _CHAR, p.sec) for i, (a, b) in enumerate(cut)
                ]
                plist[k : k + 1] = new
                to_count.extend(new)
            for q, n in zip(to_count, self.count([(q.start, q.end) for q in to_count])):
                q.tokens = n

    def char_cuts(self, p: _Piece) -> list[tuple[int, int]]:
        """Spans of about the same size that should each fit; a cut moves back (up to a quarter of a span) to
        just after a non-alphanumeric character, so that it rarely splits a token."""
        length = p.end - p.start
        tokens = max(p.tokens or 1, 1)
        size = int(length * min(1.0, self.max / tokens) * _ESTIMATE_MARGIN)
        size = max(1, min(size, self.max_chars, length - 1))
        out = []
        a = p.start
        while p.end - a > size:
            b = a + size
            for q in range(b, b - size // 4, -1):
                if not self.text[q - 1].isalnum():
                    b = q
                    break
            out.append((a, b))
            a = b
        out.append((a, p.end))
        return out

    # -- 3. greedy packing with overlap --------------------------------------------------------------------------

    def pack(self, pieces: list[_Piece]) -> list[_Draft]:
        drafts: list[_Draft] = []
        n = len(pieces)
        i = 0
        start = pieces[0].start
        tail = 0  # estimated tokens of the overlap text[start:pieces[i].start]
        prev_end: int | None = None
        while i < n:
            total = tail + (pieces[i].tokens or 0)
            cum = [total]  # cum[k - i]: tokens of the chunk ending with piece k
            j = i + 1
            while j < n:
                p = pieces[j]
                add = (p.tokens or 0) + (self.gap_tokens[p.sec] if p.sec != pieces[j - 1].sec else 0)
                if total + add > self.max or p.end - start > self.max_chars:
                    break
                total += add
                cum.append(total)
                j += 1
            if j < n:  # end at the strongest boundary among the cuts that leave the chunk at least half full
                best = j
                for k in range(j, i + 1, -1):
                    if cum[k - 1 - i] < self.max / 2:
                        break
                    if pieces[k].level > pieces[best].level:
                        best = k
                j = best
            single = j == i + 1 and tail == 0
            drafts.append(_Draft(start, pieces[j - 1].end, pieces[i].tokens if single else None, prev_end))
            if j >= n:
                break
            prev_end = pieces[j - 1].end
            start, tail = self.overlap_start(pieces, i, j, start)
            if tail == 0:
                start, prev_end = pieces[j].start, None
            i = j
        return drafts

    def overlap_start(self, pieces: list[_Piece], i: int, j: int, cur_start: int) -> tuple[int, int]:
        """Where the chunk after pieces[i:j] (which starts at cur_start) starts so that it repeats at most `overlap`
        tokens of them (whole pieces first, then the tail of one piece from a sentence or word start), and the
        estimated repeated tokens. The start is always after cur_start."""
        nxt = pieces[j]
        budget = min(self.overlap, self.max - (nxt.tokens or 0))
        if nxt.level == _SECTION or budget <= 0:
            return nxt.start, 0
        acc = 0
        start = nxt.start
        k = j - 1
        while k >= i and pieces[k].sec == nxt.sec and pieces[k].start > cur_start:
            p = pieces[k]
            if acc + (p.tokens or 0) > budget or nxt.end - p.start > self.max_chars:
                break
            acc += p.tokens or 0
            start = p.start
            k -= 1
        left = budget - acc
        if k < i or pieces[k].sec != nxt.sec or pieces[k].end <= cur_start or left < _MIN_PARTIAL_OVERLAP:
            return start, acc
        p = pieces[k]
        length, tokens = p.end - p.start, max(p.tokens or 1, 1)
        chars = min(int(left * _ESTIMATE_MARGIN * length / tokens), self.max_chars - (nxt.end - p.end))
        if chars <= 0:
            return start, acc
        lo = p.end - chars

        def estimate(q: int) -> int:
            return math.ceil(tokens * (p.end - q) / length)

        q = self.sentence_start(p.start, p.end, lo)
        if q is None or estimate(q) < left / 2:
            q = self.word_start(p.start, p.end, lo)
        if q is None:
            return start, acc
        return q, acc + estimate(q)

    def sentence_start(self, a: int, b: int, lo: int) -> int | None:
        """The first start of a sentence inside text[a:b] at or after lo (not a itself)."""
        for m in _SENTENCE_GAP.finditer(self.text, max(a, lo - 2), b):
            q = m.end()
            if lo <= q < b and q > a and not self.text[q].isspace():
                return q
        return None

    def word_start(self, a: int, b: int, lo: int) -> int | None:
        """The first start of a word inside text[a:b] at or after lo (not a itself)."""
        m = _WORD_GAP.search(self.text, max(a, lo - 1), b)
        return m.end() if m is not None and m.end() < b else None

    # -- 4. exact counts, and the rare fix-ups ----------------------------------------------------------------

    def verify(self, drafts: list[_Draft]) -> list[Chunk]:
        while True:
            todo = [d for d in drafts if d.tokens is None or (d.prev_end is not None and d.ov_tokens is None)]
            if not todo:
                break
            spans = []
            for d in todo:
                spans.append((d.start, d.end))
                if d.prev_end is not None:
                    spans.append((d.start, d.prev_end))
            counted = {id(d) for d in todo}
            it = iter(self.count(spans))
            out: list[_Draft] = []
            for d in drafts:
                n, ov = 0, None
                if id(d) in counted:
                    n = next(it)
                    ov = next(it) if d.prev_end is not None else None
                if d.prev_end is not None and out and d.start <= out[-1].start:
                    # The previous draft was cut in two, or lost its own overlap: this overlap would swallow it.
                    d.start, d.prev_end = trim_span(self.text, d.prev_end, d.end)[0], None
                    d.tokens = d.ov_tokens = None
                    out.append(d)
                elif id(d) not in counted:
                    out.append(d)
                elif n <= self.max and (ov is None or ov <= self.overlap):
                    d.tokens, d.ov_tokens = n, ov
                    out.append(d)
                elif ov is not None:
                    self.shrink_overlap(d, n, ov)
                    out.append(d)
                else:
                    out.extend(self.halve(d, n))
            drafts = out
        return [
            Chunk(self.text[d.start : d.end], d.start, d.end, self.heading(d.start, d.end), d.tokens or 0)
            for d in drafts
        ]

    def shrink_overlap(self, d: _Draft, n: int, ov: int) -> None:
        """Start d later inside its overlap, so that both the overlap and d fit (in proportion; counted again)."""
        assert d.prev_end is not None
        allowed = min(self.overlap, ov - (n - self.max)) if n > self.max else self.overlap
        q = None
        if allowed > 0 and ov > 0:
            chars = int((d.prev_end - d.start) * allowed / ov * _ESTIMATE_MARGIN)
            if chars > 0:
                q = self.word_start(d.start, d.prev_end, d.prev_end - chars)
        if q is None or q <= d.start:
            d.start, d.prev_end = trim_span(self.text, d.prev_end, d.end)[0], None
        else:
            d.start = q
        d.tokens = d.ov_tokens = None

    def halve(self, d: _Draft, n: int) -> list[_Draft]:
        """Two drafts for one that is over budget and has no overlap left (a tokenizer that counts a joined text
        as more than its pieces): cut at the strongest boundary near the middle."""
        a, b = d.start, d.end
        if b - a < 2:
            d.tokens = n  # a single character over budget: nothing smaller exists (max_tokens >= 4 avoids it)
            return [d]
        mid, quarter = (a + b) // 2, (b - a) // 4
        cut: tuple[int, int] | None = None
        for _, gap in _SPLITTERS:
            best = None
            for m in gap.finditer(self.text, a, b):
                if (
                    m.start() > a
                    and m.end() < b
                    and (best is None or abs(m.start() - mid) < abs(best[0] - mid))
                ):
                    best = m.span()
            if best is not None and (abs(best[0] - mid) <= quarter or cut is None):
                cut = best
                if abs(best[0] - mid) <= quarter:
                    break
        if cut is None:
            cut = (mid, mid)
        first = _Draft(a, trim_span(self.text, a, cut[0])[1], None, d.prev_end)
        second = _Draft(trim_span(self.text, cut[1], b)[0], b, None, None)
        return [first, second]

    def heading(self, start: int, end: int) -> tuple[str, ...]:
        """Common prefix of the heading paths of the sections that [start, end) intersects."""
        lo = max(bisect.bisect_right(self.sec_starts, start) - 1, 0)
        hi = bisect.bisect_left(self.sec_starts, end)
        paths = [self.secs[k][0] for k in range(lo, max(hi, lo + 1)) if self.secs[k][2] > start]
        if not paths:
            return self.secs[lo][0]
        prefix = paths[0]
        for path in paths[1:]:
            n = 0
            while n < min(len(prefix), len(path)) and prefix[n] == path[n]:
                n += 1
            prefix = prefix[:n]
        return prefix
