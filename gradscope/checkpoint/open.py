"""Opening checkpoints of every format, safely and lazily: a source becomes a TensorTable.

Reading never executes code from the file unless the caller passes ``trust_pickle=True``:

- zip-format ``torch.save`` files: the same restricted unpickler reads ``data.pkl`` and each
  needed tensor is read from its own (stored, uncompressed) zip record. This beat
  ``torch.load(mmap=True)``, which the design suggested: mapping the file cost 93 MB of extra
  RSS and more time on the VGG19-BN benchmark. Files the restricted unpickler cannot read fall
  back to ``torch.load(mmap=True, weights_only=True)``.
- legacy (pre-1.6) ``torch.save`` files: a restricted unpickler that knows only tensors,
  storages and plain containers records where each storage lies in the file, and only the
  needed storages are read. Anything else falls back to ``torch.load(weights_only=True)``.
- ``.safetensors`` files and sharded directories (``*.index.json``): the JSON header is parsed
  here and only the needed byte ranges are read (the ``safetensors`` package is not needed).
- TorchScript archives: the module tree in ``data.pkl`` is rebuilt from inert stand-ins (no
  TorchScript code is loaded or run), which also gives the module types (pooling layers).

Every lazily read tensor is a :class:`~gradscope.checkpoint.table.LazyTensor`. torch is
imported lazily: importing this module stays cheap.
"""

from __future__ import annotations

import io
import json
import math
import mmap
import os
import pickle
import pickletools
import re
import struct
import sys
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.checkpoint.remote import fetch_source
from gradscope.checkpoint.table import (
    TENSOR_DTYPES,
    LazyTensor,
    Locate,
    StorageRef,
    TensorEntry,
    TensorTable,
    contiguous_strides,
    itemsize,
    short_error,
)
from gradscope.errors import CheckpointError

# Keys under which training scripts usually nest the state dict, in order of preference.
# EMA weights come after the trained weights: they are chosen only with --key.
PREFERRED_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "network",
    "module",
    "params",
    "weights",
    "model_ema",
    "state_dict_ema",
    "ema",
    "ema_state_dict",
)
STRIP_PREFIXES = ("module.", "_orig_mod.")


# --------------------------------------------------------------------------- opening


def open_checkpoint(
    source: str | os.PathLike[str],
    *,
    key: str | None = None,
    trust_pickle: bool = False,
    label: str | None = None,
    offline: bool = False,
    progress: bool = True,
) -> TensorTable:
    """Open a checkpoint file, sharded directory, torchvision model name, URL or ``hf://``
    source, without reading its tensors (they are read by ``TensorEntry.load``).

    A model name or URL is downloaded into the torch hub cache, an ``hf://`` source into the
    Hugging Face cache, once (see :mod:`~gradscope.checkpoint.remote`); ``offline`` forbids
    network access, ``progress`` shows the download's progress on stderr.

    Raises:
        CheckpointError: missing, unreadable, unsafe (without ``trust_pickle``) or empty input,
            or a failed (or, offline, forbidden) download.
    """
    text = os.fspath(source)
    label = label or text
    path = Path(text)
    if not path.exists():
        fetched = fetch_source(text, offline=offline, progress=progress)
        if fetched is None:
            raise CheckpointError(f"{text} does not exist")
        path = fetched
    if path.is_dir():
        indexes = sorted(path.glob("*.index.json"))
        if not indexes:
            found = sorted(p.name for p in path.iterdir() if p.suffix == ".safetensors")
            hint = f"; pass one of its files ({', '.join(found[:3])})" if found else ""
            raise CheckpointError(f"{text} is a directory without a *.index.json{hint}")
        if len(indexes) > 1:
            raise CheckpointError(
                f"{text} has several indexes ({', '.join(p.name for p in indexes)}); pass one"
            )
        table = _guarded(
            str(indexes[0]), lambda: _open_index(str(indexes[0]), label, key, trust_pickle)
        )
    else:
        table = _guarded(text, lambda: _open_file(str(path), label, key=key, trust=trust_pickle))
    if not table.ordered:
        table.notes.append(
            f"{text}: {table.fmt} keeps no module order; layers are in natural key order"
        )
    return table


# What a crafted or damaged file can make the standard library raise while it is read.
READER_FAILURES = (
    OSError,
    MemoryError,
    OverflowError,
    RecursionError,
    zipfile.BadZipFile,
    UnicodeError,
    ValueError,
    NotImplementedError,
    zlib.error,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    EOFError,
    struct.error,
    pickle.UnpicklingError,
    RuntimeError,  # zipfile: "File ... is encrypted, password required for extraction"
)


