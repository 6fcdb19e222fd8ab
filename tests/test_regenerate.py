"""docs/regenerate.py: which blocks are shown outputs, and what counts as drift."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("regenerate", ROOT / "docs" / "regenerate.py")
assert _spec is not None and _spec.loader is not None
regenerate = importlib.util.module_from_spec(_spec)
sys.modules["regenerate"] = regenerate  # dataclasses look their module up there
_spec.loader.exec_module(regenerate)

DOC = """intro
<!-- regenerate: figures=a.png,b.png slow -->
```console
$ echo one \\
    two
one two
$ printf 'x\\ny\\n'
x
y
```
```text
not a command
```
"""


def test_blocks_commands_and_options() -> None:
    lines = DOC.split("\n")
    (block,) = regenerate.parse_blocks(lines)
    assert block.commands == ["echo one \\\n    two", "printf 'x\\ny\\n'"]
    assert block.figures == ["a.png", "b.png"] and "slow" in block.options
    assert lines[block.start] == "$ echo one \\" and lines[block.end] == "```"


def test_render_keeps_continuation_lines(tmp_path: Path) -> None:
    lines = DOC.split("\n")
    (block,) = regenerate.parse_blocks(lines)
    body = regenerate.render(block, tmp_path)
    assert body == lines[block.start : block.end]
    assert regenerate.same_text(lines[block.start : block.end], body)


def test_numbers_drift_only_beyond_the_tolerance() -> None:
    assert regenerate.same_text(["rate 1.21117 ok"], ["rate 1.21118 ok"])
    assert not regenerate.same_text(["rate 1.21117 ok"], ["rate 1.22 ok"])
    assert not regenerate.same_text(["rate 1.21117 ok"], ["rate 1.21117 no"])
    assert not regenerate.same_text(["a"], ["a", "b"])


def test_every_shown_figure_exists() -> None:
    for doc in regenerate.DOCUMENTS:
        for block in regenerate.parse_blocks(doc.read_text().split("\n")):
            for name in block.figures:
                assert (regenerate.FIGURES / name).is_file(), (doc.name, name)
