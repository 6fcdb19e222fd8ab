"""Options and error handling shared by every command (no torch)."""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from gradscope.errors import GradscopeError, SpecError
from gradscope.options import Format

F = TypeVar("F", bound=Callable[..., Any])

FormatOpt = Annotated[
    Format,
    typer.Option(
        "--format",
        "-f",
        help="Output format; auto is a table on a terminal and CSV in a pipe, "
        "or follows the -o extension (.csv, .json, .txt).",
        case_sensitive=False,
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        help="Write the records to FILE (whole or not at all).",
        dir_okay=False,
    ),
]


class _NamedArgument(TyperArgument):
    """A positional argument whose metavar already says what it takes (``FILE``): help shows
    no ``<list[str]>`` type beside it."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def _plain_placeholders(params: list[Any]) -> list[Any]:
    """Parameters as help should show them: a flag takes no value, so it has no placeholder
    (typer would show ``<bool>``), and an argument with a metavar shows no type."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        elif type(param) is TyperArgument and param.metavar is not None:
            param.__class__ = _NamedArgument
    return params


class Command(TyperCommand):
    """A gradscope command: help without placeholders after flags (see _plain_placeholders)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_placeholders(super().get_params(ctx))


class Group(TyperGroup):
    """The gradscope command group, with the same help conventions as :class:`Command`."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_placeholders(super().get_params(ctx))


def help_text(func: Callable[..., Any]) -> str:
    """A command's docstring as its help: the lines of each paragraph joined, so that help
    wraps paragraphs at word boundaries to the terminal instead of breaking them where the
    source does (typer's rich help keeps single line breaks in the command list and in every
    paragraph after the first)."""
    paragraphs = inspect.cleandoc(func.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


# Engine parameters whose flag is not ``--`` + the name with dashes.
PARAMETER_FLAGS = {"steps": "--train-steps", "fmt": "--format"}


def error(message: str) -> None:
    """One line on stderr: ``Error: <message>``."""
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    sys.stderr.write(f"Warning: {message}\n")
    sys.stderr.flush()


def note(message: str) -> None:
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()


def user_errors(func: F) -> F:
    """Map gradscope's errors to one line on stderr and exit code 1; real bugs keep a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GradscopeError as exc:
            error(exc.cli_message(PARAMETER_FLAGS))
            raise typer.Exit(1) from None
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): stop quietly, like other Unix tools.
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            raise typer.Exit(0) from None

    return wrapper  # type: ignore[return-value]


def parse_list(text: str, what: str) -> list[str]:
    """Split a comma list, rejecting empty items."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise SpecError(f"{what} must be a comma-separated list without empty items, got {text!r}")
    return items


def given_options(ctx: typer.Context) -> set[str]:
    """The parameters the user gave (on the command line or through an environment
    variable), from click's parameter source: an option given with its default value counts.

    Compared by name: newer Typer releases vendor their own copy of click's enum.
    """
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.add(name)
    return given


def check_outputs(
    fmt: Format, output: Path | None, plot: Path | None = None, *others: Path | None
) -> None:
    """Check every output a command will write before any work: the records file (its format
    from ``fmt`` or the extension), the figure (its format from the extension) and any other
    file. A bad path then never costs a run or leaves one file written and another not."""
    from gradscope.output import check_output_path, resolve_format

    if output is not None:
        resolve_format(fmt, False, output)
    if plot is not None:
        from gradscope.plot.write import figure_format

        figure_format(plot)
    for path in (output, plot, *others):
        if path is not None:
            check_output_path(path)