def _guarded(text: str, read: Callable[[], TensorTable]) -> TensorTable:
    """``read()``, with any failure of a reader on a crafted or damaged file as one
    :class:`CheckpointError` that names the file once."""
    try:
        return read()
    except CheckpointError:
        raise
    except _Unsupported as exc:  # escaped a reader that should have fallen back
        raise CheckpointError(f"{text} needs more than gradscope reads ({exc})") from None
    except READER_FAILURES as exc:
        raise CheckpointError(f"{text} could not be read ({_describe(exc)})") from None


def _describe(exc: BaseException) -> str:
    """What went wrong, for one line: the message and, where it says little, the kind."""
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    if isinstance(exc, MemoryError):
        return "it needs more memory than there is"
    text = short_error(exc)
    return text if type(exc).__name__ in text or len(text) > 24 else f"{type(exc).__name__}: {text}"


def _sniff(path: str) -> str:
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path} is empty")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zipfile"
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n <= size - 8:
            return "safetensors"
    if head[:1] == b"\x80":
        return "legacy"
    if path.endswith(".json"):
        return "index"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        raise CheckpointError(f"{path} is a text file, not a checkpoint")
    raise CheckpointError(
        f"{path} is not a checkpoint gradscope can read (torch.save zip or legacy, "
        "safetensors, TorchScript)"
    )


def _open_file(
    path: str, label: str, *, key: str | None, trust: bool, shard: bool = False
) -> TensorTable:
    kind = _sniff(path)
    if kind == "index" and shard:
        raise CheckpointError(f"{path} is an index, not a shard: an index cannot list indexes")
    if kind == "safetensors":
        table = _open_safetensors(path, label)
        if key is not None:
            raise CheckpointError(
                f"key {key!r} does not apply to {path}: safetensors files are flat"
            )
        return table
    if kind == "index":
        return _open_index(path, label, key, trust)
    if kind == "zipfile":
        return _open_zip(path, label, key, trust)
    return _open_legacy(path, label, key, trust)


def _open_zip(path: str, label: str, key: str | None, trust: bool) -> TensorTable:
    """A zip archive: a TorchScript module or a zip-format torch.save file."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"{path} is a truncated or corrupt zip archive ({short_error(exc)})"
        ) from None
    with zf:
        names = zf.namelist()
        if _is_torchscript(names):
            if key is not None:
                raise CheckpointError(
                    f"key {key!r} does not apply to {path}: it is a TorchScript module"
                )
            return _open_torchscript(path, label, zf, trust)
        if not any(n.endswith("data.pkl") for n in names):
            raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint")
        # Tensors and containers only: read just the needed records, lazily. Anything
        # else: torch's own weights-only loader, memory-mapped.
        if not trust:
            try:
                obj = _zip_lazy(path, zf, stubs=False)
                return _table_from_object(obj, path, label, "zip", key)
            except _Unsupported:
                pass
    obj = _torch_load(path, "zip", trust)
    return _table_from_object(obj, path, label, "zip", key)


def _is_torchscript(names: list[str]) -> bool:
    """Whether a zip archive with these members is a TorchScript module (code and constants)."""
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _open_legacy(path: str, label: str, key: str | None, trust: bool) -> TensorTable:
    """A legacy pickle file: the lazy restricted reader first, torch's own safe loader else."""
    if not trust:
        try:
            obj = _legacy_lazy(path)
            return _table_from_object(obj, path, label, "legacy", key)
        except _Unsupported:
            pass
    obj = _torch_load(path, "legacy", trust)
    table = _table_from_object(obj, path, label, "legacy", key)
    table.notes.append(
        f"{path}: legacy (pre-1.6) torch.save file read whole: it cannot be memory-mapped"
    )
    return table


def _trust_error(path: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} holds pickled Python objects, not only tensors ({what}); loading it could run "
        "arbitrary code from the file, so gradscope refused: pass trust_pickle=True "
        "(--trust-pickle) only if you trust where the file came from"
    )


def _at_offsets(path: str, offsets: Mapping[str, tuple[int, int]]) -> Locate:
    """Storages at known byte ranges of ``path``: storage key -> (offset, nbytes)."""

    def locate(ref: StorageRef) -> tuple[str, int, int]:
        offset, nbytes = offsets[ref.key]
        return path, offset, nbytes

    return locate


def natural_key(name: str) -> tuple[tuple[int, Any], ...]:
    """Sort key that orders ``layer2`` before ``layer10`` and ``features.9`` before ``.10``
    (ASCII digits only: ``²`` is a character, not a number)."""
    return tuple(
        (0, int(t)) if t.isascii() and t.isdigit() else (1, t) for t in _DIGITS.split(name) if t
    )


