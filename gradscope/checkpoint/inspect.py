"""``inspect_checkpoint``: open each checkpoint, read its BatchNorm rows, fit, give the verdict,
and say what was assumed or found (the notes)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from gradscope.checkpoint.batchnorm import (
    DEFAULT_EPS,
    describe_without_batchnorm,
    read_layers,
    weight_records,
)
from gradscope.checkpoint.open import open_checkpoint
from gradscope.checkpoint.structure import Structure
from gradscope.checkpoint.table import TensorTable, short_error
from gradscope.checkpoint.verdict import fit_checkpoint
from gradscope.errors import CheckpointError, SpecError, UsageError
from gradscope.schema import CheckpointRecord, CheckpointSummaryRecord, WeightRecord

# Running variances within this factor of eps: the two σ columns differ, and a note says so.
EPS_MATTERS = 100.0


@dataclass
class CheckpointResult:
    """What :func:`inspect_checkpoint` found. ``notes`` are for the user (stderr);
    ``verdicts`` holds one sentence per checkpoint with BatchNorm layers (``Verdict:`` lines)."""

    records: list[CheckpointRecord]
    summary: list[CheckpointSummaryRecord]
    weights: list[WeightRecord]
    notes: list[str]
    sources: list[TensorTable]
    verdicts: list[str] = field(default_factory=list)


def inspect_checkpoint(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    key: str | None = None,
    trust_pickle: bool = False,
    weights: bool = False,
    offline: bool = False,
    progress: bool = True,
    eps: float | None = None,
    layers: str | None = None,
    include_input_layer: bool = False,
    downsample_after: Sequence[int] | None = None,
) -> CheckpointResult:
    """BatchNorm statistics, growth fits and a verdict (and optionally weight norms) of one or
    more checkpoints.

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
        eps: BatchNorm's eps where the checkpoint does not store it (state dicts never do;
            a saved module does); 1e-5 when None.
        layers: the BatchNorm layers (1-based) the fits use: ``2:``, ``:8``, ``2:6`` (both
            ends included) or ``2,3,5``; by default every layer but the input layer(s).
        include_input_layer: let the default fits use the layer(s) that see the raw input.
        downsample_after: BatchNorm indices a downsample follows, for structure the
            checkpoint cannot show (empty: no downsample).

    Returns:
        Records in module order, the summary (each checkpoint's headline fit first), weight
        records, notes and verdict sentences for the user.

    Raises:
        CheckpointError: a source is missing, corrupt, unsafe, or holds no tensors, or its
            download failed (or, offline, would be needed).
        SpecError: ``layers`` or ``downsample_after`` names a layer the checkpoint lacks.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise CheckpointError("no checkpoint given")
    result = CheckpointResult([], [], [], [], [])
    for source in sources:
        table = open_checkpoint(
            source, key=key, trust_pickle=trust_pickle, offline=offline, progress=progress
        )
        result.sources.append(table)
        result.notes.extend(table.notes)
        rows, structure = _read(table, eps, downsample_after, weights, result.weights)
        if rows:
            rows = _select(rows, layers, include_input_layer, table.label)
            fits = fit_checkpoint(rows)
            rows = fits.records
            result.summary.extend(fits.summary)
            result.verdicts.append(f"{table.label}: {fits.sentence}")
        default = layers is None and not include_input_layer
        result.notes.extend(_row_notes(table, rows, structure, default, eps))
        result.records.extend(rows)
    return result


def _read(
    table: TensorTable,
    eps: float | None,
    downsample_after: Sequence[int] | None,
    weights: bool,
    weight_rows: list[WeightRecord],
) -> tuple[list[CheckpointRecord], Structure]:
    """The BatchNorm records of one table and their structure (and its weight records when
    asked)."""
    try:
        rows, structure = read_layers(table, eps=eps, downsample_after=downsample_after)
        if weights:
            weight_rows.extend(weight_records(table))
    except SpecError as exc:
        raise SpecError(f"{table.label}: {exc.template}") from None
    except CheckpointError as exc:
        text = str(exc)
        if table.label in text or table.path in text:  # it names the file already: once
            raise
        raise CheckpointError(f"{table.label}: {text}") from None
    except Exception as exc:
        raise CheckpointError(f"{table.label} could not be read ({short_error(exc)})") from None
    return rows, structure


def parse_layers(text: str, count: int, label: str = "") -> set[int]:
    """``--layers`` as the set of 1-based BatchNorm indices it names among ``count`` layers.

    Raises:
        SpecError: malformed, or naming a layer outside 1..count.
    """
    where = f" of {label}" if label else ""
    message = f"{{--layers}} {text} is outside the BatchNorm layers{where} (1–{count})"
    try:
        if ":" in text:
            start, _, stop = text.partition(":")
            first = int(start) if start.strip() else 1
            last = int(stop) if stop.strip() else count
            chosen = set(range(first, last + 1))
            ends = {first, last}
        else:
            chosen = {int(part) for part in text.split(",")}
            ends = chosen
    except ValueError:
        raise UsageError(
            f"{{--layers}} takes a range or a list of BatchNorm indices (2:, 2:6, :8 or 2,3,5), "
            f"got {text!r}"
        ) from None
    if not chosen or any(not 1 <= i <= count for i in ends):
        raise SpecError(message)
    return chosen


def _select(
    rows: list[CheckpointRecord], layers: str | None, include_input: bool, label: str
) -> list[CheckpointRecord]:
    """``in_fit`` per row: the layers named by ``layers``, else all but the input layer(s)
    unless ``include_input``."""
    if layers is None and not include_input:
        return rows
    chosen = parse_layers(layers, len(rows), label) if layers is not None else None
    return [
        dataclasses.replace(r, in_fit=r.index in chosen if chosen is not None else True)
        for r in rows
    ]


def _row_notes(
    table: TensorTable,
    rows: list[CheckpointRecord],
    structure: Structure,
    default: bool,
    eps: float | None,
) -> list[str]:
    """What the user should know about one checkpoint's rows: none, structure, the input
    layer, eps, flags."""
    label = table.label
    if not rows:
        return [describe_without_batchnorm(table)]
    after = [str(r.index - 1) for r in rows if r.after_downsample]
    where = f"after BatchNorm layers {', '.join(after)}" if after else "none"
    notes = [f"{label}: downsamples {where}, {structure.source}"]
    left_out = [rows[i] for i in sorted(structure.input_layers)]
    if default and left_out and len(left_out) < len(rows):
        names = ", ".join(f"{r.index} ({r.name})" for r in left_out)
        notes.append(
            f"{label}: BatchNorm layer {names} sees the raw input (data, not a gradient-shaped "
            "signal) and is left out of the fits; --include-input-layer or --layers keeps it"
        )
    if not table.eps:
        given = f"--eps {eps:g}" if eps is not None else f"{DEFAULT_EPS:g}, the default (--eps)"
        notes.append(f"{label}: eps is not stored in state dicts; used {given}")
    near = [r for r in rows if r.running_var_min < EPS_MATTERS * r.eps]
    if near:
        notes.append(
            f"{label}: eps matters in {len(near)} layers (running_var within {EPS_MATTERS:g}× "
            f"of eps, e.g. {near[0].name}): see sigma_with_eps beside sigma"
        )
    flagged = [r.name for r in rows if set(r.flags.split(",")) - {"", "init"}]
    if flagged:
        notes.append(
            f"{label}: {len(flagged)} BatchNorm layers have suspicious running "
            f"variances (see the flags column), e.g. {flagged[0]}"
        )
    notes.extend(_tracking_notes(label, rows))
    return notes


def _tracking_notes(label: str, rows: list[CheckpointRecord]) -> list[str]:
    at_init = [r for r in rows if "init" in r.flags.split(",")]
    zero = [r for r in rows if r.num_batches_tracked == 0]
    notes = []
    if at_init and len(at_init) < len(rows):
        notes.append(
            f"{label}: {len(at_init)} of {len(rows)} BatchNorm layers still have their initial "
            f"running statistics, e.g. {at_init[0].name}"
        )
    if zero and len(zero) == len(rows) and not at_init:
        notes.append(
            f"{label}: num_batches_tracked is 0 in every layer, yet the running statistics "
            "moved (weights converted from another framework?): read as trained"
        )
    return notes
