"""``hf://OWNER/REPO[@REVISION][/FILE]``: checkpoints on the Hugging Face Hub.

Read through ``huggingface_hub`` (the ``hub`` extra) and its cache (``HF_HUB_CACHE``, else
``$HF_HOME/hub``): ``hf_hub_download`` fetches a file once and then finds it there. Without
FILE the repository's ``model.safetensors``, its sharded ``model.safetensors.index.json`` (and
every shard it lists), or else ``pytorch_model.bin`` (sharded or not) is read. ``offline`` or
``HF_HUB_OFFLINE=1`` reads only the cache (``local_files_only=True``).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType

from gradscope.checkpoint.table import short_error
from gradscope.errors import CheckpointError
from gradscope.thirdparty import UnavailablePackage, import_optional

DEFAULT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def parse_hf(text: str) -> tuple[str, str | None, str | None]:
    """``hf://owner/repo@rev/sub/file`` -> (``owner/repo``, ``rev``, ``sub/file``).

    Raises:
        CheckpointError: the text does not name a repository.
    """
    parts = [p for p in text[len("hf://") :].split("/") if p]
    if len(parts) < 2:
        raise CheckpointError(f"{text} does not name a repository: use hf://OWNER/REPO[/FILE]")
    repo, _, revision = f"{parts[0]}/{parts[1]}".partition("@")
    return repo, revision or None, "/".join(parts[2:]) or None


def hf_checkpoint(text: str, *, offline: bool = False) -> Path:
    """The cached local file (a safetensors or torch.save file, or a shard index whose shards
    are cached beside it) that an ``hf://`` source stands for, downloaded when needed.

    Raises:
        CheckpointError: huggingface_hub is unavailable, the repository or file does not exist,
            cannot be reached, or is not in the cache when offline.
    """
    try:
        hub = import_optional("huggingface_hub")
    except UnavailablePackage as exc:
        raise CheckpointError(
            f"{text} needs huggingface_hub, which {exc.reason}: {exc.hint}"
        ) from None
    for submodule in ("constants", "utils"):  # loaded lazily by the package itself
        importlib.import_module(f"huggingface_hub.{submodule}")
    repo, revision, file = parse_hf(text)
    offline = offline or _offline_by_env(hub)
    for name in [file] if file else DEFAULT_FILES:
        path = _download(hub, text, repo, name, revision, offline)
        if path is None:
            continue
        if name.endswith(".index.json"):
            for shard in _shards(path):
                folder = name.rpartition("/")[0]
                shard_name = f"{folder}/{shard}" if folder else shard
                if _download(hub, text, repo, shard_name, revision, offline) is None:
                    raise CheckpointError(_absent(hub, text, [shard_name], offline))
        return path
    raise CheckpointError(_absent(hub, text, [file] if file else list(DEFAULT_FILES), offline))


def _offline_by_env(hub: ModuleType) -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in ("1", "ON", "YES", "TRUE") or bool(hub.constants.HF_HUB_OFFLINE)


def _absent(hub: ModuleType, text: str, names: list[str], offline: bool) -> str:
    """Why ``text`` cannot be read: none of ``names`` is in the cache (offline) or the
    repository."""
    listed = ", ".join(names)
    if offline:
        where = f"the Hugging Face cache {hub.constants.HF_HUB_CACHE}"
        what = (
            f"{listed} is not in {where}" if len(names) == 1 else f"none of {listed} is in {where}"
        )
        return (
            f"{text} would need a download ({what}), and {{--offline}} (or HF_HUB_OFFLINE=1) "
            "forbids network access"
        )
    return f"{text}: the repository has {'no' if len(names) == 1 else 'none of'} {listed}"


def _download(
    hub: ModuleType, text: str, repo: str, name: str, revision: str | None, offline: bool
) -> Path | None:
    """The cached file ``name`` of the repository (downloaded when needed), or None when the
    repository has no such file (or, offline, the cache does not hold it)."""
    utils = hub.utils
    try:
        found = hub.hf_hub_download(repo, name, revision=revision, local_files_only=offline)
    except utils.LocalEntryNotFoundError:
        if offline:
            return None
        raise CheckpointError(
            f"{text}: the Hugging Face Hub cannot be reached and {name} is not in its cache "
            f"({hub.constants.HF_HUB_CACHE})"
        ) from None
    except utils.EntryNotFoundError:
        return None
    except utils.RepositoryNotFoundError:
        raise CheckpointError(
            f"{text}: the repository {repo} does not exist, or needs a login (huggingface-cli "
            "login) that gives access to it"
        ) from None
    except (OSError, ValueError) as exc:  # HTTP errors, bad repository names and revisions
        raise CheckpointError(f"{text} could not be read ({short_error(exc)})") from None
    return Path(found)


def _shards(index: Path) -> list[str]:
    """The shard files an index lists (none when it is unreadable: opening it says why)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        return sorted({str(v) for v in weight_map.values()})
    except (OSError, ValueError, AttributeError):
        return []
