"""The red-team corpus for the checkpoint readers, built by script (nothing binary is committed).

Three families, all written into a folder by :func:`build_hostile`, :func:`build_payloads` and
:func:`mutants`:

- **hostile files**, one per class of issue 17 §2–§4: tiny files that asked for unbounded work
  (an index gap of 10**11, "billion laughs" pickles, 30,000 BatchNorm layers, a stride-0
  ``expand`` to 300M elements, overlapping strides, a memo-index bomb, a length bomb, zip
  entries that inflate to 2 GiB) and crafted or damaged files that gave tracebacks (deep JSON,
  an index listing itself or paths outside its folder, infinite shapes, patched zip
  directories, undecodable names, ``²``, zip version 6.4, broken deflate streams, names full
  of markup and escape sequences). Each says whether the readers must answer (``"ok"``) or
  refuse it with one :class:`~gradscope.errors.CheckpointError` (``"error"``).
- **payloads**: pickles that run code if they are ever unpickled for real (each would create
  its marker file), in four carriers: a raw pickle, a legacy ``torch.save`` file, a zip
  checkpoint and a TorchScript archive; and a zip nested in a zip.
- **mutants** of valid files of every format: truncations, bit flips, patched zip
  directories (end record and central directory fields) and patched safetensors headers.

:func:`run_bounded` runs one reader call in a forked child under a time limit and an address
space limit and reports how it ended, its time and its peak memory above the parent's.

Used by ``tests/test_hostile_checkpoints.py`` (small budgets) and ``benchmarks/redteam.py``
(thousands of mutants).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import resource
import signal
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
GiB = 1 << 30


# --------------------------------------------------------------------------- containers


def legacy_bytes(obj_pickle: bytes, keys: list[str] | None = None, data: bytes = b"") -> bytes:
    """A legacy (pre-1.6) ``torch.save`` file around an object pickle: magic number,
    protocol, sys info, the object, the storage keys, then the storage data."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    head = b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, info))
    return head + obj_pickle + pickle.dumps(keys or [], protocol=2) + data


