"""Benchmark: `gradscope inspect-checkpoint` against torch's own loaders, whole processes.

Builds, in a temporary directory deleted afterwards, a checkpoint with VGG19-BN's exact keys
and shapes (575 MB of float32, seed 0) and one of the same layout at 67 MB (channels / 3), in
the zip and in the legacy (pre-1.6, torchvision's classic ``vgg19_bn-c79401a0.pth``) formats.
Every figure is the median of ``--runs`` (default 5) fresh processes, run interleaved so that
the machine's load falls on every case alike; peak RSS is the child's ``ru_maxrss``.

- gradscope: ``gradscope inspect-checkpoint FILE -f csv`` (reads no tensor it does not need,
  imports no torch);
- mmap: ``torch.load(FILE, weights_only=True, mmap=True)`` then every ``running_var`` read
  (torch's own lazy path; zip only: legacy files cannot be memory-mapped);
- full: ``torch.load(FILE, weights_only=True)`` then every ``running_var`` read.

Targets (issue 14): gradscope under 0.6 s end to end on the 575 MB zip, at least 4× faster
than the mmap load there and 5× faster than the full load of the legacy file; under 20 MB of
extra peak memory for the big file over the small one in both formats; `gradscope ratios`
under 0.3 s. Also printed: ``--help`` start-up and the top imports of ``inspect-checkpoint``
(``python -X importtime``).

Usage: python benchmarks/bench_checkpoint.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BUILD = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from ckpt_factory import save_legacy, save_zip, vgg19_bn_state_dict
d = Path(sys.argv[2])
for name, scale in (("big", 1), ("small", 3)):
    sd = vgg19_bn_state_dict(scale=scale, seed=0)
    save_zip(sd, d / f"{name}.pt")
    save_legacy(sd, d / f"{name}-legacy.pth")
"""

TORCH_LOAD = """
import sys, torch
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True, mmap=sys.argv[2] == "mmap")
total = sum(float(v.double().sum()) for k, v in sd.items() if k.endswith("running_var"))
print(total)
"""


def measure(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(argv)}")
    return wall, usage.ru_maxrss / 1024


def cases(folder: Path) -> dict[str, list[str]]:
    gradscope = [sys.executable, "-m", "gradscope"]
    out: dict[str, list[str]] = {}
    for size in ("big", "small"):
        for fmt, name in (("zip", f"{size}.pt"), ("legacy", f"{size}-legacy.pth")):
            path = str(folder / name)
            out[f"gradscope {fmt} {size}"] = [*gradscope, "inspect-checkpoint", path, "-f", "csv"]
            out[f"full {fmt} {size}"] = [sys.executable, "-c", TORCH_LOAD, path, "full"]
            if fmt == "zip":
                out[f"mmap {fmt} {size}"] = [sys.executable, "-c", TORCH_LOAD, path, "mmap"]
    out["gradscope ratios"] = [*gradscope, "ratios", "-f", "csv"]
    out["gradscope --help"] = [*gradscope, "--help"]
    out["gradscope inspect-checkpoint --help"] = [*gradscope, "inspect-checkpoint", "--help"]
    out["python -c pass"] = [sys.executable, "-c", "pass"]
    return out


def import_times(path: Path, top: int = 8) -> list[str]:
    """The imports that cost most (cumulative) when inspecting a checkpoint."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gradscope", "inspect-checkpoint", str(path),
         "-f", "csv"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit():
                rows.append((int(cumulative), name.rstrip()))
    rows.sort(reverse=True)
    return [f"  {us / 1000:7.1f} ms  {name}" for us, name in rows[:top]]


def report(medians: dict[str, tuple[float, float]]) -> None:
    def wall(key: str) -> float:
        return medians[key][0]

    def extra_mb(tool: str, fmt: str) -> float:
        return medians[f"{tool} {fmt} big"][1] - medians[f"{tool} {fmt} small"][1]

    print(f"{'case':40s} {'wall (median)':>14s} {'peak RSS':>10s}")
    for key, (seconds, rss) in medians.items():
        print(f"{key:40s} {seconds:12.3f} s {rss:8.0f} MB")
    print()
    g_zip, g_legacy = wall("gradscope zip big"), wall("gradscope legacy big")
    print(f"gradscope, 575 MB zip: {g_zip:.3f} s (target < 0.6 s)")
    print(f"  vs torch.load(mmap=True): {wall('mmap zip big'):.3f} s, "
          f"{wall('mmap zip big') / g_zip:.1f}x faster (target >= 4x)")  # fmt: skip
    print(f"gradscope, 575 MB legacy: {g_legacy:.3f} s")
    print(f"  vs torch.load (legacy, full): {wall('full legacy big'):.3f} s, "
          f"{wall('full legacy big') / g_legacy:.1f}x faster (target >= 5x)")  # fmt: skip
    for fmt in ("zip", "legacy"):
        ours, theirs = extra_mb("gradscope", fmt), extra_mb("full", fmt)
        print(f"extra peak RSS, 575 MB over 67 MB {fmt}: gradscope {ours:+.0f} MB "
              f"(target < 20 MB), torch.load {theirs:+.0f} MB")  # fmt: skip
    print(f"gradscope ratios: {wall('gradscope ratios'):.3f} s (target < 0.3 s); "
          f"--help {wall('gradscope --help'):.3f} s; inspect-checkpoint --help "
          f"{wall('gradscope inspect-checkpoint --help'):.3f} s; bare interpreter "
          f"{wall('python -c pass'):.3f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="processes per case (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gradscope-bench-") as tmp:
        folder = Path(tmp)
        subprocess.run([sys.executable, "-c", BUILD, str(ROOT / "tests"), tmp], check=True)
        todo = cases(folder)
        results: dict[str, list[tuple[float, float]]] = {key: [] for key in todo}
        for argv in todo.values():  # warm the page cache and the imports once
            measure(argv)
        for _ in range(args.runs):
            for key, argv in todo.items():
                results[key].append(measure(argv))
        medians = {
            key: (statistics.median(w for w, _ in runs), statistics.median(r for _, r in runs))
            for key, runs in results.items()
        }
        report(medians)
        print("\ntop imports of inspect-checkpoint (cumulative, python -X importtime):")
        print("\n".join(import_times(folder / "big.pt")))


if __name__ == "__main__":
    main()
