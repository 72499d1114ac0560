"""Tokenizer metadata for GGUF: every `tokenizer.*` key of a Hugging Face checkpoint.

Two tokenizer families, chosen the way llama.cpp's converter chooses them for llama / qwen2 / qwen3 / gemma3:
- SentencePiece (`tokenizer.ggml.model = "llama"`) when the folder has `tokenizer.model`: pieces, scores and
  piece types from sentencepiece, then the added tokens of added_tokens.json and tokenizer_config.json;
- byte-level BPE (`"gpt2"`) from tokenizer.json otherwise: tokens by id (added tokens included), merges, and
  the pre-tokenizer named by fingerprint (see pretokenizers.py).
Then the special token ids, the add-BOS/EOS flags and the chat template (tokenizer_config.json, tokenizer.json's
post-processor, config.json, chat_template.jinja/json, generation_config.json), and a few per-arch flags.
Token lists are padded to config["vocab_size"] with unused "[PAD{i}]" tokens when the embedding is larger.

The result must equal what llama.cpp writes for the same folder, so files interoperate both ways.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from string import ascii_letters, digits
from typing import Any

import numpy as np

from edgellm._jsonfile import read_json_object
from edgellm.errors import ConversionError
from edgellm.gguf import GGUFValueType

from .pretokenizers import CHECK_TEXT, DEFAULT_PRE, fingerprint, pre_tokenizer_name


class TokenType(IntEnum):
    """Values of tokenizer.ggml.token_type."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class VocabWarning(UserWarning):
    """Something was guessed or skipped while reading the tokenizer (unknown pre-tokenizer, ids out of range)."""


@dataclass
class KV:
    """One GGUF metadata entry."""

    key: str
    vtype: GGUFValueType
    value: object  # python scalar/str, list[str], or numpy array for numeric arrays
    elem_type: GGUFValueType | None = None  # for arrays


# Special token kinds in llama.cpp's order, and the GGUF key of each id / add-flag.
_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
_ID_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
            "sep": "seperator_token_id", "pad": "padding_token_id", "mask": "mask_token_id",
            "eot": "eot_token_id", "eom": "eom_token_id"}  # "seperator" is the spec's spelling
_ADD_KEYS = ("bos", "eos", "sep")
_SPM_SPACE = "\u2581"  # SentencePiece's visible space


@dataclass
class Vocab:
    """Everything load_vocab writes, before it becomes KV entries; `notes` are the warnings to show."""

    model: str                          # "gpt2" or "llama"
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None   # SentencePiece only
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)   # insertion order = file order
    add_special: dict[str, bool] = field(default_factory=dict)
    chat_template: str | list[dict] | None = None
    add_space_prefix: bool | None = None
    notes: list[str] = field(default_factory=list)

    def kvs(self) -> list[KV]:
        S, A = GGUFValueType.STRING, GGUFValueType.ARRAY
        out = [KV("tokenizer.ggml.model", S, self.model), KV("tokenizer.ggml.pre", S, self.pre),
               KV("tokenizer.ggml.tokens", A, list(self.tokens), S)]
        if self.scores is not None:
            out.append(KV("tokenizer.ggml.scores", A, np.asarray(self.scores, dtype=np.float32),
                          GGUFValueType.FLOAT32))
        out.append(KV("tokenizer.ggml.token_type", A, np.asarray(self.types, dtype=np.int32),
                      GGUFValueType.INT32))
        if self.merges:
            out.append(KV("tokenizer.ggml.merges", A, list(self.merges), S))
        for typ, tid in self.special_ids.items():
            if typ in _ID_KEYS:  # llama.cpp has no key for cls
                out.append(KV(f"tokenizer.ggml.{_ID_KEYS[typ]}", GGUFValueType.UINT32, int(tid)))
        for typ, flag in self.add_special.items():
            if typ in _ADD_KEYS:
                out.append(KV(f"tokenizer.ggml.add_{typ}_token", GGUFValueType.BOOL, bool(flag)))
        out.extend(_chat_template_kvs(self.chat_template))
        if self.add_space_prefix is not None:
            out.append(KV("tokenizer.ggml.add_space_prefix", GGUFValueType.BOOL, bool(self.add_space_prefix)))
        return out


