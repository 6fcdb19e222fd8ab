"""`simulate --model`: fresh parameters by reset_parameters() vs calling the factory again.

Measures, in one run, the time per repeat of gradscope's model engine with each re-init path
on the example models, and of the loop a user would write (build the model, forward, backward,
read every weight's grad norm). Prints the figures as ratios.

    python benchmarks/bench_model.py [--repeats 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gradscope.engine.user_model import resolve_factory, run_model
from gradscope.options import Reinit
from gradscope.specs import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    ("plain CNN", f"{ROOT / 'examples' / 'plain_cnn.py'}:make_model", (3, 32, 32)),
    ("ResNet", f"{ROOT / 'examples' / 'resnet.py'}:make_model", (3, 32, 32)),
]


def naive(target: str, shape: tuple[int, ...], batch: int, repeats: int) -> float:
    factory = resolve_factory(target)
    start = time.perf_counter()
    for _ in range(repeats):
        model = factory().train()
        x = torch.randn(batch, *shape)
        out = model(x)
        out.backward(torch.randn_like(out) / out[0].numel() ** 0.5)
        [m.weight.grad.norm().item() for m in model.modules() if hasattr(m, "weight")
         and m.weight is not None and m.weight.dim() >= 2]  # fmt: skip
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name, target, shape in CASES:
        spec = ModelSpec(target, {}, shape)
        run_model(spec, batch=args.batch, repeats=1)  # warm-up
        timings = {}
        for reinit in (Reinit.reset, Reinit.factory):
            start = time.perf_counter()
            run_model(spec, batch=args.batch, repeats=args.repeats, reinit=reinit)
            timings[reinit.value] = (time.perf_counter() - start) / args.repeats
        base = naive(target, shape, args.batch, args.repeats)
        print(
            f"{name:10s} reset {timings['reset'] * 1e3:7.1f} ms/repeat, "
            f"factory {timings['factory'] * 1e3:7.1f} ms, naive loop {base * 1e3:7.1f} ms; "
            f"factory/reset {timings['factory'] / timings['reset']:.2f}x, "
            f"naive/reset {base / timings['reset']:.2f}x"
        )


if __name__ == "__main__":
    main()
