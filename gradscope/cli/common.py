"""Options and error handling shared by every command (no torch)."""

from __future__ import annotations

import errno
import functools
import inspect
import os
import shlex
import sys
import types
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from gradscope.errors import GradscopeError, SpecError, UsageError
from gradscope.options import Format
from gradscope.records import printable

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

PROVENANCE_PANEL = "Provenance"

MetaOpt = Annotated[
    Path | None,
    typer.Option(
        "--meta",
        metavar="FILE",
        help="Write the provenance (versions, device, every option with defaults resolved, "
        "command line, times, the SHA-256 of each input file, and a model file's git commit) "
        "to FILE as JSON. Default: FILE.meta.json beside -o; JSON output holds it as meta.",
        dir_okay=False,
        show_default=False,
        rich_help_panel=PROVENANCE_PANEL,
    ),
]

NoMetaOpt = Annotated[
    bool,
    typer.Option(
        "--no-meta",
        help="No provenance: no sidecar file, JSON records as a plain list, figures without it.",
        rich_help_panel=PROVENANCE_PANEL,
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
    _stderr_line(f"Error: {printable(message)}")


def warn(message: str) -> None:
    """One line on stderr: ``Warning: <message>``."""
    _stderr_line(f"Warning: {printable(message)}")


def note(message: str) -> None:
    """A message on stderr (``Verdict: ...``, ``wrote FILE``); its own line breaks stay."""
    _stderr_line(printable(message, newlines=True))


def _stderr_line(text: str) -> None:
    """Messages quote names from files and the command line: :func:`printable` shows their
    control characters as escapes (an OSC or CSI sequence in a layer name must not drive the
    terminal)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# A failed write, never a failed read: stdout on a full disk, ``> /dev/full``, over quota.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that what is still buffered for a stdout that failed
    (or whose reader went away) is not written again, with a traceback, at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def user_errors(func: F) -> F:
    """Map gradscope's errors to one line on stderr and exit code 1 (2 for a value that does not
    parse, as click does); real bugs keep a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GradscopeError as exc:
            error(exc.cli_message(PARAMETER_FLAGS))
            if type(exc).__name__ == "StdoutError":
                silence_stdout()
            raise typer.Exit(2 if isinstance(exc, UsageError) else 1) from None
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): stop quietly, like other Unix tools.
            silence_stdout()
            raise typer.Exit(0) from None
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                raise
            # Output that was not an -o file (those fail with an OutputError): stdout.
            error(f"cannot write to stdout: {exc.strerror}")
            silence_stdout()
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def parse_list(text: str, what: str) -> list[str]:
    """Split a comma list, rejecting empty items."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise UsageError(
            f"{{option}} must be a comma-separated list without empty items, got {text!r}",
            option=what,
        )
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


def command_line(ctx: typer.Context) -> str:
    """The command line, rebuilt from what click parsed: ``gradscope <command>`` and each
    parameter the user gave (see :func:`given_options`), options by their long flag, in the
    command's order. It runs the same command as the one typed (for the provenance)."""
    given = given_options(ctx)
    words = ["gradscope", ctx.info_name or ""]
    for param in ctx.command.params:
        if param.name not in given:
            continue
        value = ctx.params[param.name]
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if param.param_type_name == "argument":
            words += [_word(v) for v in values]
            continue
        flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])
        if getattr(param, "is_flag", False) and isinstance(value, bool):
            off = next(iter(getattr(param, "secondary_opts", None) or []), None)
            words += [flag] if value else [off] if off else []
            continue
        for item in values:
            words += [flag, _word(item)]
    return shlex.join(words)


def _word(value: Any) -> str:
    return str(value.value if isinstance(value, Enum) else value)


def typed_options(
    values: Mapping[str, Any], command: Callable[..., Any], where: str
) -> dict[str, Any]:
    """Options read from JSON (``where``: the source and field, for messages) as the values
    the command's parameters take: enums from their values, paths from text, numbers checked.

    Raises:
        SpecError: one sentence naming the field: an unknown option or a value of the wrong
            type.
    """
    hints = typing.get_type_hints(command)
    out = {}
    for name, value in values.items():
        if name not in hints or name in ("ctx", "return"):
            raise SpecError(f"{where}.{name} is not an option of this gradscope")
        out[name] = _typed(value, hints[name], f"{where}.{name}")
    return out


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text",
          Path: "a file name"}  # fmt: skip


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type ``hint`` names (one of a command's parameter types)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = typing.get_args(hint) if union else (hint,)
    if value is None:
        if type(None) in kinds:
            return None
        raise SpecError(f"{where} must not be null")
    kind = next(k for k in kinds if k is not type(None))
    if typing.get_origin(kind) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise SpecError(f"{where} must be a list of text, got {value!r}")
    if isinstance(kind, type) and issubclass(kind, Enum):
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in kind)
            raise SpecError(f"{where} must be one of {choices}, got {value!r}") from None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {
        bool: isinstance(value, bool),
        int: number and isinstance(value, int),
        float: number,
        str: isinstance(value, str),
        Path: isinstance(value, str),
    }.get(kind, False)
    if not ok:
        raise SpecError(f"{where} must be {_KINDS.get(kind, kind)}, got {value!r}")
    return float(value) if kind is float else Path(value) if kind is Path else value


def check_meta_options(
    meta_file: Path | None, no_meta: bool, output: Path | None, plot: Path | None
) -> None:
    """``--meta FILE`` and ``--no-meta`` exclude each other, and FILE is not also the records'
    or the figure's output (every command that writes a meta checks this)."""
    if meta_file is not None and no_meta:
        raise SpecError("--meta and --no-meta contradict each other; give one")
    if meta_file is not None and meta_file in (output, plot):
        raise SpecError(f"--meta {meta_file} is also an output of the records or the figure")


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
