"""Benchmark: `gradscope inspect-checkpoint` against a full `torch.load` of the same file.

Builds a synthetic checkpoint with VGG19-BN's exact keys and tensor shapes (about 550 MB of
float32) and a small one with the same layout (channels / 16), in the zip and the legacy
(pre-1.6) torch.save formats, in a temporary directory that is deleted afterwards. Each
measurement runs in a fresh subprocess; wall time and peak RSS (``ru_maxrss`` of that child,
from ``os.wait4``) are recorded: the fastest of ``--repeats`` runs, median RSS.

- gradscope:  ``python -m gradscope inspect-checkpoint FILE --format csv``
- baseline:   ``torch.load(FILE, weights_only=True)`` of the whole file, then the same
  computation (gradscope's records and summary from the loaded dict).

Interpreter start and the torch import cost the same on both sides, so the figures that
matter are the *extra* time and memory the big file costs over the small one.

Usage: python benchmarks/bench_checkpoint.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Built in a child process: this process must stay small, because a child's peak RSS starts
# from its parent's at fork.
BUILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from ckpt_factory import save_legacy, save_zip, vgg19_bn_state_dict
d = Path(sys.argv[2])
big = vgg19_bn_state_dict(scale=1, seed=0)
nbytes = sum(t.numel() * t.element_size() for t in big.values())
save_zip(big, d / "big.pt")
save_legacy(big, d / "big-legacy.pth")
small = vgg19_bn_state_dict(scale=16, seed=0)
save_zip(small, d / "small.pt")
save_legacy(small, d / "small-legacy.pth")
print(json.dumps({"nbytes": nbytes}))
"""

BASELINE = """
import sys, torch
from gradscope.checkpoint.batchnorm import batchnorm_records, summarize
from gradscope.checkpoint.open import _table_from_object
from gradscope.records import to_csv
path = sys.argv[1]
obj = torch.load(path, map_location="cpu", weights_only=True)
table = _table_from_object(obj, path, path, "full", None)
records = batchnorm_records(table)
sys.stdout.write(to_csv(records))
summarize(records)
"""


def measure(cmd: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0  # KiB on Linux


def best_run(cmds: dict[str, list[str]], repeats: int) -> dict[str, tuple[float, float, float]]:
    """Fastest wall and CPU time (the least disturbed by other load) and median peak RSS.

    The commands are interleaved, so slow phases of the machine hit all of them alike.
    """
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in cmds}
    for _ in range(repeats):
        for name, cmd in cmds.items():
            runs[name].append(measure(cmd))
    return {
        name: (
            min(r[0] for r in rs),
            min(r[1] for r in rs),
            statistics.median(r[2] for r in rs),
        )
        for name, rs in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="gradscope-bench-") as tmp:
        d = Path(tmp)
        print("building checkpoints ...", file=sys.stderr)
        built = subprocess.run(
            [py, "-c", BUILD, str(ROOT / "tests"), tmp], check=True, capture_output=True, text=True
        )
        nbytes = json.loads(built.stdout)["nbytes"]
        files = {
            ("zip", "big"): d / "big.pt",
            ("legacy", "big"): d / "big-legacy.pth",
            ("zip", "small"): d / "small.pt",
            ("legacy", "small"): d / "small-legacy.pth",
        }
        print(
            f"VGG19-BN layout: {nbytes / 1e6:.0f} MB of tensors; "
            f"zip file {files[('zip', 'big')].stat().st_size / 1e6:.0f} MB; "
            f"page cache warm (files just written); fastest of {args.repeats} runs",
        )
        tools = {
            "gradscope": lambda p: [
                py,
                "-m",
                "gradscope",
                "inspect-checkpoint",
                str(p),
                "-f",
                "csv",
            ],
            "torch.load": lambda p: [py, "-c", BASELINE, str(p)],
        }
        cmds = {
            f"{fmt} {tool} {size}": build(files[(fmt, size)])
            for fmt in ("zip", "legacy")
            for tool, build in tools.items()
            for size in ("small", "big")
        }
        results = best_run(cmds, args.repeats)
    print(
        f"{'format':7} {'tool':10} {'wall s':>16} {'extra':>6} {'cpu s':>16} {'extra':>6} "
        f"{'peak RSS MB':>14} {'extra':>6}"
    )
    extras: dict[tuple[str, str], tuple[float, float, float]] = {}
    for fmt in ("zip", "legacy"):
        for tool in tools:
            small = results[f"{fmt} {tool} small"]
            big = results[f"{fmt} {tool} big"]
            extra = tuple(b - s for b, s in zip(big, small, strict=True))
            extras[(fmt, tool)] = extra  # type: ignore[assignment]
            print(
                f"{fmt:7} {tool:10} {small[0]:7.2f} ->{big[0]:6.2f} {extra[0]:6.2f} "
                f"{small[1]:7.2f} ->{big[1]:6.2f} {extra[1]:6.2f} "
                f"{small[2]:6.0f} ->{big[2]:5.0f} {extra[2]:6.0f}"
            )
    floor_s, floor_mb = 0.01, 1.0  # below this, an extra cost is measurement noise
    for fmt in ("zip", "legacy"):
        g = extras[(fmt, "gradscope")]
        b = extras[(fmt, "torch.load")]
        print(
            f"{fmt}: extra cost of the big file, torch.load / gradscope: "
            f"wall {b[0] / max(g[0], floor_s):.1f}x, cpu {b[1] / max(g[1], floor_s):.1f}x, "
            f"peak RSS {b[2] / max(g[2], floor_mb):.1f}x "
            f"(gradscope extra {g[0]:+.2f} s wall, {g[1]:+.2f} s cpu, {g[2]:+.0f} MB; "
            f"torch.load extra {b[0]:+.2f} s wall, {b[1]:+.2f} s cpu, {b[2]:+.0f} MB)"
        )
    print(
        f"(extra costs below {floor_s} s or {floor_mb:.0f} MB are counted as {floor_s} s / "
        f"{floor_mb:.0f} MB: noise)"
    )


if __name__ == "__main__":
    main()
