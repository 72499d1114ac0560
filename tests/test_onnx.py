"""ONNX export (`edgellm convert --format onnx`) and the ONNX Runtime backend behind edgellm.LLM(folder).

fp32 exports of the tiny random models of every architecture and of SmolLM2 against transformers: logits in
one pass, in chunks and token by token over the KV cache (within 1e-4), greedy text. The int8 / int4 / fp16
exports of SmolLM2 against the fp32 export (top-1 agreement on GPL-3 text). The LLM API over an export
(streaming, stop strings, chat, perplexity against the native core, prefix reuse, what ONNX folders refuse),
export refusals and no partial output, the CLI. SmolLM2's exports are cached between sessions (the first run
takes a few minutes).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgellm
from edgellm import LLM
from edgellm.cli import cli
from edgellm.converters import onnx_export
from edgellm.converters.onnx_export import OnnxOptions, export_onnx
from edgellm.errors import ConversionError, EdgeLLMError, InvalidArgumentError, ModelFileError
from edgellm.ort import OnnxLLM
from helpers.cache import cached_dir, transformers_tag
from helpers.smollm2 import smollm2_checkpoint
from helpers.tiny_models import PROMPT_IDS, hf_greedy, hf_logits, tiny_checkpoint
from helpers.tiny_models import _hf_model as hf_model

TINY_ARCHS = ["llama", "llama_spm", "mistral", "qwen2", "qwen3", "gemma3"]
GGUF_ARCH = {"llama_spm": "llama", "mistral": "llama"}
GPL = Path("/usr/share/common-licenses/GPL-3")
CHAT = [{"role": "user", "content": "What is the capital of France, and why is it famous?"}]
# Top-1 agreement with the fp32 export over 16 GPL-3 windows of 128 tokens (2048 tokens), held to a floor and
# to our native conversion of the same checkpoint with the same bits and blocks of 32 (within BELOW_NATIVE).
# Measured with ONNX Runtime 1.32: int8 0.956 (native q8_0 0.973), int4 0.643 (native q4_0 0.674), fp16
# 0.998. int8 holds the 95% of the issue. int4 cannot: 4-bit rounding costs SmolLM2-135M a third of its
# top-1 tokens in any runtime (native q4_0 0.674); its floor guards against a broken quantizer (a wrong
# block layout or scale gives well under 10%). int8 and int4 compute with int8 activations (accuracy_level
# 4): float compute gains 1.3 points for int8 but decodes 15 times slower.
NATIVE_TWIN = {"int8": "q8_0", "int4": "q4_0"}
BELOW_NATIVE = 0.04
FLOOR = {"int8": 0.95, "int4": 0.60, "fp16": 0.99}


def export_tag() -> str:
    """Versions that change an export: part of the cache names of SmolLM2's exports."""
    versions = [importlib.metadata.version(d).rsplit(".", 1)[0] for d in ("optimum-onnx", "onnxruntime")]
    return f"{transformers_tag()}-opt{versions[0]}-ort{versions[1]}"


def smollm2_onnx(quant: str) -> Path:
    """Our ONNX export of the SmolLM2 checkpoint at `quant`, cached between sessions."""
    def build(dst: Path) -> None:
        export_onnx(smollm2_checkpoint(), dst, OnnxOptions(quant=quant, progress=False))

    return cached_dir(f"smollm2-onnx-{quant}-v2-{export_tag()}", build)


def smollm2_converted(quant: str) -> Path:
    """Our GGUF conversion of the SmolLM2 checkpoint (the same cache as test_speculative.py)."""
    from edgellm.converters.convert import ConvertOptions, convert

    def build(dst: Path) -> None:
        convert(smollm2_checkpoint(), dst / "model.gguf", ConvertOptions(quant=quant, progress=False))

    return cached_dir(f"smollm2-converted-{quant}-v1-{transformers_tag()}", build) / "model.gguf"


@pytest.fixture(scope="session")
def onnx_tiny(tmp_path_factory):
    """onnx_tiny(arch, quant) -> our ONNX export of the tiny `arch` checkpoint, made once per session."""
    out_dir = tmp_path_factory.mktemp("tiny-onnx")
    done: dict[tuple[str, str], Path] = {}

    def run(arch: str, quant: str = "fp32") -> Path:
        if (arch, quant) not in done:
            out = out_dir / f"{arch}-{quant}"
            export_onnx(tiny_checkpoint(arch), out, OnnxOptions(quant=quant, progress=False))
            done[arch, quant] = out
        return done[arch, quant]

    return run


