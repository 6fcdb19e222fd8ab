"""Regenerate every command output and figure shown in README.md and docs/*.md, or check them.

    python docs/regenerate.py            # rewrite the outputs in place, copy the figures
    python docs/regenerate.py --check    # CI: exit 1 and list every block that drifted
    python docs/regenerate.py --only docs/paper.md --slow

A shown output is a fenced block whose first line starts with ``$ ``: each ``$`` line is a
command (a line ending in ``\\`` continues it), and the lines up to the next ``$`` line are
what it printed (stdout and stderr, in order). An HTML comment on the line before the fence
sets options for the block::

    <!-- regenerate: figures=layers.png slow columns=120 -->

- ``figures=a.png,b.png``: files the commands write; they are copied to ``docs/figures/``
  (and compared by pixels in ``--check``);
- ``slow``: run only with ``--slow`` (minutes of work: the paper's 4096-repeat figures);
- ``columns=N``: the terminal width the commands see (default 100);
- ``stdout``: show what the commands print on stdout only (stderr, say a summary table
  beside CSV records, is left out; the text around the block says so where it matters);
- ``skip``: leave the block alone;
- ``needs=FILE``: a file an earlier block downloads (``pip download`` from the package index);
  when it is absent (the index was unreachable), the block is skipped with a warning instead
  of counted as drift.

Every document runs in its own scratch directory holding copies of ``examples/`` and the
synthetic VGG19-BN- and ResNet-50-layout checkpoints the tests build, so running the shown
commands never writes into the checkout. Numbers are compared with a relative tolerance of 1e-4 in
``--check`` (float32 kernels round differently on other CPUs); text must match exactly.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DIRECTIVE = re.compile(r"<!--\s*regenerate:(.*?)-->")
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
RELATIVE_TOLERANCE = 1e-4


@dataclass
class Block:
    """One shown output: where it sits in its document, its commands and its options."""

    start: int  # index of the line after the opening fence
    end: int  # index of the closing fence
    commands: list[str]
    options: dict[str, str] = field(default_factory=dict)

    @property
    def figures(self) -> list[str]:
        return [f for f in self.options.get("figures", "").split(",") if f]


def parse_blocks(lines: list[str]) -> list[Block]:
    """Every fenced block whose first line is a ``$`` command."""
    blocks, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        body = lines[i + 1 : end]
        if body and body[0].startswith("$ "):
            match = DIRECTIVE.search(lines[i - 1]) if i > 0 else None
            options = _options(match.group(1)) if match else {}
            blocks.append(Block(i + 1, end, _commands(body), options))
        i = end + 1
    return blocks


def _options(text: str) -> dict[str, str]:
    out = {}
    for word in text.split():
        key, _, value = word.partition("=")
        out[key] = value or "yes"
    return out


def _commands(body: list[str]) -> list[str]:
    """The commands of a block, continuation lines joined as the shell would read them."""
    commands, current = [], None
    for line in body:
        if current is not None:
            current.append(line)
            if not line.endswith("\\"):
                commands.append("\n".join(current))
                current = None
        elif line.startswith("$ "):
            if line.endswith("\\"):
                current = [line[2:]]
            else:
                commands.append(line[2:])
    return commands


def prepare(scratch: Path) -> None:
    """What the shown commands expect in their working directory."""
    shutil.copytree(ROOT / "examples", scratch / "examples")
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from ckpt_factory import (
        ResNetLayout,
        resnet_sigma,
        save_legacy,
        vgg19_bn_state_dict,
        with_sigmas,
    )

    save_legacy(vgg19_bn_state_dict(), scratch / "vgg19_bn-synthetic.pth")
    resnet50 = with_sigmas(ResNetLayout((3, 4, 6, 3), bottleneck=True), resnet_sigma)
    torch.save(resnet50.state_dict(), scratch / "resnet50-synthetic.pth")


def run(command: str, scratch: Path, columns: int, stderr: bool = True) -> str:
    env = dict(os.environ, COLUMNS=str(columns), NO_COLOR="1", PYTHONHASHSEED="0")
    env.pop("FORCE_COLOR", None)
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=scratch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if stderr else subprocess.DEVNULL,
        text=True,
        check=False,
    )
    return proc.stdout.rstrip("\n")


def render(block: Block, scratch: Path) -> list[str]:
    """The block's new body: each command, then what it printed."""
    columns = int(block.options.get("columns", "100"))
    out: list[str] = []
    for command in block.commands:
        out.extend(("$ " + command).split("\n"))  # continuation lines stay lines
        printed = run(command, scratch, columns, stderr="stdout" not in block.options)
        if printed:
            out.extend(printed.split("\n"))
    return out


