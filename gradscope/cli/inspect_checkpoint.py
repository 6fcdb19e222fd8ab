"""``gradscope inspect-checkpoint``: BatchNorm statistics of trained checkpoints (torch lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gradscope.cli.common import FormatOpt, OutputOpt, check_outputs, note
from gradscope.cli.plot import plot_to_file
from gradscope.errors import OutputError
from gradscope.options import Format
from gradscope.output import emit

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
        help="Output the summary (growth fits per layer from deep to shallow, largest "
        "jumps) as the records instead of the layers.",
    ),
]

PlotOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        metavar="FIG",
        help="Draw sigma against layer index (log scale, downsamples marked) to FIG "
        "(.png, .svg or .pdf).",
        dir_okay=False,
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
    sources: SourcesArg,
    key: KeyOpt = None,
    trust_pickle: TrustPickleOpt = False,
    weights: WeightsOpt = False,
    summary: SummaryOpt = False,
    plot: PlotOpt = None,
    offline: OfflineOpt = False,
    fmt: FormatOpt = Format.auto,
    output: OutputOpt = None,
) -> None:
    """BatchNorm running statistics per layer, in module order: sigma = sqrt(mean running_var)
    grows from deep to shallow layers when gradients explode (the paper's Appendix A).

    No code from the file runs unless --trust-pickle is given; names and URLs download once.

    Example: gradscope inspect-checkpoint vgg19_bn --plot sigma.png
    """
    check_outputs(fmt, output, plot)

    from gradscope.checkpoint import inspect_checkpoint

    result = inspect_checkpoint(
        sources, key=key, trust_pickle=trust_pickle, weights=weights, offline=offline
    )
    for message in result.notes:
        note(message)
    if weights:
        emit(result.weights, fmt, output, title="weights")
    elif summary:
        if result.summary:
            emit(result.summary, fmt, output, title="sigma growth from deep to shallow")
        else:
            note("no summary: fewer than two BatchNorm layers with a positive sigma")
    elif not result.records and output is not None:
        raise OutputError(
            f"nothing to write to {output}: no BatchNorm layers were found "
            "(--weights lists per-layer weight norms instead)"
        )
    elif result.records:
        emit(
            result.records,
            fmt,
            output,
            summary=result.summary,
            title="BatchNorm layers",
            summary_title="sigma growth per layer from deep to shallow (and largest jumps)",
        )
    if plot is not None and result.records and not weights:
        plot_to_file(result.records, plot)
    elif plot is not None:
        note(f"no plot written to {plot}: there are no BatchNorm layers to draw")
