"""The native tokenizer (native/src/tokenizer/) against independent references, through the Python API.

- SmolLM2's byte-level BPE (pre-tokenizer "smollm"): llama.cpp's ids for the 2,002 golden strings, each with
  or without special-token parsing as its line says; detokenize gives every string back.
- The same vocabulary under the other pre-tokenizer names (gpt-2, llama-bpe, qwen2, default): the ids of the
  `tokenizers` library running the split regexes llama.cpp assigns to those names, on seeded random text.
- SentencePiece vocabularies (Llama and Gemma layouts, trained by sentencepiece on GPL-3 and converted by our
  converter): sentencepiece's own ids on >= 1,000 seeded strings, BOS as the metadata says.
- Pieces of byte-level, <0xXX> and control tokens; invalid or split UTF-8 in detokenized text; speed.
- Broken tokenizer metadata: one EdgeLLMError naming the key.
"""

from __future__ import annotations

import json
import random
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import sentencepiece as spm
from gguf_raw import ARRAY, STRING, RawFile, array, gstr, kv

from edgellm import LLM, EdgeLLMError
from edgellm.gguf import GGUFReader, GGUFValueType, GGUFWriter
from helpers.smollm2 import smollm2_gguf_path
from helpers.tiny_models import tiny_checkpoint

GOLDEN = Path(__file__).parent / "data" / "smollm2-tokenizer-golden.jsonl"
GPL3 = Path("/usr/share/common-licenses/GPL-3")
V = GGUFValueType

# --- seeded random text -------------------------------------------------------------------------------------

_WORDS = GPL3.read_text(encoding="utf-8").split()
_SCRIPTS = ["héllo", "naïve", "café", "Straße", "Ωmega", "ñandú", "e\u0301", "a\u0308\u0301", "ǅ", "ﬁ",
    "日本語", "中文分词", "テキスト", "한국어", "Ελληνικά", "עברית", "العربية", "हिन्दी", "ไทย", "ကမ္ဘာ"]
_EMOJI = ["😀", "🎉", "👍🏽", "👨\u200d👩\u200d👧", "🏳️\u200d🌈", "✅", "❤️", "🦙"]
_SPACES = ["\r\n", "\r", " \n ", "\n\n  ", "\u00a0", "\u3000", "\u2028", "\x0b", "\x0c", "\x85", "\x1c",
    "\u200b", "\u2009"]
_NUMBERS = ["²", "½", "٣", "Ⅻ", "①", "೩", "𝟘", "3.14", "1,000", "2e-10", "-42", "0x1F"]
# unassigned, private use, replacement, NUL, DEL, format
_ODD = ["\u0378", "\ue000", "\U000f0000", "\ufffd", "\x00", "\x7f", "\u061c"]


def _assigned(lo: int, hi: int, r: random.Random) -> str:
    """A random assigned, non-surrogate code point in [lo, hi]: one every Unicode version agrees on."""
    while True:
        c = chr(r.randint(lo, hi))
        if unicodedata.category(c) not in ("Cn", "Cs"):
            return c


_PIECES = [
    lambda r: r.choice(_WORDS),
    lambda r: r.choice(_WORDS).upper(),
    lambda r: r.choice(_WORDS).capitalize(),
    lambda r: str(r.randint(0, 10 ** r.randint(1, 12))),
    lambda r: r.choice(
        ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'RE", "'Ve", "'LL", "'", "''", "'x"]
    ),
    lambda r: "".join(r.choice('!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~') for _ in range(r.randint(1, 4))),
    lambda r: " " * r.randint(1, 5),
    lambda r: "\t" * r.randint(1, 3),
    lambda r: "\n" * r.randint(1, 3),
    lambda r: r.choice(_SPACES),
    lambda r: r.choice(_SCRIPTS),
    lambda r: r.choice(_EMOJI),
    lambda r: r.choice(_NUMBERS),
    lambda r: r.choice(_ODD),
    lambda r: _assigned(0x80, 0x2FFF, r),
    lambda r: _assigned(0x10000, 0x2FFFF, r),
]


