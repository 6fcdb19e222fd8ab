"""The tensors of one checkpoint, known by shape before they are read, and their norms.

Every reader in :mod:`gradscope.checkpoint.open` turns a file into a :class:`TensorTable`: names
mapped to :class:`TensorEntry` objects, whose ``load()`` reads one tensor. A tensor whose bytes
lie at a known place in a file is a :class:`LazyTensor` (one view of one storage); a tensor that
a fallback loader already holds in memory is simply returned by its entry.

Norms are computed without a float64 copy of a large tensor, and streamed from the file when the
tensor's bytes are one contiguous run (:func:`entry_norm`). torch is imported lazily.
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


def torch_dtype(name: str) -> Any:
    """The torch dtype called ``name`` (``float32``, ``bfloat16``, ...)."""
    import torch

    dtype = getattr(torch, name, None)
    if dtype is None:
        raise CheckpointError(f"tensor dtype {name} is not supported by this torch build")
    return dtype


def itemsize(dtype_name: str) -> int:
    """Bytes per element of the torch dtype called ``dtype_name``."""
    import torch

    return int(torch.empty((), dtype=torch_dtype(dtype_name)).element_size())


def read_bytes(path: str, offset: int, nbytes: int) -> Any:
    """Exactly ``nbytes`` from ``offset`` of ``path`` as a uint8 tensor (one copy, no mapping)."""
    import torch

    buf = torch.empty(nbytes, dtype=torch.uint8)
    if nbytes:
        with open(path, "rb") as fh:
            fh.seek(offset)
            got = fh.readinto(buf.numpy().data)
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

    def load(self) -> Any:
        """The tensor (a torch.Tensor viewing its storage's bytes, read in one go)."""
        raw = read_bytes(*self.locate(self.storage))
        if raw.numel() != self.storage.numel * itemsize(self.storage.dtype):
            raise CheckpointError("a tensor's storage is truncated")
        try:
            view = raw.view(torch_dtype(self.storage.dtype))
            return view.as_strided(self.size, self.stride, self.offset)
        except RuntimeError as exc:
            raise CheckpointError(
                f"a tensor lies outside its storage ({short_error(exc)})"
            ) from None

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
    """A tensor known by shape before it is read; ``load()`` reads it (a torch.Tensor)."""

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
    """A tensor as a flat float64 numpy array."""
    import torch

    return tensor.detach().to(torch.float64).reshape(-1).numpy()


def _sum_squares(flat: Any, row: int = 128) -> float:
    """Σ w² of a 1-d tensor. Up to 2**16 elements in float64; larger ones as float32 sums over
    rows of ``row`` elements (short sums keep the relative error near 1e-10), added in
    float64. numpy (single-threaded) rather than torch: torch's threads lose time on a busy
    machine."""
    import torch

    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.to(torch.float32)  # float16/bfloat16/integers (numpy has no bfloat16)
    values = flat.numpy()
    whole = values.size // row * row if values.size > 1 << 16 else 0
    total = 0.0
    if whole:
        rows = values[:whole].reshape(-1, row)
        total += float(np.einsum("ij,ij->i", rows, rows).astype(np.float64).sum())
    tail = values[whole:].astype(np.float64)
    return total + float(tail @ tail)


def frobenius_norm(tensor: Any, chunk: int = 1 << 22) -> float:
    """‖W‖_F of a tensor, in chunks (no float64 copy of a large tensor)."""
    flat = tensor.detach().reshape(-1)
    total = 0.0
    for start in range(0, flat.numel(), chunk):
        total += _sum_squares(flat[start : start + chunk])
    return math.sqrt(total)


def _file_norm(path: str, offset: int, nbytes: int, dtype_name: str, chunk: int = 1 << 22) -> float:
    """‖W‖_F of a tensor stored contiguously in a file, streamed through one small buffer:
    neither the tensor nor the file is ever held in memory whole."""
    import torch

    chunk -= chunk % itemsize(dtype_name)
    buf = torch.empty(min(chunk, nbytes), dtype=torch.uint8)
    view = memoryview(buf.numpy().data)
    dtype = torch_dtype(dtype_name)
    total, done = 0.0, 0
    with open(path, "rb") as fh:
        fh.seek(offset)
        while done < nbytes:
            n = min(chunk, nbytes - done)
            if fh.readinto(view[:n]) != n:
                raise CheckpointError(f"{path} is truncated: a tensor extends past the end")
            total += _sum_squares(buf[:n].view(dtype))
            done += n
    return math.sqrt(total)


def entry_norm(entry: TensorEntry) -> float:
    """‖W‖_F of a table entry: streamed from the file when its bytes are one run, else loaded."""
    span = entry.span() if entry.span is not None else None
    if span is not None:
        return _file_norm(*span)
    return frobenius_norm(entry.load())
