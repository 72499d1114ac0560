"""AWQ: activation-aware per-channel scales, searched per layer and folded into the network.

For a group of linear layers sharing an input x (q/k/v after the attention norm, gate/up after the FFN norm,
o after v, down after up), scaling input channel j of the weights by s_j and the input by 1/s_j leaves the
output unchanged, but changes what quantization loses: channels with large activations get finer steps.
The scale is s = a^alpha with a = mean |x_j| over the calibration tokens; alpha is chosen on a grid in
[0, 1) to minimise the quantized layers' output error on sampled calibration rows (alpha = 0 is no
scaling, so the search never does worse than plain quantization on those rows). 1/s is folded into what
produces x: the RMS norm's weight, or the rows (and bias) of v / up, whose outputs feed o / down.

Under grouped-query attention one row of v feeds the o-input channels of every query head of its group, so
o's scales are tied across those heads.

Everything here works on weights as they are written to the GGUF file (after the architecture's
transforms: Q/K row permutation, Gemma's norm offset), where folding is a plain multiply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgellm import quant

from .calib import Calibration

GRID = 10  # alpha = 0, 0.1, ..., 0.9, then the best one's neighbours +-0.05 (AWQ's 20-point grid, coarse to fine)
SEARCH_ROWS = 256  # output rows per weight matrix used to measure a candidate's error (rows are independent)
_FLOAT_TYPES = {quant.GGMLType.F32, quant.GGMLType.F16, quant.GGMLType.BF16}


@dataclass
class Group:
    """Linear layers sharing one input, and where 1/s folds."""

    name: str  # e.g. "blk.3.attn_qkv"
    linears: list[str]  # GGUF weight names whose columns are scaled by s
    fold: list[str]  # GGUF names (a norm weight, or a producer's weight and bias) whose rows are divided by s
    n_tie: int = 1  # o's input: s is given per v row and repeated for the n_tie query heads sharing it
    head_dim: int = 0


@dataclass
class Scales:
    """The searched scales, to apply while the tensors are written."""

    cols: dict[str, np.ndarray] = field(default_factory=dict)  # weight name -> s (multiply column j by s_j)
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # name -> s (divide row / element i by s_i)
    alpha: dict[str, float] = field(default_factory=dict)  # group name -> chosen alpha
    gain: dict[str, float] = field(default_factory=dict)  # group name -> output error at alpha / at 0

    def apply(self, name: str, w: np.ndarray, rows: tuple[int, int] | None = None) -> np.ndarray:
        """w (all rows, or rows r0:r1 of the tensor) with the folded scales of name applied."""
        s = self.cols.get(name)
        if s is not None:
            w = w * s[None, :]
        s = self.rows.get(name)
        if s is not None:
            if rows is not None:
                s = s[rows[0]:rows[1]]
            w = w / (s[:, None] if w.ndim == 2 else s)
        return w

    def set(self, g: Group, s: np.ndarray) -> None:
        """Scales group g's input columns by s (per consumer column; under GQA equal across the query heads
        that share a v row) and folds 1/s into what produces the input."""
        for name in g.linears:
            self.cols[name] = s
        fold = s if g.n_tie == 1 else s.reshape(-1, g.n_tie * g.head_dim)[:, :g.head_dim].reshape(-1)
        for name in g.fold:
            self.rows[name] = fold

    def imatrix(self, name: str, im: np.ndarray | None) -> np.ndarray | None:
        """The importance of name's columns after scaling: the input x/s has mean square im / s^2."""
        s = self.cols.get(name)
        return im if im is None or s is None else im / (s * s)