def same_text(old: list[str], new: list[str]) -> bool:
    """Equal, numbers within the relative tolerance (other CPUs round float32 differently)."""
    if len(old) != len(new):
        return False
    for a, b in zip(old, new, strict=True):
        if NUMBER.sub("#", a) != NUMBER.sub("#", b):
            return False
        for x, y in zip(NUMBER.findall(a), NUMBER.findall(b), strict=True):
            fx, fy = float(x), float(y)
            if fx != fy and not math.isclose(fx, fy, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-12):
                return False
    return True


def same_figure(old: Path, new: Path) -> bool:
    """Same size and nearly the same pixels (a line may move by a fraction of a pixel)."""
    from matplotlib import image

    if not old.exists():
        return False
    a, b = image.imread(old), image.imread(new)
    return a.shape == b.shape and float(abs(a - b).mean()) < 0.01


def _figures(block: Block, scratch: Path, where: str, check: bool) -> list[str]:
    """Compare the block's figures with the committed ones; copy them unless checking."""
    drifted = []
    for name in block.figures:
        made = scratch / name
        if not made.exists():
            drifted.append(f"{where}: no figure {name} was written")
            continue
        if same_figure(FIGURES / name, made):
            continue  # within the tolerance: the committed file stays, byte for byte
        drifted.append(f"{where}: figure {name} changed")
        if not check:
            FIGURES.mkdir(exist_ok=True)
            shutil.copyfile(made, FIGURES / name)
    return drifted


def process(path: Path, args: argparse.Namespace) -> list[str]:
    """Regenerate (or check) one document; returns what drifted."""
    lines = path.read_text().split("\n")
    blocks = parse_blocks(lines)
    drifted: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gradscope-docs-") as tmp:
        scratch = Path(tmp)
        prepare(scratch)
        shift = 0
        for block in blocks:
            block.start, block.end = block.start + shift, block.end + shift
            if "skip" in block.options or ("slow" in block.options and not args.slow):
                continue
            needed = block.options.get("needs")
            if needed and not (scratch / needed).exists():
                print(f"{path.relative_to(ROOT)}:{block.start}: skipped, {needed} could not "
                      "be downloaded", file=sys.stderr)  # fmt: skip
                continue
            began = time.perf_counter()
            body = render(block, scratch)
            where = f"{path.relative_to(ROOT)}:{block.start}"
            print(f"{where}: {time.perf_counter() - began:.1f} s", file=sys.stderr)
            if not same_text(lines[block.start : block.end], body):
                drifted.append(f"{where}: the output of `{block.commands[0]}` changed")
            lines[block.start : block.end] = body
            shift += len(body) - (block.end - block.start)
            drifted += _figures(block, scratch, where, args.check)
    if not args.check:
        path.write_text("\n".join(lines))
    return drifted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on drift")
    parser.add_argument("--slow", action="store_true", help="also run the blocks marked slow")
    parser.add_argument("--only", type=Path, action="append", help="these documents only")
    args = parser.parse_args()
    documents = [p.resolve() for p in args.only] if args.only else DOCUMENTS
    drifted = [d for path in documents for d in process(path, args)]
    for line in drifted:
        print(line, file=sys.stderr)
    if args.check and drifted:
        print("run `python docs/regenerate.py` and review the diff", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