def random_texts(seed: int, n: int, specials: tuple[str, ...] = ()) -> list[str]:
    """n strings of 1..12 random pieces: words from GPL-3, numbers, contractions, punctuation, runs of spaces,
    tabs and newlines, other whitespace, accents, CJK and other scripts, emoji, odd code points; `specials`
    (special-token texts) mixed in now and then."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(r.randint(1, 12)):
            parts.append(r.choice(specials) if specials and r.random() < 0.05 else r.choice(_PIECES)(r))
            if r.random() < 0.4:
                parts.append(" ")
        out.append("".join(parts))
    return out


# --- GGUF files with edited tokenizer metadata --------------------------------------------------------------


def _clone_metadata(src: Path, dst: Path, edits: dict[str, tuple[Any, ...] | None]) -> Path:
    """dst: the metadata of src (no tensors) with `edits` applied: key -> (value, type[, element type]) to set
    or add, None to drop."""
    r = GGUFReader(src)
    w = GGUFWriter(dst)
    for key in r.keys():  # noqa: SIM118 - GGUFReader is not iterable
        if key in edits:
            continue
        vtype, elem = r.value_type(key)
        w.add_value(key, r[key], vtype, elem)
    for key, spec in edits.items():
        if spec is not None:
            w.add_value(key, *spec)
    w.write_header()
    w.finish()
    return dst


@pytest.fixture(scope="module")
def smollm2() -> LLM:
    return LLM(smollm2_gguf_path(), vocab_only=True)


@pytest.fixture(scope="module")
def smollm2_tokens() -> list[str]:
    return list(GGUFReader(smollm2_gguf_path())["tokenizer.ggml.tokens"])


# --- SmolLM2: llama.cpp's ids -------------------------------------------------------------------------------


def _golden() -> list[dict]:
    return [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]


def test_smollm2_golden_ids(smollm2: LLM) -> None:
    lines = _golden()
    assert len(lines) == 2002 and {line["special"] for line in lines} == {False, True}
    wrong = [
        line["text"]
        for line in lines
        if smollm2.tokenize(line["text"], add_special=False, parse_special=line["special"]) != line["ids"]
    ]
    assert not wrong, f"{len(wrong)} of {len(lines)} strings differ from llama.cpp, e.g. {wrong[:3]!r}"


def test_smollm2_special_parsing(smollm2: LLM) -> None:
    text = "<|im_start|>user\nhi<|im_end|>"
    assert smollm2.tokenize(text, add_special=False, parse_special=True)[0] == 1
    assert 1 not in smollm2.tokenize(text, add_special=False, parse_special=False)
    assert smollm2.tokenize("hi", add_special=True) == smollm2.tokenize("hi", add_special=False)  # no BOS
    assert smollm2.tokenize("", add_special=False) == []


def test_smollm2_round_trip(smollm2: LLM) -> None:
    lines = [line for line in _golden() if not line["special"]]
    wrong = [line["text"] for line in lines if smollm2.detokenize(line["ids"]) != line["text"]]
    assert not wrong, f"{len(wrong)} strings do not come back, e.g. {wrong[:3]!r}"


def test_smollm2_speed(smollm2: LLM) -> None:
    text = GPL3.read_text(encoding="utf-8")
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        ids = smollm2.tokenize(text, add_special=False)
        best = min(best, time.perf_counter() - t0)
    assert len(ids) > 5000
    assert best < 0.1, f"tokenizing GPL-3 ({len(text)} chars) took {best * 1000:.0f} ms"


# --- the same vocabulary under other pre-tokenizers: the tokenizers library's ids ---------------------------

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
# llama.cpp's split regexes per tokenizer.ggml.pre name (llama-vocab.cpp), applied in order
_SPLITS = {
    "gpt-2": [_GPT2],
    "llama-bpe": [_LLAMA3],
    "qwen2": [_LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")],
    "smollm": [r"\p{N}", _GPT2],
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
}


def _hf_tokenizer(pre: str, tokens: list[str], merges: list[str]):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(
        vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], ignore_merges=pre == "llama-bpe"
    )
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in _SPLITS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    return tok


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2", "default", "smollm"])
def test_bpe_pre_tokenizers(pre: str, tmp_path: Path, smollm2_tokens: list[str]) -> None:
    src = smollm2_gguf_path()
    path = _clone_metadata(src, tmp_path / f"{pre}.gguf", {"tokenizer.ggml.pre": (pre, GGUFValueType.STRING)})
    ours = LLM(path, vocab_only=True)
    ref = _hf_tokenizer(pre, smollm2_tokens, list(GGUFReader(src)["tokenizer.ggml.merges"]))
    texts = random_texts(seed=sum(map(ord, pre)), n=1000)
    wrong = [
        s for s in texts if ours.tokenize(s, add_special=False) != ref.encode(s, add_special_tokens=False).ids
    ]
    assert not wrong, (
        f"{pre}: {len(wrong)} of {len(texts)} strings differ from tokenizers, e.g. {wrong[:3]!r}"
    )


# --- SentencePiece: sentencepiece's own ids -----------------------------------------------------------------

# tiny checkpoint -> special-token texts sentencepiece treats as user-defined symbols (always parsed)
_SPM = {"llama_spm": (), "gemma3": ("<start_of_turn>", "<end_of_turn>", "<mask>")}


@pytest.mark.parametrize("arch", list(_SPM))
def test_sentencepiece_ids(arch: str, convert_tiny) -> None:
    path = convert_tiny(arch)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_checkpoint(arch) / "tokenizer.model"))
    meta = GGUFReader(path)
    add_bos = meta.get("tokenizer.ggml.add_bos_token", True)
    assert meta["tokenizer.ggml.bos_token_id"] == sp.bos_id()
    llm = LLM(path, vocab_only=True)
    specials = _SPM[arch]
    texts = random_texts(seed=11, n=1200, specials=specials)
    wrong = []
    for s in texts:
        ours = llm.tokenize(s, add_special=True, parse_special=bool(specials))
        if ours != [sp.bos_id()] * add_bos + sp.encode(s):
            wrong.append(s)
    assert not wrong, (
        f"{arch}: {len(wrong)} of {len(texts)} strings differ from sentencepiece, e.g. {wrong[:3]!r}"
    )


@pytest.mark.parametrize("arch", list(_SPM))
def test_sentencepiece_round_trip(arch: str, convert_tiny) -> None:
    """Text comes back whole: byte-fallback tokens rejoin characters outside the vocabulary, and the space the
    Llama layout puts before the text is dropped again (as sentencepiece's decode does)."""
    llm = LLM(convert_tiny(arch), vocab_only=True)
    texts = [s for s in random_texts(seed=12, n=300) if s.strip(" ")]
    back = [s for s in texts if llm.detokenize(llm.tokenize(s)) != s]
    assert not back, f"{arch}: {len(back)} of {len(texts)} strings do not come back, e.g. {back[:3]!r}"
    assert llm.detokenize(llm.tokenize("\u20ac", add_special=False)) == "\u20ac"


def test_sentencepiece_without_byte_tokens(tmp_path: Path) -> None:
    """A vocabulary without <0xXX> tokens: characters outside it become the unknown token, a run of them one
    unknown token, as sentencepiece does."""
    import io

    lines = [line for line in GPL3.read_text(encoding="utf-8").splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=300,
        character_coverage=1.0, byte_fallback=False, num_threads=1, input_sentence_size=0,
        shuffle_input_sentence=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        minloglevel=2,
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    n = sp.vocab_size()
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 1 for i in range(n)]
    w = GGUFWriter(tmp_path / "spm-no-bytes.gguf")
    w.add_value("general.architecture", "llama", V.STRING)
    w.add_value("tokenizer.ggml.model", "llama", V.STRING)
    w.add_value("tokenizer.ggml.tokens", [sp.id_to_piece(i) for i in range(n)], V.ARRAY, V.STRING)
    w.add_value("tokenizer.ggml.scores", [sp.get_score(i) for i in range(n)], V.ARRAY, V.FLOAT32)
    w.add_value("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32)
    for key, tid in (("unknown", sp.unk_id()), ("bos", sp.bos_id()), ("eos", sp.eos_id())):
        w.add_value(f"tokenizer.ggml.{key}_token_id", tid, V.UINT32)
    w.write_header()
    w.finish()
    llm = LLM(tmp_path / "spm-no-bytes.gguf", vocab_only=True)
    assert llm.tokenize("日本語 x 😀😀", add_special=False).count(sp.unk_id()) == 2  # two runs
    texts = random_texts(seed=13, n=1000)
    wrong = [s for s in texts if llm.tokenize(s, add_special=False) != sp.encode(s)]
    assert not wrong, f"{len(wrong)} of {len(texts)} strings differ from sentencepiece, e.g. {wrong[:3]!r}"


def test_sentencepiece_pieces(convert_tiny) -> None:
    llm = LLM(convert_tiny("llama_spm"), vocab_only=True)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_checkpoint("llama_spm") / "tokenizer.model"))
    assert llm.token_to_piece(sp.piece_to_id("<0x0A>")) == b"\n"
    assert llm.token_to_piece(sp.piece_to_id("<0xE2>")) == b"\xe2"
    word = next(
        p
        for p in (sp.id_to_piece(i) for i in range(sp.vocab_size()))
        if p.startswith("\u2581") and len(p) > 2
    )
    assert llm.token_to_piece(sp.piece_to_id(word)) == word.replace("\u2581", " ").encode()
    assert llm.token_to_piece(sp.bos_id()) == b""
    assert llm.token_to_piece(sp.bos_id(), special=True) == b"<s>"
    # a character outside the vocabulary: the space prefix, then its UTF-8 bytes as byte tokens
    assert [llm.token_to_piece(i) for i in llm.tokenize("\u20ac", add_special=False)] == [
        b" ",
        b"\xe2",
        b"\x82",
        b"\xac",
    ]


