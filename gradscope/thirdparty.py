"""Optional third-party packages (torchvision, timm, huggingface_hub): importing one turns every
failure, a missing package or a broken build, into one sentence that says how to get a working
one.

torchvision (and timm, which imports it) must be the release built for the installed torch and
come from the same index: a wheel built for another torch fails to import (``RuntimeError:
operator torchvision::nms does not exist``). The installed torch's version is read from the
package metadata, without importing torch.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

# Where a gradscope checkout gets each optional package from.
_EXTRAS = {"huggingface_hub": "hub", "safetensors": "safetensors", "sympy": "expr"}


class UnavailablePackage(Exception):
    """An optional package is missing or cannot be imported.

    ``reason`` reads after the package's name ("is not installed", "could not be imported
    (RuntimeError: ...)"), ``hint`` says how to get a working build; ``str()`` is the sentence.
    """

    def __init__(self, package: str, reason: str, hint: str) -> None:
        self.package = package
        self.reason = reason
        self.hint = hint
        super().__init__(f"{package} {reason}: {hint}")


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (from its metadata), or None."""
    from importlib import metadata  # here: importing it costs every command 17 ms

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def torchvision_release(torch_version: str) -> str | None:
    """The torchvision release series built for a torch 2.x release (2.N pairs with 0.N+15)."""
    match = re.match(r"2\.(\d+)\b", torch_version)
    return f"0.{int(match.group(1)) + 15}" if match else None


def _torchvision_hint(torch_version: str | None) -> str:
    if torch_version is None:
        return "install torch, then the torchvision release built for it (pip install torchvision)"
    public, _, local = torch_version.partition("+")
    index = f" --index-url https://download.pytorch.org/whl/{local}" if local else ""
    release = torchvision_release(torch_version)
    pin = f"=={release}.*" if release else ""
    return (
        f"install the torchvision release built for torch {public} from the index your "
        f"torch came from, e.g. pip install torchvision{pin}{index}"
    )


def install_hint(package: str) -> str:
    """How to get a working ``package`` that matches what is installed."""
    if package == "torchvision":
        return _torchvision_hint(installed_version("torch"))
    if package == "timm":
        return f"{_torchvision_hint(installed_version('torch'))}, then pip install timm"
    extra = _EXTRAS.get(package)
    if extra is None:
        return f"pip install {package}"
    return f"pip install -e '.[{extra}]' from a gradscope checkout (or pip install {package})"


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception, at most 160 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def import_optional(package: str) -> ModuleType:
    """Import an optional package.

    Raises:
        UnavailablePackage: the package is not installed, or its import failed in any way (a
            build for another torch raises RuntimeError or OSError, not ImportError).
    """
    try:
        return importlib.import_module(package)
    except Exception as exc:
        name = getattr(exc, "name", None) or ""
        missing = isinstance(exc, ModuleNotFoundError) and name.split(".")[0] == package
        reason = "is not installed" if missing else f"could not be imported ({first_line(exc)})"
        raise UnavailablePackage(package, reason, install_hint(package)) from None