def zip_bytes(data_pkl: bytes, *, torchscript: bool = False, extra: dict | None = None) -> bytes:
    """A zip checkpoint (``archive/data.pkl``, byteorder, version) around a pickle; with
    ``torchscript`` also a constants.pkl and a code file, as ``torch.jit.save`` writes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
        if torchscript:
            zf.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
            zf.writestr("archive/code/__torch__.py", "def forward(self):\n  return None\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def safetensors_bytes(header: dict | str, data: bytes = b"") -> bytes:
    """A safetensors file from a header (a dict, or raw JSON text for crafted headers)."""
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw + data


def f32_tensors(tensors: dict[str, list[float]]) -> bytes:
    """A safetensors file of small float32 vectors."""
    header: dict = {}
    data = b""
    for name, values in tensors.items():
        blob = struct.pack(f"<{len(values)}f", *values)
        header[name] = {
            "dtype": "F32",
            "shape": [len(values)],
            "data_offsets": [len(data), len(data) + len(blob)],
        }
        data += blob
    return safetensors_bytes(header, data)


def raw_zip(entries: list[tuple[str, int, bytes, int, int]]) -> bytes:
    """A zip archive written by hand: (name, method, stored bytes, crc, uncompressed size)
    per entry, for entries whose stored bytes were made without inflating them here."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, method, data, crc, size in entries:
        offset = out.tell()
        raw = name.encode()
        fields = (20, 0, method, 0, 0, crc, len(data), size, len(raw), 0)
        out.write(b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", *fields) + raw + data)
        head = struct.pack("<HHHHHHIIIHHHHHII", 20, 20, 0, method, 0, 0, crc, len(data), size,
                           len(raw), 0, 0, 0, 0, 0, offset)  # fmt: skip
        central.write(b"PK\x01\x02" + head + raw)
    start, body = out.tell(), central.getvalue()
    end = struct.pack("<HHHHIIH", 0, 0, len(entries), len(entries), len(body), start, 0)
    return out.getvalue() + body + b"PK\x05\x06" + end


def zero_bomb(size: int, chunk: int = 1 << 26) -> tuple[bytes, int]:
    """A raw deflate stream of ``size`` zero bytes (a multiple of ``chunk``) and its CRC-32,
    made from one compressed chunk repeated: a full flush resets the compressor, so every
    chunk compresses to the same bytes."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(chunk)) + comp.flush(zlib.Z_FULL_FLUSH)
    count = size // chunk
    crc = 0
    zeros = bytes(chunk)
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    return block * count + comp.flush(), crc


# --------------------------------------------------------------------------- hostile files


@dataclass
class Hostile:
    """One hostile file: its class (the issue's words), where it is, and what the readers
    must do: answer (``ok``) or refuse it with one CheckpointError (``error``)."""

    name: str
    what: str
    path: Path
    expect: str


def _save(obj: object, path: Path, *, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _laughs(levels: int = 40) -> dict:
    """40 levels of doubly shared lists: 2**40 paths through a few hundred bytes."""
    tensor = torch.ones(4)
    node: list = [tensor]
    for _ in range(levels):
        node = [node, node]
    return {"bn.running_var": tensor, "bn.running_mean": torch.zeros(4), "junk": node}


def many_batchnorm_values(layers: int) -> torch.Tensor:
    """The running variances and means of :func:`_many_batchnorms`, interleaved (seeded)."""
    return torch.rand(2 * layers, generator=torch.Generator().manual_seed(layers)) + 0.5


def _many_batchnorms(layers: int) -> dict[str, torch.Tensor]:
    """``layers`` BatchNorm layers (features.1, .4, ...) whose one-element statistics share
    one small storage."""
    base = many_batchnorm_values(layers)
    out = {}
    for i in range(layers):
        out[f"features.{3 * i + 1}.running_var"] = base[2 * i : 2 * i + 1]
        out[f"features.{3 * i + 1}.running_mean"] = base[2 * i + 1 : 2 * i + 2]
    return out


def _bn(prefix: str, var: torch.Tensor, weight: torch.Tensor | None = None) -> dict:
    n = var.shape[0]
    out = {f"{prefix}.running_var": var, f"{prefix}.running_mean": torch.zeros(1).expand(n)}
    if weight is not None:
        out[f"{prefix}.weight"] = weight
    return out


def _memo_bomb() -> bytes:
    """About 10 bytes that make CPython's unpickler allocate 3.2 GB: LONG_BINPUT 2e8."""
    return b"\x80\x02]r" + struct.pack("<I", 200_000_000) + b"."


def _length_bomb() -> bytes:
    """BINBYTES claiming 2 GiB of data that the file does not hold."""
    return b"\x80\x03B" + struct.pack("<I", 0x7FFFFFFF) + b"x" * 16 + b"."


def _vgg_safetensors() -> bytes:
    """Four small BatchNorm layers in nn.Sequential order, as safetensors."""
    tensors = {}
    for i, idx in enumerate((1, 4, 8, 11)):
        tensors[f"features.{idx}.running_var"] = [1.5**-i, 1.5**-i]
        tensors[f"features.{idx}.running_mean"] = [0.0, 0.1]
    return f32_tensors(tensors)


def _patched_zip(valid: bytes, patch: Callable[[bytearray], None]) -> bytes:
    blob = bytearray(valid)
    patch(blob)
    return bytes(blob)


def central_entries(blob: bytes) -> list[int]:
    """Offsets of the central directory entries of a zip archive."""
    out, pos = [], blob.find(b"PK\x01\x02")
    while pos >= 0:
        out.append(pos)
        pos = blob.find(b"PK\x01\x02", pos + 4)
    return out


def _entry_named(blob: bytes, name: bytes) -> int:
    return next(p for p in central_entries(blob) if blob[p + 46 : p + 46 + len(name)] == name)


def _set_version(blob: bytearray) -> None:
    """'zip file version 6.4': data.pkl needs a newer unzip than exists."""
    pos = _entry_named(blob, b"archive/data.pkl")
    blob[pos + 6 : pos + 8] = struct.pack("<H", 64)


def _flip_name(blob: bytearray) -> None:
    """A UTF-8-flagged entry name with an invalid byte."""
    pos = _entry_named(blob, b"archive/data.pkl")
    flags = struct.unpack_from("<H", blob, pos + 8)[0]
    struct.pack_into("<H", blob, pos + 8, flags | 0x800)
    blob[pos + 46 + 3] = 0xFF


def _encrypt_flag(blob: bytearray) -> None:
    """data.pkl flagged as encrypted: zipfile wants a password (a RuntimeError)."""
    pos = _entry_named(blob, b"archive/data.pkl")
    struct.pack_into("<H", blob, pos + 8, struct.unpack_from("<H", blob, pos + 8)[0] | 1)


def _break_eocd(blob: bytearray) -> None:
    """The end record points the central directory past the end of the file."""
    pos = blob.rfind(b"PK\x05\x06")
    struct.pack_into("<I", blob, pos + 16, len(blob) + 1000)


def _sharded(folder: Path, shards: dict[str, str], extra: dict[str, bytes] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    index = {"metadata": {}, "weight_map": shards}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    for name, data in (extra or {}).items():
        (folder / name).write_bytes(data)
    return folder


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _build_bounds(folder: Path) -> list[Hostile]:
    """§2: tiny files that asked for unbounded work."""
    gap = f32_tensors(
        {
            "0.running_var": [1.0],
            "0.running_mean": [0.0],
            "100000000000.running_var": [2.0],
            "100000000000.running_mean": [0.0],
        }
    )
    expand = _bn("features.1", torch.ones(1).expand(300_000_000), torch.ones(1).expand(300_000_000))
    expand_conv = {"features.0.weight": torch.randn(1, 1, 3, 3).expand(10_000, 10_000, 3, 3)}
    expand_conv.update(_bn("features.1", torch.full((1,), 4.0).expand(10_000)))
    base = torch.rand(40_000)
    overlap = {"features.0.weight": base.as_strided((20_000, 20_000, 1, 1), (1, 1, 1, 1))}
    overlap.update(_bn("features.1", torch.ones(1).expand(20_000)))
    bomb, crc = zero_bomb(2 * GiB)
    inflated_pkl = raw_zip([("archive/data.pkl", 8, bomb, crc, 2 * GiB)])
    small = zip_bytes(pickle.dumps({}, protocol=2))
    with zipfile.ZipFile(io.BytesIO(small)) as zf:
        pkl = zf.read("archive/data.pkl")
    inflated_order = raw_zip(
        [("archive/data.pkl", 0, pkl, zlib.crc32(pkl), len(pkl)),
         ("archive/byteorder", 8, bomb, crc, 2 * GiB)]
    )  # fmt: skip
    return [
        Hostile("index-gap", "368-byte safetensors, BatchNorms 0. and 100000000000.",
                _write(folder / "gap.safetensors", gap), "ok"),
        Hostile("laughs-legacy", "billion laughs: 40 shared list levels, legacy",
                _save(_laughs(), folder / "laughs-legacy.pt", legacy=True), "ok"),
        Hostile("laughs-zip", "billion laughs: 40 shared list levels, zip",
                _save(_laughs(), folder / "laughs-zip.pt"), "ok"),
        Hostile("bn-10k", "10,000 BatchNorm layers",
                _save(_many_batchnorms(10_000), folder / "bn10k.pt"), "ok"),
        Hostile("expand-300m", "stride-0 running_var of 300M elements",
                _save(expand, folder / "expand.pt"), "ok"),
        Hostile("expand-conv", "stride-0 conv weight of 900M elements",
                _save(expand_conv, folder / "expand-conv.pt"), "ok"),
        Hostile("overlap-conv", "overlapping strides: 400M elements from 40,000",
                _save(overlap, folder / "overlap.pt"), "error"),
        Hostile("memo-bomb-zip", "memo-index bomb in data.pkl",
                _write(folder / "memo.pt", zip_bytes(_memo_bomb())), "error"),
        Hostile("memo-bomb-legacy", "memo-index bomb, legacy",
                _write(folder / "memo-legacy.pt", legacy_bytes(_memo_bomb())), "error"),
        Hostile("length-bomb", "BINBYTES of 2 GiB in 30 bytes, legacy",
                _write(folder / "length.pt", legacy_bytes(_length_bomb())), "error"),
        Hostile("inflate-data-pkl", "data.pkl inflating to 2 GiB",
                _write(folder / "inflate-pkl.pt", inflated_pkl), "error"),
        Hostile("inflate-byteorder", "byteorder inflating to 2 GiB",
                _write(folder / "inflate-order.pt", inflated_order), "error"),
        Hostile("prefix-repeat", "a key of 100,000 'module.' prefixes",
                _save({"module." * 100_000 + "bn.running_var": torch.ones(2)},
                      folder / "prefixes.pt"), "ok"),
    ]  # fmt: skip


def _build_crafted(folder: Path) -> list[Hostile]:
    """§3 and §4: crafted or damaged files that gave tracebacks; names that are markup."""
    good = _vgg_safetensors()
    valid_zip = zip_bytes(pickle.dumps({"a": 1}, protocol=2))
    deflated = io.BytesIO()
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"x": list(range(500))}, protocol=2))
    broken_deflate = bytearray(deflated.getvalue())
    broken_deflate[60:70] = b"\xff" * 10
    nested = '{"a":' * 50_000 + "1" + "}" * 50_000
    marks = {
        "[/]": [1.0], "[link=file:///etc/passwd]x[/link]": [1.0],
        "\x1b]8;;http://evil/\x1b\\x\x1b]8;;\x1b\\": [1.0], "\x1b[2J\x1b[31mred": [1.0],
        "=cmd|' /C calc'!A0": [1.0], "²": [1.0], "features.².running_var": [1.0],
    }  # fmt: skip
    marks = {k if k.endswith("running_var") else f"{k}.running_var": v for k, v in marks.items()}
    outside = folder / "outside.safetensors"
    outside.write_bytes(good)
    inf = '{"x.running_var":{"dtype":"F32","shape":[Infinity],"data_offsets":[0,4]}}'
    inf_offsets = '{"x.running_var":{"dtype":"F32","shape":[1],"data_offsets":[Infinity,0]}}'
    return [
        Hostile("deep-json", "safetensors header nested 50,000 deep",
                _write(folder / "deep.safetensors", safetensors_bytes(nested)), "error"),
        Hostile("index-self", "index.json listing itself",
                _sharded(folder / "self", {"x": "model.safetensors.index.json"}), "error"),
        Hostile("index-absolute", "shard path /.../outside.safetensors",
                _sharded(folder / "abs", {"features.1.running_var": str(outside)}), "error"),
        Hostile("index-dotdot", "shard path ../outside.safetensors",
                _sharded(folder / "dots", {"features.1.running_var": "../outside.safetensors"}),
                "error"),
        Hostile("inf-shape", "safetensors shape [Infinity]",
                _write(folder / "inf.safetensors", safetensors_bytes(inf, b"\0" * 4)), "error"),
        Hostile("inf-offsets", "safetensors offsets [Infinity, 0]",
                _write(folder / "inf2.safetensors", safetensors_bytes(inf_offsets, b"\0" * 4)),
                "error"),
        Hostile("eocd", "patched end-of-central-directory",
                _write(folder / "eocd.pt", _patched_zip(valid_zip, _break_eocd)), "error"),
        Hostile("name-flip", "undecodable UTF-8 entry name",
                _write(folder / "name.pt", _patched_zip(valid_zip, _flip_name)), "error"),
        Hostile("zip-version", "zip file version 6.4",
                _write(folder / "version.pt", _patched_zip(valid_zip, _set_version)), "error"),
        Hostile("encrypted", "data.pkl flagged as encrypted",
                _write(folder / "encrypted.pt", _patched_zip(valid_zip, _encrypt_flag)), "error"),
        Hostile("zlib", "corrupt deflate stream in data.pkl",
                _write(folder / "zlib.pt", bytes(broken_deflate)), "error"),
        Hostile("markup-names", "layer names of rich markup, OSC/CSI escapes, =formula, ²",
                _write(folder / "markup.safetensors", f32_tensors(marks)), "ok"),
    ]  # fmt: skip