_DIGITS = re.compile(r"([0-9]{1,30})")


def _unordered_table(
    label: str, path: str, fmt: str, entries: dict[str, TensorEntry]
) -> TensorTable:
    """The table of a format that keeps no module order: entries in natural key order."""
    order = sorted(entries, key=natural_key)
    return TensorTable(label, path, fmt, {k: entries[k] for k in order}, ordered=False)


# --------------------------------------------------------------------------- safetensors

_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def _safetensors_header(path: str) -> tuple[dict[str, Any], int]:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is too short to be a safetensors file")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > size - 8:
            raise CheckpointError(f"{path} is truncated or not a safetensors file")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has a corrupt safetensors header") from None
    except RecursionError:
        raise CheckpointError(f"{path} has a safetensors header nested too deeply") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header")
    return header, 8 + n


def _whole_numbers(values: Any) -> tuple[int, ...]:
    """A JSON list of non-negative integers (a shape, offsets) as a tuple.

    Raises:
        TypeError: not a list of integers (``1.5``, ``Infinity``, ``true``, a string).
        ValueError: a negative one.
    """
    if not isinstance(values, list) or not all(
        type(v) is int
        for v in values  # noqa: E721  (bool and float are not sizes)
    ):
        raise TypeError("not a list of integers")
    if any(v < 0 for v in values):
        raise ValueError("a negative size")
    return tuple(values)


def _open_safetensors(path: str, label: str) -> TensorTable:
    """Each tensor of a safetensors file is its own contiguous storage at a known offset."""
    header, start = _safetensors_header(path)
    size = os.path.getsize(path)
    offsets: dict[str, tuple[int, int]] = {}
    locate = _at_offsets(path, offsets)
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = _whole_numbers(info["shape"])
            begin, end = _whole_numbers(info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path} has a corrupt entry for tensor {name!r:.80}") from None
        element = itemsize(dtype_name)
        if (
            begin < 0
            or end < begin
            or start + end > size
            or end - begin != math.prod(shape) * element
        ):
            raise CheckpointError(
                f"{path} is truncated or corrupt: tensor {name!r:.80} lies outside the file"
            )
        offsets[name] = (start + begin, end - begin)
        storage = StorageRef(name, dtype_name, math.prod(shape))
        entries[name] = TensorEntry.of(
            LazyTensor(storage, 0, shape, contiguous_strides(shape), locate)
        )
    _use_safe_open(path, header, entries)
    return _unordered_table(label, path, "safetensors", entries)


# dtypes that safetensors' numpy framework reads (numpy has no bfloat16 nor float8).
_NUMPY_DTYPES = {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "BOOL"}


def _use_safe_open(path: str, header: dict[str, Any], entries: dict[str, TensorEntry]) -> None:
    """Where the ``safetensors`` package is installed, its parser checks the file too (strictly:
    overlapping or unused byte ranges) and its reader loads the tensors numpy can hold
    (``framework="numpy"``, no torch); the header reader above stays the fallback, and the
    entries' spans (for streamed norms) are the same either way: the bytes are identical."""
    try:
        from safetensors import safe_open
    except ImportError:
        return
    try:
        with safe_open(path, framework="numpy") as fh:
            names = set(fh.keys())
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({short_error(exc)})"
        ) from None
    for name, entry in entries.items():
        if name in names and header[name]["dtype"] in _NUMPY_DTYPES:
            entry.load = _safe_open_loader(path, name)


def _safe_open_loader(path: str, name: str) -> Callable[[], Any]:
    def load() -> Any:
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as fh:
            return fh.get_tensor(name)

    return load


