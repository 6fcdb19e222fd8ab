"""The tensors of one checkpoint, known by shape before they are read, and their norms.

Every reader in :mod:`gradscope.checkpoint.open` turns a file into a :class:`TensorTable`: names
mapped to :class:`TensorEntry` objects, whose ``load()`` reads one tensor. A tensor whose bytes
lie at a known place in a file is a :class:`LazyTensor` (one view of one storage); a tensor that
a fallback loader already holds in memory is simply returned by its entry.

Norms are computed without a float64 copy of a large tensor, and streamed from the file when the
tensor's bytes are one contiguous run (:func:`entry_norm`).

No torch: tensors are read as numpy arrays. bfloat16 is widened to float32 from its uint16
bits and float8 (e4m3fn, e5m2) decoded through a 256-entry table, both exactly; the other
dtypes map directly. Only tensors that a fallback loader (``torch.load``) already holds in
memory are torch tensors, and then torch is imported already.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradscope.errors import CheckpointError

# Where a tensor's bytes lie, when they are one contiguous run of a file:
# (path, offset, nbytes, dtype name).
Span = tuple[str, int, int, str]


def short_error(exc: BaseException) -> str:
    """The first line of an exception's message, cut to 160 characters (for one-line errors)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# --------------------------------------------------------------------------- bytes and dtypes


# The numpy dtype of each stored dtype's bits (little-endian, as torch writes them).
_STORED = {
    "float64": "<f8", "float32": "<f4", "float16": "<f2", "bfloat16": "<u2",
    "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1", "uint8": "u1", "bool": "?",
    "complex64": "<c8", "complex128": "<c16", "float8_e4m3fn": "u1", "float8_e5m2": "u1",
}  # fmt: skip


TENSOR_DTYPES = frozenset(_STORED)


def stored_dtype(name: str) -> np.dtype:
    """The numpy dtype holding the bits of the stored dtype called ``name``."""
    try:
        return np.dtype(_STORED[name])
    except KeyError:
        raise CheckpointError(f"tensor dtype {name} is not supported") from None


def itemsize(dtype_name: str) -> int:
    """Bytes per element of the stored dtype called ``dtype_name``."""
    return stored_dtype(dtype_name).itemsize


def _float8_e4m3fn() -> np.ndarray:
    """The 256 values of float8 e4m3fn (no infinities; 0x7f and 0xff are NaN)."""
    bits = np.arange(256)
    sign = np.where(bits & 0x80, -1.0, 1.0)
    exponent, mantissa = (bits >> 3) & 0xF, bits & 0x7
    value = np.where(
        exponent == 0, mantissa / 8.0 * 2.0**-6, (1.0 + mantissa / 8.0) * 2.0 ** (exponent - 7)
    )
    value = np.where((exponent == 15) & (mantissa == 7), np.nan, value)
    return (sign * value).astype(np.float32)


def widen(values: np.ndarray, dtype_name: str) -> np.ndarray:
    """The values of stored bits: bfloat16 and float8 become float32 (exactly), others pass."""
    if dtype_name == "bfloat16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    if dtype_name == "float8_e5m2":  # the top byte of a float16
        return (values.astype(np.uint16) << 8).view(np.float16).astype(np.float32)
    if dtype_name == "float8_e4m3fn":
        return _float8_e4m3fn()[values]
    return values


def read_bytes(path: str, offset: int, nbytes: int) -> np.ndarray:
    """Exactly ``nbytes`` from ``offset`` of ``path`` as a uint8 array (one copy, no mapping)."""
    buf = np.empty(nbytes, dtype=np.uint8)
    if nbytes:
        with open(path, "rb") as fh:
            fh.seek(offset)
            got = fh.readinto(memoryview(buf.data))
        if got != nbytes:
            raise CheckpointError(f"{path} is truncated: a tensor extends past the end of the file")
    return buf


# --------------------------------------------------------------------------- lazy tensors


@dataclass
class StorageRef:
    """A storage named in a checkpoint: its key, element dtype name and element count."""

    key: str
    dtype: str
    numel: int


# Where a storage's bytes lie: (path, offset, nbytes).
Locate = Callable[[StorageRef], tuple[str, int, int]]