def build_hostile(folder: Path, *, large: bool = False) -> list[Hostile]:
    """Write one hostile file per class into ``folder`` (``large``: also 30,000 BatchNorm
    layers, which take seconds to write and to read)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = _build_bounds(folder) + _build_crafted(folder)
    if large:
        path = _save(_many_batchnorms(30_000), folder / "bn30k.pt", legacy=True)
        out.append(Hostile("bn-30k", "30,000 BatchNorm layers in 2 MB, legacy", path, "ok"))
    return out


# --------------------------------------------------------------------------- payloads


class Stateful:
    """A class whose ``__setstate__`` writes its marker: a BUILD payload's target."""

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).write_text("pwned")


class OpenMarker:
    """Unpickling this opens (creates) its marker file: a ``__reduce__`` payload."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def _call(module: str, name: str, *args: str) -> bytes:
    """Protocol-2 pickle of ``module.name(*args)`` (GLOBAL, string arguments, REDUCE)."""
    strings = b"".join(b"X" + struct.pack("<I", len(a.encode())) + a.encode() for a in args)
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"(" + strings + b"tR."


def _stack_global(module: str, name: str, arg: str) -> bytes:
    """Protocol-4 pickle of ``module.name(arg)`` through STACK_GLOBAL."""

    def text(s: str) -> bytes:
        return b"\x8c" + bytes([len(s.encode())]) + s.encode()

    return b"\x80\x04" + text(module) + text(name) + b"\x93" + text(arg) + b"\x85R."


def _getattr_chain(marker: str) -> bytes:
    """getattr(__import__("os"), "system")("touch MARKER") in protocol 2."""
    imp = b"cbuiltins\n__import__\n(X\x02\x00\x00\x00ostR"
    attr = b"cbuiltins\ngetattr\n(" + imp + b"X\x06\x00\x00\x00systemtR"
    cmd = f"touch {marker}".encode()
    return b"\x80\x02" + attr + b"(X" + struct.pack("<I", len(cmd)) + cmd + b"tR."


def _torch_load_payload(marker: str, folder: Path) -> bytes:
    """torch.load(inner, None, pickle): an explicit pickle_module turns weights_only off."""
    inner = folder / f"inner-{Path(marker).name}.pkl"
    inner.write_bytes(pickle.dumps(OpenMarker(marker), protocol=2))
    path = str(inner).encode()
    pickle_mod = b"cbuiltins\n__import__\n(X\x06\x00\x00\x00pickletR"
    return (
        b"\x80\x02ctorch\nload\n(X" + struct.pack("<I", len(path)) + path + b"N" + pickle_mod
        + b"tR."
    )  # fmt: skip


def _build_payload(marker: str) -> bytes:
    """NEWOBJ of redteam_corpus.Stateful, then BUILD with its state: __setstate__ runs."""
    state = pickle.dumps({"marker": marker}, protocol=2)[2:-1]
    return b"\x80\x02credteam_corpus\nStateful\n)\x81" + state + b"b."


def _outside_storage(marker: str) -> bytes:
    """A tensor whose persistent id names a storage outside the archive (``../..``)."""
    key = f"../../../../{marker}".encode()
    pid = (b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX" + struct.pack("<I", len(key))
           + key + b"X\x03\x00\x00\x00cpuK\x0atQ")  # fmt: skip
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00K\x0a\x85K\x01\x85\x89N)tR"
    return b"\x80\x02}X\x0e\x00\x00\x00bn.running_var" + tensor + b"s."


def payload_pickles(marker: str, folder: Path) -> dict[str, bytes]:
    """Every payload pickle, each of which creates ``marker`` if it is unpickled for real."""
    code = f"open({marker!r}, 'w')"
    out = {f"reduce-open-p{p}": pickle.dumps(OpenMarker(marker), protocol=p) for p in range(6)}
    out.update(
        {
            "eval": _call("builtins", "eval", code),
            "exec": _call("builtins", "exec", code),
            "os-system": _call("os", "system", f"touch {marker}"),
            "posix-system": _call("posix", "system", f"touch {marker}"),
            "timeit": _call("timeit", "timeit", code),
            "getattr-chain": _getattr_chain(marker),
            "stack-global-exec": _stack_global("builtins", "exec", code),
            "torch-load": _torch_load_payload(marker, folder),
            "build-setstate": _build_payload(marker),
            "numpy-runstring": _call("numpy.testing._private.utils", "runstring", code),
            "outside-storage": _outside_storage(marker),
        }
    )
    return out


def _carriers(pkl: bytes) -> dict[str, bytes]:
    return {
        "raw": pkl,
        "legacy": legacy_bytes(pkl),
        "zip": zip_bytes(pkl),
        "torchscript": zip_bytes(pkl, torchscript=True),
    }


@dataclass
class Payload:
    """One payload file and the marker it would create if its code ran."""

    name: str
    path: Path
    marker: Path


def build_payloads(folder: Path) -> list[Payload]:
    """Every payload in every carrier, a persistent id outside the archive, TorchScript code
    and a zip nested in a zip: 65 files whose markers must never appear."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in payload_pickles("x", folder):
        for carrier in ("raw", "legacy", "zip", "torchscript"):
            marker = folder / f"pwned-{name}-{carrier}"
            pkl = payload_pickles(str(marker), folder)[name]
            path = folder / f"{name}.{carrier}.pt"
            path.write_bytes(_carriers(pkl)[carrier])
            out.append(Payload(f"{name}/{carrier}", path, marker))
    marker = folder / "pwned-nested"
    inner = zip_bytes(pickle.dumps(OpenMarker(str(marker)), protocol=2))
    path = folder / "nested.pt"
    path.write_bytes(zip_bytes(inner, extra={"archive/data/0": inner}))
    out.append(Payload("nested-zip", path, marker))
    return out


