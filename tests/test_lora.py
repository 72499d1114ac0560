"""LoRA merge against peft: adapters made by peft on tiny random models (B initialised non-zero), merged by us,
compared with peft's merge_and_unload(); and every refusal."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from edgellm.converters.convert import ConvertOptions, convert
from edgellm.converters.lora import LoraSet, parse_lora_spec
from edgellm.errors import ConversionError
from helpers.tiny_models import PROMPT_IDS, gguf_logits, hf_logits, tiny_checkpoint


def tiny_llama(seed: int = 0, intermediate: int = 96) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=intermediate,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config).eval()


def make_adapter(base: torch.nn.Module, out: Path, seed: int, **lora) -> torch.nn.Module:
    """A peft adapter with random non-zero A and B, saved to out; returns the PeftModel (on a copy of base)."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(init_lora_weights=False, **lora)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    model.save_pretrained(str(out))
    return model


def weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def merge_all(loras: LoraSet, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: loras.merge(name, w) for name, w in base.items()}


def assert_close_per_tensor(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], base: dict[str, np.ndarray],
                            n_changed: int) -> None:
    assert set(ours) == set(ref)
    changed = 0
    for name, want in ref.items():
        assert np.abs(ours[name] - want).max() <= 1e-5, name
        changed += bool(np.abs(want - base[name]).max() > 1e-3)
    assert changed == n_changed  # the adapters really move the weights, so the comparison can fail


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    return tiny_llama()


@pytest.fixture(scope="module")
def adapter_dir(base, tmp_path_factory) -> Path:
    """A plain adapter on q/v/o/gate/down (r=4, alpha=8)."""
    out = tmp_path_factory.mktemp("lora") / "plain"
    make_adapter(base, out, 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "gate_proj",
                                                                  "down_proj"])
    return out


@pytest.mark.parametrize("lora, n_changed", [
    ({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]}, 10),
    ({"r": 8, "lora_alpha": 16, "use_rslora": True, "target_modules": "all-linear"}, 14),
    ({"r": 4, "lora_alpha": 4, "target_modules": r".*\.(k_proj|up_proj)", "rank_pattern": {"k_proj": 2},
      "alpha_pattern": {"up_proj": 3.0}}, 4),
], ids=["plain", "rslora-all-linear", "regex-patterns"])
def test_merge_matches_peft(base, tmp_path, lora, n_changed) -> None:
    model = make_adapter(base, tmp_path / "a", 1, **lora)
    ref = weights(model.merge_and_unload())
    loras = LoraSet.load([(tmp_path / "a", 1.0)])
    loras.check(shapes(base))
    assert_close_per_tensor(merge_all(loras, weights(base)), ref, weights(base), n_changed)


def test_two_adapters_compose(base, tmp_path) -> None:
    """--lora A:0.5 --lora B:2: peft merging A then B, each with its scaling times the user scale."""
    make_adapter(base, tmp_path / "a", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    make_adapter(base, tmp_path / "b", 2, r=2, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "up_proj"])
    merged = copy.deepcopy(base)
    for name, scale in [("a", 0.5), ("b", 2.0)]:
        model = peft.PeftModel.from_pretrained(merged, str(tmp_path / name))
        for module in model.modules():
            if isinstance(module, peft.tuners.lora.LoraLayer):
                module.scaling["default"] *= scale
        merged = model.merge_and_unload()
    loras = LoraSet.load([parse_lora_spec(f"{tmp_path / 'a'}:0.5"), parse_lora_spec(f"{tmp_path / 'b'}:2")])
    loras.check(shapes(base))
    assert_close_per_tensor(merge_all(loras, weights(base)), weights(merged), weights(base), 8)
    assert len(loras.describe()) == 2 and "scale 0.5" in loras.describe()[0] and "rsLoRA" in loras.describe()[1]