def _open_index(index_path: str, label: str, key: str | None, trust: bool) -> TensorTable:
    try:
        data = json.loads(Path(index_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(
            f"{index_path} is not a readable index ({short_error(exc)})"
        ) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path} has no weight_map: not a sharded checkpoint index")
    folder = Path(index_path).parent
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        shards.setdefault(_shard_name(shard, index_path), []).append(str(name))
    entries: dict[str, TensorEntry] = {}
    for shard, names in shards.items():
        shard_path = folder / shard
        if not shard_path.is_file():
            raise CheckpointError(f"shard {shard!r} listed in {index_path} does not exist")
        table = _open_file(str(shard_path), label, key=None, trust=trust, shard=True)
        for name in names:
            if name not in table.entries:
                raise CheckpointError(f"{shard} does not hold {name!r}, as {index_path} says")
            entries[name] = table.entries[name]
    return _unordered_table(label, index_path, "sharded", entries)


def _shard_name(shard: Any, index_path: str) -> str:
    """A shard's file name from an index: a path inside the index's directory.

    Raises:
        CheckpointError: not a string, absolute, or leaving the directory (``..``).
    """
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(f"{index_path} lists a shard that is not a file name: {shard!r:.60}")
    parts = re.split(r"[\\/]", shard)
    if shard.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", shard):
        raise CheckpointError(
            f"{index_path} lists the shard {shard!r:.80}, outside its directory: refused"
        )
    return shard


# --------------------------------------------------------------------------- restricted pickle


class _Unsupported(Exception):
    """The restricted unpickler met a global it does not know."""


class _Stub:
    """Inert stand-in for a TorchScript class: BUILD stores its state, nothing runs."""

    class_name = ""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state


_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class _DtypeName(str):
    """A torch dtype named in a pickle (``torch.float8_e5m2``), kept as its name."""


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _identity(value: Any, *_: Any) -> Any:
    return value


def _ordered_dict(*args: Any) -> OrderedDict[Any, Any]:
    return OrderedDict(*args)


class _RestrictedUnpickler(pickle.Unpickler):
    """Knows tensors, storages and containers; any other global raises ``_Unsupported``.

    ``find_class`` never returns anything that can act on the outside world, so a
    ``__reduce__`` payload in the file cannot run. Tensors become :class:`LazyTensor` objects
    whose storages ``locate`` finds.
    """

    def __init__(self, fh: Any, locate: Locate, *, stubs: bool = False) -> None:
        super().__init__(fh)
        self.locate = locate
        self.stubs = stubs
        self.stub_types: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch.storage" and name == "UntypedStorage":
            return "uint8"  # bytes: _rebuild_tensor_v3 says which dtype they hold
        if module == "torch" and name in TENSOR_DTYPES:
            return _DtypeName(name)
        if module == "torch._utils" and name == "_rebuild_tensor_v3":
            return self._rebuild_tensor_v3
        if module == "collections" and name == "OrderedDict":
            return _ordered_dict
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return _identity
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return _identity
        if self.stubs and module.startswith("__torch__"):
            qual = f"{module}.{name}"
            if qual not in self.stub_types:
                self.stub_types[qual] = type("Stub", (_Stub,), {"class_name": qual})
            return self.stub_types[qual]
        raise _Unsupported(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if (
            isinstance(pid, tuple)
            and len(pid) >= 5
            and pid[0] == "storage"
            and isinstance(pid[1], str)
        ):
            return StorageRef(str(pid[2]), pid[1], int(pid[4]))
        raise _Unsupported(f"persistent id {pid!r:.60}")

    def _rebuild_tensor_v3(
        self, storage: Any, offset: Any, size: Any, stride: Any, grad: Any, hooks: Any,
        dtype: Any, *_: Any,
    ) -> LazyTensor:  # fmt: skip
        """Newer torch writes dtypes without a typed storage class (float8, ...) as bytes
        plus the dtype: the storage is re-read as elements of that dtype."""
        if not isinstance(storage, StorageRef) or not isinstance(dtype, _DtypeName):
            raise _Unsupported("tensor without a storage")
        typed = StorageRef(storage.key, str(dtype), storage.numel // itemsize(str(dtype)))
        return self._rebuild_tensor(typed, offset, size, stride)

    def _rebuild_tensor(
        self, storage: Any, offset: Any, size: Any, stride: Any, *_: Any
    ) -> LazyTensor:
        if not isinstance(storage, StorageRef):
            raise _Unsupported("tensor without a storage")
        return LazyTensor(
            storage,
            int(offset),
            tuple(int(s) for s in size),
            tuple(int(s) for s in stride),
            self.locate,
        )


# --------------------------------------------------------------------------- zip records


def _zip_storage_reader(path: str, zf: zipfile.ZipFile, prefix: str) -> Locate:
    """Where one storage record of a zip checkpoint lies in the file (records are stored
    uncompressed), so that it can be read without touching the others."""
    infos = {i.filename: i for i in zf.infolist()}
    found: dict[str, tuple[str, int, int]] = {}

    def locate(ref: StorageRef) -> tuple[str, int, int]:
        if ref.key not in found:
            found[ref.key] = record(ref)
        return found[ref.key]

    def record(ref: StorageRef) -> tuple[str, int, int]:
        info = infos.get(f"{prefix}/data/{ref.key}")
        if info is None:
            raise CheckpointError(f"{path} is corrupt: storage {ref.key} is missing")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path} has a compressed storage record, not a torch.save file")
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            head = fh.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{path} is corrupt: bad zip record for storage {ref.key}")
        start = info.header_offset + 30 + int.from_bytes(head[26:28], "little")
        start += int.from_bytes(head[28:30], "little")
        return path, start, info.file_size

    return locate


# An entry is inflated up to the archive's own size plus this: torch.save stores entries
# uncompressed, so only a crafted archive (a zip bomb) has a larger one.
INFLATE_SLACK = 4 << 20
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _read_entry(path: str, zf: zipfile.ZipFile, name: str, cap: int | None = None) -> bytes:
    """One zip entry, inflated to at most ``cap`` bytes (the archive's size plus
    :data:`INFLATE_SLACK` by default).

    Raises:
        CheckpointError: the entry is larger.
    """
    limit = os.path.getsize(path) + INFLATE_SLACK if cap is None else cap
    info = zf.getinfo(name)
    if cap is None and info.file_size > limit:
        raise CheckpointError(
            f"{path} has an entry {name!r:.80} that inflates to {info.file_size:,} bytes, more "
            f"than the archive could hold ({limit:,}): refused"
        )
    with zf.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit and cap is None:
        raise CheckpointError(f"{path} has an entry {name!r:.80} larger than it says: refused")
    return data[:limit]


def _opcode_table() -> dict[int, tuple[int, int]]:
    """Per pickle opcode byte: how its argument is laid out, (0, n) n bytes, (1, k) k lines,
    (2, n) an n-byte length and that many bytes (negative for a signed length)."""
    table: dict[int, tuple[int, int]] = {}
    for op in pickletools.opcodes:
        arg, code = op.arg, ord(op.code)
        if arg is None:
            table[code] = (0, 0)
        elif arg.n >= 0:
            table[code] = (0, arg.n)
        elif arg.n == pickletools.UP_TO_NEWLINE:
            table[code] = (1, 2 if op.name in ("GLOBAL", "INST") else 1)
        else:
            table[code] = (2, _LENGTH_BYTES[arg.n])
    return table


_LENGTH_BYTES = {
    pickletools.TAKEN_FROM_ARGUMENT1: 1,
    pickletools.TAKEN_FROM_ARGUMENT4: -4,
    pickletools.TAKEN_FROM_ARGUMENT4U: 4,
    pickletools.TAKEN_FROM_ARGUMENT8U: 8,
}
_OPCODES = _opcode_table()
_PUTS = {ord("p"): 0, ord("q"): 1, ord("r"): 4}  # PUT (a line), BINPUT, LONG_BINPUT


def check_pickle(data: Any, pos: int = 0) -> int:
    """Walk one pickle's opcodes in ``data`` (bytes or an mmap) from ``pos`` without building
    anything, and refuse what would make the unpickler allocate more than the file holds: a
    memo index beyond the opcodes so far (one PUT of 2**28 makes CPython's unpickler allocate
    4 GiB) or a length past the end of the data. Returns where the pickle ends.

    Raises:
        ValueError: a crafted memo index, a truncated pickle or an unknown opcode.
    """
    end, count = len(data), 0
    while pos < end:
        code = data[pos]
        layout = _OPCODES.get(code)
        if layout is None:
            raise ValueError(f"unknown pickle opcode {code:#x} at byte {pos}")
        kind, n = layout
        pos += 1
        if code in _PUTS:
            index = _put_index(data, pos, _PUTS[code])
            if index > count:
                raise ValueError(f"memo index {index} after {count} opcodes: crafted pickle")
        if kind == 0:
            pos += n
        elif kind == 1:
            for _ in range(n):
                line = data.find(b"\n", pos)
                pos = end + 1 if line < 0 else line + 1
        else:
            size = int.from_bytes(data[pos : pos + abs(n)], "little", signed=n < 0)
            pos += abs(n) + (size if size >= 0 else end)
        if pos > end:
            break
        if code == ord("."):
            return pos
        count += 1
    raise ValueError("the pickle is truncated")


def _put_index(data: Any, pos: int, width: int) -> int:
    if width:
        return int.from_bytes(data[pos : pos + width], "little")
    line = data[pos : data.find(b"\n", pos, pos + 24)]
    return int(line) if line.isdigit() else 0


def _zip_lazy(path: str, zf: zipfile.ZipFile, *, stubs: bool) -> Any:
    """The object in a zip checkpoint's data.pkl with :class:`LazyTensor` leaves; raises
    ``_Unsupported`` when the pickle needs more than tensors and containers."""
    names = zf.namelist()
    data_pkl = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
    if data_pkl is None:
        raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint")
    prefix = data_pkl.rsplit("/", 1)[0]
    order = f"{prefix}/byteorder"
    byteorder = _read_entry(path, zf, order, cap=16).strip() if order in names else b"little"
    if byteorder == b"big":
        raise _Unsupported("big-endian checkpoint")
    if byteorder != b"little":
        raise CheckpointError(f"{path} is corrupt: its byteorder record says {byteorder!r:.40}")
    locate = _zip_storage_reader(path, zf, prefix)
    data = _read_entry(path, zf, data_pkl)
    try:
        check_pickle(data)
        return _RestrictedUnpickler(io.BytesIO(data), locate, stubs=stubs).load()
    except _Unsupported:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path} is corrupt ({short_error(exc)})") from None


# --------------------------------------------------------------------------- legacy torch.save

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _legacy_lazy(path: str) -> Any:
    """Parse a legacy torch.save file without reading its storages.

    Layout: magic number, protocol version, sys info, the object pickle, the list of storage
    keys; then each storage as an 8-byte little-endian element count and its bytes.
    Returns the object with :class:`LazyTensor` leaves, or raises ``_Unsupported`` when the
    object needs more than the restricted unpickler knows.
    """
    offsets: dict[str, tuple[int, int]] = {}  # filled by the storage pass below
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        obj, keys = _legacy_pickles(path, fh, _at_offsets(path, offsets))
        storages = collect_storages(obj)
        offsets.update(_legacy_storage_offsets(path, fh, keys, storages, size))
    missing = set(storages) - set(offsets)
    if missing:
        raise CheckpointError(f"{path} is corrupt: {len(missing)} storages have no data")
    return obj


def _legacy_pickles(path: str, fh: Any, locate: Locate) -> tuple[Any, list[Any]]:
    """The object and the storage keys of a legacy file, read up to the storage data."""

    def unpickle() -> Any:
        check_pickle(data, fh.tell())  # the unpickler reads on from the same place
        return _RestrictedUnpickler(fh, locate).load()

    data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if unpickle() != _LEGACY_MAGIC:
            raise _Unsupported("not a legacy torch.save file")
        proto, sys_info = unpickle(), unpickle()
        if proto != 1001 or not isinstance(sys_info, dict):
            raise _Unsupported("unknown legacy protocol")
        if not sys_info.get("little_endian", True):
            raise _Unsupported("big-endian file")
        obj, keys = unpickle(), unpickle()
    except _Unsupported:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({short_error(exc)})") from None
    finally:
        data.close()
    if not isinstance(keys, list):
        raise CheckpointError(f"{path} is corrupt: no storage list")
    return obj, keys


def _legacy_storage_offsets(
    path: str, fh: Any, keys: list[Any], storages: dict[str, StorageRef], size: int
) -> dict[str, tuple[int, int]]:
    """Where every storage lies (offset, nbytes), seeking over the data from ``fh``'s place."""
    offsets: dict[str, tuple[int, int]] = {}
    pos = fh.tell()
    for key in keys:
        key = str(key)
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated: storage data is missing")
        numel = int.from_bytes(head, "little", signed=True)
        ref = storages.get(key)
        element = itemsize(ref.dtype) if ref else None
        if ref is None or element is None or numel != ref.numel or numel < 0:
            raise CheckpointError(f"{path} is corrupt: storage {key} does not match its tensor")
        nbytes = numel * element
        if pos + 8 + nbytes > size:
            raise CheckpointError(f"{path} is truncated: storage data is missing")
        offsets[key] = (pos + 8, nbytes)
        pos += 8 + nbytes
    return offsets


def collect_storages(root: Any) -> dict[str, StorageRef]:
    """Every storage the tensors of an unpickled object use, visiting each shared container
    once: linear in the pickle, however often it refers to the same list (a "billion laughs"
    pickle of 40 doubly shared lists is 40 containers, not 2**40 paths)."""
    out: dict[str, StorageRef] = {}
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, LazyTensor):
            out[obj.storage.key] = obj.storage
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Mapping):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, _Stub):
            stack.append(obj.__dict__.get("state"))
    return out


