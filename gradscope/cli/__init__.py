"""The command line: a Typer app and one thin module per command."""

from __future__ import annotations

from gradscope.cli.app import app, main

__all__ = ["app", "main"]
