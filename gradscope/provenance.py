"""Provenance: how a result was made, as one JSON object (``meta``) written beside it (no torch).

Every ``simulate`` run builds a ``meta`` object: the gradscope, torch and Python versions and
the device, every option with defaults resolved, the seed and repeats, the prediction basis,
the command line, the start time and wall time, and for ``--model`` files the file's SHA-256
and the git commit (and dirty state) of the repository that holds it. It goes into JSON output
(``{"meta": {...}, "records": [...]}``), into a sidecar ``FILE.meta.json`` beside other
output files, and into figures (a PNG text chunk, the PDF Info dictionary, the SVG
description). :func:`read_meta` reads it back from any of them, and ``simulate --from-meta``
re-runs the configuration it records.

This module collects and reads; it writes nothing (the caller writes the object where it
goes). It never fails because git is missing or a file cannot be read: that part of the
provenance is then ``null``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gradscope._version import __version__
from gradscope.errors import RecordsError, SpecError

Meta = dict[str, Any]
# The key under which a figure carries the meta: a PNG text chunk and a PDF Info entry.
FIGURE_KEY = "gradscope"
SIDECAR_SUFFIX = ".meta.json"
GIT_TIMEOUT = 10.0  # seconds: provenance must never hang a run


def sidecar_path(output: Path) -> Path:
    """Where the meta of ``output`` goes by default: ``out.csv`` → ``out.csv.meta.json``."""
    return output.with_name(output.name + SIDECAR_SUFFIX)


def utc_timestamp(seconds: float) -> str:
    """A POSIX time as ISO 8601 UTC to the second: ``2025-01-31T09:30:00Z``."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def torch_version() -> str | None:
    """The torch version: the loaded module's (it has the build tag, +cpu), else the installed
    distribution's, else None. Never imports torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    try:
        return _distribution_version("torch")
    except LookupError:
        return None


def _distribution_version(name: str) -> str:
    """The installed version of a distribution (importlib.metadata loads only when asked: it
    costs 20 ms of start-up). Raises LookupError when it is not installed."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise LookupError(name) from None


def software() -> Meta:
    """The versions a result depends on."""
    numpy = sys.modules.get("numpy")
    return {
        "gradscope_version": __version__,
        "torch_version": torch_version(),
        "numpy_version": getattr(numpy, "__version__", None),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }


def new_meta(command: str, command_line: str, started: float, wall_time: float) -> Meta:
    """The fields every command's meta starts with (the caller adds its own after them)."""
    return {
        **software(),
        "command": command,
        "command_line": command_line,
        "started": utc_timestamp(started),
        "wall_time_s": round(wall_time, 3),
    }


def json_safe(value: Any) -> Any:
    """An option value as JSON: enums by value, paths and other objects as text, tuples as
    lists, non-finite floats as null."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return str(getattr(value, "value", value))


def meta_json(meta: Mapping[str, Any]) -> str:
    """The meta as the text of a sidecar file (ASCII, so it fits any figure format too)."""
    return json.dumps(json_safe(meta), indent=2) + "\n"


# --------------------------------------------------------------------------------------------
# Files and repositories


def file_digest(path: str | Path) -> Meta | None:
    """``{"path", "size", "sha256"}`` of a file (the absolute path), or None when unreadable."""
    source = Path(path)
    digest = hashlib.sha256()
    try:
        with source.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        size = source.stat().st_size
    except OSError:
        return None
    return {"path": str(source.resolve()), "size": size, "sha256": digest.hexdigest()}


def _git(directory: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(path: str | Path) -> Meta | None:
    """The git repository that holds ``path``: ``{"root", "commit", "dirty"}`` (dirty: any
    change or untracked file, from ``git status --porcelain``), or None outside a repository
    or without git."""
    where = Path(path).resolve()
    directory = where if where.is_dir() else where.parent
    commit = _git(directory, "rev-parse", "HEAD")
    if commit is None:
        return None
    root = _git(directory, "rev-parse", "--show-toplevel")
    status = _git(directory, "status", "--porcelain")
    return {
        "root": root.strip() if root else None,
        "commit": commit.strip(),
        "dirty": None if status is None else bool(status.strip()),
    }


def model_provenance(target: str) -> Meta:
    """Where ``--model``'s factory comes from: its file (size, SHA-256) and the git state of
    the repository holding it; torchvision's version for ``torchvision:NAME``."""
    where, _, _ = target.rpartition(":")
    out: Meta = {"target": target}
    if where == "torchvision":
        try:
            out["torchvision_version"] = _distribution_version("torchvision")
        except LookupError:
            out["torchvision_version"] = None
        return out
    file = _module_file(where)
    out["file"] = file_digest(file) if file is not None else None
    out["git"] = git_state(file) if file is not None else None
    return out


def _module_file(where: str) -> Path | None:
    """The file of FILE.py or of an importable MODULE (already imported by the run)."""
    if where.endswith(".py") or "/" in where or "\\" in where:
        return Path(where)
    module = sys.modules.get(where)
    file = getattr(module, "__file__", None)
    if file is None:
        import importlib.util

        try:
            spec = importlib.util.find_spec(where)
        except (ImportError, ValueError):
            return None
        file = spec.origin if spec is not None else None
    return Path(file) if file else None


