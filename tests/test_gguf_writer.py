"""The GGUF writer's contract: atomic output, no temporary file left behind, checks on order, sizes,
value ranges and tensor infos, errors naming the path."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from edgellm.gguf import GGMLType, GGUFError, GGUFReader, GGUFValueType, GGUFWriter

VT = GGUFValueType


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def two_tensor_writer(path: Path) -> GGUFWriter:
    w = GGUFWriter(path)
    w.add_string("general.architecture", "llama")
    w.add_tensor_info("a", (2, 32), GGMLType.F32)
    w.add_tensor_info("b", (64,), GGMLType.Q8_0)
    return w


def test_temp_file_is_hidden_in_the_target_folder_and_renamed(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    w = two_tensor_writer(path)
    temp = Path(w.temp_path)
    assert temp.parent == tmp_path and temp.name.startswith(".m.gguf.tmp-")
    assert temp.exists() and not path.exists()
    w.write_header()
    w.write_tensor_data("a", np.ones((2, 32), np.float32))
    w.write_tensor_data("b", bytes(68))
    assert not path.exists()
    w.finish()
    assert leftovers(tmp_path) == ["m.gguf"] and w.finished
    r = GGUFReader(path)
    np.testing.assert_array_equal(r.tensor_bytes("a").view(np.float32), np.ones(64, np.float32))


def test_abort_removes_the_temp_file_and_keeps_an_existing_target(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"old")
    w = two_tensor_writer(path)
    w.write_header()
    w.write_tensor_data("a", bytes(256))
    w.abort()
    w.abort()  # twice is fine
    assert leftovers(tmp_path) == ["m.gguf"] and path.read_bytes() == b"old"
    with pytest.raises(GGUFError, match="aborted"):
        w.write_tensor_data("b", bytes(68))


def test_exception_inside_with_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    with pytest.raises(RuntimeError, match="boom"), two_tensor_writer(path) as w:
        w.write_header()
        w.write_tensor_data("a", bytes(256))
        raise RuntimeError("boom")
    assert leftovers(tmp_path) == []


def test_with_block_without_finish_aborts(tmp_path: Path) -> None:
    with two_tensor_writer(tmp_path / "m.gguf") as w:
        w.write_header()
    assert leftovers(tmp_path) == []


def test_writer_dropped_without_finish_leaves_nothing(tmp_path: Path) -> None:
    w = two_tensor_writer(tmp_path / "m.gguf")
    w.write_header()
    del w
    assert leftovers(tmp_path) == []


def test_missing_folder_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "m.gguf"
    with pytest.raises(GGUFError, match="^" + re.escape(f"{path}: output: cannot create a file in folder") + ".*No such file"):
        GGUFWriter(path)


def test_unwritable_folder_names_the_path(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses new files even to root
        folder = Path("/sys")
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
    path = folder / "m.gguf"
    with pytest.raises(GGUFError, match="^" + re.escape(f"{path}: output: cannot create") + ".*Permission denied"):
        GGUFWriter(path)


def test_target_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="output: is a directory"):
        GGUFWriter(tmp_path)
    assert leftovers(tmp_path) == []


def test_order_and_size_checks(tmp_path: Path) -> None:
    w = two_tensor_writer(tmp_path / "m.gguf")
    with pytest.raises(GGUFError, match="tensor 'a'.*header is not written"):
        w.write_tensor_data("a", bytes(256))
    with pytest.raises(GGUFError, match="finish.*header is not written"):
        w.finish()
    w.write_header()
    with pytest.raises(GGUFError, match="metadata: the header is already written"):
        w.add_uint32("late", 1)
    with pytest.raises(GGUFError, match="tensor infos: the header is already written"):
        w.add_tensor_info("c", (32,), GGMLType.F32)
    with pytest.raises(GGUFError, match="tensor 'b': written out of order: the next tensor is 'a'"):
        w.write_tensor_data("b", bytes(68))
    with pytest.raises(GGUFError, match="tensor 'zz': not declared"):
        w.write_tensor_data("zz", bytes(4))
    with pytest.raises(GGUFError, match="tensor 'a': data is 255 bytes, expected 256"):
        w.write_tensor_data("a", bytes(255))
    w.write_tensor_data("a", bytes(256))
    with pytest.raises(GGUFError, match="tensor 'b': data not written \\(1 of 2 tensors missing\\)"):
        w.finish()
    w.write_tensor_data("b", bytes(68))
    with pytest.raises(GGUFError, match="tensor 'b': data already written"):
        w.write_tensor_data("b", bytes(68))
    w.finish()
    with pytest.raises(GGUFError, match="already finished"):
        w.write_header()


def test_non_contiguous_data_is_refused(tmp_path: Path) -> None:
    w = two_tensor_writer(tmp_path / "m.gguf")
    w.write_header()
    with pytest.raises(ValueError, match="C-contiguous"):
        w.write_tensor_data("a", np.ones((32, 4), np.float32).T)
    w.abort()


@pytest.mark.parametrize("vt, bad", [
    (VT.UINT8, 256), (VT.UINT8, -1), (VT.INT8, 128), (VT.INT8, -129), (VT.UINT16, 65536), (VT.INT16, -32769),
    (VT.UINT32, 2**32), (VT.INT32, 2**31), (VT.UINT64, -1), (VT.UINT64, 2**64), (VT.INT64, 2**63),
])
def test_integer_ranges(tmp_path: Path, vt: GGUFValueType, bad: int) -> None:
    w = GGUFWriter(tmp_path / "m.gguf")
    with pytest.raises(GGUFError, match=f"key 'k': value {bad} is outside the {vt.name.lower()} range"):
        w.add_value("k", bad, vt)
    with pytest.raises(GGUFError, match="outside the"):
        w.add_array("a", [0, bad], vt)
    w.add_value("k", 0, vt)  # a refused value leaves nothing behind: the key is still free


def test_value_type_checks(tmp_path: Path) -> None:
    w = GGUFWriter(tmp_path / "m.gguf")
    with pytest.raises(GGUFError, match="expected an integer, got float"):
        w.add_uint32("k", 1.5)
    with pytest.raises(GGUFError, match="expected a bool"):
        w.add_bool("k", 1)
    with pytest.raises(GGUFError, match="expected a str"):
        w.add_string("k", 5)
    with pytest.raises(GGUFError, match="overflows float32"):
        w.add_float32("k", 1e39)
    with pytest.raises(GGUFError, match="expected an integer, got float"):
        w.add_array("k", [1, 2.0], VT.INT32)
    with pytest.raises(GGUFError, match="expected integers .* got dtype float64"):
        w.add_array("k", np.array([1.5, 2.0]), VT.INT32)
    with pytest.raises(GGUFError, match="values \\[-1, 3\\] are outside the uint8 range"):
        w.add_array("k", np.array([-1, 3]), VT.UINT8)
    with pytest.raises(GGUFError, match="expected bools"):
        w.add_array("k", [1, 0], VT.BOOL)
    with pytest.raises(GGUFError, match="element 1 is not a str"):
        w.add_array("k", ["a", 1], VT.STRING)
    with pytest.raises(GGUFError, match="nested arrays"):
        w.add_array("k", [[1]], VT.ARRAY)
    with pytest.raises(GGUFError, match="arrays need elem_type"):
        w.add_value("k", [1], VT.ARRAY)
    with pytest.raises(GGUFError, match="unknown value type 13"):
        w.add_value("k", 1, 13)
    with pytest.raises(GGUFError, match="must be 1-D"):
        w.add_array("k", np.zeros((2, 2), np.int32), VT.INT32)
    w.add_uint32("k", np.uint16(7))  # numpy integers are integers
    with pytest.raises(GGUFError, match="key 'k': duplicate key"):
        w.add_string("k", "again")
    with pytest.raises(GGUFError, match="keys must not be empty"):
        w.add_string("", "x")


def test_tensor_info_checks(tmp_path: Path) -> None:
    w = GGUFWriter(tmp_path / "m.gguf")
    w.add_tensor_info("t", (4, 32), GGMLType.Q8_0)
    assert w.tensor_nbytes("t") == 4 * 34
    with pytest.raises(GGUFError, match="tensor 't': duplicate tensor name"):
        w.add_tensor_info("t", (32,), GGMLType.F32)
    with pytest.raises(GGUFError, match="ne\\[0\\] = 48 is not a multiple of the q4_K block size 256"):
        w.add_tensor_info("q", (2, 48), GGMLType.Q4_K)
    with pytest.raises(GGUFError, match="ne\\[1\\] is 0, must be > 0"):
        w.add_tensor_info("z", (0, 32), GGMLType.F32)
    with pytest.raises(GGUFError, match="has 5 dims"):
        w.add_tensor_info("d", (1, 1, 1, 1, 1), GGMLType.F32)
    with pytest.raises(GGUFError, match="has 0 dims"):
        w.add_tensor_info("d", (), GGMLType.F32)
    with pytest.raises(GGUFError, match="element count overflows"):
        w.add_tensor_info("o", (2**32, 2**32), GGMLType.F32)
    with pytest.raises(GGUFError, match="byte size overflows"):
        w.add_tensor_info("o", (2**62,), GGMLType.F32)
    with pytest.raises(GGUFError, match="unknown tensor type id 16"):
        w.add_tensor_info("u", (32,), 16)
    with pytest.raises(GGUFError, match="name is 64 bytes, at most 63"):
        w.add_tensor_info("x" * 64, (32,), GGMLType.F32)
    with pytest.raises(GGUFError, match="tensor 'nope': not declared"):
        w.tensor_nbytes("nope")


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_bad_alignment(tmp_path: Path, alignment: int) -> None:
    with pytest.raises(GGUFError, match=f"alignment: {alignment} is not a power of two"):
        GGUFWriter(tmp_path / "m.gguf", alignment=alignment)
    assert leftovers(tmp_path) == []


def test_alignment_key_sets_the_alignment(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    w = GGUFWriter(path)
    with pytest.raises(GGUFError, match="general.alignment'.*type is uint64, expected uint32"):
        w.add_uint64("general.alignment", 64)
    with pytest.raises(GGUFError, match="general.alignment'.*is not a power of two"):
        w.add_uint32("general.alignment", 24)
    w.add_uint32("general.alignment", 128)
    assert w.alignment == 128
    w.add_tensor_info("a", (3,), GGMLType.F32)
    w.add_tensor_info("b", (5,), GGMLType.F32)
    w.write_header()
    w.write_tensor_data("a", np.arange(3, dtype=np.float32))
    w.write_tensor_data("b", np.arange(5, dtype=np.float32))
    w.finish()
    r = GGUFReader(path)
    assert r.alignment == 128 and r.data_offset % 128 == 0
    assert [t.offset - r.data_offset for t in r.tensors] == [0, 128]
    assert r.file_size == r.data_offset + 256  # the last tensor is padded too
    assert r.keys().count("general.alignment") == 1


def test_metadata_only_file(tmp_path: Path) -> None:
    path = tmp_path / "vocab.gguf"
    with GGUFWriter(path) as w:
        w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(150_000)], VT.STRING)
        w.add_array("tokenizer.ggml.scores", np.linspace(0, 1, 150_000, dtype=np.float32), VT.FLOAT32)
        w.write_header()
        w.finish()
    r = GGUFReader(path)
    assert r.tensors == [] and r["tokenizer.ggml.tokens"][-1] == "t149999"
    assert r["tokenizer.ggml.scores"][-1] == np.float32(1)


def test_two_writers_in_two_threads(tmp_path: Path) -> None:
    """Writes run without the GIL; two writers streaming from two threads both come out whole."""
    data = np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8)

    def write(name: str) -> None:
        with GGUFWriter(tmp_path / name) as w:
            w.add_tensor_info("x", (data.size,), GGMLType.I8)
            w.write_header()
            w.write_tensor_data("x", data)
            w.finish()

    threads = [threading.Thread(target=write, args=(f"{i}.gguf",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert GGUFReader(tmp_path / f"{i}.gguf").tensor_bytes("x").tobytes() == data.tobytes()


def test_stale_temp_file_is_skipped_not_reused(tmp_path: Path) -> None:
    first = GGUFWriter(tmp_path / "m.gguf")
    prefix, counter = first.temp_path.rsplit("-", 1)
    stale = Path(f"{prefix}-{int(counter) + 1}")  # the name the next writer would pick
    stale.write_bytes(b"left by a crashed run")
    second = GGUFWriter(tmp_path / "m.gguf")
    assert second.temp_path == f"{prefix}-{int(counter) + 2}"
    assert stale.read_bytes() == b"left by a crashed run"
    first.abort()
    second.abort()
    assert leftovers(tmp_path) == [stale.name]