@pytest.fixture(scope="module")
def smollm2():
    with LLM(smollm2_onnx("fp32"), n_ctx=1024, n_threads=2) as llm:
        yield llm


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def incremental_logits(llm: LLM, ids: list[int], n_first: int) -> np.ndarray:
    """Logits of ids[n_first - 1:] evaluated as a prefill of n_first tokens, then one token at a time."""
    llm.reset()
    llm.eval(ids[:n_first])
    rows = [llm.last_logits()[-1]]
    for t in ids[n_first:]:
        llm.eval([t])
        rows.append(llm.last_logits()[-1])
    return np.stack(rows)


# --------------------------------------------------------------------------------- against transformers

@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_logits_match_transformers(onnx_tiny, arch) -> None:
    ids = PROMPT_IDS + PROMPT_IDS[:16]  # 40 tokens: past gemma3's sliding window of 8
    ref = hf_logits(tiny_checkpoint(arch), ids)
    with LLM(onnx_tiny(arch), n_threads=2) as llm:
        assert isinstance(llm, OnnxLLM) and llm.arch == GGUF_ARCH.get(arch, arch)
        assert max_diff(llm.logits(ids), ref) <= 1e-4
        assert max_diff(incremental_logits(llm, ids, 8), ref[7:]) <= 1e-4
    with LLM(onnx_tiny(arch), n_threads=2, n_batch=7) as llm:  # a prompt in chunks of 7 tokens
        assert max_diff(llm.logits(ids), ref) <= 1e-4


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_tiny_greedy_matches_transformers(onnx_tiny, arch) -> None:
    with LLM(onnx_tiny(arch), n_threads=2) as llm:
        ref = hf_greedy(tiny_checkpoint(arch), PROMPT_IDS, 32)
        eog = [i for i, t in enumerate(ref) if llm.is_eog(t)]
        ref = ref[:eog[0]] if eog else ref
        assert llm.generate(PROMPT_IDS, 32, temperature=0) == llm.detokenize(ref)
        assert llm.last_stats.generated_tokens == len(ref)


def test_smollm2_logits_match_transformers(smollm2) -> None:
    # 1e-4 is near the float32 noise of this model (logits up to 37): over 120 tokens of GPL-3 text ONNX
    # Runtime differs from transformers by 1.1e-4, and our native f32 file by 1.3e-4
    text = ("<|im_start|>user\nWhat is the capital of France, and why is it famous? Tell me about its "
            "history.<|im_end|>\n<|im_start|>assistant\nThe capital")
    ids = smollm2.tokenize(text, parse_special=True)
    assert 30 <= len(ids) <= 60
    ref = hf_logits(smollm2_checkpoint(), ids)
    assert max_diff(smollm2.logits(ids), ref) <= 1e-4
    assert max_diff(incremental_logits(smollm2, ids, 12), ref[11:]) <= 1e-4


def test_smollm2_chat_greedy_matches_transformers(smollm2) -> None:
    import torch

    text = smollm2.chat(CHAT, 32, temperature=0)
    n_prompt = smollm2.last_stats.prompt_tokens
    ids = smollm2.cache_tokens[:n_prompt]
    model = hf_model(str(smollm2_checkpoint()))  # loaded once, shared with hf_logits
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=32, do_sample=False, pad_token_id=smollm2.eos)
    out = out[0, len(ids):].tolist()
    eog = [i for i, t in enumerate(out) if smollm2.is_eog(t)]
    out = out[:eog[0]] if eog else out
    assert len(out) >= 8 and text == smollm2.detokenize(out)
    assert "Paris" in text


# ----------------------------------------------------------------------------------- quantized exports

def gpl_windows(llm: LLM, n: int = 16, size: int = 128) -> list[list[int]]:
    ids = llm.tokenize(GPL.read_text(), add_special=False)
    step = len(ids) // n
    return [ids[i * step:i * step + size] for i in range(n)]


def top1(llm: LLM, windows: list[list[int]]) -> np.ndarray:
    return np.concatenate([llm.logits(w).argmax(axis=1) for w in windows])