# --- special ids and end of generation ----------------------------------------------------------------------


def test_special_ids_and_end_of_generation(smollm2: LLM, smollm2_tokens: list[str], convert_tiny) -> None:
    meta = GGUFReader(smollm2_gguf_path())
    assert (smollm2.bos, smollm2.eos) == (
        meta["tokenizer.ggml.bos_token_id"],
        meta["tokenizer.ggml.eos_token_id"],
    )
    by_text = {t: i for i, t in enumerate(smollm2_tokens)}
    for text in ("<|im_end|>", "<|endoftext|>"):  # EOS, and the end-of-text marker ChatML models also emit
        assert smollm2.is_eog(by_text[text]), text
    for text in ("<|im_start|>", "Paris", "\u0120the", "<jupyter_code>"):
        assert not smollm2.is_eog(by_text[text]), text

    gemma = LLM(convert_tiny("gemma3"), vocab_only=True)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_checkpoint("gemma3") / "tokenizer.model"))
    assert (gemma.bos, gemma.eos) == (sp.bos_id(), sp.eos_id())
    assert gemma.is_eog(sp.eos_id()) and gemma.is_eog(sp.piece_to_id("<end_of_turn>"))
    assert not gemma.is_eog(sp.piece_to_id("<start_of_turn>")) and not gemma.is_eog(sp.bos_id())
    # Gemma's layout adds BOS and no space prefix
    assert gemma.tokenize("hi", add_special=True) == [sp.bos_id()] + sp.encode("hi")


