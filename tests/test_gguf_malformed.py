"""Malformed GGUF files: each gives one GGUFError naming the file and the field, never a crash."""

from __future__ import annotations

import re
from pathlib import Path

import gguf as ggufpy
import numpy as np
import pytest
from gguf_raw import ARRAY, STRING, RawFile, RawTensor, array, gstr, kv, scalar, u32, u64, valid_file
from test_gguf import write_everything

from edgellm.gguf import GGUFError, GGUFReader

U64_MAX = 2**64 - 1


def expect_error(tmp_path: Path, content: RawFile | bytes, *fragments: str) -> str:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content.encode() if isinstance(content, RawFile) else content)
    with pytest.raises(GGUFError) as info:
        GGUFReader(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_raw_encoder_builds_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.gguf"
    path.write_bytes(valid_file().encode())
    r = GGUFReader(path)
    assert r["test.tokens"] == ["a", "b"] and r["test.u32"] == 7
    assert [(t.name, t.ne, t.nbytes) for t in r.tensors] == [("a", (8,), 32), ("b", (4, 2), 32)]
    assert r.tensor_bytes("b").tobytes() == bytes(range(32, 64))
    ref = ggufpy.GGUFReader(path)  # the encoder agrees with the independent reader
    assert [t.name for t in ref.tensors] == ["a", "b"]
    assert ref.fields["test.tokens"].contents() == ["a", "b"]


def test_version_2_is_read(tmp_path: Path) -> None:
    raw = valid_file()
    raw.version = u32(2)
    path = tmp_path / "v2.gguf"
    path.write_bytes(raw.encode())
    assert GGUFReader(path).version == 2


@pytest.mark.parametrize("builder", ["raw", "writer"])
def test_every_truncation_raises(tmp_path: Path, builder: str) -> None:
    full_path = tmp_path / "full.gguf"
    if builder == "raw":
        full_path.write_bytes(valid_file().encode())
    else:
        write_everything(full_path, np.random.default_rng(0))
    full = full_path.read_bytes()
    r = GGUFReader(full_path)
    need = max(t.offset + t.nbytes for t in r.tensors)  # bytes after this are padding only
    path = tmp_path / "cut.gguf"
    # every cut inside the header; inside the data (the writer's file) every 5th cut keeps the test quick
    step = 1 if builder == "raw" else 5
    for n in [*range(r.data_offset), *range(r.data_offset, len(full), step), len(full) - 1]:
        path.write_bytes(full[:n])
        if n < need:
            with pytest.raises(GGUFError, match="^" + re.escape(f"{path}: ")):
                GGUFReader(path)
        else:
            assert len(GGUFReader(path).tensors) == len(r.tensors)


def test_empty_missing_and_directory(tmp_path: Path) -> None:
    expect_error(tmp_path, b"", "magic", "truncated")
    with pytest.raises(GGUFError, match="cannot open: No such file"):
        GGUFReader(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="not a regular file"):
        GGUFReader(tmp_path)


def test_bad_magic(tmp_path: Path) -> None:
    raw = valid_file()
    raw.magic = b"GGML"
    expect_error(tmp_path, raw, "magic", "not a GGUF file")


@pytest.mark.parametrize("version, what", [(1, "unsupported GGUF version 1"), (4, "unsupported GGUF version 4"),
                                           (0x03000000, "big-endian")])
def test_bad_version(tmp_path: Path, version: int, what: str) -> None:
    raw = valid_file()
    raw.version = u32(version)
    expect_error(tmp_path, raw, "version", what)


@pytest.mark.parametrize("field", ["n_kv", "n_tensors"])
def test_huge_counts(tmp_path: Path, field: str) -> None:
    for count in (U64_MAX, 2**40):
        raw = valid_file()
        setattr(raw, field, count)
        expect_error(tmp_path, raw, field, f"count {count} is more than the file could hold")


def test_count_larger_than_entries(tmp_path: Path) -> None:
    raw = valid_file()
    raw.n_kv = len(raw.kvs) + 1  # the next kv is read from the tensor infos, then runs off
    expect_error(tmp_path, raw)


def test_huge_key_length(tmp_path: Path) -> None:
    raw = valid_file()
    raw.kvs.insert(0, gstr("k", length=U64_MAX) + u32(4) + scalar(4, 1))
    expect_error(tmp_path, raw, "kv #0 key", f"string length {U64_MAX}", "runs past the end")


def test_huge_string_value_length(tmp_path: Path) -> None:
    raw = valid_file()
    raw.kvs.append(kv("test.s", STRING, gstr("abc", length=2**62)))
    expect_error(tmp_path, raw, "key 'test.s'", "string length")


def test_huge_array_lengths(tmp_path: Path) -> None:
    raw = valid_file()
    raw.kvs.append(kv("test.arr", ARRAY, array(4, [1, 2], count=2**62)))
    expect_error(tmp_path, raw, "key 'test.arr'", "array of 4611686018427387904 uint32")
    raw = valid_file()
    raw.kvs.append(kv("test.strs", ARRAY, array(STRING, ["x"], count=U64_MAX)))
    expect_error(tmp_path, raw, "key 'test.strs'", "array length")
    # a count the rest of the file could hold, but the second string runs off the end
    raw = RawFile(kvs=[kv("test.strs", ARRAY, array(STRING, ["x" * 100], count=3))], alignment=1)
    expect_error(tmp_path, raw, "key 'test.strs'[1]", "truncated")


def test_unknown_value_types(tmp_path: Path) -> None:
    raw = valid_file()
    raw.kvs.append(kv("test.bad", 13, scalar(4, 0)))
    expect_error(tmp_path, raw, "key 'test.bad'", "unknown value type 13")
    raw = valid_file()
    raw.kvs.append(kv("test.bad", ARRAY, u32(99) + u64(0)))
    expect_error(tmp_path, raw, "key 'test.bad'", "unknown array element type 99")
    raw = valid_file()
    raw.kvs.append(kv("test.nested", ARRAY, u32(ARRAY) + u64(1) + array(4, [1])))
    expect_error(tmp_path, raw, "key 'test.nested'", "nested arrays")


def test_bad_bool(tmp_path: Path) -> None:
    raw = valid_file()
    raw.kvs.append(kv("test.flag", 7, bytes([2])))
    expect_error(tmp_path, raw, "key 'test.flag'", "bool value is 2")


def test_duplicate_key(tmp_path: Path) -> None:
    raw = valid_file()
    raw.kvs.append(kv("test.u32", 4, scalar(4, 8)))
    expect_error(tmp_path, raw, "key 'test.u32'", "duplicate key")


def test_duplicate_tensor(tmp_path: Path) -> None:
    raw = valid_file()
    raw.tensors[1].name = "a"
    expect_error(tmp_path, raw, "tensor 'a'", "duplicate tensor name")


def test_too_many_dims(tmp_path: Path) -> None:
    raw = valid_file()
    raw.tensors[1] = RawTensor("b", [1, 1, 1, 4, 2], 0, 32)
    expect_error(tmp_path, raw, "tensor 'b'", "n_dims is 5, at most 4")


@pytest.mark.parametrize("ne, what", [
    ([4, 0], "ne[1] is 0"),
    ([2**63], "ne[0] is 9223372036854775808"),
    ([U64_MAX], "ne[0] is 18446744073709551615"),
    ([2**32, 2**32], "element count overflows"),
    ([2**62], "byte size overflows"),  # 2^62 f32 elements are 2^64 bytes
])
def test_bad_dims(tmp_path: Path, ne: list[int], what: str) -> None:
    raw = valid_file()
    raw.tensors[1] = RawTensor("b", ne, 0, 32)
    expect_error(tmp_path, raw, "tensor 'b'", what)


def test_row_not_a_multiple_of_the_block(tmp_path: Path) -> None:
    raw = valid_file()
    raw.tensors[1] = RawTensor("b", [16, 2], 8, 32)  # q8_0 blocks hold 32 elements
    expect_error(tmp_path, raw, "tensor 'b'", "ne[0] = 16 is not a multiple of the q8_0 block size 32")


@pytest.mark.parametrize("type_id", [16, 31, 1000, 2**32 - 1])
def test_unknown_tensor_type(tmp_path: Path, type_id: int) -> None:
    raw = valid_file()
    raw.tensors[1].type_id = type_id
    expect_error(tmp_path, raw, "tensor 'b'", f"unknown or unsupported tensor type id {type_id}")


def test_misaligned_offset(tmp_path: Path) -> None:
    raw = valid_file()
    raw.tensors[1].offset = 36
    expect_error(tmp_path, raw, "tensor 'b'", "offset 36 is not a multiple of the alignment 32")


@pytest.mark.parametrize("offset", [64, 2**40, U64_MAX - 31])
def test_tensor_past_the_end(tmp_path: Path, offset: int) -> None:
    raw = valid_file()
    raw.tensors[1].offset = offset
    msg = expect_error(tmp_path, raw, "tensor 'b'", "lies outside the file")
    assert f"(size {len(raw.encode())})" in msg


def test_overlapping_tensors(tmp_path: Path) -> None:
    raw = valid_file()
    raw.tensors[1] = RawTensor("b", [16], 0, 0)  # [0, 64) overlaps 'a' [0, 32)
    raw.data += bytes(32)
    expect_error(tmp_path, raw, "overlaps")
    raw = valid_file()
    raw.tensors[0] = RawTensor("a", [16], 0, 0)  # 'a' [0, 64) runs into 'b' at 32
    raw.data += bytes(32)
    expect_error(tmp_path, raw, "tensor 'b'", "overlaps tensor 'a' [0, 64)")


@pytest.mark.parametrize("payload, what", [
    (u32(4) + scalar(4, 0), "value 0 is not a power of two"),
    (u32(4) + scalar(4, 48), "value 48 is not a power of two"),
    (u32(10) + scalar(10, 32), "type is uint64, expected uint32"),
    (u32(STRING) + gstr("32"), "type is string, expected uint32"),
])
def test_bad_alignment(tmp_path: Path, payload: bytes, what: str) -> None:
    raw = valid_file()
    raw.kvs.append(gstr("general.alignment") + payload)
    expect_error(tmp_path, raw, "general.alignment", what)


def test_custom_alignment(tmp_path: Path) -> None:
    raw = valid_file()
    raw.kvs.append(kv("general.alignment", 4, scalar(4, 64)))
    raw.alignment = 64
    raw.tensors[1].offset = 64
    raw.data = bytes(range(32)) + bytes(32) + bytes(range(32, 64))
    path = tmp_path / "a64.gguf"
    path.write_bytes(raw.encode())
    r = GGUFReader(path)
    assert r.alignment == 64 and r.data_offset % 64 == 0
    assert r.tensor_bytes("b").tobytes() == bytes(range(32, 64))
    raw.tensors[1].offset = 32  # aligned to 32 but not to the declared 64
    expect_error(tmp_path, raw, "tensor 'b'", "not a multiple of the alignment 64")


def test_invalid_utf8_value_is_an_error_on_read(tmp_path: Path) -> None:
    raw = valid_file()
    raw.kvs.append(kv("test.bytes", STRING, gstr(b"\xff\xfe")))
    path = tmp_path / "utf8.gguf"
    path.write_bytes(raw.encode())
    r = GGUFReader(path)  # the layout is valid; decoding the value is not
    with pytest.raises(GGUFError, match="key 'test.bytes': string is not valid UTF-8"):
        r["test.bytes"]


def test_untrusted_names_are_escaped_in_messages(tmp_path: Path) -> None:
    raw = valid_file()
    raw.kvs.append(kv(b"evil\nkey\x00" + b"x" * 200, 13, b""))
    msg = expect_error(tmp_path, raw, "evil\\x0akey\\x00", "...", "unknown value type 13")
    assert "\n" not in msg and len(msg) < len(str(tmp_path)) + 200
