"""The Typer app: parses arguments, calls the engine, hands records to output and plot."""

from __future__ import annotations

from typing import Annotated

import typer

from gradscope._version import __version__
from gradscope.commands.common import user_errors
from gradscope.commands.inspect_checkpoint import inspect_checkpoint_command
from gradscope.commands.plot import plot_command
from gradscope.commands.ratios import ratios_command
from gradscope.commands.simulate import simulate_command

app = typer.Typer(
    name="gradscope",
    help="Make exploding and vanishing gradients visible, measurable and predictable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gradscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Make exploding and vanishing gradients visible, measurable and predictable."""


app.command("ratios")(user_errors(ratios_command))
app.command("plot")(user_errors(plot_command))
app.command("inspect-checkpoint")(user_errors(inspect_checkpoint_command))
app.command("simulate")(user_errors(simulate_command))


def main() -> None:
    app(prog_name="gradscope")
