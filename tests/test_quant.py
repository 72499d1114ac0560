"""Block formats: our quantize/dequantize against gguf-py (the independent reference)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT

from edgellm import EdgeLLMError
from edgellm.quant import GGMLType, block_size, dequantize, quantize, row_size, type_name, type_size
from helpers.smollm2 import smollm2_gguf_path

LEGACY = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0]
KQUANTS = [GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]
FLOATS = [GGMLType.F32, GGMLType.F16, GGMLType.BF16]
ALL = FLOATS + LEGACY + KQUANTS
# what gguf-py 0.19 can quantize itself (it has no k-quant quantizers)
GGUF_PY_QUANTIZES = [GGMLType.F16, GGMLType.BF16] + LEGACY


def ref_dequantize(data: np.ndarray, qtype: GGMLType, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(gguf.quants.dequantize(data, GT(int(qtype))), dtype=np.float32).reshape(shape)


def assert_bit_identical(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == np.float32
    nan_ours, nan_ref = np.isnan(ours), np.isnan(ref)
    np.testing.assert_array_equal(nan_ours, nan_ref)
    a, b = ours[~nan_ours].view(np.uint32), ref[~nan_ref].view(np.uint32)
    bad = np.flatnonzero(a != b)
    assert bad.size == 0, f"{bad.size} values differ, first at {bad[0]}: {ours[~nan_ours][bad[0]]} vs {ref[~nan_ref][bad[0]]}"


def sse(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    d = x.astype(np.float64) - y.astype(np.float64)
    return float(np.sum(d * d if w is None else w * d * d))


def lengths_for(qtype: GGMLType) -> list[int]:
    return [256, 768] if qtype in KQUANTS else [32, 96, 512]


# ---------------------------------------------------------------- traits


def test_traits_match_gguf_py():
    for qtype in ALL + [GGMLType.Q8_K]:
        assert (block_size(qtype), type_size(qtype)) == gguf.GGML_QUANT_SIZES[GT(int(qtype))]
        assert type_name(qtype).lower() == GT(int(qtype)).name.lower()
        assert row_size(qtype, 4 * block_size(qtype)) == 4 * type_size(qtype)
    with pytest.raises(ValueError):
        type_name(99)


# ---------------------------------------------------------------- bit identity with gguf-py


@pytest.mark.parametrize("qtype", ALL, ids=lambda t: t.name)
def test_roundtrip_bit_identical_to_gguf_py(qtype):
    rng = np.random.default_rng(int(qtype))
    for n in lengths_for(qtype):
        for nrows in (1, 7):
            x = (rng.standard_normal((nrows, n)) * rng.uniform(0.01, 3)).astype(np.float32)
            data = quantize(x, qtype)
            assert data.shape == (nrows, row_size(qtype, n)) and data.dtype == np.uint8
            ours = dequantize(data, qtype, x.shape)
            assert_bit_identical(ours, ref_dequantize(data, qtype, x.shape))


@pytest.mark.parametrize("qtype", FLOATS[1:] + LEGACY + KQUANTS, ids=lambda t: t.name)
def test_decoder_bit_identical_on_random_bytes(qtype):
    """Every bit pattern (subnormal, inf and NaN scales included) decodes as gguf-py decodes it."""
    rng = np.random.default_rng(100 + int(qtype))
    n = 512
    data = rng.integers(0, 256, size=(5, row_size(qtype, n)), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = ref_dequantize(data, qtype, (5, n))
    assert_bit_identical(dequantize(data, qtype, (5, n)), ref)


@pytest.mark.parametrize("qtype", [GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
def test_half_conversion_bytes_match_gguf_py(qtype):
    """Round to nearest even, subnormals included: the same bytes as numpy / gguf-py write."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 4096)).astype(np.float32) * np.float32([[1], [1e-3], [1e-5], [1e-7], [1e4], [1e-38]])
    ref = np.asarray(gguf.quants.quantize(x, GT(int(qtype)))).view(np.uint8).reshape(6, -1)
    assert np.array_equal(quantize(x, qtype), ref)
    # finite values beyond the type's range saturate instead of becoming inf
    big = np.float32([[7e4, -1e5, 3.4e38, -3.4e38]])
    top = {GGMLType.F16: 65504.0, GGMLType.BF16: float(np.uint32(0x7F7F0000).view(np.float32))}[qtype]
    got = dequantize(quantize(big, qtype), qtype, big.shape)
    expect = np.sign(big) * np.minimum(np.abs(big), top)
    if qtype == GGMLType.BF16:  # the two in-range values round normally
        expect[0, :2] = ref_dequantize(np.asarray(gguf.quants.quantize(big, GT.BF16)), qtype, big.shape)[0, :2]
    np.testing.assert_array_equal(got, expect)