def checkpoint_meta(
    sources: Iterable[str | tuple[str, str]],
    options: Mapping[str, Any],
    started: float,
    command_line: str | None = None,
) -> Meta:
    """The meta of an ``inspect-checkpoint`` run that started at ``started`` (``time.time()``)
    and ends now: each source with, for local files (and the files of a sharded directory),
    its size and SHA-256. A source is what the user gave, or ``(given, local path)`` for a
    name or URL read from a cache. ``command_line`` defaults to this process's ``sys.argv``."""
    checkpoints = []
    for source in sources:
        given, local = source if isinstance(source, tuple) else (source, source)
        path = Path(local)
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        digests = [d for d in (file_digest(f) for f in files) if d is not None]
        checkpoints.append({"source": given, "files": digests})
    line = command_line or shlex.join(["gradscope", *sys.argv[1:]])
    meta = new_meta("inspect-checkpoint", line, started, time.time() - started)
    meta["options"] = json_safe(dict(options))
    meta["checkpoints"] = checkpoints
    return meta


# --------------------------------------------------------------------------------------------
# Reading it back


def read_meta(source: str | Path) -> Meta:
    """The meta of a result: a sidecar ``*.meta.json``, JSON records with a ``meta`` object, a
    records file with a sidecar beside it, or a figure (.png, .svg, .pdf) gradscope wrote.

    Raises:
        RecordsError: the file is missing, unreadable, or carries no gradscope meta.
    """
    path = Path(source)
    if not path.is_file():
        raise RecordsError(f"{path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix in (".png", ".svg", ".pdf"):
        text = {".png": _png_text, ".svg": _svg_text, ".pdf": _pdf_text}[suffix](path)
        if text is None:
            raise RecordsError(f"{path} carries no gradscope metadata")
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise RecordsError(f"{path} is not a text file (expected a JSON meta)") from None
        if not text.lstrip().startswith("{") and sidecar_path(path).is_file():
            return read_meta(sidecar_path(path))
    data = _parse_json(text, path)
    if isinstance(data, Mapping) and isinstance(data.get("meta"), Mapping):
        data = data["meta"]
    if not isinstance(data, Mapping) or "gradscope_version" not in data:
        raise RecordsError(
            f"{path} holds no gradscope meta (a JSON object with gradscope_version, or a "
            f"sidecar {sidecar_path(path).name})"
        )
    return dict(data)


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordsError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:  # about a thousand levels deep: no meta is
        raise RecordsError(f"{path} is JSON nested too deeply to be a meta") from None


def _png_text(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            chunks = dict(getattr(image, "text", None) or {})
    except (OSError, UnidentifiedImageError):
        raise RecordsError(f"{path} is not a PNG image") from None
    value = chunks.get(FIGURE_KEY)
    return value if isinstance(value, str) else None


def _svg_text(path: Path) -> str | None:
    """The ``dc:description`` of the SVG's RDF metadata (matplotlib's ``Description``)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        raise RecordsError(f"{path} is not an SVG file") from None
    for element in root.iter("{http://purl.org/dc/elements/1.1/}description"):
        if element.text and FIGURE_KEY in element.text:
            return element.text
    return None


_PDF_ENTRY = re.compile(rb"/" + FIGURE_KEY.encode() + rb"\s*\(")
_PDF_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def _pdf_text(path: Path) -> str | None:
    """The ``/gradscope`` entry of the PDF Info dictionary: a literal string, written in ASCII
    by :func:`meta_json`, with PDF's backslash escapes and balanced parentheses."""
    data = path.read_bytes()
    if not data.startswith(b"%PDF"):
        raise RecordsError(f"{path} is not a PDF file")
    match = _PDF_ENTRY.search(data)
    if match is None:
        return None
    out, depth, i = bytearray(), 1, match.end()
    while i < len(data):
        c = data[i : i + 1]
        if c == b"\\":
            nxt = data[i + 1 : i + 2]
            if nxt.isdigit():  # an octal escape of up to three digits
                digits = re.match(rb"[0-7]{1,3}", data[i + 1 : i + 4])
                assert digits is not None
                out.append(int(digits.group(), 8))
                i += 1 + len(digits.group())
                continue
            out += _PDF_ESCAPES.get(nxt, nxt)
            i += 2
            continue
        depth += {b"(": 1, b")": -1}.get(c, 0)
        if depth == 0:
            return out.decode("latin-1")
        out += c
        i += 1
    return None


# --------------------------------------------------------------------------------------------
# Re-running from a meta


def major(version: str) -> str:
    return version.split(".", 1)[0]


def replay_options(meta: Mapping[str, Any], command: str, source: str | Path) -> dict[str, Any]:
    """The recorded ``options`` of a meta that ``command`` of this gradscope can re-run.

    Raises:
        SpecError: one sentence naming the field: another major version, another command,
            or no options.
    """
    version = meta.get("gradscope_version")
    if not isinstance(version, str) or not re.fullmatch(r"\d+(\.\w+)*", version):
        raise SpecError(f"{source}: field gradscope_version is missing or not a version")
    if major(version) != major(__version__):
        raise SpecError(
            f"{source}: field gradscope_version is {version}, another major version than this "
            f"gradscope {__version__}; re-run it with gradscope {major(version)}.x"
        )
    if meta.get("command") != command:
        raise SpecError(
            f"{source}: field command is {meta.get('command')!r}: only {command} results re-run"
        )
    options = meta.get("options")
    if not isinstance(options, Mapping):
        raise SpecError(f"{source}: field options is missing or not an object")
    return dict(options)
