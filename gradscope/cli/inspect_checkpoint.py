"""``gradscope inspect-checkpoint``: BatchNorm statistics of trained checkpoints (torch lazily)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gradscope.cli.common import (
    FormatOpt,
    MetaOpt,
    NoMetaOpt,
    OutputOpt,
    check_meta_options,
    check_outputs,
    command_line,
    note,
)
from gradscope.errors import OutputError, SpecError
from gradscope.options import Format
from gradscope.output import emit, resolve_format

SourcesArg = Annotated[
    list[str],
    typer.Argument(
        metavar="PATH_OR_NAME",
        help="Checkpoints: torch.save files (.pt .pth .ckpt .bin; zip or legacy format), "
        ".safetensors files, sharded directories with an *.index.json, TorchScript "
        "archives; a torchvision model name (vgg19_bn: its ImageNet weights) or an "
        "http(s) URL, downloaded once into the torch hub cache; or hf://OWNER/REPO (or "
        ".../FILE) from the Hugging Face Hub (needs the hub extra). Several give one table "
        "with a checkpoint column.",
        show_default=False,
    ),
]

KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        "-k",
        metavar="KEY",
        help="Where the state dict sits in a checkpoint dict (state_dict, model, ema, "
        "...); found automatically when omitted.",
        show_default=False,
    ),
]

TrustPickleOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow files that need full unpickling (a whole pickled nn.Module). "
        "Unpickling can run arbitrary code: only for files you trust.",
    ),
]

WeightsOpt = Annotated[
    bool,
    typer.Option(
        "--weights",
        help="List per-layer weight norms (every tensor of 2 or more dimensions) "
        "instead of BatchNorm layers; works for any checkpoint.",
    ),
]

SummaryOpt = Annotated[
    bool,
    typer.Option(
        "--summary",
        help="Output the summary (the headline fit first, with its verdict; fits per "
        "segment or block position; sigma ratios across downsamples and largest jumps) as "
        "the records instead of the layers.",
    ),
]

PlotOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        metavar="FIG",
        help="Draw sigma against layer index (log scale; segments shaded, downsamples "
        "marked, layers left out of the fits grey, the headline fit dashed) to FIG "
        "(.png, .svg or .pdf).",
        dir_okay=False,
        show_default=False,
    ),
]

LayersOpt = Annotated[
    str | None,
    typer.Option(
        "--layers",
        metavar="RANGE",
        help="BatchNorm layers (1-based) the fits use: 2: , 2:6 , :8 (ends included) or "
        "2,3,5. Default: all but the layer(s) that see the raw input.",
        show_default=False,
    ),
]

IncludeInputOpt = Annotated[
    bool,
    typer.Option(
        "--include-input-layer",
        help="Let the fits use the BatchNorm layer(s) that see the raw input (the first "
        "conv's input is data, not a gradient-shaped signal: left out by default).",
    ),
]

DownsampleOpt = Annotated[
    str | None,
    typer.Option(
        "--downsample-after",
        metavar="LIST",
        help="BatchNorm indices a downsample (pool, strided conv) follows, e.g. 2,4,8, or "
        "none: for structure the checkpoint cannot show (functional pools). Default: from "
        "the layout's names, a module graph, or channel changes.",
        show_default=False,
    ),
]

EpsOpt = Annotated[
    float | None,
    typer.Option(
        "--eps",
        help="BatchNorm eps where the checkpoint does not store it (a state dict never "
        "does; a saved module does). Default 1e-5.",
        show_default=False,
    ),
]

OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="Never use the network: model names, URLs and hf:// sources are read from "
        "the torch hub or Hugging Face cache only.",
    ),
]


def inspect_checkpoint_command(
    ctx: typer.Context,
    sources: SourcesArg,
    key: KeyOpt = None,
    trust_pickle: TrustPickleOpt = False,
    weights: WeightsOpt = False,
    summary: SummaryOpt = False,
    plot: PlotOpt = None,
    layers: LayersOpt = None,
    include_input_layer: IncludeInputOpt = False,
    downsample_after: DownsampleOpt = None,
    eps: EpsOpt = None,
    offline: OfflineOpt = False,
    fmt: FormatOpt = Format.auto,
    output: OutputOpt = None,
    meta_file: MetaOpt = None,
    no_meta: NoMetaOpt = False,
) -> None:
    """BatchNorm running statistics per layer, in module order: sigma = sqrt(mean running_var)
    grows from deep to shallow layers when gradients explode (the paper's Appendix A). Fits
    within segments between downsamples, and a verdict on stderr.

    No code from the file runs unless --trust-pickle is given; names and URLs download once.

    Example: gradscope inspect-checkpoint vgg19_bn --plot sigma.png
    """
    started = time.time()
    check_outputs(fmt, output, plot, meta_file)
    check_meta_options(meta_file, no_meta, output, plot)
    if eps is not None and not eps >= 0:
        raise SpecError(f"--eps must be 0 or more, got {eps}")

    from gradscope.checkpoint import inspect_checkpoint
    from gradscope.checkpoint.structure import parse_downsample_after

    after = parse_downsample_after(downsample_after) if downsample_after is not None else None
    result = inspect_checkpoint(
        sources, key=key, trust_pickle=trust_pickle, weights=weights, offline=offline,
        eps=eps, layers=layers, include_input_layer=include_input_layer, downsample_after=after,
    )  # fmt: skip
    for message in result.notes:
        note(message)
    if not weights:
        for sentence in result.verdicts:
            note(f"Verdict: {sentence}")
    meta = None
    if _meta_goes_somewhere(no_meta, fmt, output, plot, meta_file):
        from gradscope.provenance import checkpoint_meta

        # What was read and how: every option but the sources and where the results go.
        options = {k: v for k, v in ctx.params.items() if k not in _WHERE_RESULTS_GO}
        meta = checkpoint_meta(_sources(sources, result), options, started, command_line(ctx))
    _emit(result, weights, summary, fmt, output, meta, meta_file)
    if plot is not None and result.records and not weights:
        title = "BatchNorm σ per layer"
        if len(result.summary) and len(result.verdicts) == 1:
            title += f": {result.summary[0].verdict}"
        from gradscope.cli.plot import plot_to_file  # matplotlib's path, only for a figure

        plot_to_file(result.records, plot, meta, title=title)
    elif plot is not None:
        note(f"no plot written to {plot}: there are no BatchNorm layers to draw")


_WHERE_RESULTS_GO = {"sources", "fmt", "output", "plot", "meta_file", "no_meta"}


def _meta_goes_somewhere(
    no_meta: bool, fmt: Format, output: Path | None, plot: Path | None, meta_file: Path | None
) -> bool:
    """Whether a meta would be written: to a sidecar or --meta file, into JSON output or a
    figure. Records printed as CSV or a table carry none, so the checkpoint's SHA-256 (0.4 s
    for 575 MB) is not computed for them."""
    if no_meta:
        return False
    if output is not None or plot is not None or meta_file is not None:
        return True
    return resolve_format(fmt, sys.stdout.isatty()) is Format.json


def _sources(given: list[str], result: Any) -> list[tuple[str, str]]:
    """Each source as given, with the local file or directory it was read from."""
    return [(str(name), table.path) for name, table in zip(given, result.sources, strict=True)]


def _emit(
    result: Any,
    weights: bool,
    summary: bool,
    fmt: Format,
    output: Path | None,
    meta: dict[str, Any] | None,
    meta_file: Path | None,
) -> None:
    """The weights, the summary or the layers (with the summary under them), to stdout or -o,
    with the provenance ``meta`` (in JSON, or in a sidecar file beside -o)."""
    where: dict[str, Any] = dict(meta=meta, meta_file=meta_file)
    if weights:
        emit(result.weights, fmt, output, title="weights", **where)
    elif not result.records:
        if output is not None:
            raise OutputError(
                f"nothing to write to {output}: no BatchNorm layers were found "
                "(--weights lists per-layer weight norms instead)"
            )
    elif summary:
        emit(result.summary, fmt, output, title="sigma growth from deep to shallow", **where)
    else:
        emit(
            result.records,
            fmt,
            output,
            summary=result.summary,
            title="BatchNorm layers",
            summary_title="sigma growth per layer from deep to shallow (headline fit first)",
            **where,
        )