# --------------------------------------------------------------------------- mutants

# (offset in the record, struct format) of the patchable fields: end record, central entry.
EOCD_FIELDS = [(8, "<H"), (10, "<H"), (12, "<I"), (16, "<I"), (20, "<H")]
CENTRAL_FIELDS = [(4, "<H"), (6, "<H"), (8, "<H"), (10, "<H"), (16, "<I"), (20, "<I"),
                  (24, "<I"), (28, "<H"), (30, "<H"), (32, "<H"), (42, "<I")]  # fmt: skip
EDGE_VALUES = [0, 1, 8, 0x3F, 0x40, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]
JSON_VALUES = ["Infinity", "-1", "1e300", "18446744073709551616", "null", "[]", '"x"', "2.5"]


def truncate(blob: bytes, at: float) -> bytes:
    return blob[: int(len(blob) * at)]


def flip(blob: bytes, at: float, mask: int) -> bytes:
    out = bytearray(blob)
    if out:
        out[min(int(len(out) * at), len(out) - 1)] ^= mask or 1
    return bytes(out)


def patch_zip(blob: bytes, entry: int, field: int, value: int) -> bytes:
    """Set one field of the end record (``entry`` -1) or of a central entry to ``value``."""
    out = bytearray(blob)
    if entry < 0:
        pos = out.rfind(b"PK\x05\x06")
        offset, fmt = EOCD_FIELDS[field % len(EOCD_FIELDS)]
    else:
        entries = central_entries(blob)
        if not entries:
            return blob
        pos = entries[entry % len(entries)]
        offset, fmt = CENTRAL_FIELDS[field % len(CENTRAL_FIELDS)]
    if pos < 0:
        return blob
    struct.pack_into(fmt, out, pos + offset, value & (0xFFFF if fmt == "<H" else 0xFFFFFFFF))
    return bytes(out)


