"""The distribution: a name that is not taken on the package index, torch without an upper bound."""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Names on the package index that belong to other projects (`pip index versions NAME`):
# "gradscope" 0.1.0 is a gradient and training anomaly monitor with its own `gradscope` command.
TAKEN = {"gradscope"}


def _normalised(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_the_distribution_name_is_not_taken() -> None:
    assert _normalised(PROJECT["name"]) not in {_normalised(n) for n in TAKEN}


def test_the_command_and_import_name_stay_gradscope() -> None:
    assert PROJECT["scripts"] == {"gradscope": "gradscope.cli:main"}
    assert (ROOT / "gradscope" / "__init__.py").is_file()


def test_torch_has_no_upper_bound() -> None:
    torch = [Requirement(r) for r in PROJECT["dependencies"] if Requirement(r).name == "torch"]
    assert len(torch) == 1
    spec = torch[0].specifier
    assert all(s.operator in (">=", ">") for s in spec), str(spec)
    assert spec.contains("2.13.0") and spec.contains("2.99.0") and spec.contains("3.0")
