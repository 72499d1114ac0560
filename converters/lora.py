"""LoRA adapters in PEFT format, merged into the base weights in f32 before quantization.

An adapter folder holds `adapter_config.json` (r, lora_alpha, target_modules, use_rslora, fan_in_fan_out,
rank_pattern, alpha_pattern) and `adapter_model.safetensors` with, per adapted Linear module M,
`base_model.model.M.lora_A.weight` (r, in_features) and `base_model.model.M.lora_B.weight` (out_features, r).
Merged: W' = W + sum_i scale_i * s_i * B_i @ A_i with s_i = alpha / r (alpha / sqrt(r) for rsLoRA), r and alpha
per module from rank_pattern / alpha_pattern. With fan_in_fan_out the base stores W as (in, out) (GPT-2 style
Conv1D), so the delta is transposed; peft resets the flag to False on nn.Linear, so such adapters keep (out, in).

Variants whose merge is not W + B @ A (DoRA, embedding LoRA, trained biases, modules_to_save, ...) are refused.
Adapters are small: all A/B matrices are loaded at once, as float32.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgellm._jsonfile import read_json_object
from edgellm.errors import ConversionError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^base_model\.model\.(.+)\.(lora_A|lora_B)\.weight$")

# Config fields that select a variant we cannot merge as W + B @ A: field -> why.
_REFUSED_FIELDS = {
    "use_dora": "DoRA adapters are not supported (merge them with peft's merge_and_unload first)",
    "modules_to_save": "modules_to_save (fully trained modules) are not supported",
    "lora_bias": "LoRA biases are not supported",
    "trainable_token_indices": "trained token embeddings are not supported",
    "layer_replication": "layer replication is not supported",
    "alora_invocation_tokens": "activated LoRA cannot be merged into the weights",
    "target_parameters": "LoRA on parameters (target_parameters) is not supported",
}

# Initialisations that rewrite the base weights (W - B @ A at init): such an adapter only fits that modified base.
_BASE_CHANGING_INITS = ("pissa", "corda", "olora", "loftq")


def parse_lora_spec(spec: str) -> tuple[Path, float]:
    """"DIR" or "DIR:SCALE" (scale default 1.0). A DIR that exists is taken whole, even with a colon in it."""
    if Path(spec).exists() or ":" not in spec:
        return Path(spec), 1.0
    head, tail = spec.rsplit(":", 1)
    try:
        scale = float(tail)
    except ValueError:
        raise ConversionError(f"--lora {spec}: scale '{tail}' is not a number (use DIR or DIR:SCALE)") from None
    if not math.isfinite(scale):
        raise ConversionError(f"--lora {spec}: scale '{tail}' is not finite")
    return Path(head), scale


def _match_pattern(patterns: dict, module: str) -> object | None:
    """peft's rank_pattern / alpha_pattern lookup: the first key that matches the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def _targets(target_modules: list[str] | str, module: str) -> bool:
    """peft's target_modules test: a regex must match the whole module name; a list entry must be the module
    name or its dotted suffix."""
    if isinstance(target_modules, str):
        return target_modules == "all-linear" or re.fullmatch(target_modules, module) is not None
    return any(module == t or module.endswith("." + t) for t in target_modules)


