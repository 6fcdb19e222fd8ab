"""``gradscope ratios``: analytic forward/backward scaling ratios (no torch)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gradscope.cli.common import FormatOpt, OutputOpt
from gradscope.options import Format, LinearInit
from gradscope.output import emit


def ratios_command(
    operators: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="ACTIVATION|OPERATOR",
            help="Activations (relu, leaky_relu:0.2, elu:0.5, softplus:2, ...) or operators "
            "(maxpool:4, batchnorm:128, linear:512x256). Default: the common activations, "
            "sorted by rate.",
            show_default=False,
        ),
    ] = None,
    expr: Annotated[
        list[str] | None,
        typer.Option(
            "--expr",
            "-e",
            metavar="EXPR",
            help="Your own activation as an expression in x, "
            "e.g. 'x*tanh(log(1+exp(x)))' (repeatable; needs SymPy).",
            show_default=False,
        ),
    ] = None,
    input_std: Annotated[
        str,
        typer.Option(
            "--input-std",
            "-s",
            metavar="STDS",
            help="Std of the Gaussian input: 1, a list 0.5,1,2 "
            "or a log range start:stop:count (0.25:4:16).",
        ),
    ] = "1",
    depth: Annotated[
        int, typer.Option("--depth", "-L", help="Depth for the amplification column.")
    ] = 20,
    init: Annotated[
        LinearInit, typer.Option("--init", help="Initialisation for linear:DOUTxDIN rows.")
    ] = LinearInit.he,
    list_activations: Annotated[
        bool,
        typer.Option(
            "--list", help="List the built-in activations and operators, with their parameters."
        ),
    ] = False,
    fmt: FormatOpt = Format.auto,
    output: OutputOpt = None,
) -> None:
    """Forward and backward variance ratios of activations and operators, and the
    gradient growth per layer they imply behind BatchNorm.

    Example: gradscope ratios relu tanh selu --input-std 0.5,1,2
    """
    if list_activations:
        emit(_listing(), fmt, output)
        return
    from gradscope.theory.ratios import parse_input_std, ratios  # numpy: not for --help

    stds = parse_input_std(input_std)
    records = ratios(
        operators or (), expressions=expr or (), input_std=stds, depth=depth, init=init
    )
    emit(records, fmt, output, title=f"scaling ratios (depth {depth} for amplification)")


def _listing() -> list[dict[str, Any]]:
    """``--list``: the built-in activations, then the operators, with their parameters."""
    from gradscope.activations import ACTIVATIONS
    from gradscope.theory.ratios import OPERATORS

    activations = [
        {
            "activation": a.name,
            "aliases": ",".join(a.aliases) or None,
            "parameter": a.param_name,
            "default": a.default_param,
            "closed_form": a.pieces is not None,
            "definition": a.description,
        }
        for a in ACTIVATIONS.values()
    ]
    operators = [
        {
            "activation": o.name,
            "aliases": None,
            "parameter": o.parameter,
            "default": None,
            "closed_form": o.closed_form,
            "definition": o.definition,
        }
        for o in OPERATORS
    ]
    return activations + operators
