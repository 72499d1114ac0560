"""A tiny byte-level GGUF encoder for tests: builds valid files and deliberately broken ones
(every count, length, type and offset can be overridden). Independent of edgellm's writer."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

GGUF_MAGIC = b"GGUF"

# value type id -> struct format of one scalar
SCALAR_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(s: str | bytes, length: int | None = None) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b) if length is None else length) + b


def scalar(type_id: int, value: object) -> bytes:
    return struct.pack(SCALAR_FMT[type_id], value)


def kv(key: str | bytes, type_id: int, payload: bytes) -> bytes:
    """One metadata entry; payload is the encoded value (see scalar/gstr/array)."""
    return gstr(key) + u32(type_id) + payload


def array(elem_type: int, items: list, count: int | None = None) -> bytes:
    if elem_type == STRING:
        body = b"".join(gstr(s) for s in items)
    else:
        body = b"".join(scalar(elem_type, v) for v in items)
    return u32(elem_type) + u64(len(items) if count is None else count) + body


@dataclass
class RawTensor:
    name: str | bytes
    ne: list[int]
    type_id: int
    offset: int
    n_dims: int | None = None  # override the stored n_dims

    def encode(self) -> bytes:
        n_dims = len(self.ne) if self.n_dims is None else self.n_dims
        return gstr(self.name) + u32(n_dims) + b"".join(u64(d) for d in self.ne) + u32(self.type_id) + u64(self.offset)


@dataclass
class RawFile:
    kvs: list[bytes] = field(default_factory=list)
    tensors: list[RawTensor] = field(default_factory=list)
    data: bytes = b""
    magic: bytes = GGUF_MAGIC
    version: bytes = u32(3)
    n_kv: int | None = None
    n_tensors: int | None = None
    alignment: int = 32

    def encode(self) -> bytes:
        head = self.magic + self.version
        head += u64(len(self.tensors) if self.n_tensors is None else self.n_tensors)
        head += u64(len(self.kvs) if self.n_kv is None else self.n_kv)
        head += b"".join(self.kvs) + b"".join(t.encode() for t in self.tensors)
        head += b"\0" * (-len(head) % self.alignment)
        return head + self.data


def valid_file() -> RawFile:
    """Two f32 tensors of 8 elements (32 bytes each) and a few metadata entries."""
    return RawFile(
        kvs=[
            kv("general.architecture", STRING, gstr("llama")),
            kv("test.u32", 4, scalar(4, 7)),
            kv("test.tokens", ARRAY, array(STRING, ["a", "b"])),
            kv("test.scores", ARRAY, array(6, [0.5, 1.5])),
        ],
        tensors=[RawTensor("a", [8], 0, 0), RawTensor("b", [4, 2], 0, 32)],
        data=bytes(range(64)),
    )