def load_vocab(model_dir: Path, config: dict, arch: str) -> list[KV]:
    """All tokenizer.* GGUF entries for the checkpoint in model_dir; notes are issued as VocabWarning."""
    vocab = read_vocab(model_dir, config, arch)
    for note in vocab.notes:
        warnings.warn(note, VocabWarning, stacklevel=2)
    return vocab.kvs()


def read_vocab(model_dir: Path, config: dict, arch: str) -> Vocab:
    """The Vocab of model_dir (see the module doc); `arch` is the GGUF arch name ("llama", "gemma3", ...)."""
    model_dir = Path(model_dir)
    tok_config = _read_json_if(model_dir / "tokenizer_config.json")
    tok_json = _read_json_if(model_dir / "tokenizer.json")
    if (model_dir / "tokenizer.model").is_file():
        vocab = _spm_vocab(model_dir, config, tok_config)
    elif tok_json is not None:
        vocab = _bpe_vocab(model_dir, config, tok_json)
    else:
        raise ConversionError(f"{model_dir}: no tokenizer: neither tokenizer.model nor tokenizer.json is present")
    _read_special(vocab, model_dir, config, tok_config, tok_json)

    if arch == "llama":
        if tok_config is not None and isinstance(tok_config.get("add_prefix_space"), bool):
            vocab.add_space_prefix = tok_config["add_prefix_space"]
        if config.get("vocab_size", 32000) == 49152:  # llama.cpp: small granite/SmolLM vocabularies add no BOS
            vocab.add_special["bos"] = False
    elif arch == "gemma3" and vocab.model == "llama":
        vocab.add_space_prefix = False
    return vocab


# --- BPE (tokenizer.json) ------------------------------------------------------------------------------------