@pytest.fixture(scope="module")
def fp32_top1(smollm2) -> tuple[list[list[int]], np.ndarray]:
    windows = gpl_windows(smollm2)
    return windows, top1(smollm2, windows)


@pytest.mark.parametrize("quant", ["int8", "int4", "fp16"])
def test_quantized_exports_agree_with_fp32(fp32_top1, quant) -> None:
    windows, ref = fp32_top1
    folder = smollm2_onnx(quant)
    meta = json.loads((folder / "edgellm.json").read_text())
    assert meta["quant"] == quant and meta["kv_dtype"] == "float32"
    with LLM(folder, n_ctx=256, n_threads=2) as llm:
        agreement = float((top1(llm, windows) == ref).mean())
    print(f"\nONNX {quant}: top-1 agreement with fp32 {agreement:.4f} over {len(ref)} tokens")
    assert agreement >= FLOOR[quant]
    if quant in NATIVE_TWIN:
        with LLM(smollm2_converted(NATIVE_TWIN[quant]), n_ctx=256, n_threads=2) as native:
            native_agreement = float((top1(native, windows) == ref).mean())
        print(f"native {NATIVE_TWIN[quant]}: top-1 agreement with ONNX fp32 {native_agreement:.4f}")
        assert agreement >= native_agreement - BELOW_NATIVE, (agreement, native_agreement)
    size = sum((folder / f).stat().st_size for f in meta["files"])
    fp32 = (smollm2_onnx("fp32") / "model.onnx").stat().st_size
    assert size < {"int8": 0.5, "int4": 0.4, "fp16": 0.55}[quant] * fp32


# --------------------------------------------------------------------------------------------- the API

def test_stream_stop_and_seed(smollm2) -> None:
    prompt = "Once upon a time, in a small village by the sea,"
    pieces = list(smollm2.generate(prompt, 16, temperature=0.9, seed=7, stream=True))
    assert len(pieces) > 3 and all(p for p in pieces)
    assert "".join(pieces) == smollm2.generate(prompt, 16, temperature=0.9, seed=7)
    assert smollm2.generate(prompt, 16, temperature=0.9, seed=8) != "".join(pieces)
    full = smollm2.generate(prompt, 24, temperature=0)
    words = full.split()
    assert len(words) > 4
    cut = smollm2.generate(prompt, 24, temperature=0, stop=[words[3], "never-appears"])
    assert cut == full[:full.index(words[3])] and smollm2.last_stats.stop_reason == "stop"
    assert "".join(smollm2.generate(prompt, 24, temperature=0, stop=words[3], stream=True)) == cut


def test_prefix_reuse_evaluates_only_new_tokens(smollm2) -> None:
    smollm2.reset()
    ids = smollm2.tokenize("The GNU General Public License is a free, copyleft license for software",
                           add_special=False)
    extra = smollm2.tokenize(" and other kinds of works.", add_special=False)
    smollm2.generate(ids, 0)
    assert smollm2.cache_tokens == ids and smollm2.n_past == len(ids)
    greedy = smollm2.generate(ids + extra, 6, temperature=0)
    s = smollm2.last_stats
    assert s.cached_tokens == len(ids) and s.evaluated_tokens == len(extra) + s.generated_tokens - 1
    again = smollm2.generate(ids + extra, 6, temperature=0)
    assert again == greedy and smollm2.last_stats.cached_tokens == len(ids + extra) - 1
    smollm2.reset()
    assert smollm2.n_past == 0 and smollm2.generate(ids + extra, 6, temperature=0) == greedy
    assert smollm2.last_stats.cached_tokens == 0


def test_context_full_and_bad_tokens(onnx_tiny) -> None:
    with LLM(onnx_tiny("llama"), n_ctx=32, n_threads=2) as llm:
        assert llm.n_ctx == 32 and llm.n_ctx_train == 512
        assert llm.kv_bytes == 2 * 2 * 2 * 16 * 32 * 4  # keys and values, layers, KV heads, head_dim, n_ctx
        llm.generate(PROMPT_IDS, 100, temperature=0)
        assert llm.last_stats.stop_reason in ("context_full", "eos") and llm.n_past <= 32
        with pytest.raises(edgellm.ContextFullError, match="the context holds 32"):
            llm.generate(PROMPT_IDS * 2, 4)
        with pytest.raises(edgellm.ContextFullError, match="exceed n_ctx 32"):
            llm.reset()
            llm.eval(PROMPT_IDS * 2)
        with pytest.raises(InvalidArgumentError, match=f"token id {llm.n_vocab} at position 1 is outside"):
            llm.logits([1, llm.n_vocab, 2])
        assert llm.n_past == 0