@dataclass
class LazyTensor:
    """A tensor whose bytes are in a file: a strided view of one storage, read on ``load()``.

    ``locate`` says where the storage lies; only that storage is read, never its neighbours.
    """

    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    locate: Locate

    @property
    def shape(self) -> tuple[int, ...]:
        return self.size

    def load(self) -> np.ndarray:
        """The tensor as a numpy array: a strided view of its storage's bytes, read in one go
        (bfloat16 and float8 widened to float32)."""
        dtype = stored_dtype(self.storage.dtype)
        raw = read_bytes(*self.locate(self.storage))
        if raw.size != self.storage.numel * dtype.itemsize:
            raise CheckpointError("a tensor's storage is truncated")
        flat = raw.view(dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if len(self.size) != len(self.stride) or self.offset < 0 or any(s < 0 for s in self.stride):
            raise CheckpointError("a tensor has a malformed shape or stride")
        if math.prod(self.size) and last >= flat.size:
            raise CheckpointError(
                f"a tensor lies outside its storage (element {last} of {flat.size})"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(s * dtype.itemsize for s in self.stride),
            writeable=False,
        )
        return widen(view, self.storage.dtype)

    def span(self) -> Span | None:
        """The file bytes of the tensor when it is one contiguous run of its storage, else None."""
        if contiguous_strides(self.size) != self.stride and math.prod(self.size) > 1:
            return None
        path, offset, nbytes = self.locate(self.storage)
        size = itemsize(self.storage.dtype)
        begin, length = self.offset * size, math.prod(self.size) * size
        if begin < 0 or begin + length > nbytes:
            return None
        return path, offset + begin, length, self.storage.dtype


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of a C-contiguous tensor of ``shape``, in elements."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


# --------------------------------------------------------------------------- tables


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


@dataclass
class TensorEntry:
    """A tensor known by shape before it is read; ``load()`` reads it (a numpy array, or a
    torch tensor that a fallback loader holds)."""

    shape: tuple[int, ...]
    load: Callable[[], Any]
    # Where the tensor's bytes lie, when they are one contiguous run of a file (see Span).
    # Lets norms stream the file without loading it.
    span: Callable[[], Span | None] | None = None

    @classmethod
    def of(cls, tensor: Any) -> TensorEntry:
        """The entry of a :class:`LazyTensor`, or of a tensor already in memory."""
        if isinstance(tensor, LazyTensor):
            return cls(tensor.size, tensor.load, tensor.span)
        return cls(tuple(tensor.shape), _constant(tensor))


@dataclass
class TensorTable:
    """The tensors of one checkpoint, in module order when ``ordered``."""

    label: str
    path: str
    fmt: str
    entries: dict[str, TensorEntry]
    ordered: bool = True
    key: str | None = None
    # (module path, class name) in module order, when the file holds a module graph.
    modules: list[tuple[str, str]] | None = None
    eps: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- norms


def to_numpy(tensor: Any) -> np.ndarray:
    """A tensor (numpy, or torch from a fallback loader) as a flat float64 numpy array."""
    if isinstance(tensor, np.ndarray):
        return tensor.astype(np.float64).reshape(-1)
    import torch  # a torch tensor: torch is imported already

    return tensor.detach().to(torch.float64).reshape(-1).numpy()


def _float_values(flat: Any) -> np.ndarray:
    """A 1-d chunk as float32 or float64 numpy values (other dtypes as float32)."""
    if not isinstance(flat, np.ndarray):
        import torch  # a torch tensor: torch is imported already

        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.to(torch.float32)  # float16/bfloat16/integers
        return flat.numpy()
    if flat.dtype not in (np.float32, np.float64):
        return flat.astype(np.float32)
    return flat


def _sum_squares(values: np.ndarray, row: int = 128) -> float:
    """Σ w² of 1-d values. Up to 2**16 elements in float64; larger ones as float32 sums over
    rows of ``row`` elements (short sums keep the relative error near 1e-10), added in
    float64 (numpy, single-threaded)."""
    whole = values.size // row * row if values.size > 1 << 16 else 0
    total = 0.0
    if whole:
        rows = values[:whole].reshape(-1, row)
        total += float(np.einsum("ij,ij->i", rows, rows).astype(np.float64).sum())
    tail = values[whole:].astype(np.float64)
    return total + float(tail @ tail)


def frobenius_norm(tensor: Any, chunk: int = 1 << 22) -> float:
    """‖W‖_F of a tensor, in chunks (no float64 copy of a large tensor)."""
    flat = tensor.reshape(-1) if isinstance(tensor, np.ndarray) else tensor.detach().reshape(-1)
    size = flat.size if isinstance(flat, np.ndarray) else flat.numel()
    total = 0.0
    for start in range(0, size, chunk):
        total += _sum_squares(_float_values(flat[start : start + chunk]))
    return math.sqrt(total)


def _file_norm(path: str, offset: int, nbytes: int, dtype_name: str, chunk: int = 1 << 22) -> float:
    """‖W‖_F of a tensor stored contiguously in a file, streamed through one small buffer:
    neither the tensor nor the file is ever held in memory whole."""
    dtype = stored_dtype(dtype_name)
    chunk -= chunk % dtype.itemsize
    buf = np.empty(min(chunk, nbytes), dtype=np.uint8)
    view = memoryview(buf.data)
    total, done = 0.0, 0
    with open(path, "rb") as fh:
        fh.seek(offset)
        while done < nbytes:
            n = min(chunk, nbytes - done)
            if fh.readinto(view[:n]) != n:
                raise CheckpointError(f"{path} is truncated: a tensor extends past the end")
            total += _sum_squares(_float_values(widen(buf[:n].view(dtype), dtype_name)))
            done += n
    return math.sqrt(total)


def entry_norm(entry: TensorEntry) -> float:
    """‖W‖_F of a table entry: streamed from the file when its bytes are one run, else loaded."""
    span = entry.span() if entry.span is not None else None
    if span is not None:
        return _file_norm(*span)
    return frobenius_norm(entry.load())
