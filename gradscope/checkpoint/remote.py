"""Checkpoints that are not local files: torchvision model names, http(s) URLs and ``hf://``.

A model name (``vgg19_bn``) or a URL is downloaded once into the torch hub cache,
``<torch.hub.get_dir()>/checkpoints/`` (``$TORCH_HOME/hub/checkpoints``), by torch.hub's own
downloader: progress on stderr, a temporary file in that directory that is renamed only after
the download is complete and, where the file name carries one (``vgg19_bn-c79401a0.pth``), its
SHA-256 prefix checked, exactly as ``torch.hub.load_state_dict_from_url(check_hash=True)``
does. A file already in the cache is used without any network access; ``offline`` forbids
network access altogether. ``hf://`` sources go through huggingface_hub
(:mod:`~gradscope.checkpoint.hf`). torch and huggingface_hub are imported only here, lazily.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

from gradscope.checkpoint.table import short_error
from gradscope.checkpoint.weights import weights_url
from gradscope.errors import CheckpointError

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar", ".pkl")
# torch.hub.HASH_REGEX: the hex digits after a '-' and before a '.' in a file name are the
# first digits of the file's SHA-256 (torchvision's vgg19_bn-c79401a0.pth).
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")


def fetch_source(text: str, *, offline: bool = False, progress: bool = True) -> Path | None:
    """The local file that a source which is not a path stands for, downloaded when needed;
    None when ``text`` is no model name, URL or ``hf://`` source.

    Raises:
        CheckpointError: the name is unknown, the download failed or was refused (offline).
    """
    if text.lower().startswith(("http://", "https://")):
        return download_to_hub_cache(text, offline=offline, progress=progress)
    if text.lower().startswith("hf://"):
        from gradscope.checkpoint.hf import hf_checkpoint

        return hf_checkpoint(text, offline=offline)
    if looks_like_model_name(text):
        return resolve_model_name(text, offline=offline, progress=progress)
    return None


def looks_like_model_name(source: str) -> bool:
    """Whether a source that is not a path reads as a model name (``vgg19_bn``)."""
    return re.fullmatch(
        r"[A-Za-z][A-Za-z0-9_]*", source
    ) is not None and not source.lower().endswith(tuple(s.lstrip(".") for s in TORCH_SUFFIXES))


def resolve_model_name(name: str, *, offline: bool = False, progress: bool = True) -> Path:
    """The torch hub cache file of a torchvision model's ImageNet weights, downloaded into that
    cache when it is not there yet (see :mod:`~gradscope.checkpoint.weights`).

    Raises:
        CheckpointError: the name is unknown (with close names), or the file is not cached and
            ``offline`` forbids the download, or the download failed.
    """
    url = weights_url(name)
    return download_to_hub_cache(url, offline=offline, progress=progress, what=name)


def hub_checkpoints_dir() -> Path:
    """``<torch hub dir>/checkpoints``, where every torchvision weight download goes: TORCH_HOME,
    else XDG_CACHE_HOME/torch, else ~/.cache/torch, as ``torch.hub.get_dir()`` computes it
    (asked of torch itself when it is imported already, so ``torch.hub.set_dir`` counts too);
    reading a cached file needs no torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints"
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(home) / "hub" / "checkpoints"


def download_to_hub_cache(
    url: str, *, offline: bool = False, progress: bool = True, what: str | None = None
) -> Path:
    """The torch hub cache file of ``url``, downloaded (and its hash checked) when missing.

    Raises:
        CheckpointError: the URL names no file, the file is not cached and ``offline`` forbids
            the download, the download failed, or the file fails its hash check (nothing is
            then left in the cache).
    """
    name = Path(urlparse(url).path).name
    if not name:
        raise CheckpointError(f"{url} names no file to download")
    target = hub_checkpoints_dir() / name
    if target.is_file():
        return target
    if offline:
        raise CheckpointError(
            f"{what or url} would need a download from {url} ({target} is not in the torch hub "
            "cache), and {--offline} forbids network access"
        )
    return _download(url, target, progress)


def _download(url: str, target: Path, progress: bool) -> Path:
    """torch.hub's downloader: a temporary file beside ``target``, renamed when complete and
    (where the name carries a hash) verified; removed on any failure."""
    import http.client  # here, not at the top: it costs a local file's read 20 ms
    from urllib.error import URLError

    import torch.hub

    match = HASH_REGEX.search(target.name)
    prefix = match.group(1) if match else None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"the torch hub cache {target.parent} cannot be created ({short_error(exc)})"
        ) from None
    try:
        torch.hub.download_url_to_file(url, str(target), prefix, progress=progress)
    except RuntimeError as exc:
        if "invalid hash" in str(exc):
            raise CheckpointError(
                f"{url} is corrupt: its SHA-256 does not start with {prefix}, as its file name "
                "says; the download was discarded"
            ) from None
        raise CheckpointError(f"{url} could not be downloaded ({short_error(exc)})") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # urlopen's "<urlopen error [Errno -2] ...>": its reason alone reads better.
        reason = str(exc.reason) if isinstance(exc, URLError) and type(exc) is URLError else ""
        raise CheckpointError(
            f"{url} could not be downloaded ({reason or short_error(exc)})"
        ) from None
    return target