def test_chat_and_perplexity_match_the_native_core(onnx_tiny, convert_tiny) -> None:
    text = GPL.read_text()[:6000]
    with LLM(onnx_tiny("llama"), n_threads=2) as onnx_llm, LLM(convert_tiny("llama", "f32"), n_threads=2,
                                                               kv_type="f32") as native:
        assert onnx_llm.chat_template == native.chat_template and onnx_llm.bos == native.bos
        assert onnx_llm.tokenize(text[:500]) == native.tokenize(text[:500])
        assert onnx_llm.chat(CHAT, 16, temperature=0) == native.chat(CHAT, 16, temperature=0)
        ours, ref = onnx_llm.perplexity(text, n_ctx=64), native.perplexity(text, n_ctx=64)
        assert ours.n_scored == ref.n_scored > 100
        assert abs(ours.ppl / ref.ppl - 1) < 1e-3, (ours.ppl, ref.ppl)


def test_smollm2_perplexity_matches_the_native_f32_file(smollm2) -> None:
    text = GPL.read_text()[:3000]  # 5 windows
    with LLM(smollm2_converted("f32"), n_ctx=256, n_threads=2, kv_type="f32") as native:
        ref = native.perplexity(text, n_ctx=128)
    ours = smollm2.perplexity(text, n_ctx=128)
    assert ours.n_scored == ref.n_scored and abs(ours.ppl / ref.ppl - 1) < 1e-3, (ours.ppl, ref.ppl)


def test_what_onnx_folders_refuse(onnx_tiny, tmp_path) -> None:
    folder = onnx_tiny("llama")
    with pytest.raises(InvalidArgumentError, match="kv_type='q8_0'.*ONNX folder"):
        LLM(folder, kv_type="q8_0")
    with pytest.raises(InvalidArgumentError, match="speculative decoding runs on GGUF models"):
        LLM(folder, draft_model=folder)
    with LLM(folder, n_ctx=64, n_threads=2) as llm:
        for mode in ("draft", "lookup"):
            with pytest.raises(InvalidArgumentError, match="speculative decoding runs on GGUF models"):
                llm.generate(PROMPT_IDS, 4, speculative=mode)
        assert llm.generate(PROMPT_IDS, 4, temperature=0, speculative="auto") == \
            llm.generate(PROMPT_IDS, 4, temperature=0, speculative=None)
        with pytest.raises(InvalidArgumentError, match="save_state: saved sessions need the native core"):
            llm.save_state(tmp_path / "state.bin")
        with pytest.raises(InvalidArgumentError, match="load_state"):
            llm.load_state(tmp_path / "state.bin")
    vocab = LLM(folder, vocab_only=True)
    assert vocab.tokenize("Hello", add_special=False) and vocab._ctx is None
    with pytest.raises(InvalidArgumentError, match="vocab_only"):
        vocab.generate("Hello", 4)
    llm = LLM(folder, n_ctx=64)
    llm.close()
    with pytest.raises(EdgeLLMError, match="closed"):
        llm.generate("Hello", 4)


def test_import_edgellm_does_not_load_onnxruntime() -> None:
    code = "import edgellm, sys; edgellm.LLM; assert 'onnxruntime' not in sys.modules, 'loaded'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------------- damaged folders

@pytest.fixture()
def copy_of_export(onnx_tiny, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(onnx_tiny("llama"), dst)
    return dst


def test_a_folder_that_is_not_an_export(tmp_path) -> None:
    with pytest.raises(ModelFileError, match=r"edgellm\.json: missing: .* is not an ONNX folder"):
        LLM(tmp_path)
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelFileError, match=r"edgellm\.json: missing"):
        LLM(tmp_path)