# --------------------------------------------------------------------------- torch.load


def _torch_load(path: str, kind: str, trust: bool) -> Any:
    import torch

    try:
        # torch warns about files it did not write itself (a plain pickle.dump, say); the
        # file is read or refused all the same, and the user gets one line either way.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=not trust, mmap=kind == "zip")
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported" in text or "global" in text.lower():
            match = re.search(r"GLOBAL ([\w.]+)", text)
            what = f"it refers to {match.group(1)}" if match else "it needs more than tensors"
            raise _trust_error(path, what) from None
        raise CheckpointError(f"{path} is corrupt or truncated ({short_error(exc)})") from None
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{path} could not be read as a checkpoint ({short_error(exc)})"
        ) from None


# --------------------------------------------------------------------------- state dicts


def _is_tensor(value: Any) -> bool:
    if isinstance(value, (LazyTensor, np.ndarray)):
        return True
    torch = sys.modules.get("torch")  # only a fallback loader makes torch tensors
    return torch is not None and isinstance(value, torch.Tensor)


def _count_tensors(mapping: Any) -> int:
    if not isinstance(mapping, Mapping):
        return 0
    return sum(1 for v in mapping.values() if _is_tensor(v))


def _table_from_object(obj: Any, path: str, label: str, fmt: str, key: str | None) -> TensorTable:
    """The table of a loaded (or lazily unpickled) checkpoint object."""
    modules = None
    eps: dict[str, float] = {}
    if hasattr(obj, "named_modules") and not isinstance(obj, Mapping):
        modules, eps = _module_graph(obj)
    state, used_key, notes = _find_state_dict(obj, path, key)
    if modules is None and used_key is not None:
        # A whole module nested in a checkpoint dict (loaded with --trust-pickle).
        node = _node_at(obj, used_key)
        if hasattr(node, "named_modules") and not isinstance(node, Mapping):
            modules, eps = _module_graph(node)
    if modules is not None:
        names, _ = _strip_prefixes(name for name, _ in modules)
        modules = [(names[name], cls) for name, cls in modules]
        eps = {_strip_prefixes([name])[0][name]: value for name, value in eps.items()}
    entries: dict[str, TensorEntry] = {}
    mapping, stripped = _strip_prefixes(k for k in state if isinstance(k, str))
    for k, v in state.items():
        if isinstance(k, str) and _is_tensor(v):
            entries[mapping[k]] = TensorEntry.of(v)
    if not entries:
        raise CheckpointError(f"{path} holds no tensors")
    if stripped:
        notes.append(f"{path}: stripped the prefix {' and '.join(stripped)} from tensor names")
    if isinstance(obj, Mapping) and any("lightning" in str(k) for k in obj):
        notes.append(f"{path}: PyTorch Lightning checkpoint")
    return TensorTable(label, path, fmt, entries, True, used_key, modules, eps, notes)


