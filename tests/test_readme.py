"""The README's Python API example runs, and prints what its comments say it prints."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def api_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("<!-- section:api -->") : text.index("<!-- /section:api -->")]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def expected_output(code: str) -> list[str]:
    """Comments that state output: the trailing comment of a ``print(`` line, and comment
    lines right after a ``print(`` line without one (the output of a loop)."""
    expected: list[str] = []
    after_print = False
    for line in code.splitlines():
        stripped = line.strip()
        if "print(" in line:
            code_part, _, comment = line.partition("  # ")
            if comment:
                expected.append(comment.strip())
            after_print = not comment
        elif after_print and stripped.startswith("# "):
            expected.append(stripped[2:])
        else:
            after_print = False
    return expected


def test_api_example_prints_what_the_readme_says(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("sympy")
    code = api_block()
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_api"})
    printed = out.getvalue().splitlines()
    expected = expected_output(code)
    assert len(expected) >= 6
    assert printed == expected
    assert (tmp_path / "layers.png").stat().st_size > 10_000