@dataclass
class LoraAdapter:
    """One adapter: its config and its A/B matrices per module (module name as in the base checkpoint, without
    the trailing ".weight")."""

    path: Path
    scale: float  # the user's --lora scale
    r: int
    alpha: float
    rslora: bool
    fan_in_fan_out: bool
    target_modules: list[str] | str
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # module -> (A (r, in), B (out, r))

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_NAME

    def rank(self, module: str) -> int:
        r = _match_pattern(self.rank_pattern, module)
        return int(r) if r is not None else self.r

    def factor(self, module: str) -> float:
        """User scale times the LoRA scaling of this module: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        r = self.rank(module)
        alpha = _match_pattern(self.alpha_pattern, module)
        alpha = float(alpha) if alpha is not None else self.alpha
        return self.scale * (alpha / math.sqrt(r) if self.rslora else alpha / r)

    @classmethod
    def load(cls, path: Path, scale: float) -> LoraAdapter:
        path = Path(path)
        if not path.is_dir():
            raise ConversionError(f"{path}: LoRA adapter folder not found")
        config = _read_config(path / CONFIG_NAME)
        adapter = cls(path=path, scale=scale, **config)
        adapter.pairs = _read_pairs(adapter)
        return adapter

    def check(self, base_shapes: dict[str, tuple[int, ...]]) -> None:
        modules = {name.removesuffix(".weight") for name in base_shapes if name.endswith(".weight")}
        targets = [self.target_modules] if isinstance(self.target_modules, str) else self.target_modules
        for target in targets:
            if target == "all-linear":
                continue
            one = target if isinstance(self.target_modules, str) else [target]
            if not any(_targets(one, m) for m in modules):
                raise ConversionError(f"{self.config_path}: field 'target_modules': '{target}' matches no module "
                                      "of the base checkpoint")
        for module, (a, b) in self.pairs.items():
            name = module + ".weight"
            if name not in base_shapes:
                raise ConversionError(f"{self.weights_path}: tensor '{_PREFIX}{module}.lora_A.weight': targets "
                                      f"'{name}', which is not in the base checkpoint")
            shape = tuple(base_shapes[name])
            if len(shape) != 2:
                raise ConversionError(f"{self.weights_path}: tensor '{_PREFIX}{module}.lora_A.weight': base "
                                      f"'{name}' has shape {shape}, not a 2-D matrix")
            out_f, in_f = (shape[1], shape[0]) if self.fan_in_fan_out else shape
            if a.shape[1] != in_f:
                raise ConversionError(f"{self.weights_path}: tensor '{_PREFIX}{module}.lora_A.weight': shape "
                                      f"{a.shape} has {a.shape[1]} in-features but base '{name}' {shape} has {in_f}")
            if b.shape[0] != out_f:
                raise ConversionError(f"{self.weights_path}: tensor '{_PREFIX}{module}.lora_B.weight': shape "
                                      f"{b.shape} has {b.shape[0]} out-features but base '{name}' {shape} has "
                                      f"{out_f}")

    def delta(self, module: str) -> np.ndarray | None:
        """factor * B @ A in the base tensor's layout, float32; None when this adapter does not touch module."""
        pair = self.pairs.get(module)
        if pair is None:
            return None
        a, b = pair
        d = (b @ a) * np.float32(self.factor(module))
        return d.T if self.fan_in_fan_out else d

    def describe(self) -> str:
        kind = "rsLoRA" if self.rslora else "LoRA"
        return (f"{kind} {self.path} scale {self.scale:g}: r={self.r}, alpha={self.alpha:g}, "
                f"{len(self.pairs)} modules")