def _module_graph(module: Any) -> tuple[list[tuple[str, str]], dict[str, float]]:
    modules = [(name, type(m).__name__) for name, m in module.named_modules() if name]
    eps = {
        name: float(m.eps)
        for name, m in module.named_modules()
        if isinstance(getattr(m, "eps", None), float) and hasattr(m, "running_var")
    }
    return modules, eps


def _find_state_dict(
    obj: Any, path: str, key: str | None
) -> tuple[Mapping[str, Any], str | None, list[str]]:
    """The mapping of tensors in a loaded checkpoint, the key path used, and notes."""
    if key is not None:
        node = _node_at(obj, key, through_modules=True)
        if node is _MISSING:
            raise CheckpointError(f"key {key!r} is not in {path}; keys there: {_list_keys(obj)}")
        if hasattr(node, "state_dict") and callable(node.state_dict):
            node = node.state_dict()
        if not _count_tensors(node):
            raise CheckpointError(f"key {key!r} in {path} holds no tensors")
        return node, key, []
    if hasattr(obj, "state_dict") and callable(obj.state_dict) and not isinstance(obj, Mapping):
        return obj.state_dict(), None, []
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict or a checkpoint dict"
        )
    n_tensors = _count_tensors(obj)
    if n_tensors and n_tensors >= len(obj) / 2:
        return obj, None, []
    candidates: list[tuple[str, Mapping[str, Any]]] = []
    _walk_candidates(obj, "", candidates, 0)
    if not candidates:
        raise CheckpointError(f"{path} holds no tensors (its keys: {_list_keys(obj)})")
    chosen = _choose_candidate(candidates)
    others = [k for k, _ in candidates if k != chosen[0]]
    note = f"{path}: tensors found under key {chosen[0]!r}"
    if others:
        note += (
            f" (also {', '.join(repr(o) for o in others[:4])}: choose with --key, key= in Python)"
        )
    return chosen[1], chosen[0], [note]


