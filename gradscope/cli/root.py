"""The Typer app: parses arguments, calls the engine, hands records to output and plot.

``main`` builds the app with only the command it runs, so a command pays for its own imports
and no other's (``gradscope ratios`` never imports the checkpoint readers; ``--help`` imports
no numpy); ``gradscope.cli.app`` is the whole app, built on first use.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from typing import Annotated, Any

import typer

from gradscope._version import __version__
from gradscope.cli import coercion
from gradscope.cli.common import Command, Group, error, help_text, silence_stdout, user_errors

coercion.install()  # plain values without pydantic: 0.1 s of every run's start-up

# In the order of the workflow: theory, measurement, trained checkpoints, figures.
COMMANDS = {
    "ratios": "gradscope.cli.ratios:ratios_command",
    "simulate": "gradscope.cli.simulate:simulate_command",
    "inspect-checkpoint": "gradscope.cli.inspect_checkpoint:inspect_checkpoint_command",
    "plot": "gradscope.cli.plot:plot_command",
}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gradscope {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Make exploding and vanishing gradients visible, measurable and predictable."""


def build_app(names: Iterable[str] = COMMANDS) -> typer.Typer:
    """The app with the commands ``names`` (all of them by default), in workflow order."""
    app = typer.Typer(
        name="gradscope",
        cls=Group,
        help="Make exploding and vanishing gradients visible, measurable and predictable.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    wanted = set(names)
    for name, target in COMMANDS.items():
        if name in wanted:
            module, _, function = target.partition(":")
            command = getattr(importlib.import_module(module), function)
            app.command(name, cls=Command, help=help_text(command))(user_errors(command))
    return app


def _command_in(args: list[str]) -> str | None:
    """The subcommand an argument list runs, when only options for the root come before it."""
    for arg in args:
        if arg in COMMANDS:
            return arg
        if not arg.startswith("-"):
            return None
    return None


_FULL_APP: typer.Typer | None = None


def __getattr__(name: str) -> Any:
    global _FULL_APP
    if name == "app":
        if _FULL_APP is None:
            _FULL_APP = build_app()
        return _FULL_APP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        command = next((a for a in args if a in COMMANDS), None)
        if command is not None:
            path = f"gradscope {command}"
    return f"{message.rstrip('.')} (see '{path} --help')."


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: a usage error (an unknown option, a value of the wrong type) is one
    ``Error:`` line on stderr and exit 2, as click's own convention, instead of its framed box;
    a user error is one line and exit 1."""
    args = sys.argv[1:] if argv is None else argv
    command = _command_in(args)
    app = build_app([command] if command is not None else COMMANDS)
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
    sys.exit(_flushed(code if isinstance(code, int) else 0))


def _flushed(code: int) -> int:
    """``code``, once what is buffered for stdout is written; 1 with one line when it cannot
    be (``> /dev/full``), 0 quietly when the reader went away (``| head``)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
    except OSError as exc:
        error(f"cannot write to stdout: {exc.strerror or exc}")
        silence_stdout()
        return 1
    return code