def patch_json(blob: bytes, which: int, value: str) -> bytes:
    """Replace one number in a safetensors header with ``value`` (keeping the length field
    right, so the reader gets past it)."""
    (n,) = struct.unpack_from("<Q", blob)
    text = blob[8 : 8 + n].decode("utf-8", "replace")
    numbers = [i for i, c in enumerate(text) if c.isdigit() and not text[i - 1].isdigit()]
    if not numbers:
        return blob
    start = numbers[which % len(numbers)]
    end = start
    while end < len(text) and text[end].isdigit():
        end += 1
    raw = (text[:start] + value + text[end:]).encode()
    return struct.pack("<Q", len(raw)) + raw + blob[8 + n :]


def mutate(blob: bytes, kind: str, rng: random.Random) -> bytes:
    """One mutant of ``blob``: ``truncate``, ``flip`` (1 to 4 bytes), ``zip`` (a directory
    field) or ``json`` (a header number)."""
    if kind == "truncate":
        return truncate(blob, rng.random())
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            blob = flip(blob, rng.random(), rng.randint(1, 255))
        return blob
    if kind == "zip":
        value = rng.choice(EDGE_VALUES + [rng.getrandbits(32)])
        return patch_zip(blob, rng.randint(-1, 8), rng.randint(0, 15), value)
    return patch_json(blob, rng.randint(0, 50), rng.choice(JSON_VALUES))


