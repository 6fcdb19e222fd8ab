"""One error hierarchy: every user-facing failure is a GradscopeError with one sentence."""

from __future__ import annotations

import re


class GradscopeError(Exception):
    """A user error. The CLI prints ``Error: <message>`` on stderr and exits 1.

    A message names an option by its Python parameter as ``{--name}`` (``{option}`` is short
    for ``{--<option>}``): ``str(exc)`` reads ``depth must be at least 1`` for the Python
    API, and :meth:`cli_message` ``--depth must be at least 1`` for the command line.
    """

    def __init__(self, message: str, *, option: str | None = None) -> None:
        self.template = (
            message if option is None else message.replace("{option}", f"{{--{option}}}")
        )
        self.option = option
        super().__init__(_PARAMETER.sub(lambda m: m.group(1), self.template))

    def cli_message(self, flags: dict[str, str] | None = None) -> str:
        """The message with every option named by its flag (``flags`` maps the parameters
        whose flag is not ``--`` + the name with dashes)."""
        names = flags or {}
        return _PARAMETER.sub(
            lambda m: names.get(m.group(1)) or "--" + m.group(1).replace("_", "-"), self.template
        )


_PARAMETER = re.compile(r"\{--([A-Za-z_][A-Za-z0-9_]*)\}")


class SpecError(GradscopeError):
    """An option or specification is invalid (bad depth, unknown activation, ...)."""


class UsageError(SpecError):
    """A command-line value that does not parse (``--depth abc``, an unknown choice): the CLI
    exits 2, as click does for a value of the wrong type; for Python it is a SpecError."""


class ExpressionError(SpecError):
    """A user activation expression (``--expr``) cannot be parsed or evaluated."""


class InputFileError(GradscopeError):
    """An input file (records, checkpoint, model file) is missing or unreadable."""


class CheckpointError(InputFileError):
    """A checkpoint cannot be read safely, or holds nothing gradscope can use."""


class RecordsError(InputFileError):
    """Records read from CSV/JSON are empty or do not have the expected columns."""


class OutputError(GradscopeError):
    """An output file cannot be written (missing directory, unknown extension)."""


class ResourceError(GradscopeError):
    """A job would exceed a resource limit (memory) and was refused before starting."""


class PlotWarning(UserWarning):
    """Something in the records was left out of the figure (non-positive values on a log axis)."""