# --- pieces and UTF-8 ---------------------------------------------------------------------------------------


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's byte alphabet, written out independently: printable Latin-1 as itself, the rest from U+0100."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {chr(b): b for b in keep}
    extra = 0
    for b in range(256):
        if b not in keep:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def test_bpe_pieces(smollm2: LLM, smollm2_tokens: list[str]) -> None:
    decoder = _gpt2_byte_decoder()
    types = GGUFReader(smollm2_gguf_path())["tokenizer.ggml.token_type"]
    for i, text in enumerate(smollm2_tokens):
        if types[i] == 3:  # control: hidden unless asked for
            assert smollm2.token_to_piece(i) == b"", text
            assert smollm2.token_to_piece(i, special=True) == text.encode(), text
        else:
            assert smollm2.token_to_piece(i) == bytes(decoder[c] for c in text), (i, text)


def test_detokenize_invalid_and_split_utf8(smollm2: LLM, smollm2_tokens: list[str]) -> None:
    """Byte-level tokens of single bytes spell byte strings that split characters or are not UTF-8 at all:
    detokenize must decode them the way Python's errors="replace" does (one U+FFFD per maximal invalid
    subpart, an incomplete tail as one U+FFFD)."""
    decoder = _gpt2_byte_decoder()
    byte_token = {decoder[t]: i for i, t in enumerate(smollm2_tokens) if len(t) == 1 and t in decoder}
    assert len(byte_token) > 230  # SmolLM2 lacks a few bytes that never occur in text (0xC0, 0xF5.., ...)
    usable = sorted(byte_token)
    r = random.Random(3)
    cases = [
        b"\xe2\x82\xac",
        b"\xe2\x82",
        b"\x80",
        b"a\xc3",
        b"\xf0\x9f\x98\x80",
        b"\xf0\x9f\x98",
        b"\xed\xa0\x80",
        b"\xe0\x80\xaf",
        b"\xf4\x90\x80\x80",
        b"\xc3(",
        "é€😀".encode(),
    ]
    for _ in range(2000):
        cases.append(bytes(r.choice(usable) for _ in range(r.randint(1, 12))))
    for b in cases:
        assert smollm2.detokenize([byte_token[x] for x in b]) == b.decode("utf-8", errors="replace"), b


# --- broken metadata ----------------------------------------------------------------------------------------