def kinds_for(fmt: str) -> list[str]:
    """The mutations that apply to a format."""
    if fmt in ("zip", "torchscript"):
        return ["truncate", "flip", "zip"]
    if fmt in ("safetensors", "index"):
        return ["truncate", "flip", "json"]
    return ["truncate", "flip"]


# --------------------------------------------------------------------------- bounded runs


@dataclass
class Outcome:
    """How one bounded call ended: ``ok``, ``refused`` (a CheckpointError), ``unexpected``
    (any other exception), ``memory`` (MemoryError, or RSS over the bound), ``hang`` (killed
    at the time limit) or ``crash`` (the child died); its message, seconds and peak MiB."""

    status: str
    message: str
    seconds: float
    peak_mib: float


def _rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _vm_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _classify(exc: BaseException) -> tuple[str, str]:
    from gradscope.errors import CheckpointError

    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, MemoryError):
            return "memory", f"{type(exc).__name__}: {exc}"
        chain = chain.__context__
    if isinstance(exc, CheckpointError):
        return "refused", str(exc)
    return "unexpected", f"{type(exc).__name__}: {exc}"


def _child(call: Callable[[], object], memory: int, write_fd: int) -> None:
    """In the forked child: limit the address space, run ``call``, report, exit."""
    status, message = "ok", ""
    try:
        resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + memory, resource.RLIM_INFINITY))
        call()
    except BaseException as exc:  # noqa: BLE001  (everything is reported to the parent)
        status, message = _classify(exc)
    os.write(write_fd, json.dumps([status, message[:500]]).encode())
    os._exit(0)


def run_bounded(call: Callable[[], object], *, timeout: float = 5.0, memory: int = GiB) -> Outcome:
    """Run ``call`` in a forked child with at most ``memory`` bytes of address space above the
    parent's and ``timeout`` seconds; the peak RSS above the parent's is measured."""
    read_fd, write_fd = os.pipe()
    base = _rss_kib()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (the child)
        os.close(read_fd)
        _child(call, memory, write_fd)
    os.close(write_fd)
    status = None
    while time.perf_counter() - start < timeout:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.002)
    else:
        os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        os.close(read_fd)
        return Outcome("hang", f"over {timeout:g} s", time.perf_counter() - start, 0.0)
    seconds = time.perf_counter() - start
    with os.fdopen(read_fd, "rb") as fh:
        report = fh.read()
    peak = max(usage.ru_maxrss - base, 0) / 1024
    if not report:
        return Outcome("crash", f"child ended with status {status}", seconds, peak)
    kind, message = json.loads(report)
    if kind == "ok" and peak * 2**20 > memory:
        kind, message = "memory", f"peak {peak:.0f} MiB"
    return Outcome(kind, message, seconds, peak)
