"""Red-team run of the checkpoint readers: the hostile corpus, every payload and a mutation
fuzz, through the real readers (each call in a forked child under a time and memory bound) and
through the real CLI (``python -m gradscope inspect-checkpoint`` in a subprocess).

    python benchmarks/redteam.py                 # 3,000 mutants, 50 of them through the CLI
    python benchmarks/redteam.py --mutants 20000 --cli-mutants 500 --seed 1

Prints payloads tried / executed, hostile files answered / refused, mutants tried /
unexpected exceptions, hangs (over 5 s), memory blow-ups (over 1 GiB) and CLI tracebacks.
Exit status 1 when any count that must be zero is not.
"""

from __future__ import annotations

import argparse
import collections
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import redteam_corpus as rc  # noqa: E402
from ckpt_factory import save_every_format  # noqa: E402

from gradscope.checkpoint import inspect_checkpoint  # noqa: E402

FORMATS = ("zip", "legacy", "safetensors", "torchscript")


def cli(path: Path) -> tuple[int, str]:
    """``gradscope inspect-checkpoint PATH --weights``: exit code and stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "gradscope", "inspect-checkpoint", str(path), "--weights",
         "--format", "csv"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    return proc.returncode, proc.stderr


def cli_ok(code: int, err: str) -> bool:
    """Success, or one ``Error:`` line and exit 1: never a traceback."""
    return code == 0 or (code == 1 and err.startswith("Error: ") and err.count("\n") == 1)


def run_payloads(folder: Path, tally: collections.Counter) -> None:
    for case in rc.build_payloads(folder / "payloads"):
        outcome = rc.run_bounded(lambda case=case: inspect_checkpoint(case.path, weights=True))
        code, err = cli(case.path)
        tally["payloads tried"] += 1
        ran = case.marker.exists()
        tally["payloads executed"] += int(ran)
        tally["payloads not refused"] += int(outcome.status != "refused" or code != 1)
        if ran or outcome.status != "refused" or not cli_ok(code, err):
            print(f"  payload {case.name}: {outcome.status} {outcome.message[:100]} / CLI {code}")


def run_hostile(folder: Path, tally: collections.Counter) -> None:
    for case in rc.build_hostile(folder / "hostile", large=True):
        outcome = rc.run_bounded(lambda case=case: inspect_checkpoint(case.path, weights=True))
        want = "ok" if case.expect == "ok" else "refused"
        tally["hostile files"] += 1
        tally[f"hostile {outcome.status}"] += 1
        tally["hostile wrong outcome"] += int(outcome.status != want)
        code, err = cli(case.path)
        tally["hostile CLI tracebacks"] += int(not cli_ok(code, err))
        size = case.path.stat().st_size if case.path.is_file() else 0
        print(f"  {case.name:18} {size:>10,} B  {outcome.status:8} {outcome.seconds:6.2f} s "
              f"{outcome.peak_mib:7.1f} MiB  CLI exit {code}")  # fmt: skip


def run_mutants(
    folder: Path, count: int, via_cli: int, seed: int, tally: collections.Counter
) -> None:
    (folder / "valid").mkdir()
    paths = save_every_format(folder / "valid", 32, 0, FORMATS)
    valid = {fmt: paths[fmt].read_bytes() for fmt in FORMATS}
    rng = random.Random(seed)
    path = folder / "mutant"
    slowest = 0.0
    for i in range(count):
        fmt = FORMATS[i % len(FORMATS)]
        kind = rng.choice(rc.kinds_for(fmt))
        path.write_bytes(rc.mutate(valid[fmt], kind, rng))
        outcome = rc.run_bounded(lambda: inspect_checkpoint(path, weights=True))
        tally["mutants tried"] += 1
        tally[f"mutants {outcome.status}"] += 1
        slowest = max(slowest, outcome.seconds)
        if outcome.status not in ("ok", "refused"):
            print(f"  mutant {i} ({fmt}, {kind}): {outcome.status} {outcome.message[:120]}")
        if i < via_cli:
            code, err = cli(path)
            tally["CLI mutants tried"] += 1
            tally["CLI tracebacks"] += int(not cli_ok(code, err))
            if not cli_ok(code, err):
                print(f"  CLI mutant {i} ({fmt}, {kind}): exit {code}: {err[-300:]}")
    tally["slowest mutant ms"] = round(slowest * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=3000)
    parser.add_argument("--cli-mutants", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tally: collections.Counter = collections.Counter()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("hostile corpus (one file per class):")
        run_hostile(folder, tally)
        run_payloads(folder, tally)
        run_mutants(folder, args.mutants, args.cli_mutants, args.seed, tally)
    bad = ("payloads executed", "payloads not refused", "hostile wrong outcome",
           "hostile CLI tracebacks", "mutants unexpected", "mutants hang", "mutants memory",
           "mutants crash", "CLI tracebacks")  # fmt: skip
    print(f"\nred-team run, seed {args.seed}, {time.perf_counter() - start:.0f} s:")
    for key in ("payloads tried", "payloads executed", "payloads not refused", "hostile files",
                "hostile ok", "hostile refused", "hostile wrong outcome", "hostile CLI tracebacks",
                "mutants tried", "mutants ok", "mutants refused", "mutants unexpected",
                "mutants hang", "mutants memory", "mutants crash", "slowest mutant ms",
                "CLI mutants tried", "CLI tracebacks"):  # fmt: skip
        print(f"  {key:24} {tally[key]}")
    return 1 if any(tally[k] for k in bad) else 0


if __name__ == "__main__":
    sys.exit(main())