def _choose_candidate(
    candidates: list[tuple[str, Mapping[str, Any]]],
) -> tuple[str, Mapping[str, Any]]:
    """The first candidate under the most preferred key, else the one with most tensors."""
    for preferred in PREFERRED_KEYS:
        for cand_key, cand in candidates:
            if cand_key == preferred or cand_key.startswith(preferred + "."):
                return cand_key, cand
    return max(candidates, key=lambda kc: _count_tensors(kc[1]))


def _walk_candidates(
    obj: Mapping[str, Any],
    prefix: str,
    out: list[tuple[str, Mapping[str, Any]]],
    depth: int,
    seen: set[int] | None = None,
) -> None:
    """Mappings of tensors under ``obj``, three levels deep; a mapping shared under several
    keys is visited once."""
    seen = set() if seen is None else seen
    for k, v in obj.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if hasattr(v, "state_dict") and callable(v.state_dict) and not isinstance(v, Mapping):
            out.append((name, v.state_dict()))
        elif isinstance(v, Mapping) and id(v) not in seen:
            seen.add(id(v))
            if any(_is_tensor(x) for x in v.values()):
                out.append((name, v))
            elif depth < 3:
                _walk_candidates(v, name, out, depth + 1, seen)


_MISSING = object()


def _node_at(obj: Any, key: str, *, through_modules: bool = False) -> Any:
    """The value at a key path such as ``ema`` or ``ema.module`` (``_MISSING`` when absent).

    ``through_modules`` also follows attributes of modules (``model.features``).
    """
    node = obj
    parts = [key] if isinstance(obj, Mapping) and key in obj else re.split(r"[./]", key)
    for part in parts:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif through_modules and hasattr(node, "state_dict") and hasattr(node, part):
            node = getattr(node, part)
        else:
            return _MISSING
    return node