def test_fan_in_fan_out_matches_peft(tmp_path) -> None:
    """GPT-2 stores its Conv1D weights as (in, out): peft's fan_in_fan_out adapters merge transposed."""
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=1, n_head=4,
                                                                n_positions=32)).eval()
    model = make_adapter(gpt2, tmp_path / "a", 3, r=4, lora_alpha=8, fan_in_fan_out=True,
                         target_modules=["c_attn", "c_fc"])
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    base = weights(gpt2)
    ref = weights(model.merge_and_unload())
    loras = LoraSet.load([(tmp_path / "a", 1.0)])
    loras.check(shapes(gpt2))
    ours = {name: loras.merge(name, w) for name, w in base.items() if name in ref}
    assert_close_per_tensor(ours, {n: ref[n] for n in ours}, base, 2)


def test_untargeted_tensor_is_returned_as_is(adapter_dir, base) -> None:
    loras = LoraSet.load([(adapter_dir, 1.0)])
    w = weights(base)["model.layers.0.self_attn.k_proj.weight"]
    assert loras.merge("model.layers.0.self_attn.k_proj.weight", w) is w
    assert LoraSet.load([]).merge("model.layers.0.self_attn.q_proj.weight", w) is w


def test_parse_lora_spec(tmp_path) -> None:
    assert parse_lora_spec("some/dir") == (Path("some/dir"), 1.0)
    assert parse_lora_spec("some/dir:0.25") == (Path("some/dir"), 0.25)
    assert parse_lora_spec("some/dir:-1") == (Path("some/dir"), -1.0)
    odd = tmp_path / "a:b"
    odd.mkdir()
    assert parse_lora_spec(str(odd)) == (odd, 1.0)
    with pytest.raises(ConversionError, match=r"--lora some/dir:x: scale 'x' is not a number"):
        parse_lora_spec("some/dir:x")
    with pytest.raises(ConversionError, match="not finite"):
        parse_lora_spec("some/dir:nan")


# ---- refusals: each names the adapter file and the field or tensor ----

def edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def edit_tensors(folder: Path, fn) -> None:
    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))


def refused(folder: Path, base_shapes: dict, pattern: str) -> None:
    with pytest.raises(ConversionError, match=pattern) as info:
        LoraSet.load([(folder, 1.0)]).check(base_shapes)
    assert "\n" not in str(info.value)


@pytest.fixture()
def bad(adapter_dir, tmp_path) -> Path:
    """A fresh copy of the plain adapter, to break."""
    return Path(shutil.copytree(adapter_dir, tmp_path / "bad"))


Q = "base_model.model.model.layers.0.self_attn.q_proj"


REFUSALS = [
    ("no folder", r"missing-dir: LoRA adapter folder not found"),
    ("no config", r"bad/adapter_config.json: missing"),
    ("no weights", r"bad/adapter_model.safetensors: missing"),
    ("pickle weights", r"adapter_model.safetensors: missing \(adapter_model.bin is a pickle"),
    ("bad json", r"bad/adapter_config.json: not valid JSON"),
    ("no r", r"adapter_config.json: field 'r': missing"),
    ("no alpha", r"adapter_config.json: field 'lora_alpha': missing"),
    ("no targets", r"adapter_config.json: field 'target_modules': missing"),
    ("r is text", r"adapter_config.json: field 'r': expected int, got '4'"),
    ("dora", r"adapter_config.json: field 'use_dora': DoRA adapters are not supported"),
    ("modules_to_save", r"adapter_config.json: field 'modules_to_save'"),
    ("lora bias", r"adapter_config.json: field 'lora_bias'"),
    ("bias all", r"adapter_config.json: field 'bias': 'all'"),
    ("not lora", r"adapter_config.json: field 'peft_type': 'IA3' is not supported"),
    ("pissa", r"adapter_config.json: field 'init_lora_weights': 'pissa_niter_4' adapters belong to a modified base"),
    ("target not in base", r"adapter_config.json: field 'target_modules': 'w_proj' matches no module"),
    ("rank mismatch", (r"adapter_model.safetensors: tensor '.*\.lora_A\.weight': shape \(4, \d+\) has rank 4 "
                       r"but adapter_config.json field 'r' gives 8")),
    ("rank pattern mismatch", r"tensor '" + Q + r"\.lora_A\.weight': .* field 'rank_pattern' gives 2"),
    ("B without A", r"tensor '" + Q + r"\.lora_A\.weight': missing"),
    ("module not targeted", (r"tensor '.*v_proj\.lora_A\.weight': module '.*v_proj' is not named by "
                             r"adapter_config.json field 'target_modules'")),
    ("targets nothing", (r"tensor '.*layers\.7\.self_attn\.q_proj\.lora_A\.weight': targets "
                         r"'model\.layers\.7\.self_attn\.q_proj\.weight', which is not in the base")),
    ("full weight", r"tensor '" + Q + r"\.weight': not a LoRA A/B matrix"),
    ("embedding lora", r"tensor '.*embed_tokens\.lora_embedding_A': embedding LoRA is not supported"),
    ("dora magnitude", r"tensor '.*lora_magnitude_vector.*': DoRA magnitude vectors are not supported"),
    ("truncated", r"adapter_model.safetensors: cannot read safetensors"),
]


