"""Command-line values to Python values, without pydantic.

typer 0.2x coerces every parameter through a pydantic ``TypeAdapter``: importing pydantic and
building the adapters costs about 0.1 s on every run, a third of ``gradscope ratios``'s start-up
(``benchmarks/bench_checkpoint.py`` prints the import times). gradscope's parameters are all
plain types (``str``, ``int``, ``float``, ``bool``, ``Path``, a ``str`` Enum, ``list[str]``),
so :func:`install` gives typer a coercion for them that does what click's own types do, with
click's wording. Any other annotation, and a typer without this hook (older releases coerce
through click's types), keep typer's own behaviour.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Any

import typer

_ZERO_FRACTION = re.compile(r"([+-]?\d+)\.0*")
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


class PlainCoercion:
    """typer's ``RuntimeParam`` contract (``coerce(value, param, ctx)``) for plain types."""

    def __init__(self, annotation: type, info: Any) -> None:
        self.annotation = annotation
        self.info = info

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if param.multiple or param.nargs == -1:
            if value is None:
                return ()
            if isinstance(value, str):
                raise typer.BadParameter("Value must be an iterable.", ctx=ctx, param=param)
            return [self._one(item, param, ctx) for item in value]
        return None if value is None else self._one(value, param, ctx)

    def _one(self, value: Any, param: Any, ctx: Any) -> Any:
        kind = self.annotation
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return self._checked(value, param, ctx)
        text = str(value)
        try:
            if kind is bool:
                return _boolean(text)
            if issubclass(kind, enum.Enum):
                return self._member(text)
            if kind is Path and not text:
                raise ValueError("an empty path")
            converted = kind(text) if kind in (str, Path) else _number(kind, text)
            if isinstance(converted, Path):
                _path_kind(converted, self.info)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), ctx=ctx, param=param) from None
        return self._checked(converted, param, ctx)

    def _member(self, text: str) -> Any:
        members = list(self.annotation)  # type: ignore[call-overload]
        sensitive = getattr(self.info, "case_sensitive", True)
        for member in members:
            value = str(member.value)
            if value == text or (not sensitive and value.lower() == text.lower()):
                return member
        choices = ", ".join(repr(str(m.value)) for m in members)
        raise ValueError(f"{text!r} is not one of {choices}")

    def _checked(self, value: Any, param: Any, ctx: Any) -> Any:
        """The range of a number (``min``/``max``)."""
        low, high = getattr(self.info, "min", None), getattr(self.info, "max", None)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and ((low is not None and value < low) or (high is not None and value > high)):
            bounds = " and ".join(
                f"{word} {bound}"
                for word, bound in (("at least", low), ("at most", high))
                if bound is not None
            )
            raise typer.BadParameter(f"{value} must be {bounds}", ctx=ctx, param=param)
        return value


def _boolean(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a valid boolean")


def _number(kind: type, text: str) -> Any:
    """``int`` or ``float`` of the text; ``2.0`` (a zero fraction, no exponent) is an integer,
    as typer's pydantic coercion accepts it."""
    try:
        return kind(text.strip())
    except ValueError:
        whole = _ZERO_FRACTION.fullmatch(text.strip()) if kind is int else None
        if whole:
            return int(whole.group(1))
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{text!r} is not {what}") from None


def _path_kind(path: Path, info: Any) -> None:
    """typer's ``file_okay``/``dir_okay``: an existing path of the wrong kind is refused."""
    if getattr(info, "dir_okay", True) is False and path.is_dir():
        raise ValueError(f"file {str(path)!r} is a directory")
    if getattr(info, "file_okay", True) is False and path.is_file():
        raise ValueError(f"directory {str(path)!r} is a file")


_PLAIN = (str, int, float, bool, Path)


def _plain(descriptor: Any) -> PlainCoercion | None:
    """Our coercion when the parameter's annotation is plain (a list of a plain type included),
    else None."""
    annotation = descriptor.annotation
    if getattr(descriptor, "is_list", False):
        args: tuple[Any, ...] = getattr(annotation, "__args__", ())
        annotation = args[0] if len(args) == 1 else None
    if getattr(descriptor, "file_annotation", None) is not None or not isinstance(annotation, type):
        return None
    if annotation not in _PLAIN and not issubclass(annotation, enum.Enum):
        return None
    info = descriptor.parameter_info
    if any(getattr(info, flag, False) for flag in ("exists", "resolve_path", "clamp")):
        return None  # typer checks these itself
    return PlainCoercion(annotation, info)


def install() -> None:
    """Give typer's parameters the plain coercion (a no-op where typer has no such hook)."""
    try:
        from typer.core import _TyperParameter
    except ImportError:
        return
    original = getattr(_TyperParameter, "get_runtime_param", None)
    if original is None or getattr(original, "gradscope", False):
        return

    def get_runtime_param(self: Any) -> Any:
        if getattr(self, "_runtime_param", None) is None:
            fast = _plain(self.type_descriptor)
            self._runtime_param = fast if fast is not None else original(self)
        return self._runtime_param

    get_runtime_param.gradscope = True  # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