@pytest.mark.parametrize(("damage", "pattern"), [
    (lambda d: (d / "edgellm.json").write_text("{ not json"), r"edgellm\.json: not valid JSON"),
    (lambda d: (d / "edgellm.json").write_text("[1, 2]"), r"edgellm\.json: expected a JSON object"),
    (lambda d: edit_meta(d, format="gguf"), r"edgellm\.json: field 'format': expected 'edgellm-onnx'"),
    (lambda d: edit_meta(d, version=99), r"edgellm\.json: field 'version': 99 is newer"),
    (lambda d: edit_meta(d, n_layer="two"), r"edgellm\.json: field 'n_layer': expected a positive integer"),
    (lambda d: edit_meta(d, n_layer=3), r"model\.onnx: the graph lacks past_key_values\.2\.key"),
    (lambda d: edit_meta(d, kv_dtype="int8"), r"edgellm\.json: field 'kv_dtype'"),
    (lambda d: edit_meta(d, n_vocab=100), r"edgellm\.json: field 'n_vocab': 100, but tokenizer\.gguf has"),
    (lambda d: (d / "model.onnx").unlink(), r"model\.onnx: missing \(the ONNX folder is incomplete"),
    (lambda d: (d / "tokenizer.gguf").unlink(), r"tokenizer\.gguf: missing"),
    (lambda d: (d / "model.onnx").write_bytes(b"\x08\x07garbage" * 100),
     r"model\.onnx: ONNX Runtime cannot load it"),
], ids=["json", "not-object", "format", "version", "type", "layers", "kv-dtype", "n_vocab", "no-model",
        "no-tokenizer", "corrupt-model"])
def test_damaged_exports_raise_model_file_error(copy_of_export, damage, pattern) -> None:
    damage(copy_of_export)
    with pytest.raises(ModelFileError, match=pattern):
        LLM(copy_of_export)


def edit_meta(folder: Path, **changes) -> None:
    path = folder / "edgellm.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# ------------------------------------------------------------------------------------- export refusals

def test_unsupported_architecture_is_refused(tmp_path) -> None:
    src = tmp_path / "gpt2"
    shutil.copytree(tiny_checkpoint("llama"), src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"config\.json: field 'architectures': GPT2LMHeadModel is not "
                                              r"supported for ONNX export \(supported: LlamaForCausalLM"):
        export_onnx(src, out, OnnxOptions(progress=False))
    assert not out.exists()


def test_missing_checkpoint_and_bad_output(tmp_path) -> None:
    with pytest.raises(ConversionError, match="checkpoint folder does not exist"):
        export_onnx(tmp_path / "nope", tmp_path / "out", OnnxOptions(progress=False))
    src = tiny_checkpoint("llama")
    with pytest.raises(ConversionError, match="does not exist"):
        export_onnx(src, tmp_path / "no" / "out", OnnxOptions(progress=False))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConversionError, match="exists and is not a folder"):
        export_onnx(src, tmp_path / "file", OnnxOptions(progress=False))
    with pytest.raises(ConversionError, match="--quant 'q4_0': not an ONNX type"):
        export_onnx(src, tmp_path / "out", OnnxOptions(quant="q4_0", progress=False))


def test_unrelated_folder_is_refused_and_untouched(tmp_path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConversionError, match="not empty and not an ONNX export"):
        export_onnx(tiny_checkpoint("llama"), out, OnnxOptions(progress=False))
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, ConversionError])
def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch, error) -> None:
    def fail(*args, **kwargs):
        raise error("quantization failed")

    monkeypatch.setattr(onnx_export, "_quantize", fail)
    out = tmp_path / "out"
    with pytest.raises(error):
        export_onnx(tiny_checkpoint("qwen2"), out, OnnxOptions(quant="int8", progress=False))
    assert list(tmp_path.iterdir()) == []