_BAD_BPE: dict[str, tuple[dict[str, tuple | None], str]] = {
    "no tokens": ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
    "tokens not strings": ({"tokenizer.ggml.tokens": ([1, 2, 3], V.ARRAY, V.INT32)}, "tokenizer.ggml.tokens"),
    "duplicate token": (
        {"tokenizer.ggml.tokens": (["a", "b", "a"], V.ARRAY, V.STRING)},
        "tokenizer.ggml.tokens",
    ),
    "token_type length": (
        {"tokenizer.ggml.token_type": ([1] * 10, V.ARRAY, V.INT32)},
        "tokenizer.ggml.token_type",
    ),
    "token_type value": (
        {"tokenizer.ggml.token_type": ([9] * 49152, V.ARRAY, V.INT32)},
        "tokenizer.ggml.token_type",
    ),
    "merge of unknown": (
        {"tokenizer.ggml.merges": (["h e", "no_such_token x"], V.ARRAY, V.STRING)},
        "tokenizer.ggml.merges",
    ),
    "merge without space": ({"tokenizer.ggml.merges": (["he"], V.ARRAY, V.STRING)}, "tokenizer.ggml.merges"),
    "no merges": ({"tokenizer.ggml.merges": None}, "tokenizer.ggml.merges"),
    "unknown model": ({"tokenizer.ggml.model": ("wordpiece", V.STRING)}, "tokenizer.ggml.model"),
    "no model": ({"tokenizer.ggml.model": None}, "tokenizer.ggml.model"),
    "unknown pre": ({"tokenizer.ggml.pre": ("no-such-pre", V.STRING)}, "tokenizer.ggml.pre"),
    "bos out of range": ({"tokenizer.ggml.bos_token_id": (49152, V.UINT32)}, "tokenizer.ggml.bos_token_id"),
    "eos wrong type": ({"tokenizer.ggml.eos_token_id": ("2", V.STRING)}, "tokenizer.ggml.eos_token_id"),
    "add_bos without bos": (
        {"tokenizer.ggml.bos_token_id": None, "tokenizer.ggml.add_bos_token": (True, V.BOOL)},
        "tokenizer.ggml.add_bos_token",
    ),
}


@pytest.mark.parametrize("case", list(_BAD_BPE))
def test_broken_bpe_metadata(case: str, tmp_path: Path) -> None:
    edits, key = _BAD_BPE[case]
    path = _clone_metadata(smollm2_gguf_path(), tmp_path / "bad.gguf", edits)
    with pytest.raises(EdgeLLMError) as err:
        LLM(path, vocab_only=True)
    assert key in str(err.value) and str(path) in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "entries",
    [
        [("tokenizer.ggml.model", STRING, gstr(b"\xc0\xff-model"))],
        [("tokenizer.ggml.model", STRING, gstr("gpt2")), ("tokenizer.ggml.pre", STRING, gstr(b"pre\xe2\x82"))],
        [("tokenizer.ggml.model", STRING, gstr("llama")),
         ("tokenizer.ggml.tokens", ARRAY, array(STRING, [b"a", b"\xf0\x9f\x98", b"\xf0\x9f\x98"]))],
    ],
    ids=["model", "pre", "duplicate token"],
)
def test_messages_stay_utf8(entries: list[tuple[str, int, bytes]], tmp_path: Path) -> None:
    """Names and token texts from the file that are not UTF-8 appear escaped: the error still arrives as one
    EdgeLLMError (a message that is not UTF-8 could not become a Python string)."""
    f = RawFile(kvs=[kv("general.architecture", STRING, gstr("llama"))] + [kv(k, t, p) for k, t, p in entries])
    path = tmp_path / "bad.gguf"
    path.write_bytes(f.encode())
    with pytest.raises(EdgeLLMError, match=r"\\x[0-9a-f]{2}") as err:
        LLM(path, vocab_only=True)
    assert entries[-1][0] in str(err.value)


_BAD_SPM: dict[str, tuple[dict[str, tuple | None], str]] = {
    "scores length": ({"tokenizer.ggml.scores": ([0.0] * 5, V.ARRAY, V.FLOAT32)}, "tokenizer.ggml.scores"),
    "byte token text": (
        {"tokenizer.ggml.token_type": ([6] * 1000, V.ARRAY, V.INT32)},
        "tokenizer.ggml.token_type",
    ),
}


@pytest.mark.parametrize("case", list(_BAD_SPM))
def test_broken_spm_metadata(case: str, tmp_path: Path, convert_tiny) -> None:
    edits, key = _BAD_SPM[case]
    path = _clone_metadata(convert_tiny("llama_spm"), tmp_path / "bad.gguf", edits)
    with pytest.raises(EdgeLLMError) as err:
        LLM(path, vocab_only=True)
    assert key in str(err.value), str(err.value)
