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
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradscope.errors import CheckpointError

# Where a tensor's bytes lie, when they are one contiguous run of a file:
# (path, offset, nbytes, dtype name).
Span = tuple[str, int, int, str]


# How many bytes a reader may allocate beyond what the file itself holds (an expanded view,
# a widened copy): 1 GiB unless the environment raises it (GRADSCOPE_MAX_READ=4GiB).
READ_LIMIT_VAR = "GRADSCOPE_MAX_READ"
DEFAULT_READ_LIMIT = 1 << 30
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def read_limit() -> int:
    """Bytes a reader may allocate beyond the file's own size (``GRADSCOPE_MAX_READ``, e.g.
    ``4GiB`` or ``4294967296``; 1 GiB by default).

    Raises:
        CheckpointError: the variable is set to something that is not a size.
    """
    text = os.environ.get(READ_LIMIT_VAR, "").strip()
    if not text:
        return DEFAULT_READ_LIMIT
    match = re.fullmatch(r"([0-9]{1,16})\s*([kKmMgGtT]?)(?:i?[bB])?", text)
    if match is None:
        raise CheckpointError(
            f"{READ_LIMIT_VAR}={text!r} is not a size (bytes, or a number with KiB, MiB, GiB, TiB)"
        )
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


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
_NUMPY_DTYPES = {name: np.dtype(code) for name, code in _STORED.items()}


def stored_dtype(name: str) -> np.dtype:
    """The numpy dtype holding the bits of the stored dtype called ``name``."""
    try:
        return _NUMPY_DTYPES[name]
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


SMALL_READ = 1 << 20