def test_every_f16_value_decodes_exactly_and_round_trips():
    bits = np.arange(65536, dtype=np.uint16)
    ours = dequantize(bits.view(np.uint8), GGMLType.F16, (65536,))
    assert_bit_identical(ours, bits.view(np.float16).astype(np.float32))
    finite = np.isfinite(ours)
    again = quantize(ours[finite], GGMLType.F16).view(np.uint16)
    assert np.array_equal(again, bits[finite])


def special_rows(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    g = rng.standard_normal(n).astype(np.float32)
    return {
        "zeros": np.zeros(n, np.float32),
        "constant": np.full(n, 0.37, np.float32),
        "negative_constant": np.full(n, -1234.5, np.float32),
        "negative_only": -np.abs(g) - 0.5,
        "huge": g * 1e4,  # block scales stay within the f16 range
        "beyond_f16": g * 3e5 + 1e5,  # scales saturate at 65504: only finiteness is promised
        "tiny": g * 1e-4,
        "subnormal_f16": g * 1e-7,
        "f32_subnormal": g * 1e-40,
        "one_spike": np.where(np.arange(n) == 5, 100.0, g * 1e-3).astype(np.float32),
    }


@pytest.mark.parametrize("qtype", ALL, ids=lambda t: t.name)
def test_special_values(qtype):
    n = 512
    rows = special_rows(n)
    x = np.stack(list(rows.values())).astype(np.float32)
    data = quantize(x, qtype)
    ours = dequantize(data, qtype, x.shape)
    assert_bit_identical(ours, ref_dequantize(data, qtype, x.shape))
    assert np.all(np.isfinite(ours)), "finite input must decode to finite values"
    for i, name in enumerate(rows):
        xi, yi = x[i].astype(np.float64), ours[i].astype(np.float64)
        if name == "zeros":
            assert np.all(yi == 0)
        if name in ("constant", "negative_constant", "negative_only", "tiny", "one_spike", "huge"):
            # relative RMS error well under the data's RMS, whatever the scale
            assert np.sqrt(np.mean((xi - yi) ** 2)) <= 0.6 * np.sqrt(np.mean(xi**2)), name


# ---------------------------------------------------------------- error on real weights


@pytest.fixture(scope="module")
def smollm2_weights() -> dict[str, np.ndarray]:
    """A few f32 weight matrices of SmolLM2-135M (its Q4_1/Q8_0 GGUF dequantized by gguf-py)."""
    reader = gguf.GGUFReader(str(smollm2_gguf_path()))
    want = {"blk.0.attn_q.weight": None, "blk.5.ffn_down.weight": None, "blk.9.attn_k.weight": None,
            "token_embd.weight": 768}
    out = {}
    for t in reader.tensors:
        if t.name in want:
            x = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            x = x.reshape(-1, x.shape[-1])
            out[t.name] = np.ascontiguousarray(x[: want[t.name]] if want[t.name] else x)
    assert len(out) == len(want)
    return out


@pytest.mark.parametrize("qtype", GGUF_PY_QUANTIZES, ids=lambda t: t.name)
def test_error_not_worse_than_gguf_py(qtype, smollm2_weights):
    for name, x in smollm2_weights.items():
        ours_bytes = quantize(x, qtype)
        ours = dequantize(ours_bytes, qtype, x.shape)
        theirs_bytes = gguf.quants.quantize(x, GT(int(qtype)))
        theirs = ref_dequantize(theirs_bytes, qtype, x.shape)
        e_ours, e_theirs = sse(x, ours), sse(x, theirs)
        assert e_ours <= e_theirs * (1 + 1e-9), f"{name}: ours {e_ours:.6g} > gguf-py {e_theirs:.6g}"
        if qtype in (GGMLType.Q8_0, GGMLType.Q5_0):
            # without importance weights q8_0 and q5_0 are llama.cpp's plain quantizers, byte for byte
            assert np.array_equal(ours_bytes, np.asarray(theirs_bytes).reshape(ours_bytes.shape)), name
        elif qtype in LEGACY and e_theirs > 0:
            assert e_ours < 0.98 * e_theirs, f"{name}: the scale search should beat plain rounding"


@pytest.mark.parametrize("qtype", [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_1], ids=lambda t: t.name)
def test_requantizing_a_dequantized_tensor_keeps_its_grid(qtype):
    """Weights dequantized from a block format and stored as f16 (a checkpoint made from a GGUF, or trained
    for the format) lie on that format's grid up to f16 rounding: the searching quantizers keep the plain
    grid instead of fitting the rounding, so the bytes are gguf-py's plain quantization of the same input."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((256, 1024)) * 0.05 + rng.standard_t(3, (256, 1024)) * 0.01).astype(np.float32)
    x = ref_dequantize(np.asarray(gguf.quants.quantize(w, GT(int(qtype)))), qtype, w.shape)
    x = x.astype(np.float16).astype(np.float32)
    ours = quantize(x, qtype)
    theirs = np.asarray(gguf.quants.quantize(x, GT(int(qtype)))).reshape(ours.shape)
    size = type_size(qtype)
    differ = np.flatnonzero((ours.reshape(-1, size) != theirs.reshape(-1, size)).any(axis=1))
    assert differ.size == 0, f"{differ.size} of {ours.size // size} blocks left the grid, first {differ[0]}"


def test_requantizing_smollm2_q4_1_as_f16_gives_its_bytes_back():
    """SmolLM2's own Q4_1 tensors, dequantized and rounded to f16, quantize to the file's bytes again."""
    reader = gguf.GGUFReader(str(smollm2_gguf_path()))
    tensors = [t for t in reader.tensors if t.tensor_type == GT.Q4_1 and t.name.startswith(("blk.0.", "blk.15."))]
    assert len(tensors) == 14
    for t in tensors:
        data = np.asarray(t.data)
        x = np.asarray(gguf.quants.dequantize(data, GT.Q4_1), dtype=np.float32)
        x = x.reshape(-1, x.shape[-1]).astype(np.float16).astype(np.float32)
        ours = quantize(x, GGMLType.Q4_1).reshape(-1, 20)
        differ = np.flatnonzero((ours != data.reshape(-1, 20)).any(axis=1))
        assert differ.size == 0, f"{t.name}: {differ.size} blocks differ from the file's, first {differ[0]}"


def absmax_rtn(x: np.ndarray, sub: int, bits: int) -> np.ndarray:
    """Baseline: symmetric round-to-nearest per sub-block, extreme value -> lowest level, float scales."""
    b = x.reshape(-1, sub).astype(np.float32)
    idx = np.abs(b).argmax(axis=1)
    mx = b[np.arange(len(b)), idx][:, None]
    d = mx / -(2 ** (bits - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d == 0, 0, np.clip(np.round(b / d), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
    return (q * d).reshape(x.shape)


K_LAYOUT = {GGMLType.Q2_K: (16, 2), GGMLType.Q3_K: (16, 3), GGMLType.Q4_K: (32, 4), GGMLType.Q5_K: (32, 5),
            GGMLType.Q6_K: (16, 6)}


@pytest.mark.parametrize("qtype", KQUANTS, ids=lambda t: t.name)
def test_kquant_error_beats_absmax_rtn(qtype, smollm2_weights):
    sub, bits = K_LAYOUT[qtype]
    for name in ("blk.5.ffn_down.weight", "token_embd.weight"):
        x = smollm2_weights[name]
        x = x.reshape(-1, 256) if x.shape[1] % 256 else x
        ours = dequantize(quantize(x, qtype), qtype, x.shape)
        base = absmax_rtn(x, sub, bits)
        assert sse(x, ours) < 0.95 * sse(x, base), name


# ---------------------------------------------------------------- imatrix, threads, errors


@pytest.mark.parametrize("qtype", LEGACY + KQUANTS, ids=lambda t: t.name)
def test_imatrix_lowers_weighted_error(qtype):
    rng = np.random.default_rng(3)
    n = 512
    x = rng.standard_normal((24, n)).astype(np.float32)
    imatrix = np.where(rng.random(n) < 0.15, 50.0, 0.2).astype(np.float32) * rng.uniform(0.5, 1.5, n).astype(np.float32)
    plain = dequantize(quantize(x, qtype), qtype, x.shape)
    weighted = dequantize(quantize(x, qtype, imatrix=imatrix), qtype, x.shape)
    e_plain, e_weighted = sse(x, plain, imatrix), sse(x, weighted, imatrix)
    assert e_weighted < 0.97 * e_plain, f"weighted error {e_weighted:.5g} vs {e_plain:.5g} without imatrix"
    # the unweighted error is what the imatrix trades away
    assert sse(x, weighted) >= sse(x, plain)


@pytest.mark.parametrize("qtype", [GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q5_1, GGMLType.Q3_K, GGMLType.Q4_K],
                         ids=lambda t: t.name)
def test_thread_count_does_not_change_bytes(qtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((129, 1024)).astype(np.float32)
    imatrix = rng.uniform(0.1, 2, 1024).astype(np.float32)
    for im in (None, imatrix):
        one = quantize(x, qtype, imatrix=im, n_threads=1)
        for nt in (2, 3, 8, 0):
            assert np.array_equal(one, quantize(x, qtype, imatrix=im, n_threads=nt)), nt
        dq = dequantize(one, qtype, x.shape, n_threads=1)
        assert np.array_equal(dq.view(np.uint32), dequantize(one, qtype, x.shape, n_threads=4).view(np.uint32))


def test_one_dimensional_and_nd_shapes():
    x = np.linspace(-1, 1, 3 * 4 * 64, dtype=np.float64).reshape(3, 4, 64)
    data = quantize(x, GGMLType.Q8_0)
    assert data.shape == (3, 4, row_size(GGMLType.Q8_0, 64))
    np.testing.assert_allclose(dequantize(data, GGMLType.Q8_0, x.shape), x, atol=0.01)
    assert quantize(x[0, 0], GGMLType.Q4_0).shape == (row_size(GGMLType.Q4_0, 64),)


def test_bad_input_errors():
    x = np.ones((2, 64), np.float32)
    with pytest.raises(EdgeLLMError, match="not a multiple of the q4_K block size 256"):
        quantize(x, GGMLType.Q4_K)
    with pytest.raises(EdgeLLMError, match="unknown tensor type id 99"):
        quantize(x, 99)
    with pytest.raises(EdgeLLMError, match="q8_K cannot be quantized"):
        quantize(np.ones((1, 256), np.float32), GGMLType.Q8_K)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 17] = bad
        with pytest.raises(EdgeLLMError, match="row 1: column 17 holds a non-finite value"):
            quantize(y, GGMLType.Q4_0)
    with pytest.raises(EdgeLLMError, match="imatrix value .* at column 3"):
        quantize(x, GGMLType.Q4_0, imatrix=np.where(np.arange(64) == 3, -1.0, 1.0))
    with pytest.raises(ValueError, match="imatrix must be a 1-D float32 array of length 64"):
        quantize(x, GGMLType.Q4_0, imatrix=np.ones(32))
    with pytest.raises(ValueError, match="not a whole number of rows"):
        dequantize(np.zeros(17, np.uint8), GGMLType.Q4_0, (1, 32))
    with pytest.raises(EdgeLLMError, match="not a multiple"):
        row_size(GGMLType.Q4_0, 33)


@pytest.mark.parametrize("qtype", [GGMLType.F32, GGMLType.F16, GGMLType.Q8_0, GGMLType.Q4_K])
@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_row_matrix_products_equal_the_dequantized_rows(qtype, isa):
    """RowMatrix (the RAG searcher's vector scan) multiplies with the core's kernels: the products of
    packed rows equal those of their dequantized float32 rows, on every kernel level, for odd row counts,
    one vector and several."""
    from edgellm import _core

    if isa not in ("scalar", _core.isa()) and not (isa == "avx2" and _core.isa() == "avx512"):
        pytest.skip(f"this CPU has no {isa}")
    rng = np.random.default_rng(7)
    k = 256
    rows = rng.standard_normal((1003, k)).astype(np.float32)
    packed = quantize(rows, qtype)
    ref = dequantize(packed, qtype, (1003, k)).astype(np.float64)
    x = rng.standard_normal((3, k)).astype(np.float32)
    saved = _core.isa()
    _core.set_isa(isa)
    try:
        m = _core.RowMatrix(np.ascontiguousarray(packed), int(qtype), k, 2)
        one, many = m.matmul(x[0]), m.matmul(x)
    finally:
        _core.set_isa(saved)
    assert m.rows == 1003 and one.shape == (1003,) and many.shape == (3, 1003)
    exact = x.astype(np.float64) @ ref.T
    # float weights: float sums; quantized: activations rounded to 16-bit integers per block
    tol = 1e-4 if qtype in (GGMLType.F32, GGMLType.F16) else 2e-3
    assert np.abs(many - exact).max() <= tol * np.abs(exact).max()
    assert np.array_equal(one, many[0])


def test_row_matrix_refuses_bad_input():
    from edgellm import _core

    packed = quantize(np.ones((4, 64), np.float32), GGMLType.F16)
    with pytest.raises(ValueError, match="not whole rows"):
        _core.RowMatrix(np.ascontiguousarray(packed).reshape(-1)[:-2].copy(), int(GGMLType.F16), 64)
    with pytest.raises(EdgeLLMError, match="no matmul kernel"):
        _core.RowMatrix(np.zeros(64, np.uint8), int(GGMLType.Q8_1), 32)
    m = _core.RowMatrix(np.ascontiguousarray(packed), int(GGMLType.F16), 64)
    with pytest.raises(ValueError, match="shape"):
        m.matmul(np.ones(63, np.float32))
    with pytest.raises(ValueError, match="shape"):
        m.matmul(np.ones((2, 2, 64), np.float32))