def test_a_previous_export_is_replaced_only_when_the_new_one_is_complete(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    export_onnx(tiny_checkpoint("qwen2"), out, OnnxOptions(progress=False))
    before = (out / "edgellm.json").read_text()
    real = onnx_export._smoke_test

    def fail(*args, **kwargs):
        raise ConversionError("smoke test failed")

    monkeypatch.setattr(onnx_export, "_smoke_test", fail)
    with pytest.raises(ConversionError, match="smoke test failed"):
        export_onnx(tiny_checkpoint("qwen2"), out, OnnxOptions(quant="int4", progress=False))
    assert (out / "edgellm.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    monkeypatch.setattr(onnx_export, "_smoke_test", real)
    summary = export_onnx(tiny_checkpoint("qwen2"), out, OnnxOptions(quant="int4", progress=False))
    assert json.loads((out / "edgellm.json").read_text())["quant"] == "int4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert "int4: MatMulNBits 4-bit" in summary.render() and str(out) in summary.render()


def test_large_weights_go_to_model_onnx_data(onnx_tiny, tmp_path, monkeypatch) -> None:
    single = onnx_tiny("qwen3", "int8")
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1 << 20)  # as if the model were above 1 GiB
    out = tmp_path / "out"
    export_onnx(tiny_checkpoint("qwen3"), out, OnnxOptions(quant="int8", progress=False))
    assert json.loads((out / "edgellm.json").read_text())["files"] == ["model.onnx", "model.onnx_data"]
    assert (out / "model.onnx").stat().st_size < 1 << 20 < (out / "model.onnx_data").stat().st_size
    with LLM(out, n_threads=2) as llm, LLM(single, n_threads=2) as ref:
        assert max_diff(llm.logits(PROMPT_IDS), ref.logits(PROMPT_IDS)) == 0
    (out / "model.onnx_data").unlink()
    with pytest.raises(ModelFileError, match=r"model\.onnx_data: missing"):
        LLM(out)


def test_lora_is_merged_before_export(tmp_path) -> None:
    import peft
    import torch
    import transformers

    src = tiny_checkpoint("llama_spm")
    base = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    torch.manual_seed(5)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                      target_modules=["q_proj", "v_proj", "down_proj"]))
    model.save_pretrained(str(tmp_path / "adapter"))
    with torch.no_grad():
        ref = model.merge_and_unload()(torch.tensor([PROMPT_IDS])).logits[0].numpy()
    assert max_diff(ref, hf_logits(src, PROMPT_IDS)) > 0.1  # the adapter changes the model
    out = tmp_path / "out"
    summary = export_onnx(src, out, OnnxOptions(loras=[(tmp_path / "adapter", 1.0)], progress=False))
    assert len(summary.lora) == 1 and json.loads((out / "edgellm.json").read_text())["lora"]
    with LLM(out, n_threads=2) as llm:
        assert max_diff(llm.logits(PROMPT_IDS), ref) <= 1e-4


# ----------------------------------------------------------------------------------------------- CLI

def test_cli_convert_then_run(tmp_path) -> None:
    out = tmp_path / "tiny-int8"
    r = CliRunner().invoke(cli, ["convert", str(tiny_checkpoint("llama")), "--format", "onnx", "--quant",
                                 "int8", "-o", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.stdout and "int8: MatMulNBits 8-bit" in r.stdout
    assert json.loads((out / "edgellm.json").read_text())["quant"] == "int8"

    def edgellm_cmd(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgellm", *args], capture_output=True, text=True,
                              check=False, timeout=300)

    r = edgellm_cmd("run", str(out), "-p", "Hello there", "--temp", "0", "-n", "8", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and r.stdout.endswith("\n")
    assert "tokens" in r.stderr.strip().splitlines()[-1]
    with LLM(out, n_threads=2) as llm:
        messages = [{"role": "user", "content": "Hello there"}]
        assert r.stdout == llm.chat(messages, 8, temperature=0) + "\n"
    text = tmp_path / "text.txt"
    text.write_text(GPL.read_text()[:4000])
    r = edgellm_cmd("perplexity", str(out), str(text), "--ctx", "64", "-t", "2")
    assert r.returncode == 0, r.stderr
    with LLM(out, n_ctx=64, n_threads=2) as llm:
        ppl = llm.perplexity(text.read_text(), n_ctx=64)
    assert r.stdout.startswith(f"perplexity {ppl.ppl:.4f} over {ppl.n_scored} tokens scored"), r.stdout
    r = edgellm_cmd("run", str(out), "-p", "Hello", "--lookup", "-n", "4")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: ") and "speculative decoding runs on GGUF models" in r.stderr
    r = edgellm_cmd("run", str(tmp_path), "-p", "Hello")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "edgellm.json: missing" in r.stderr


def test_cli_convert_refusal_is_one_line(tmp_path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = CliRunner().invoke(cli, ["convert", str(tiny_checkpoint("llama")), "--format", "onnx", "-o",
                                 str(out)])
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("error: ") and "not an ONNX export" in r.stderr
