"""``inspect_checkpoint``: open each checkpoint, read its BatchNorm rows, fit, and say what was
assumed or found (the notes)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from gradscope.checkpoint.batchnorm import (
    DEFAULT_EPS,
    batchnorm_records,
    describe_without_batchnorm,
    summarize,
    weight_records,
)
from gradscope.checkpoint.open import open_checkpoint
from gradscope.checkpoint.table import TensorTable, short_error
from gradscope.errors import CheckpointError
from gradscope.schema import CheckpointRecord, CheckpointSummaryRecord, WeightRecord


@dataclass
class CheckpointResult:
    """What :func:`inspect_checkpoint` found. ``notes`` are for the user (stderr)."""

    records: list[CheckpointRecord]
    summary: list[CheckpointSummaryRecord]
    weights: list[WeightRecord]
    notes: list[str]
    sources: list[TensorTable]


def inspect_checkpoint(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    key: str | None = None,
    trust_pickle: bool = False,
    weights: bool = False,
    offline: bool = False,
    progress: bool = True,
) -> CheckpointResult:
    """BatchNorm statistics (and optionally weight norms) of one or more checkpoints.

    Args:
        sources: checkpoint files, sharded directories, torchvision model names
            (``vgg19_bn``), http(s) URLs (both downloaded once into the torch hub cache) or
            ``hf://OWNER/REPO[/FILE]`` (through huggingface_hub and its cache).
        key: where the state dict sits in a checkpoint dict (e.g. ``"ema"``); found
            automatically when omitted.
        trust_pickle: allow files that need full unpickling (a pickled ``nn.Module``). Only
            for files you trust: unpickling can run arbitrary code.
        weights: also compute one :class:`WeightRecord` per weight tensor.
        offline: never use the network: a source that is not cached yet is an error.
        progress: show download progress on stderr.

    Returns:
        Records in module order, the growth summary, weight records and notes for the user.

    Raises:
        CheckpointError: a source is missing, corrupt, unsafe, or holds no tensors, or its
            download failed (or, offline, would be needed).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise CheckpointError("no checkpoint given")
    records: list[CheckpointRecord] = []
    weight_rows: list[WeightRecord] = []
    notes: list[str] = []
    tables = []
    for source in sources:
        table = open_checkpoint(
            source, key=key, trust_pickle=trust_pickle, offline=offline, progress=progress
        )
        tables.append(table)
        notes.extend(table.notes)
        try:
            rows = batchnorm_records(table)
            if weights:
                weight_rows.extend(weight_records(table))
        except CheckpointError as exc:
            raise CheckpointError(f"{table.label}: {exc}") from None
        except Exception as exc:
            raise CheckpointError(f"{table.label} could not be read ({short_error(exc)})") from None
        notes.extend(_row_notes(table, rows))
        records.extend(rows)
    return CheckpointResult(records, summarize(records), weight_rows, notes, tables)


def _row_notes(table: TensorTable, rows: list[CheckpointRecord]) -> list[str]:
    """What the user should know about one checkpoint's rows: none, an assumed eps, flags."""
    notes = []
    if not rows:
        notes.append(describe_without_batchnorm(table))
    elif not table.eps:
        notes.append(f"{table.label}: eps is not stored in state dicts; assumed {DEFAULT_EPS:g}")
    flagged = [r.name for r in rows if r.flags]
    if flagged:
        notes.append(
            f"{table.label}: {len(flagged)} BatchNorm layers have suspicious running "
            f"variances (see the flags column), e.g. {flagged[0]}"
        )
    return notes
