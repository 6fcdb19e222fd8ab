"""One error hierarchy: every user-facing failure is a GradscopeError with one sentence."""

from __future__ import annotations


class GradscopeError(Exception):
    """A user error. The CLI prints ``Error: <message>`` on stderr and exits 1."""


class SpecError(GradscopeError):
    """An option or specification is invalid (bad depth, unknown activation, ...)."""


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