def read_bytes(path: str, offset: int, nbytes: int) -> np.ndarray:
    """Exactly ``nbytes`` from ``offset`` of ``path`` as a uint8 array (one copy, no mapping).
    A range past the end of the file is refused before anything is allocated."""
    if nbytes <= SMALL_READ:  # one system call: most BatchNorm vectors
        fd = os.open(path, os.O_RDONLY)
        try:
            if offset < 0 or nbytes < 0 or offset + nbytes > os.fstat(fd).st_size:
                raise CheckpointError(
                    f"{path} is truncated: a tensor extends past the end of the file"
                )
            return np.frombuffer(os.pread(fd, nbytes, offset), dtype=np.uint8)
        finally:
            os.close(fd)
    if offset < 0 or offset + nbytes > os.path.getsize(path):
        raise CheckpointError(f"{path} is truncated: a tensor extends past the end of the file")
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

    ``locate`` says where the storage lies; only the elements the view spans are read, never
    the rest of the storage nor its neighbours. A shape or stride that reaches outside the
    storage is refused when the tensor is made (``ValueError``).
    """

    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    locate: Locate

    def __post_init__(self) -> None:
        dims, strides = self.size, self.stride
        if (
            len(dims) != len(strides)
            or self.offset < 0
            or self.storage.numel < 0
            or any(n < 0 for n in dims)
            or any(s < 0 for s in strides)
        ):
            raise ValueError("a tensor has a malformed shape or stride")
        if math.prod(dims) and self.last >= self.storage.numel:
            raise ValueError(
                f"a tensor lies outside its storage (element {self.last} of {self.storage.numel})"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return self.size

    @property
    def last(self) -> int:
        """The storage index of the view's last element."""
        return self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))

    def load(self) -> np.ndarray:
        """The tensor as a numpy array: a strided view of the bytes it spans, read in one go
        (bfloat16 and float8 widened to float32).

        Raises:
            CheckpointError: truncated storage, or a view of more elements than its storage
                holds (overlapping strides) beyond :func:`read_limit`.
        """
        return self._view(self.size, self.stride)

    def distinct(self) -> tuple[np.ndarray, int]:
        """The tensor's values without the dimensions a view repeats (stride 0), and how often
        each appears: their mean, extremes and flags are the tensor's, their sum of squares
        times the count its squared norm. An ``expand`` to 300M elements stays one element."""
        shape, stride, repeat = collapse(self.size, self.stride)
        return self._view(shape, stride), repeat

    def _view(self, shape: tuple[int, ...], stride: tuple[int, ...]) -> np.ndarray:
        dtype = stored_dtype(self.storage.dtype)
        path, offset, nbytes = self.locate(self.storage)
        if nbytes != self.storage.numel * dtype.itemsize:
            raise CheckpointError(f"{path} is corrupt: a tensor's storage is truncated")
        numel = math.prod(shape)
        if not numel:
            return widen(np.zeros(shape, dtype=dtype), self.storage.dtype)
        check_expansion(path, numel, self.storage.numel)
        first = self.offset
        raw = read_bytes(
            path, offset + first * dtype.itemsize, (self.last - first + 1) * dtype.itemsize
        )
        if stride == contiguous_strides(shape):
            view = raw.view(dtype).reshape(shape)
        else:
            view = np.lib.stride_tricks.as_strided(
                raw.view(dtype),
                shape=shape,
                strides=tuple(s * dtype.itemsize for s in stride),
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


def collapse(
    shape: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """``shape`` and ``stride`` without the dimensions that repeat the same elements (stride 0)
    or hold one, and how often each remaining element appears (the product of the dropped
    sizes). An empty tensor stays as it is."""
    if not math.prod(shape):
        return shape, stride, 1
    kept = [(n, s) for n, s in zip(shape, stride, strict=True) if s != 0 and n != 1]
    repeat = math.prod(n for n, s in zip(shape, stride, strict=True) if s == 0)
    return tuple(n for n, _ in kept), tuple(s for _, s in kept), repeat


def check_expansion(path: str, numel: int, distinct: int) -> None:
    """Refuse a view of more elements than its storage holds (overlapping strides) when its
    float64 copy would pass :func:`read_limit`: a small file must not claim gigabytes.

    Raises:
        CheckpointError: the view is too large.
    """
    if numel <= distinct:
        return
    limit = read_limit()
    if numel * 8 > limit:
        raise CheckpointError(
            f"{path} has a tensor that views {numel:,} elements of a storage of {distinct:,} "
            f"(overlapping strides): over {limit / 2**30:g} GiB as float64; raise "
            f"{READ_LIMIT_VAR} to read it"
        )


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
    torch tensor that a fallback loader holds), ``distinct()`` only its distinct values."""

    shape: tuple[int, ...]
    load: Callable[[], Any]
    # Where the tensor's bytes lie, when they are one contiguous run of a file (see Span).
    # Lets norms stream the file without loading it.
    span: Callable[[], Span | None] | None = None
    # The values without the dimensions a view repeats, and how often each appears.
    distinct: Callable[[], tuple[Any, int]] | None = None

    @classmethod
    def of(cls, tensor: Any) -> TensorEntry:
        """The entry of a :class:`LazyTensor`, or of a tensor already in memory."""
        if isinstance(tensor, LazyTensor):
            return cls(tensor.size, tensor.load, tensor.span, tensor.distinct)
        return cls(tuple(tensor.shape), _constant(tensor), None, lambda: _distinct(tensor))

    def values(self) -> tuple[np.ndarray, int]:
        """The distinct values as a flat float64 array, and how often each appears (see
        :meth:`LazyTensor.distinct`): a stride-0 ``expand`` is never materialised."""
        tensor, repeat = self.distinct() if self.distinct is not None else (self.load(), 1)
        return to_numpy(tensor), repeat


def _distinct(tensor: Any) -> tuple[Any, int]:
    """An in-memory tensor (numpy, or torch from a fallback loader) without its repeating
    dimensions, and how often each element appears."""
    if isinstance(tensor, np.ndarray):
        step = tensor.itemsize
        shape, stride, repeat = collapse(tensor.shape, tuple(s // step for s in tensor.strides))
        view = np.lib.stride_tricks.as_strided(
            tensor, shape, tuple(s * step for s in stride), writeable=False
        )
        return view, repeat
    shape, stride, repeat = collapse(tuple(tensor.shape), tuple(tensor.stride()))
    held = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
    check_expansion("a tensor", math.prod(shape), held)
    return tensor.as_strided(shape, stride, tensor.storage_offset()), repeat


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
    """‖W‖_F of a table entry: streamed from the file when its bytes are one run, else from
    its distinct values (an ``expand`` counts each value as often as it appears)."""
    span = entry.span() if entry.span is not None else None
    if span is not None:
        return _file_norm(*span)
    if entry.distinct is None:
        return frobenius_norm(entry.load())
    tensor, repeat = entry.distinct()
    return math.sqrt(repeat) * frobenius_norm(tensor)