def groups(n_layer: int, n_head: int, n_head_kv: int, head_dim: int, names: set[str]) -> list[Group]:
    out = []
    for i in range(n_layer):
        b = f"blk.{i}."

        def have(*parts: str, b: str = b) -> list[str]:
            return [f"{b}{p}" for p in parts if f"{b}{p}" in names]

        out.append(Group(f"{b}attn_qkv", have("attn_q.weight", "attn_k.weight", "attn_v.weight"),
                         have("attn_norm.weight")))
        out.append(Group(f"{b}attn_output", have("attn_output.weight"), have("attn_v.weight", "attn_v.bias"),
                         n_tie=max(1, n_head // max(n_head_kv, 1)), head_dim=head_dim))
        out.append(Group(f"{b}ffn_gate_up", have("ffn_gate.weight", "ffn_up.weight"), have("ffn_norm.weight")))
        out.append(Group(f"{b}ffn_down", have("ffn_down.weight"), have("ffn_up.weight", "ffn_up.bias")))
    return [g for g in out if g.linears and g.fold]


def expand(s_prod: np.ndarray, g: Group) -> np.ndarray:
    """Scales per producer row -> per consumer column (o's input: query head h reads v head h // n_tie)."""
    if g.n_tie == 1:
        return s_prod
    hd = g.head_dim
    heads = s_prod.reshape(-1, hd)  # (n_head_kv, hd)
    return np.repeat(heads, g.n_tie, axis=0).reshape(-1)


def _reduce(a_cons: np.ndarray, g: Group) -> np.ndarray:
    """Activation scale per consumer column -> per producer row (mean over the query heads sharing it)."""
    if g.n_tie == 1:
        return a_cons
    hd = g.head_dim
    return a_cons.reshape(-1, g.n_tie, hd).mean(axis=1).reshape(-1)


def _qdq(w: np.ndarray, qtype: int, im: np.ndarray | None, n_threads: int) -> np.ndarray:
    return quant.dequantize(quant.quantize(w, qtype, imatrix=im, n_threads=n_threads), qtype, w.shape,
                            n_threads=n_threads)


def search(calib: Calibration, groups_: list[Group], weight: Callable[[str], np.ndarray],
           qtype: Callable[[str], int], use_imatrix: bool, n_threads: int = 0, grid: int = GRID,
           progress: Callable[[], None] | None = None, seed: int = 0) -> Scales:
    """Searches alpha for every group; weight(name) gives a tensor as written (f32), qtype(name) its type."""
    rng = np.random.default_rng(seed)
    scales = Scales()
    for g in groups_:
        stats = calib.stats(g.linears[0])
        types = [qtype(n) for n in g.linears]
        if stats is None or all(t in _FLOAT_TYPES for t in types):
            if progress:
                progress()
            continue
        x = stats.sample().astype(np.float32)
        a = _reduce(np.maximum(stats.mean_abs, 1e-8), g)
        im = stats.mean_sq if use_imatrix else None
        layers = []
        for name, t in zip(g.linears, types, strict=True):
            w = weight(name)
            if w.shape[0] > SEARCH_ROWS:
                w = w[np.sort(rng.choice(w.shape[0], SEARCH_ROWS, replace=False))]
            layers.append((np.ascontiguousarray(w, dtype=np.float32), t, x @ w.T))

        def error(alpha: float, g: Group = g, x: np.ndarray = x, a: np.ndarray = a,
                  im: np.ndarray | None = im, layers: list = layers) -> tuple[float, float, np.ndarray]:
            s = expand(a ** alpha, g) if alpha > 0 else np.ones(x.shape[1], np.float32)
            s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
            xs = x / s
            err = 0.0
            for w, t, y in layers:
                if t in _FLOAT_TYPES:
                    continue  # exact either way
                wq = _qdq(w * s, t, None if im is None else im / (s * s), n_threads)
                err += float(np.mean((xs @ wq.T - y) ** 2))
            return err, alpha, s

        errs = [error(k / grid) for k in range(grid)]
        best = min(errs, key=lambda e: e[0])
        step = 0.5 / grid
        errs += [error(best[1] + d) for d in (-step, step) if 0 < best[1] + d < 1]
        best = min(errs, key=lambda e: e[0])
        scales.alpha[g.name] = best[1]
        scales.gain[g.name] = best[0] / errs[0][0] if errs[0][0] > 0 else 1.0
        if best[1] > 0:
            scales.set(g, best[2])
        if progress:
            progress()
    return scales


__all__ = ["GRID", "Group", "Scales", "expand", "groups", "search"]
