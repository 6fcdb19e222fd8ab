"""How fast is ``gradscope simulate``? Against the naive loop and the floors of the work itself.

The paper's Figure 1 setting (depth 20, width 256, batch 128, ReLU, BatchNorm), plain and resnet.
Measured in the same run, per repeat:

- gradscope: the engine (``run_configuration``) as ``gradscope simulate`` runs a long job: one
  worker process per core, each on one thread (the pool is started once, outside the timing;
  starting it takes about a second);
- gradscope with worker threads instead, with 1 worker, and with 16 repeats stacked into
  ``bmm`` (the GPU path), to show what each choice costs on this machine;
- naive: what a user writes from the paper: for each repeat an ``nn.Sequential`` of
  Linear(bias=False)/BatchNorm1d/ReLU, ``nn.init.normal_``, a fresh batch, ``backward`` of a
  random derivative, each weight's ``grad.norm()``;
- the random-number floor: ``torch.randn`` into a preallocated buffer of
  depth·width² + 2·batch·width floats;
- the FLOP floor: 3 × 2 × depth × batch × width² FLOP at the float32 rate of a 2048³ torch.mm.

Prints the speed-up over the naive loop and the ratio to the practical limit (random-number
floor + FLOP floor).

The conv case (``--case conv``): plain-conv, 16 layers, 64 channels, 32×32 images, batch 32,
ReLU, BatchNorm, a 2×2 max-pool every 4 layers (38.5 GFLOP per repeat). Naive: the same net
as an ``nn.Sequential`` of Conv2d(bias=False)/BatchNorm2d/ReLU/MaxPool2d, NCHW, per repeat.
Its FLOP floor is the conv FLOPs (forward, input gradient, weight gradient) at the best
rate of this machine's conv kernels on the largest layer (channels_last, forward and both
backward convs, timed on 1 thread and on all threads).

The machine is shared and noisy: the timed rounds are interleaved so that load affects every
case alike, and each figure is the best round (the median is printed too).

Usage: python benchmarks/bench_simulate.py [--repeats 64] [--rounds 5] [--case mlp|conv|all]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from gradscope.engine.runner import make_process_pool, run_configuration
from gradscope.options import Backend
from gradscope.specs import build_specs

DEPTH, WIDTH, BATCH = 20, 256, 128


def naive_repeat(depth: int = DEPTH, width: int = WIDTH, batch: int = BATCH) -> list[float]:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
    net = nn.Sequential(*layers).train()
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for lin in linears:
        nn.init.normal_(lin.weight, 0.0, (2.0 / width) ** 0.5)
    x = torch.randn(batch, width)
    net(x).backward(torch.randn(batch, width) / width**0.5)
    return [float(lin.weight.grad.norm()) for lin in linears]


def naive_resnet_repeat(depth: int = DEPTH, width: int = WIDTH, batch: int = BATCH) -> list[float]:
    linears = [nn.Linear(width, width, bias=False) for _ in range(depth)]
    norms = [nn.BatchNorm1d(width) for _ in range(depth)]
    for lin in linears:
        nn.init.normal_(lin.weight, 0.0, (2.0 / width) ** 0.5)
    x = torch.randn(batch, width)
    outs = [x]
    for i in range(depth):
        z = norms[i](linears[i](outs[-1]))
        if i % 2 == 1:
            z = z + outs[-2]
        outs.append(torch.relu(z))
    outs[-1].backward(torch.randn(batch, width) / width**0.5)
    return [float(lin.weight.grad.norm()) for lin in linears]


CONV = dict(depth=16, width=64, batch=32, image_size=32, pool_every=4)


def naive_conv_repeat() -> list[float]:
    depth, width, batch, size = (CONV[k] for k in ("depth", "width", "batch", "image_size"))
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
        layers.append(nn.ReLU())
        if (i + 1) % CONV["pool_every"] == 0 and i + 1 < depth:
            layers.append(nn.MaxPool2d(2))
    net = nn.Sequential(*layers).train()
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    for conv in convs:
        nn.init.normal_(conv.weight, 0.0, (2.0 / (9 * width)) ** 0.5)
    y = net(torch.randn(batch, width, size, size))
    y.backward(torch.randn_like(y) / y[0].numel() ** 0.5)
    return [float(conv.weight.grad.norm()) for conv in convs]


def conv_rate(threads: int) -> float:
    """FLOP/s of the best conv kernel for the largest layer, forward and backward, channels_last."""
    aten = torch.ops.aten
    cl = torch.channels_last
    b, c, s = CONV["batch"], CONV["width"], CONV["image_size"]
    x = torch.randn(b, c, s, s).to(memory_format=cl)
    w = torch.randn(c, c, 3, 3).to(memory_format=cl)
    g = torch.randn(b, c, s, s).to(memory_format=cl)
    one = [1, 1]
    flop = 2.0 * b * s * s * c * c * 9
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = math.inf
        for _ in range(3):
            start = time.perf_counter()
            aten.convolution(x, w, None, one, one, one, False, [0, 0], 1)
            aten.convolution_backward(
                g, x, w, None, one, one, one, False, [0, 0], 1, [True, True, False]
            )
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 3 * flop / best


def conv_main(n: int, rounds: int, workers: int, pool: object) -> None:
    from gradscope.engine.conv import conv_flop

    spec = build_specs(arch="plain-conv", activation="relu", norm="batchnorm", **CONV)[0]
    flop = conv_flop(spec)
    cases: dict[str, Callable[[], object]] = {
        "conv: gradscope": lambda: run_configuration(
            spec, n, seed=0, workers=workers, backend=Backend.processes, pool=pool
        ),
        "conv: gradscope, 1 worker": lambda: run_configuration(spec, n, seed=0, workers=1),
        "conv: naive nn.Sequential loop": lambda: [naive_conv_repeat() for _ in range(n)],
    }
    for fn in cases.values():  # warm-up
        fn()
    timings: dict[str, list[float]] = {}
    rates_one: list[float] = []
    rates_all: list[float] = []
    for _ in range(rounds):
        rates_one.append(conv_rate(1))
        rates_all.append(conv_rate(workers))
        for name, fn in cases.items():
            timings.setdefault(name, []).append(per_repeat(fn, n))
    one, every = max(rates_one), max(rates_all)
    floor_procs = flop / (one * workers)
    floor_threads = flop / every
    print(f"conv: {flop / 1e9:.1f} GFLOP per repeat, {n} repeats x {rounds} rounds")
    print(
        f"conv kernel rate: {one / 1e9:.0f} GFLOP/s on 1 thread, "
        f"{every / 1e9:.0f} GFLOP/s on {workers} threads"
    )
    print(f"FLOP floor, {workers} workers x 1 thread {1e3 * floor_procs:7.2f} ms")
    print(f"FLOP floor, 1 process x {workers} threads {1e3 * floor_threads:7.2f} ms")
    naive_t = min(timings["conv: naive nn.Sequential loop"])
    for name in cases:
        t = min(timings[name])
        med = statistics.median(timings[name])
        print(
            f"{name:38s} {1e3 * t:7.2f} ms (median {1e3 * med:7.2f})   "
            f"x{naive_t / t:4.2f} vs naive   {t / floor_procs:4.2f} x FLOP floor"
        )
    print(
        f"best possible speed-up over this naive run: x{naive_t / floor_procs:4.2f} "
        "(naive time / FLOP floor)"
    )


def per_repeat(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=64, help="repeats per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--case", choices=["mlp", "conv", "all"], default="all")
    parser.add_argument("--conv-repeats", type=int, default=8, help="repeats per conv round")
    args = parser.parse_args()
    n, rounds = args.repeats, args.rounds
    if args.case in ("conv", "all"):
        workers = os.cpu_count() or 1
        print(f"load average before: {os.getloadavg()[0]:.2f} on {workers} cores")
        pool = make_process_pool(workers) if workers > 1 else None
        try:
            conv_main(args.conv_repeats, rounds, workers, pool)
        finally:
            if pool is not None:
                pool.shutdown()  # type: ignore[attr-defined]
        if args.case == "conv":
            return

    buf = torch.empty(DEPTH * WIDTH * WIDTH + 2 * BATCH * WIDTH)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    flop = 3 * 2 * DEPTH * BATCH * WIDTH * WIDTH

    def randn_round() -> None:
        for _ in range(n):
            buf.normal_(generator=gen)

    def mm_rate() -> float:
        torch.mm(a, b)
        start = time.perf_counter()
        for _ in range(3):
            torch.mm(a, b)
        return 3 * 2 * 2048**3 / (time.perf_counter() - start)

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    timings: dict[str, list[float]] = {}
    cases: dict[str, Callable[[], object]] = {}
    workers = os.cpu_count() or 1
    pool = make_process_pool(workers) if workers > 1 else None
    for arch in ("plain", "resnet"):
        spec = build_specs(arch=arch, activation="relu", norm="batchnorm")[0]
        cases[f"{arch}: gradscope"] = lambda s=spec: run_configuration(
            s, n, seed=0, workers=workers, backend=Backend.processes, pool=pool
        )
        cases[f"{arch}: gradscope, threads"] = lambda s=spec: run_configuration(
            s, n, seed=0, workers=workers, backend=Backend.threads
        )
        cases[f"{arch}: gradscope, 1 worker"] = lambda s=spec: run_configuration(
            s, n, seed=0, workers=1
        )
        cases[f"{arch}: gradscope, 16 stacked (bmm)"] = lambda s=spec: run_configuration(
            s, n, seed=0, chunk=16
        )
        naive = naive_repeat if arch == "plain" else naive_resnet_repeat
        cases[f"{arch}: naive nn.Sequential loop"] = lambda f=naive: [f() for _ in range(n)]
    for fn in cases.values():  # warm-up
        fn()
    if pool is not None:
        import atexit

        atexit.register(pool.shutdown)
    flop_times = []
    randn_times = []
    for _ in range(rounds):
        randn_times.append(per_repeat(randn_round, n))
        flop_times.append(flop / mm_rate())
        for name, fn in cases.items():
            timings.setdefault(name, []).append(per_repeat(fn, n))
    rng = min(randn_times)
    flops = min(flop_times)
    limit = rng + flops
    print(
        f"threads {torch.get_num_threads()}, {n} repeats x {rounds} rounds, best round per repeat"
    )
    rng_median = statistics.median(randn_times)
    print(f"random-number floor  {1e3 * rng:7.2f} ms (median {1e3 * rng_median:.2f})")
    print(f"FLOP floor           {1e3 * flops:7.2f} ms  ({flop / flops / 1e9:.0f} GFLOP/s)")
    print(f"practical limit      {1e3 * limit:7.2f} ms")
    for arch in ("plain", "resnet"):
        naive_t = min(timings[f"{arch}: naive nn.Sequential loop"])
        for name in [k for k in cases if k.startswith(arch)]:
            t = min(timings[name])
            med = statistics.median(timings[name])
            print(
                f"{name:38s} {1e3 * t:7.2f} ms (median {1e3 * med:7.2f})   "
                f"x{naive_t / t:4.2f} vs naive   {t / limit:4.2f} x practical limit"
            )


if __name__ == "__main__":
    main()