def _list_keys(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return f"none (it holds a {type(obj).__name__})"
    keys = [str(k) for k in obj]
    text = ", ".join(keys[:12])
    return text + (f", … ({len(keys)} in all)" if len(keys) > 12 else "")


def _strip_prefixes(names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Map each original key to its name without ``module.``/``_orig_mod.`` prefixes (linear
    in the name, however many prefixes it repeats)."""
    mapping: dict[str, str] = {}
    stripped: list[str] = []
    for name in names:
        start = 0
        while prefix := next((p for p in STRIP_PREFIXES if name.startswith(p, start)), None):
            start += len(prefix)
            if prefix not in stripped:
                stripped.append(prefix)
        new = name[start:]
        # torch.compile on a submodule (Lightning's ``model._orig_mod.features.1``).
        if "._orig_mod." in new:
            new = new.replace("._orig_mod.", ".")
            if "_orig_mod." not in stripped:
                stripped.append("_orig_mod.")
        mapping[name] = new
    return mapping, stripped


# --------------------------------------------------------------------------- TorchScript


def _open_torchscript(path: str, label: str, zf: zipfile.ZipFile, trust: bool) -> TensorTable:
    """The module tree of a TorchScript archive, rebuilt from inert stand-ins."""
    try:
        root = _zip_lazy(path, zf, stubs=True)
    except _Unsupported as exc:
        if not trust:
            raise _trust_error(path, f"it refers to {exc}") from None
        return _open_torchscript_trusted(path, label)

    entries: dict[str, TensorEntry] = {}
    modules: list[tuple[str, str]] = []

    seen: set[int] = set()

    def walk(stub: Any, prefix_name: str, depth: int) -> None:
        state = stub.__dict__.get("state")
        if not isinstance(state, Mapping) or depth > 100 or id(stub) in seen:
            return
        seen.add(id(stub))  # a module shared under two names is walked once
        for attr, value in state.items():
            name = f"{prefix_name}.{attr}" if prefix_name else str(attr)
            if isinstance(value, LazyTensor):
                entries[name] = TensorEntry.of(value)
            elif isinstance(value, _Stub):
                cls = re.sub(r"\.___torch_mangle_\d+", "", value.class_name).rsplit(".", 1)[-1]
                modules.append((name, cls))
                walk(value, name, depth + 1)

    if not isinstance(root, _Stub):
        raise CheckpointError(f"{path} is a TorchScript archive without a module")
    walk(root, "", 0)
    if not entries:
        raise CheckpointError(f"{path} is a TorchScript archive that holds no tensors")
    return TensorTable(label, path, "torchscript", entries, True, None, modules)


def _open_torchscript_trusted(path: str, label: str) -> TensorTable:
    import torch

    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        raise CheckpointError(
            f"{path} could not be loaded by torch.jit ({short_error(exc)})"
        ) from None
    modules = [(n, m.original_name) for n, m in module.named_modules() if n]
    entries = {k: TensorEntry.of(v) for k, v in module.state_dict().items()}
    return TensorTable(label, path, "torchscript", entries, True, None, modules)