def _field(config: dict, path: Path, key: str, types: tuple[type, ...], default: object = ...) -> object:
    if key not in config or config[key] is None:
        if default is ...:
            raise ConversionError(f"{path}: field '{key}': missing")
        return default
    value = config[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = " or ".join(t.__name__ for t in types)
        raise ConversionError(f"{path}: field '{key}': expected {names}, got {value!r}")
    return value


def _read_config(path: Path) -> dict:
    """The fields of adapter_config.json we use, validated; refuses variants we cannot merge."""
    if not path.is_file():
        raise ConversionError(f"{path}: missing (not a PEFT LoRA adapter folder)")
    config = read_json_object(path, ConversionError)
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise ConversionError(f"{path}: field 'peft_type': '{peft_type}' is not supported (only LORA)")
    for key, why in _REFUSED_FIELDS.items():
        if config.get(key):
            raise ConversionError(f"{path}: field '{key}': {why}")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        raise ConversionError(f"{path}: field 'init_lora_weights': '{init}' adapters belong to a modified base model; "
                              "save them with peft's path_initial_model_for_weight_conversion to get a plain LoRA")
    bias = config.get("bias", "none")
    if bias not in ("none", None):
        raise ConversionError(f"{path}: field 'bias': '{bias}' (trained biases) is not supported, only 'none'")
    r = _field(config, path, "r", (int,))
    alpha = _field(config, path, "lora_alpha", (int, float))
    if r <= 0:
        raise ConversionError(f"{path}: field 'r': must be positive, got {r}")
    targets = _field(config, path, "target_modules", (list, str))
    if isinstance(targets, list) and (not targets or not all(isinstance(t, str) for t in targets)):
        raise ConversionError(f"{path}: field 'target_modules': expected a non-empty list of names")
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as e:
            raise ConversionError(f"{path}: field 'target_modules': bad regular expression: {e}") from None
    rank_pattern = _field(config, path, "rank_pattern", (dict,), {})
    alpha_pattern = _field(config, path, "alpha_pattern", (dict,), {})
    for key, value in rank_pattern.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConversionError(f"{path}: field 'rank_pattern': '{key}': expected a positive int, got {value!r}")
    for key, value in alpha_pattern.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConversionError(f"{path}: field 'alpha_pattern': '{key}': expected a number, got {value!r}")
    return {"r": r, "alpha": float(alpha), "rslora": bool(_field(config, path, "use_rslora", (bool,), False)),
            "fan_in_fan_out": bool(_field(config, path, "fan_in_fan_out", (bool,), False)),
            "target_modules": targets, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern}


def _read_pairs(adapter: LoraAdapter) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All lora_A / lora_B matrices as float32, checked against the config (pairing, rank, target_modules)."""
    path = adapter.weights_path
    if not path.is_file():
        hint = " (adapter_model.bin is a pickle: re-save with safe_serialization=True)" \
            if (adapter.path / "adapter_model.bin").exists() else ""
        raise ConversionError(f"{path}: missing{hint}")
    import torch  # noqa: F401  (safetensors' "pt" framework reads bf16/f16)
    from safetensors import SafetensorError, safe_open

    halves: dict[str, dict[str, np.ndarray]] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                m = _LORA_KEY.match(key)
                if m is None:
                    raise ConversionError(f"{path}: tensor '{key}': {_unsupported_key(key)}")
                t = f.get_tensor(key)
                halves.setdefault(m.group(1), {})[m.group(2)] = t.float().numpy()
    except ConversionError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # corrupt header, truncated data
        raise ConversionError(f"{path}: cannot read safetensors: {str(e).splitlines()[0]}") from None
    if not halves:
        raise ConversionError(f"{path}: holds no LoRA tensors")

    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for module, half in halves.items():
        for side in ("lora_A", "lora_B"):
            if side not in half:
                raise ConversionError(f"{path}: tensor '{_PREFIX}{module}.{side}.weight': missing (the other half "
                                      "of the pair is present)")
            if half[side].ndim != 2:
                raise ConversionError(f"{path}: tensor '{_PREFIX}{module}.{side}.weight': shape "
                                      f"{tuple(half[side].shape)} is not 2-D")
        a, b = half["lora_A"], half["lora_B"]
        r = adapter.rank(module)
        field_name = "rank_pattern" if _match_pattern(adapter.rank_pattern, module) is not None else "r"
        if a.shape[0] != r:
            raise ConversionError(f"{path}: tensor '{_PREFIX}{module}.lora_A.weight': shape {a.shape} has rank "
                                  f"{a.shape[0]} but {CONFIG_NAME} field '{field_name}' gives {r}")
        if b.shape[1] != r:
            raise ConversionError(f"{path}: tensor '{_PREFIX}{module}.lora_B.weight': shape {b.shape} has rank "
                                  f"{b.shape[1]} but {CONFIG_NAME} field '{field_name}' gives {r}")
        if not _targets(adapter.target_modules, module):
            raise ConversionError(f"{path}: tensor '{_PREFIX}{module}.lora_A.weight': module '{module}' is not "
                                  f"named by {CONFIG_NAME} field 'target_modules'")
        pairs[module] = (np.ascontiguousarray(a), np.ascontiguousarray(b))
    return pairs


def _unsupported_key(key: str) -> str:
    if ".lora_embedding_" in key:
        return "embedding LoRA is not supported"
    if ".lora_magnitude_vector" in key:
        return "DoRA magnitude vectors are not supported"
    if ".lora_B.bias" in key or ".lora_A.bias" in key:
        return "LoRA biases are not supported"
    if key.endswith(".base_layer.weight"):
        return "a full copy of the base weight (peft's save_embedding_layers) is not supported"
    if not key.startswith(_PREFIX):
        return f"not a PEFT LoRA tensor name (expected '{_PREFIX}<module>.lora_A.weight')"
    return "not a LoRA A/B matrix (fully trained modules and biases are not supported)"


class LoraSet:
    """The adapters of one conversion, applied in the order given on the command line."""

    def __init__(self, adapters: list[LoraAdapter]) -> None:
        self.adapters = adapters

    @classmethod
    def load(cls, specs: list[tuple[Path, float]]) -> LoraSet:
        return cls([LoraAdapter.load(Path(path), scale) for path, scale in specs])

    def check(self, base_shapes: dict[str, tuple[int, ...]]) -> None:
        """Raises ConversionError when an adapter does not fit the base (missing target, wrong shape)."""
        for adapter in self.adapters:
            adapter.check(base_shapes)

    def merge(self, hf_name: str, w: np.ndarray) -> np.ndarray:
        """w: float32 (out, in) base weight named hf_name in the checkpoint; returns w plus every adapter's delta
        in f32 (w itself, untouched, when no adapter targets it)."""
        if not hf_name.endswith(".weight"):
            return w
        module = hf_name.removesuffix(".weight")
        out = w
        for adapter in self.adapters:
            d = adapter.delta(module)
            if d is None:
                continue
            if d.shape != out.shape:
                raise ConversionError(f"{adapter.weights_path}: tensor '{_PREFIX}{module}.lora_B.weight': delta "
                                      f"shape {d.shape} does not match base '{hf_name}' {tuple(out.shape)}")
            out = (out.astype(np.float32, copy=True) if out is w else out)
            out += d
        return out

    def describe(self) -> list[str]:
        return [adapter.describe() for adapter in self.adapters]

    def __bool__(self) -> bool:
        return bool(self.adapters)


__all__ = ["LoraAdapter", "LoraSet", "parse_lora_spec"]
