"""``gradscope simulate``: per-layer gradient norms of fresh random nets, against theory.

Imports no torch at start-up: the engine (which imports torch) is imported inside the command.
"""

from __future__ import annotations

import math
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from gradscope.commands.common import FormatOpt, OutputOpt, note, parse_list, warn
from gradscope.errors import SpecError
from gradscope.nets import Arch, Device, Dtype, Init, Norm, ResidualScale
from gradscope.output import Format, check_output_path, emit

_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_IUNITS = {"ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}


def parse_memory(text: str) -> int:
    """``8GiB``, ``500MB``, ``2g`` or a number of bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", text.lower())
    if not m:
        raise SpecError(f"--max-memory must be a size like 4GiB, 500MB or 2000000000, got {text!r}")
    unit = m.group(2) or ""
    factor = _IUNITS[unit] if unit.endswith("i") else _UNITS[unit]
    return int(float(m.group(1)) * factor)


def _choices(kind: Any) -> str:
    return "|".join(m.value for m in kind)


def _enum_list(kind: Any, text: str, what: str) -> list[Any]:
    out = []
    for item in parse_list(text, f"--{what}"):
        try:
            out.append(kind(item.lower()))
        except ValueError:
            raise SpecError(
                f"unknown --{what} {item!r}; choose from {', '.join(m.value for m in kind)}"
            ) from None
    return out


def _int_list(text: str, what: str) -> list[int]:
    out = []
    for item in parse_list(text, f"--{what}"):
        try:
            out.append(int(item))
        except ValueError:
            raise SpecError(f"--{what} must be whole numbers, got {item!r}") from None
    return out


def simulate_command(
    arch: Annotated[
        str, typer.Option("--arch", help=f"{_choices(Arch)}, or a comma list to sweep.")
    ] = "plain",
    activation: Annotated[
        str,
        typer.Option(
            "--activation",
            "-a",
            help="Any activation of `gradscope ratios --list`, with its parameter "
            "(leaky_relu:0.2); a comma list sweeps.",
        ),
    ] = "relu",
    norm: Annotated[
        str, typer.Option("--norm", help=f"{_choices(Norm)}, or a comma list.")
    ] = "batchnorm",
    init: Annotated[
        str,
        typer.Option(
            "--init",
            help=f"{_choices(Init)}, or a comma list. auto: LeCun N(0,1/fan_in) for SELU, "
            "He N(0,2/fan_in) otherwise.",
        ),
    ] = "auto",
    gain: Annotated[float, typer.Option("--gain", help="Multiplies the weights' std.")] = 1.0,
    depth: Annotated[str, typer.Option("--depth", "-L", help="Layers (comma list sweeps).")] = "20",
    width: Annotated[str, typer.Option("--width", "-w", help="Units per layer.")] = "256",
    batch: Annotated[str, typer.Option("--batch", "-b", help="Inputs per batch.")] = "128",
    residual_scale: Annotated[
        ResidualScale,
        typer.Option(
            "--residual-scale",
            help="resnet branch: none, scaled by 1/sqrt(blocks), or zero γ of its last norm.",
            case_sensitive=False,
        ),
    ] = ResidualScale.none,
    repeats: Annotated[
        int, typer.Option("--repeats", "-n", help="Fresh nets per configuration.")
    ] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Seed; same seed, same output.")] = 0,
    dtype: Annotated[Dtype, typer.Option("--dtype", case_sensitive=False)] = Dtype.float32,
    device: Annotated[
        Device, typer.Option("--device", help="auto picks CUDA when present.")
    ] = Device.auto,
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory",
            help="Refuse to start above this estimate (4GiB, 500MB). Default: half the free RAM.",
            show_default=False,
        ),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="CPU workers: auto (processes for long jobs), processes or threads.",
        ),
    ] = "auto",
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="CPU threads running repeats. Default: one per core.",
            show_default=False,
        ),
    ] = None,
    summary: Annotated[
        bool,
        typer.Option("--summary", help="Output one summary record per configuration instead."),
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Also draw the records to this figure (.png/.svg/.pdf).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    fmt: FormatOpt = Format.auto,
    output: OutputOpt = None,
) -> None:
    """Measure the weight-gradient norm of every layer of fresh random nets, with its
    confidence interval, beside what theory predicts; sweep any option with a comma list.

    Example: gradscope simulate --activation selu,tanh,relu --norm batchnorm,none -o fig3.csv
    """
    if repeats < 1:
        raise SpecError(f"--repeats must be at least 1, got {repeats}")
    if workers is not None and workers < 1:
        raise SpecError(f"--workers must be at least 1, got {workers}")
    archs = _enum_list(Arch, arch, "arch")
    norms = _enum_list(Norm, norm, "norm")
    inits = _enum_list(Init, init, "init")
    activations = parse_list(activation, "--activation")
    depths, widths, batches = (
        _int_list(depth, "depth"),
        _int_list(width, "width"),
        _int_list(batch, "batch"),
    )
    limit = parse_memory(max_memory) if max_memory is not None else None
    if output is not None:
        check_output_path(output)
    if plot is not None:
        from gradscope.plot import figure_format

        figure_format(plot)
        check_output_path(plot)

    from gradscope.simulate import build_specs, simulate

    n_configs = len(
        build_specs(
            arch=archs,
            activation=activations,
            norm=norms,
            init=inits,
            gain=gain,
            depth=depths,
            width=widths,
            batch=batches,
            residual_scale=residual_scale,
        )
    )
    stop = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        stop.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with _progress(repeats * n_configs) as advance:
            result = simulate(
                arch=archs,
                activation=activations,
                norm=norms,
                init=inits,
                gain=gain,
                depth=depths,
                width=widths,
                batch=batches,
                residual_scale=residual_scale,
                repeats=repeats,
                seed=seed,
                dtype=dtype,
                device=device,
                max_memory=limit,
                workers=workers,
                backend=backend,
                progress=advance,
                stop=stop,
            )
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)

    for s in result.summary:
        label = f"{s.arch} {s.activation} {s.norm} {s.init} L={s.depth}"
        if s.overflow_layer is not None:
            warn(
                f"{label}: values overflowed to inf/NaN from layer {s.overflow_layer} in "
                f"{s.overflow_repeats} of {s.repeats} repeats"
                + (" (try --dtype float64)" if dtype is Dtype.float32 else "")
            )
        if s.prediction_in_ci is False and s.fitted_rate is not None:
            dev = 100 * (s.rate_deviation or 0.0)
            note(
                f"Finding: {label}: fitted rate {s.fitted_rate:.5f} "
                f"[{s.fitted_rate_ci_low:.5f}, {s.fitted_rate_ci_high:.5f}] differs from "
                f"theory {s.predicted_rate:.5f} by {dev:+.2f}%, beyond the 95% CI"
            )
    if result.partial:
        done = sum(result.repeats_done.values())
        warn(f"interrupted: partial results from {done} completed repeats")
    records: list[Any] = list(result.summary) if summary else list(result.records)
    if records:
        title = "simulate" + (" (partial)" if result.partial else "")
        emit(records, fmt, output, summary=None if summary else result.summary, title=title)
        if plot is not None:
            from gradscope.plot import plot_records

            plot_records(records, out=plot)
            note(f"wrote {plot}")
    if result.partial:
        raise typer.Exit(130)


class _progress:
    """A rich progress bar on stderr (repeats/s, ETA); nothing when stderr is not a terminal.

    Started at the first update, so that worker processes are forked before its thread exists.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar: Any = None
        self.task: Any = None

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        class _Rate(TextColumn):
            def render(self, task: Any) -> Any:
                from rich.text import Text

                speed = task.finished_speed or task.speed
                return Text("" if not speed or not math.isfinite(speed) else f"{speed:.0f} rep/s")

        self.bar = Progress(
            TextColumn("simulate"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(""),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("simulate", total=self.total)

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            self._start()
        self.bar.update(self.task, completed=done)

    def __enter__(self) -> Any:
        if not sys.stderr.isatty():
            return lambda done, total: None
        return self.update

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