def _bpe_vocab(model_dir: Path, config: dict, tj: dict) -> Vocab:
    model = tj.get("model")
    if not isinstance(model, dict):
        raise ConversionError("tokenizer.json: field 'model': missing")
    if model.get("type", "BPE") != "BPE":
        raise ConversionError(f"tokenizer.json: field 'model.type': {model.get('type')!r} is not supported "
                              "(BPE, or a SentencePiece tokenizer.model)")
    if not isinstance(model.get("vocab"), dict) or not model["vocab"]:
        raise ConversionError("tokenizer.json: field 'model.vocab': missing")
    merges = _merges(model.get("merges"))

    from tokenizers import Tokenizer  # the reference implementation of tokenizer.json

    try:
        tk = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    except Exception as e:  # noqa: BLE001 - the library raises bare Exception for malformed files
        raise ConversionError(f"tokenizer.json: unreadable by the tokenizers library: {_one_line(e)}") from None

    by_id: dict[int, str] = {}
    for text, tid in tk.get_vocab(with_added_tokens=True).items():
        if tid in by_id and by_id[tid] != text:
            raise ConversionError(f"tokenizer.json: field 'model.vocab': id {tid} is used by both "
                                  f"{by_id[tid]!r} and {text!r}")
        by_id[tid] = text
    n_tok = max(by_id) + 1
    if len(by_id) != n_tok:
        gap = next(i for i in range(n_tok) if i not in by_id)
        raise ConversionError(f"tokenizer.json: field 'model.vocab': no token has id {gap} "
                              f"(ids must run from 0 to {n_tok - 1})")
    vocab_size = _vocab_size(config, n_tok)
    if vocab_size < n_tok:
        raise ConversionError(f"config.json: field 'vocab_size': {vocab_size} is smaller than the "
                              f"{n_tok} tokens of tokenizer.json")

    added = tk.get_added_tokens_decoder()  # id -> AddedToken (special, normalized)
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i >= n_tok:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        text = by_id[i]
        if i in added:
            if not added[i].normalized:  # GGUF readers expect added tokens in normalized form
                text = tk.decode(tk.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
            if added[i].special or _looks_special(text):
                types.append(TokenType.CONTROL)
            else:
                text = text.replace(_SPM_SPACE, " ")
                types.append(TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(text)

    ids = tk.encode(CHECK_TEXT).ids
    pre = pre_tokenizer_name(ids)
    notes = []
    if pre is None:
        pre = DEFAULT_PRE
        notes.append(f"tokenizer.json: pre-tokenizer not recognised (fingerprint {fingerprint(ids)}); "
                     f"writing tokenizer.ggml.pre = {DEFAULT_PRE!r}, tokenization may differ from the original")
    return Vocab(model="gpt2", pre=pre, tokens=tokens, types=types, merges=merges, notes=notes)


def _merges(raw: Any) -> list[str]:
    """tokenizer.json merges as GGUF "left right" strings; spaces inside a part become U+0120 (as llama.cpp)."""
    if not isinstance(raw, list) or not raw:
        raise ConversionError("tokenizer.json: field 'model.merges': missing")
    out = []
    for k, m in enumerate(raw):
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m):
            out.append(" ".join(p.replace(" ", "\u0120") for p in m))
        else:
            raise ConversionError(f"tokenizer.json: field 'model.merges': entry {k} is {m!r}, "
                                  "expected \"a b\" or [\"a\", \"b\"]")
    return out


def _looks_special(text: str) -> bool:
    """Added tokens some checkpoints forget to mark special (llama.cpp's list: <|...|>, <unused..>, ...)."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


# --- SentencePiece (tokenizer.model) -------------------------------------------------------------------------

def _spm_vocab(model_dir: Path, config: dict, tok_config: dict | None) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(model_dir / "tokenizer.model"))
    except (OSError, RuntimeError) as e:  # C++ status messages, e.g. "could not parse ModelProto"
        raise ConversionError(f"tokenizer.model: not a SentencePiece model: {_one_line(e)}") from None
    n_sp = sp.vocab_size()
    vocab_size = _vocab_size(config, n_sp)
    notes: list[str] = []
    if n_sp > vocab_size:
        notes.append(f"tokenizer.model: pieces from id {vocab_size} on are dropped "
                     f"(config.json vocab_size is {vocab_size}, the model has {n_sp})")

    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for i in range(min(n_sp, vocab_size)):
        if sp.IsUnknown(i):
            typ = TokenType.UNKNOWN
        elif sp.IsControl(i):
            typ = TokenType.CONTROL
        elif sp.IsUnused(i):
            typ = TokenType.UNUSED
        elif sp.IsByte(i):
            typ = TokenType.BYTE
        else:
            typ = TokenType.NORMAL
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), float(sp.GetScore(i)), int(typ)

    def in_range(tid: Any, where: str) -> bool:
        if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
            raise ConversionError(f"{where}: token id {tid!r} is not a non-negative integer")
        if tid >= vocab_size:
            notes.append(f"{where}: token id {tid} is out of range (vocab size {vocab_size}); ignored")
            return False
        return True

    added_file = model_dir / "added_tokens.json"
    if added_file.is_file():
        for text, tid in _read_json(added_file).items():
            if in_range(tid, f"added_tokens.json: field {text!r}"):
                tokens[tid], scores[tid], types[tid] = text, -1000.0, int(TokenType.USER_DEFINED)

    decoder = (tok_config or {}).get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise ConversionError("tokenizer_config.json: field 'added_tokens_decoder': not an object")
    for key, entry in decoder.items():
        where = f"tokenizer_config.json: field 'added_tokens_decoder.{key}'"
        if not key.isdigit() or not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise ConversionError(f"{where}: expected an integer id mapped to {{\"content\": ...}}")
        tid = int(key)
        if not in_range(tid, where):
            continue
        text = entry["content"]
        if entry.get("special") or _looks_special(text):
            types[tid] = int(TokenType.CONTROL)
        else:
            text = text.replace(_SPM_SPACE, " ")
            types[tid] = int(TokenType.USER_DEFINED)
        tokens[tid], scores[tid] = text, -1000.0
    return Vocab(model="llama", pre="default", tokens=tokens, types=types, scores=scores, notes=notes)


def _vocab_size(config: dict, n_tokenizer: int) -> int:
    size = config.get("vocab_size")
    if size is None:
        return n_tokenizer
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ConversionError(f"config.json: field 'vocab_size': {size!r} is not a positive integer")
    return size


# --- special tokens, add flags, chat template ----------------------------------------------------------------

def _read_special(v: Vocab, model_dir: Path, config: dict, tok_config: dict | None, tj: dict | None) -> None:
    """Fill v.special_ids / v.add_special / v.chat_template as llama.cpp's SpecialVocab does."""
    n_vocab = len(v.tokens)
    kinds = list(_SPECIAL_TYPES)
    cfg = dict(tok_config) if tok_config else {}  # copied: the post-processor may rename eos -> eot

    def set_id(typ: str, tid: Any, where: str) -> None:
        if not isinstance(tid, int) or isinstance(tid, bool):
            return
        if tid < 0:
            raise ConversionError(f"{where}: field '{typ}_token_id': negative id {tid}")
        if tid >= n_vocab:
            v.notes.append(f"{where}: {typ} token id {tid} is out of range (vocab size {n_vocab}); ignored")
        else:
            v.special_ids.setdefault(typ, tid)

    if tj is not None:
        _read_post_processor(v, tj, cfg, kinds)

    if cfg:
        v.chat_template = _chat_template(model_dir, cfg)
        added = (tj or {}).get("added_tokens") or []
        for typ in kinds:
            flag = cfg.get(f"add_{typ}_token")
            if isinstance(flag, bool):
                v.add_special[typ] = flag
            text = _token_text(cfg.get(f"{typ}_token"))
            if text is None:
                continue
            tid = next((a.get("id") for a in added if isinstance(a, dict) and a.get("content") == text), None)
            set_id(typ, tid, "tokenizer_config.json")

    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for typ in kinds:
        tid = config.get(f"{typ}_token_id")
        if tid is None:
            tid = text_config.get(f"{typ}_token_id")
        set_id(typ, tid, "config.json")

    if "eos" not in v.special_ids:  # instruct models sometimes name their end-of-turn ids only here
        gen = _read_json_if(model_dir / "generation_config.json") or {}
        eos = gen.get("eos_token_id")
        set_id("eos", eos[0] if isinstance(eos, list) and eos else eos, "generation_config.json")


def _read_post_processor(v: Vocab, tj: dict, cfg: dict, kinds: list[str]) -> None:
    """add_bos/add_eos/add_sep from tokenizer.json's post-processor (simple templates only, as llama.cpp)."""
    bos, cls = _token_text(cfg.get("bos_token")), _token_text(cfg.get("cls_token"))
    eos, sep = _token_text(cfg.get("eos_token")), _token_text(cfg.get("sep_token"))
    if not bos and cls and cfg:
        cfg["bos_token"] = bos = cls
    if not eos and sep and cfg:
        cfg["eos_token"] = eos = sep
    pp = tj.get("post_processor")
    if not isinstance(pp, dict):
        return
    for proc in pp.get("processors", [pp]):
        if not isinstance(proc, dict):
            continue
        if proc.get("type") == "RobertaProcessing":
            v.add_special.update(bos=True, eos=True, sep=True)
            if not cls and cfg:
                cfg["cls_token"] = cls = (proc.get("cls") or [bos])[0]
            if not sep and cfg:
                cfg["sep_token"] = sep = (proc.get("sep") or [eos])[0]
            continue
        if proc.get("type") != "TemplateProcessing":
            continue
        single, pair = proc.get("single") or [], proc.get("pair") or []
        first = last = None
        if len(single) > 1:
            first = _special_piece(single[0])
            if first:
                if not cfg:
                    bos = first
                v.add_special["bos"] = first in (bos, cls)
            last = _special_piece(single[-1])
            if last:
                if not cfg:
                    eos = last
                elif last != eos:
                    # the template ends with another token: it becomes eos, the configured eos becomes eot/eom
                    for extra in ("eot", "eom"):
                        if extra not in kinds:
                            kinds.append(extra)
                            cfg[f"{extra}_token"] = eos
                            break
                    cfg["eos_token"] = eos = last
                v.add_special["eos"] = last == eos
        if pair:
            start = 1 if first and _special_piece(pair[0]) == first else 0
            stop = -1 if last and _special_piece(pair[-1]) == last else None
            middle = pair[start:stop]
            if len(middle) > 2 and _seq_id(middle[0]) == "A" and _seq_id(middle[-1]) == "B":
                inner = [_special_piece(e) for e in middle[1:-1]]  # A [sep] [eos] B
                add_sep = bool(inner[0] in (sep, eos) and not last)
                if len(inner) == 2 and inner[1] in (sep, eos):
                    add_sep = True
                v.add_special["sep"] = add_sep
                if add_sep and not sep and cfg:
                    cfg["sep_token"] = eos


def _special_piece(entry: Any) -> str | None:
    return entry.get("SpecialToken", {}).get("id") if isinstance(entry, dict) else None


def _seq_id(entry: Any) -> str | None:
    return entry.get("Sequence", {}).get("id") if isinstance(entry, dict) else None


def _token_text(entry: Any) -> str | None:
    """tokenizer_config.json names special tokens as a string or as {"content": ...}."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def _chat_template(model_dir: Path, cfg: dict) -> str | list[dict] | None:
    """tokenizer_config.json's chat_template, else chat_template.jinja (+ additional_chat_templates/), else
    chat_template.json. A list means named templates [{"name", "template"}]."""
    alt: str | list[dict] | None = None
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        alt = _read_text(jinja)
        extra = sorted((model_dir / "additional_chat_templates").glob("*.jinja"))
        if extra:
            alt = [{"name": "default", "template": alt}]
            alt += [{"name": p.stem, "template": _read_text(p)} for p in extra]
    elif (model_dir / "chat_template.json").is_file():
        alt = _read_json(model_dir / "chat_template.json").get("chat_template")
    template = cfg.get("chat_template", alt)
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list) and all(isinstance(t, dict) for t in template):
        return template
    raise ConversionError("tokenizer_config.json: field 'chat_template': expected a string or a list of "
                          "{\"name\", \"template\"}")


def _chat_template_kvs(template: str | list[dict] | None) -> list[KV]:
    """tokenizer.chat_template, plus tokenizer.chat_template.<name> and tokenizer.chat_templates for named ones."""
    if template is None:
        return []
    S = GGUFValueType.STRING
    if isinstance(template, str):
        return [KV("tokenizer.chat_template", S, template)]
    out: list[KV] = []
    default = None
    names: list[str] = []
    for choice in template:
        name = "".join(c if c in ascii_letters + digits else "_" for c in str(choice.get("name", "")))
        text = choice.get("template")
        if not name or not isinstance(text, str):
            continue
        if name == "default":
            default = text
        elif name not in names:
            names.append(name)
            out.append(KV(f"tokenizer.chat_template.{name}", S, text))
    if names:
        out.append(KV("tokenizer.chat_templates", GGUFValueType.ARRAY, names, S))
    if default is not None:
        out.append(KV("tokenizer.chat_template", S, default))
    return out


# --- files ---------------------------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path.name}: unreadable: {_one_line(e)}") from None


def _read_json(path: Path) -> dict:
    return read_json_object(path, ConversionError, path.name)


def _read_json_if(path: Path) -> dict | None:
    return _read_json(path) if path.is_file() else None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