@pytest.mark.parametrize("case, pattern", REFUSALS, ids=[case for case, _ in REFUSALS])
def test_refusals(bad, base, case, pattern) -> None:
    folder = bad
    weights_path = bad / "adapter_model.safetensors"
    if case == "no folder":
        folder = bad.parent / "missing-dir"
    elif case == "no config":
        (bad / "adapter_config.json").unlink()
    elif case == "no weights":
        weights_path.unlink()
    elif case == "pickle weights":
        weights_path.rename(bad / "adapter_model.bin")
    elif case == "bad json":
        (bad / "adapter_config.json").write_text("{\"r\": 4,")
    elif case == "no r":
        edit_config(bad, r=None)
    elif case == "no alpha":
        edit_config(bad, lora_alpha=None)
    elif case == "no targets":
        edit_config(bad, target_modules=None)
    elif case == "r is text":
        edit_config(bad, r="4")
    elif case == "dora":
        edit_config(bad, use_dora=True)
    elif case == "modules_to_save":
        edit_config(bad, modules_to_save=["lm_head"])
    elif case == "lora bias":
        edit_config(bad, lora_bias=True)
    elif case == "bias all":
        edit_config(bad, bias="all")
    elif case == "pissa":
        edit_config(bad, init_lora_weights="pissa_niter_4")
    elif case == "not lora":
        edit_config(bad, peft_type="IA3")
    elif case == "target not in base":
        edit_config(bad, target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "w_proj"])
    elif case == "rank mismatch":
        edit_config(bad, r=8)
    elif case == "rank pattern mismatch":
        edit_config(bad, rank_pattern={"q_proj": 2})
    elif case == "B without A":
        edit_tensors(bad, lambda t: t.pop(f"{Q}.lora_A.weight"))
    elif case == "module not targeted":
        edit_config(bad, target_modules=["q_proj", "o_proj", "gate_proj", "down_proj"])
    elif case == "targets nothing":
        def move(t):
            for side in ("lora_A", "lora_B"):
                t[f"base_model.model.model.layers.7.self_attn.q_proj.{side}.weight"] = t[f"{Q}.{side}.weight"].clone()
        edit_tensors(bad, move)
    elif case == "full weight":
        edit_tensors(bad, lambda t: t.update({f"{Q}.weight": torch.zeros(64, 64)}))
    elif case == "embedding lora":
        edit_tensors(bad, lambda t: t.update({"base_model.model.model.embed_tokens.lora_embedding_A":
                                              torch.zeros(4, 128)}))
    elif case == "dora magnitude":
        edit_tensors(bad, lambda t: t.update({f"{Q}.lora_magnitude_vector": torch.ones(64)}))
    elif case == "truncated":
        data = weights_path.read_bytes()
        weights_path.write_bytes(data[: len(data) // 2])
    refused(folder, shapes(base), pattern)


def test_shape_mismatch(adapter_dir, base) -> None:
    """Out-features (lora_B rows) and in-features (lora_A columns) are held to the base weight's shape."""
    out_features = dict(shapes(base), **{"model.layers.0.mlp.gate_proj.weight": (128, 64)})
    with pytest.raises(ConversionError, match=r"adapter_model.safetensors: tensor '.*layers\.0\.mlp\.gate_proj"
                                              r"\.lora_B\.weight': shape \(96, 4\) has 96 out-features but base "
                                              r"'model\.layers\.0\.mlp\.gate_proj\.weight' \(128, 64\) has 128"):
        LoraSet.load([(adapter_dir, 1.0)]).check(out_features)
    in_features = dict(shapes(base), **{"model.layers.1.mlp.down_proj.weight": (64, 128)})
    with pytest.raises(ConversionError, match=r"tensor '.*layers\.1\.mlp\.down_proj\.lora_A\.weight': shape "
                                              r"\(4, 96\) has 96 in-features but base .* has 128"):
        LoraSet.load([(adapter_dir, 1.0)]).check(in_features)
    # an adapter made for intermediate_size 96 does not fit a base with 128
    with pytest.raises(ConversionError, match=r"has 96 (in|out)-features but base .* has 128"):
        LoraSet.load([(adapter_dir, 1.0)]).check(shapes(tiny_llama(intermediate=128)))


def test_tied_lm_head_target_is_refused(bad, base) -> None:
    """With tied embeddings the checkpoint has no lm_head.weight: an adapter on lm_head cannot be merged."""
    edit_config(bad, target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "lm_head"])
    tied = {k: v for k, v in shapes(base).items() if k != "lm_head.weight"}
    refused(bad, tied, r"adapter_config.json: field 'target_modules': 'lm_head' matches no module of the base")


def test_saved_base_layer_is_refused(base, tmp_path) -> None:
    """peft saves a full copy of lm_head with an lm_head adapter (save_embedding_layers): refused, not ignored."""
    make_adapter(base, tmp_path / "a", 1, r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"])
    refused(tmp_path / "a", shapes(base), r"tensor 'base_model.model.lm_head.base_layer.weight': a full copy of "
                                          r"the base weight")


# ---- end to end: `edgellm convert` with --lora, read back by transformers ----

def peft_merged_logits(model_dir: Path, adapters: list[tuple[Path, float]], ids: list[int]) -> np.ndarray:
    """Logits of peft's merge_and_unload() of the adapters (each scaling times its user scale) in turn."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for folder, scale in adapters:
        model = peft.PeftModel.from_pretrained(model, str(folder))
        for module in model.modules():
            if isinstance(module, peft.tuners.lora.LoraLayer):
                module.scaling["default"] *= scale
        model = model.merge_and_unload().eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


@pytest.fixture(scope="module")
def tiny_adapters(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The tiny SentencePiece llama checkpoint (small vocab: quick to load back) and two peft adapters for it."""
    src = tiny_checkpoint("llama_spm")
    base = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    out = tmp_path_factory.mktemp("tiny-lora")
    make_adapter(base, out / "a", 11, r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                          "gate_proj", "up_proj", "down_proj"])
    make_adapter(base, out / "b", 12, r=4, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "k_proj",
                                                                                         "down_proj"])
    return src, out / "a", out / "b"


@pytest.mark.parametrize("specs", [["a"], ["a:0.5", "b:2"]], ids=["one", "two-scaled"])
def test_convert_with_lora_matches_peft(tiny_adapters, tmp_path, specs) -> None:
    """Our f32 GGUF of base + adapters, loaded by transformers, gives peft's merged logits within 1e-4."""
    src, a, b = tiny_adapters
    loras = [parse_lora_spec(str({"a": a, "b": b}[s[0]]) + s[1:]) for s in specs]
    out = tmp_path / "merged.gguf"
    summary = convert(src, out, ConvertOptions(quant="f32", loras=loras, progress=False))
    assert len(summary.lora) == len(specs)
    ref = peft_merged_logits(src, loras, PROMPT_IDS)
    assert np.abs(ref - hf_logits(src, PROMPT_IDS)).max() > 0.1  # the adapters change the model
    assert np.abs(gguf_logits(out, PROMPT_IDS) - ref).max() <= 1e-4
