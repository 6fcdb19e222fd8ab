"""The Typer app: parses arguments, calls the engine, hands records to output and plot."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from gradscope._version import __version__
from gradscope.cli.common import Command, Group, help_text, user_errors
from gradscope.cli.inspect_checkpoint import inspect_checkpoint_command
from gradscope.cli.plot import plot_command
from gradscope.cli.ratios import ratios_command
from gradscope.cli.simulate import simulate_command

app = typer.Typer(
    name="gradscope",
    cls=Group,
    help="Make exploding and vanishing gradients visible, measurable and predictable.",
    no_args_is_help=True,
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
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Make exploding and vanishing gradients visible, measurable and predictable."""


# In the order of the workflow: theory, measurement, trained checkpoints, figures.
COMMANDS: dict[str, Callable[..., Any]] = {
    "ratios": ratios_command,
    "simulate": simulate_command,
    "inspect-checkpoint": inspect_checkpoint_command,
    "plot": plot_command,
}
for _name, _command in COMMANDS.items():
    app.command(_name, cls=Command, help=help_text(_command))(user_errors(_command))


def _usage_error(exc: Exception, argv: list[str] | None = None) -> str | None:
    """The one-line message of a command-line usage error (an unknown option, a value of the
    wrong type), or None when ``exc`` is not one. Typer raises click's exceptions, from click
    itself or from the copy that newer Typer releases vendor, so this goes by their interface.
    """
    format_message = getattr(exc, "format_message", None)
    if format_message is None or not hasattr(exc, "exit_code"):
        return None
    message = " ".join(str(format_message()).split())
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "gradscope"
    if path == "gradscope":  # some errors are raised before the subcommand's context exists
        args = sys.argv[1:] if argv is None else argv
        commands = {c.name for c in app.registered_commands}
        command = next((a for a in args if a in commands), None)
        if command is not None:
            path = f"gradscope {command}"
    return f"{message.rstrip('.')} (see '{path} --help')."


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: a usage error (an unknown option, a value of the wrong type) is one
    ``Error:`` line on stderr and exit 2, as click's own convention, instead of its framed box;
    a user error is one line and exit 1."""
    try:
        code = app(args=argv, prog_name="gradscope", standalone_mode=False)
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
            sys.exit(0)
        if type(exc).__name__ == "Abort":
            sys.stderr.write("Aborted.\n")
            sys.exit(130)
        message = _usage_error(exc, argv)
        if message is None:
            raise
        sys.stderr.write(f"Error: {message}\n")
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
