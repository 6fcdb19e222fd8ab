"""The command line: a Typer app and one thin module per command."""

from __future__ import annotations

from typing import Any

from gradscope.cli.root import main

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole app, built on first use (main builds only what it runs)
        from gradscope.cli import root

        return root.app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
