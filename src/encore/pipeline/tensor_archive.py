"""Restricted reader for a single tensor saved with `torch.save` (the official `silence_latent.pt`).

The archive's serialised object stream is interpreted by a small opcode machine that understands only
what `torch.save(tensor)` emits. Nothing from the file is imported or called, unlike torch's own loader, whose
`weights_only` mode has had code-execution bugs (RELIABILITY §3.5).
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from encore.errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
}
_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("collections", "OrderedDict"),
} | {("torch", n) for n in _STORAGE_DTYPES}
MAX_STREAM_BYTES = 1 << 20
"""A single-tensor object stream is a few hundred bytes; anything large is refused unread."""
MAX_STORAGE_BYTES = 1 << 31


def read_torch_tensor(path: str | Path) -> torch.Tensor:
    """Reads one floating-point tensor from a `torch.save` zip archive without executing anything.

    Accepted content: `torch._utils._rebuild_tensor_v2` over one typed float storage (F32/F64/F16/BF16)
    with an empty hooks dict. Any other global, callable or opcode is refused.

    Returns:
        A new contiguous CPU tensor.

    Raises:
        CheckpointError: not a zip archive, unsupported content, or storage/size mismatch.
    """
    p = str(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(p, "not a torch zip archive (legacy or raw serialised objects are refused)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            streams = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(streams) != 1:
                raise CheckpointError(p, "archive does not hold exactly one top-level object stream")
            prefix = streams[0][: -len("data.pkl")]
            if prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() != b"little":
                raise CheckpointError(p, "only little-endian archives are supported")
            if zf.getinfo(streams[0]).file_size > MAX_STREAM_BYTES:
                raise CheckpointError(p, "object stream is implausibly large for a single tensor")
            spec = _OpcodeMachine(p, zf.read(streams[0])).run()
            if not isinstance(spec, _TensorSpec):
                raise CheckpointError(p, f"archive holds a {type(spec).__name__}, expected a single tensor")
            entry = prefix + "data/" + spec.storage.key
            if entry not in names:
                raise CheckpointError(p, f"storage {spec.storage.key!r} missing from the archive")
            if zf.getinfo(entry).file_size > MAX_STORAGE_BYTES:
                raise CheckpointError(p, "storage larger than the 2 GiB limit")
            raw = zf.read(entry)
    except (zipfile.BadZipFile, OSError, KeyError, EOFError) as exc:
        raise CheckpointError(p, f"corrupt archive ({exc})") from exc
    return _build_tensor(p, spec, raw)


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _StorageRef:
    dtype: torch.dtype
    key: str
    numel: int


@dataclass(frozen=True)
class _TensorSpec:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _build_tensor(path: str, spec: _TensorSpec, raw: bytes) -> torch.Tensor:
    itemsize = torch.empty((), dtype=spec.storage.dtype).element_size()
    if len(raw) != spec.storage.numel * itemsize:
        raise CheckpointError(
            path, f"storage holds {len(raw)} bytes, expected {spec.storage.numel * itemsize}"
        )
    if (
        len(spec.size) != len(spec.stride)
        or any(d < 0 for d in (*spec.size, *spec.stride))
        or spec.offset < 0
    ):
        raise CheckpointError(path, f"invalid tensor geometry size={spec.size} stride={spec.stride}")
    if all(spec.size):
        last = spec.offset + sum((d - 1) * s for d, s in zip(spec.size, spec.stride, strict=True))
        if last >= spec.storage.numel:
            raise CheckpointError(path, "tensor view reaches outside its storage")
    if not raw:
        return torch.empty(spec.size, dtype=spec.storage.dtype)
    flat = torch.frombuffer(bytearray(raw), dtype=spec.storage.dtype)
    return torch.as_strided(flat, spec.size, spec.stride, spec.offset).clone(
        memory_format=torch.contiguous_format
    )


_STOP = object()


class _OpcodeMachine:
    """Interprets the subset of protocol 2-5 opcodes that `torch.save(tensor)` writes."""

    def __init__(self, path: str, data: bytes) -> None:
        self.path, self.data, self.pos = path, data, 0
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}

    def fail(self, message: str) -> CheckpointError:
        return CheckpointError(self.path, f"refused object stream: {message}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail("truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def line(self) -> str:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise self.fail("truncated")
        text = self.data[self.pos : end].decode("ascii", errors="replace")
        self.pos = end + 1
        return text

    def push(self, value: Any) -> None:
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack:
            raise self.fail("stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise self.fail("missing MARK")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def run(self) -> Any:
        while True:
            op = self.take(1)[0]
            handler = _OPS.get(op)
            if handler is None:
                raise self.fail(f"unsupported opcode 0x{op:02x} at byte {self.pos - 1}")
            if handler(self) is _STOP:
                return self.pop()

    # --- semantic actions
    def global_(self, module: str, name: str) -> None:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise self.fail(f"global {module}.{name} is not allowed")
        self.push(_Global(module, name))

    def reduce(self) -> None:
        args, fn = self.pop(), self.pop()
        if not isinstance(fn, _Global) or not isinstance(args, tuple):
            raise self.fail("REDUCE on a non-callable")
        if fn.name == "OrderedDict":
            if args:
                raise self.fail("OrderedDict with arguments")
            self.push({})
        elif fn.module == "torch._utils":
            self.push(self.tensor_spec(args))
        else:
            raise self.fail(f"{fn.module}.{fn.name} cannot be called")

    def tensor_spec(self, args: tuple[Any, ...]) -> _TensorSpec:
        if len(args) < 4 or not isinstance(args[0], _StorageRef):
            raise self.fail("malformed tensor rebuild arguments")
        storage, offset, size, stride = args[:4]
        if len(args) > 4 and not isinstance(args[4], bool):
            raise self.fail("malformed requires_grad flag")
        if len(args) > 5 and args[5] != {}:
            raise self.fail("tensor carries backward hooks")
        ints = (
            isinstance(offset, int)
            and isinstance(size, tuple)
            and isinstance(stride, tuple)
            and all(isinstance(v, int) for v in (*size, *stride))
        )
        if not ints:
            raise self.fail("malformed tensor geometry")
        return _TensorSpec(storage, offset, tuple(size), tuple(stride))

    def persistent(self) -> None:
        pid = self.pop()
        ok = (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _Global)
            and pid[1].module == "torch"
            and pid[1].name in _STORAGE_DTYPES
            and isinstance(pid[2], str)
            and isinstance(pid[3], str)
            and isinstance(pid[4], int)
            and pid[4] >= 0
        )
        if not ok or Path(pid[2]).name != pid[2]:
            raise self.fail(f"unsupported persistent id {pid!r}")
        self.push(_StorageRef(_STORAGE_DTYPES[pid[1].name], pid[2], pid[4]))


def _memo_put(m: _OpcodeMachine, index: int) -> None:
    if not m.stack:
        raise m.fail("memo put on empty stack")
    m.memo[index] = m.stack[-1]


def _memo_get(m: _OpcodeMachine, index: int) -> None:
    if index not in m.memo:
        raise m.fail(f"memo {index} undefined")
    m.push(m.memo[index])


def _set_items(m: _OpcodeMachine) -> None:
    items = m.pop_mark()
    target = m.pop()
    if not isinstance(target, dict) or len(items) % 2:
        raise m.fail("SETITEMS on a non-dict")
    for k, v in zip(items[::2], items[1::2], strict=True):
        if not isinstance(k, (str, int)):
            raise m.fail("unhashable dict key")
        target[k] = v
    m.push(target)


def _proto(m: _OpcodeMachine) -> None:
    version = m.take(1)[0]
    if version > 5:
        raise m.fail(f"unknown protocol {version}")


def _stack_global(m: _OpcodeMachine) -> None:
    name, module = m.pop(), m.pop()
    if not (isinstance(name, str) and isinstance(module, str)):
        raise m.fail("STACK_GLOBAL needs two strings")
    m.global_(module, name)


def _tuple_n(n: int) -> Callable[[_OpcodeMachine], None]:
    def op(m: _OpcodeMachine) -> None:
        items = [m.pop() for _ in range(n)]
        m.push(tuple(reversed(items)))

    return op


def _u32(m: _OpcodeMachine) -> int:
    return int(struct.unpack("<I", m.take(4))[0])


_OPS: dict[int, Callable[[_OpcodeMachine], Any]] = {
    0x80: _proto,  # PROTO
    0x95: lambda m: m.take(8),  # FRAME
    ord("c"): lambda m: m.global_(m.line(), m.line()),  # GLOBAL
    0x93: _stack_global,  # STACK_GLOBAL
    ord("("): lambda m: m.marks.append(len(m.stack)),  # MARK
    ord("t"): lambda m: m.push(tuple(m.pop_mark())),  # TUPLE
    ord(")"): lambda m: m.push(()),  # EMPTY_TUPLE
    0x85: _tuple_n(1),  # TUPLE1
    0x86: _tuple_n(2),  # TUPLE2
    0x87: _tuple_n(3),  # TUPLE3
    ord("X"): lambda m: m.push(m.take(_u32(m)).decode("utf-8")),  # BINUNICODE
    0x8C: lambda m: m.push(m.take(m.take(1)[0]).decode("utf-8")),  # SHORT_BINUNICODE
    ord("J"): lambda m: m.push(struct.unpack("<i", m.take(4))[0]),  # BININT
    ord("K"): lambda m: m.push(m.take(1)[0]),  # BININT1
    ord("M"): lambda m: m.push(struct.unpack("<H", m.take(2))[0]),  # BININT2
    0x8A: lambda m: m.push(int.from_bytes(m.take(m.take(1)[0]), "little", signed=True)),  # LONG1
    ord("N"): lambda m: m.push(None),  # NONE
    0x88: lambda m: m.push(True),  # NEWTRUE
    0x89: lambda m: m.push(False),  # NEWFALSE
    ord("G"): lambda m: m.push(struct.unpack(">d", m.take(8))[0]),  # BINFLOAT
    ord("}"): lambda m: m.push({}),  # EMPTY_DICT
    ord("u"): _set_items,  # SETITEMS
    ord("q"): lambda m: _memo_put(m, m.take(1)[0]),  # BINPUT
    ord("r"): lambda m: _memo_put(m, _u32(m)),  # LONG_BINPUT
    0x94: lambda m: _memo_put(m, len(m.memo)),  # MEMOIZE
    ord("h"): lambda m: _memo_get(m, m.take(1)[0]),  # BINGET
    ord("j"): lambda m: _memo_get(m, _u32(m)),  # LONG_BINGET
    ord("Q"): lambda m: m.persistent(),  # BINPERSID
    ord("R"): lambda m: m.reduce(),  # REDUCE
    ord("."): lambda m: _STOP,  # STOP
}
