"""``gradscope simulate``: per-layer gradient norms of fresh random nets, against theory.

Imports no torch at start-up: the engine (which imports torch) is imported inside the command.
"""

from __future__ import annotations

import math
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gradscope.cli.common import FormatOpt, OutputOpt, note, parse_list, warn
from gradscope.cli.plot import plot_to_file
from gradscope.errors import SpecError
from gradscope.options import (
    Arch,
    Device,
    Dtype,
    Format,
    Init,
    Norm,
    NormPosition,
    Optimizer,
    ProgressMode,
    Reinit,
    ResidualScale,
    Task,
)
from gradscope.output import check_output_path, emit

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
    return " | ".join(m.value for m in kind)  # spaces: the help can wrap the list


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
            raise SpecError(f"--{what} takes whole numbers, got {item!r}") from None
    return out


def simulate_command(
    arch: Annotated[
        str,
        typer.Option("--arch", metavar="LIST", help=f"{_choices(Arch)}, or a comma list to sweep."),
    ] = "plain",
    activation: Annotated[
        str,
        typer.Option(
            "--activation",
            "-a",
            metavar="LIST",
            help="Any activation of `gradscope ratios --list`, with its parameter "
            "(leaky_relu:0.2); a comma list sweeps.",
        ),
    ] = "relu",
    norm: Annotated[
        str, typer.Option("--norm", metavar="LIST", help=f"{_choices(Norm)}, or a comma list.")
    ] = "batchnorm",
    init: Annotated[
        str,
        typer.Option(
            "--init",
            metavar="LIST",
            help=f"{_choices(Init)}, or a comma list. auto: LeCun N(0,1/fan_in) for SELU, "
            "He N(0,2/fan_in) otherwise.",
        ),
    ] = "auto",
    gain: Annotated[float, typer.Option("--gain", help="Multiplies the weights' std.")] = 1.0,
    depth: Annotated[
        str, typer.Option("--depth", "-L", metavar="INTS", help="Layers (comma list sweeps).")
    ] = "20",
    width: Annotated[
        str,
        typer.Option("--width", "-w", metavar="INTS", help="Units per layer (comma list sweeps)."),
    ] = "256",
    batch: Annotated[
        str,
        typer.Option("--batch", "-b", metavar="INTS", help="Inputs per batch (comma list sweeps)."),
    ] = "128",
    residual_scale: Annotated[
        ResidualScale,
        typer.Option(
            "--residual-scale",
            help="resnet branch: none, scaled by 1/sqrt(blocks), or zero γ of its last norm.",
            case_sensitive=False,
        ),
    ] = ResidualScale.none,
    norm_position: Annotated[
        str,
        typer.Option(
            "--norm-position",
            metavar="LIST",
            help=f"{_choices(NormPosition)}, or a comma list: resnet blocks x + norm(…) (post, "
            "the paper's) or x + W2·g(norm(W1·g(norm(x)))) (pre).",
        ),
    ] = "post",
    image_size: Annotated[
        int | None,
        typer.Option(
            "--image-size",
            help="plain-conv/resnet-conv: input images are N×N (default 32).",
            show_default=False,
        ),
    ] = None,
    pool_every: Annotated[
        int | None,
        typer.Option(
            "--pool-every",
            help="plain-conv/resnet-conv: a 2×2 max-pool after every K-th layer.",
            show_default=False,
        ),
    ] = None,
    double_channels: Annotated[
        bool,
        typer.Option(
            "--double-channels", help="plain-conv: double the channels at each pool (VGG)."
        ),
    ] = False,
    repeats: Annotated[
        int, typer.Option("--repeats", "-n", help="Fresh nets per configuration.")
    ] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Seed; same seed, same output.")] = 0,
    progress: Annotated[
        ProgressMode,
        typer.Option(
            "--progress",
            case_sensitive=False,
            help="auto: a progress bar when stderr is a terminal; log: a plain line on stderr "
            "at the start and every 10 s (for logs and batch jobs); none.",
        ),
    ] = ProgressMode.auto,
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
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Your own model instead of the synthetic nets: FILE.py:FUNCTION, "
            "MODULE:FUNCTION or torchvision:NAME (runs that code, as an import would).",
            show_default=False,
            rich_help_panel="Your own model",
        ),
    ] = None,
    model_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--model-arg",
            help="key=value passed to the model factory (a Python literal; repeatable).",
            show_default=False,
            rich_help_panel="Your own model",
        ),
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option(
            "--input-shape",
            help="Shape of one input sample for --model, e.g. 3,32,32 (the batch is --batch).",
            show_default=False,
            rich_help_panel="Your own model",
        ),
    ] = None,
    reinit: Annotated[
        Reinit,
        typer.Option(
            "--reinit",
            help="Fresh parameters per repeat for --model: auto (reset_parameters() when that "
            "reproduces the factory exactly, else the factory), factory, reset.",
            case_sensitive=False,
            rich_help_panel="Your own model",
        ),
    ] = Reinit.auto,
    train_steps: Annotated[
        int,
        typer.Option(
            "--train-steps",
            help="Train each repeat's net this many steps and record over training (0: at "
            "initialisation only).",
            rich_help_panel="Training",
        ),
    ] = 0,
    task: Annotated[
        Task,
        typer.Option(
            "--task",
            case_sensitive=False,
            help="Synthetic task to train on.",
            rich_help_panel="Training",
        ),
    ] = Task.teacher,
    optimizer: Annotated[
        Optimizer,
        typer.Option("--optimizer", case_sensitive=False, rich_help_panel="Training"),
    ] = Optimizer.sgd,
    lr: Annotated[
        float, typer.Option("--lr", help="Learning rate.", rich_help_panel="Training")
    ] = 0.1,
    momentum: Annotated[
        float,
        typer.Option("--momentum", help="For --optimizer momentum.", rich_help_panel="Training"),
    ] = 0.9,
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", rich_help_panel="Training")
    ] = 0.0,
    clip_grad_norm: Annotated[
        float | None,
        typer.Option(
            "--clip-grad-norm",
            help="Clip the total gradient norm to this value.",
            show_default=False,
            rich_help_panel="Training",
        ),
    ] = None,
    record_every: Annotated[
        int,
        typer.Option(
            "--record-every",
            help="Record every K-th step (and the last).",
            rich_help_panel="Training",
        ),
    ] = 10,
    classes: Annotated[
        int,
        typer.Option(
            "--classes",
            help="Classes (gaussian-classes, random-labels) or teacher outputs.",
            rich_help_panel="Training",
        ),
    ] = 10,
    samples: Annotated[
        int,
        typer.Option(
            "--samples", help="Size of the fixed training set.", rich_help_panel="Training"
        ),
    ] = 4096,
    save_checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--save-checkpoint",
            help="Write repeat 0's trained state dict here (readable by inspect-checkpoint).",
            dir_okay=False,
            show_default=False,
            rich_help_panel="Training",
        ),
    ] = None,
    growth: Annotated[
        Path | None,
        typer.Option(
            "--growth",
            help="Write the per-layer weight-norm growth check (measured "
            "vs predicted) to this file (.csv/.json/.txt).",
            dir_okay=False,
            show_default=False,
            rich_help_panel="Training",
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

    Your own model: gradscope simulate --model examples/resnet.py:make_model --input-shape 3,32,32

    Training: gradscope simulate --train-steps 500 --task gaussian-classes --weight-decay 0.02
    """
    if repeats < 1:
        raise SpecError(f"--repeats must be at least 1, got {repeats}")
    if not 0 <= seed < 2**63:
        raise SpecError(f"--seed must be a whole number from 0 to 2**63-1, got {seed}")
    _progress.mode = progress
    # Every output is checked before any work, so a bad path never costs a run or leaves one
    # file written and the other not.
    if output is not None:
        from gradscope.output import resolve_format

        resolve_format(fmt, False, output)
        check_output_path(output)
    if plot is not None:
        from gradscope.plot.figure import figure_format

        figure_format(plot)
        check_output_path(plot)
    _refuse_unused_options(
        model=model, train_steps=train_steps, arch=arch, activation=activation, norm=norm,
        init=init, depth=depth, width=width, gain=gain, residual_scale=residual_scale,
        norm_position=norm_position, image_size=image_size, pool_every=pool_every,
        double_channels=double_channels, task=task, optimizer=optimizer, lr=lr,
        momentum=momentum, weight_decay=weight_decay, clip_grad_norm=clip_grad_norm,
        record_every=record_every, classes=classes, samples=samples,
        save_checkpoint=save_checkpoint, growth=growth, backend=backend, max_memory=max_memory,
        workers=workers,
    )  # fmt: skip
    if model is not None:
        _run_model(
            model,
            model_arg or [],
            input_shape,
            reinit,
            batch=batch,
            repeats=repeats,
            seed=seed,
            dtype=dtype,
            device=device,
            summary=summary,
            plot=plot,
            fmt=fmt,
            output=output,
        )
        return
    for flag, value in (("--model-arg", model_arg), ("--input-shape", input_shape)):
        if value:
            raise SpecError(f"{flag} applies only with --model")
    if train_steps < 0:
        raise SpecError(f"--train-steps must be 0 or more, got {train_steps}")
    if workers is not None and workers < 1:
        raise SpecError(f"--workers must be at least 1, got {workers}")
    archs = _enum_list(Arch, arch, "arch")
    positions = _enum_list(NormPosition, norm_position, "norm-position")
    conv_options: dict[str, Any] = dict(
        norm_position=positions,
        image_size=image_size,
        pool_every=pool_every,
        double_channels=double_channels,
    )
    norms = _enum_list(Norm, norm, "norm")
    inits = _enum_list(Init, init, "init")
    activations = parse_list(activation, "--activation")
    depths, widths, batches = (
        _int_list(depth, "depth"),
        _int_list(width, "width"),
        _int_list(batch, "batch"),
    )
    limit = parse_memory(max_memory) if max_memory is not None else None
    if Norm.batchnorm in norms and 2 in batches:
        warn(
            "with --batch 2, BatchNorm maps every unit to ±1: the theory (large batches) does "
            "not apply, and a Finding is expected"
        )
    from gradscope.engine.simulate import build_specs, simulate

    if train_steps > 0:
        conv = [a.value for a in archs if a.is_conv]
        if conv or positions != [NormPosition.post]:
            what = f"--arch {conv[0]}" if conv else "--norm-position pre"
            raise SpecError(f"--train-steps does not support {what} yet")
        specs = build_specs(
            arch=archs, activation=activations, norm=norms, init=inits, gain=gain, depth=depths,
            width=widths, batch=batches, residual_scale=residual_scale,
        )  # fmt: skip
        _run_training(
            specs, train_steps=train_steps, task=task, optimizer=optimizer, lr=lr,
            momentum=momentum, weight_decay=weight_decay, clip_grad_norm=clip_grad_norm,
            record_every=record_every, classes=classes, samples=samples, repeats=repeats,
            seed=seed, dtype=dtype, device=device, workers=workers,
            save_checkpoint=save_checkpoint, growth=growth, summary=summary, plot=plot,
            fmt=fmt, output=output,
        )  # fmt: skip
        return

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
            **conv_options,
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
                **conv_options,
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
        if done == 0:
            warn("interrupted before any repeat finished: nothing to report")
        else:
            warn(f"interrupted: partial results from {done} completed repeats")
    records: list[Any] = list(result.summary) if summary else list(result.records)
    if records:
        title = "simulate" + (" (partial)" if result.partial else "")
        emit(records, fmt, output, summary=None if summary else result.summary, title=title)
        if plot is not None:
            plot_to_file(records, plot)
    if result.partial:
        raise typer.Exit(130)


def _single(text: str, what: str) -> int:
    values = _int_list(text, what)
    if len(values) != 1:
        raise SpecError(f"--{what} takes one value with --model, got {text!r}")
    return values[0]


def _run_model(
    target: str, model_args: list[str], input_shape: str | None, reinit: Reinit, *, batch: str,
    repeats: int, seed: int, dtype: Dtype, device: Device, summary: bool, plot: Path | None,
    fmt: Format, output: Path | None,
) -> None:  # fmt: skip
    """``--model``: per-module gradient statistics of the user's own network."""
    from gradscope.engine.mlp import resolve_device
    from gradscope.engine.user_model import (
        ModelSpec,
        model_records,
        parse_input_shape,
        parse_model_args,
    )
    from gradscope.engine.user_model import run_model as run_user_model

    if input_shape is None:
        raise SpecError("--model needs --input-shape, the shape of one sample (e.g. 3,32,32)")
    spec = ModelSpec(target, parse_model_args(model_args), parse_input_shape(input_shape))
    _check_outputs(output, plot)
    with _progress(repeats) as advance:
        run = run_user_model(
            spec, batch=_single(batch, "batch"), repeats=repeats, seed=seed, dtype=dtype.value,
            device=resolve_device(device), reinit=reinit,
            progress=lambda done: advance(done, repeats),
        )  # fmt: skip
    for text in run.notes:
        note(text)
    if run.partial:
        warn(f"interrupted: partial results from {run.grad_norms.shape[0]} completed repeats")
    rows, summ = model_records(run, seed=seed)
    records: list[Any] = list(summ) if summary else list(rows)
    title = f"simulate --model {spec.label}" + (" (partial)" if run.partial else "")
    emit(records, fmt, output, summary=None if summary else summ, title=title)
    if plot is not None:
        plot_to_file(rows, plot)
    if run.partial:
        raise typer.Exit(130)


_NET_OPTIONS = (
    "arch", "activation", "norm", "init", "depth", "width", "gain", "residual_scale",
    "norm_position", "image_size", "pool_every", "double_channels",
)  # fmt: skip
_TRAIN_OPTIONS = (
    "task", "optimizer", "lr", "momentum", "weight_decay", "clip_grad_norm", "record_every",
    "classes", "samples", "save_checkpoint", "growth",
)  # fmt: skip
# Options of the synthetic-net engine that neither --model nor --train-steps uses.
_ENGINE_OPTIONS = ("backend", "max_memory")
_CONV_OPTIONS = ("image_size", "pool_every", "double_channels")


def _refuse_unused_options(**given: Any) -> None:
    """An option that would be silently ignored is an error: the built-in net's options with
    --model, training options without --train-steps."""
    import inspect

    defaults = {n: p.default for n, p in inspect.signature(simulate_command).parameters.items()}

    def flags(names: list[str]) -> str:
        return ", ".join("--" + n.replace("_", "-") for n in names)

    def changed(names: tuple[str, ...]) -> list[str]:
        return [n for n in names if given[n] != defaults[n]]

    if given["model"] is not None:
        if given["train_steps"]:
            raise SpecError("--train-steps does not support --model yet")
        unused = (
            changed(_NET_OPTIONS) + changed(_TRAIN_OPTIONS) + changed(_ENGINE_OPTIONS)
            + changed(("workers",))
        )  # fmt: skip
        if unused:
            verb = "applies" if len(unused) == 1 else "apply"
            raise SpecError(f"{flags(unused)} only {verb} to the built-in nets, not to --model")
    elif not given["train_steps"]:
        unused = changed(_TRAIN_OPTIONS)
        if unused:
            verb = "applies" if len(unused) == 1 else "apply"
            raise SpecError(f"{flags(unused)} {verb} only with --train-steps")
    else:
        unused = changed(_ENGINE_OPTIONS) + changed(_CONV_OPTIONS)
        if unused:
            verb = "is" if len(unused) == 1 else "are"
            raise SpecError(f"{flags(unused)} {verb} not used by --train-steps")


def _check_outputs(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            check_output_path(path)


def _run_training(
    specs: list[Any], *, train_steps: int, task: Task, optimizer: Optimizer, lr: float,
    momentum: float, weight_decay: float, clip_grad_norm: float | None, record_every: int,
    classes: int, samples: int, repeats: int, seed: int, dtype: Dtype, device: Device,
    workers: int | None, save_checkpoint: Path | None, growth: Path | None, summary: bool,
    plot: Path | None, fmt: Format, output: Path | None,
) -> None:  # fmt: skip
    """``--train-steps``: records over training, the weight-growth check, a checkpoint."""
    from gradscope.engine.train import train
    from gradscope.output import resolve_format

    _check_outputs(output, plot, save_checkpoint, growth)
    if growth is not None:
        resolve_format(Format.auto, False, growth)  # a bad extension fails before training
    total = train_steps * repeats * len(specs)
    with _progress(total, unit="steps/s", label="train") as advance:
        result = train(
            specs, task=task, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
            clip_grad_norm=clip_grad_norm, steps=train_steps, record_every=record_every,
            repeats=repeats, seed=seed, classes=classes, samples=samples, momentum=momentum,
            dtype=dtype, device=device, save_checkpoint=save_checkpoint, workers=workers,
            progress=advance,
        )  # fmt: skip
    if result.weight_growth:
        worst = max(
            (
                g.max_relative_error
                for g in result.weight_growth
                if g.max_relative_error is not None
            ),
            default=None,
        )
        basis = result.weight_growth[0].prediction_basis
        if worst is not None:
            note(f"weight-norm growth check ({basis}): largest relative error {worst:.2e}")
    if growth is not None:
        emit(result.weight_growth, Format.auto, growth, title="weight-norm growth")
        note(f"wrote {growth}")
    if result.checkpoint is not None:
        first = specs[0]
        what = f"{first.arch.value} {first.activation.label} {first.norm.value} L={first.depth}"
        more = f" (the first of {len(specs)} configurations)" if len(specs) > 1 else ""
        note(f"wrote {result.checkpoint}: repeat 0 of {what}{more}")
    overflowed: dict[str, int] = {}
    for s in result.summary:
        if s.overflow_repeats:
            label = f"{s.arch} {s.activation} {s.norm} L={s.depth}"
            overflowed[label] = max(overflowed.get(label, 0), s.overflow_repeats)
    for label, count in overflowed.items():
        warn(
            f"{label}: training diverged to inf/NaN in {count} of {repeats} repeats "
            "(lower --lr, or try --clip-grad-norm)"
        )
    records: list[Any] = list(result.summary) if summary else list(result.records)
    emit(records, fmt, output, summary=None if summary else result.summary, title="train")
    if plot is not None:
        plot_to_file(records, plot)


class _progress:
    """Progress on stderr: a rich bar (repeats/s or steps/s, ETA) when stderr is a terminal,
    plain lines with ``--progress log`` (at the first update, then every 10 s and at the end),
    nothing otherwise.

    Started at the first update, so that worker processes are forked before its thread exists.
    """

    mode: ProgressMode = ProgressMode.auto
    LOG_EVERY = 10.0

    def __init__(self, total: int, unit: str = "rep/s", label: str = "simulate") -> None:
        self.total = total
        self.unit = unit
        self.label = label
        self.bar: Any = None
        self.task: Any = None
        self.last_log: float | None = None
        self.start_time = 0.0

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        outer = self

        class _Rate(TextColumn):
            def render(self, task: Any) -> Any:
                from rich.text import Text

                speed = task.finished_speed or task.speed
                unit = outer.unit
                return Text("" if not speed or not math.isfinite(speed) else f"{speed:.0f} {unit}")

        self.bar = Progress(
            TextColumn(self.label),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(""),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=self.total)

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            self._start()
        self.bar.update(self.task, completed=done)

    def log(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.last_log is None:
            self.start_time = now
        elif now - self.last_log < self.LOG_EVERY and done < total:
            return
        self.last_log = now
        elapsed = now - self.start_time
        rate = f", {done / elapsed:.3g} {self.unit}" if done and elapsed > 0 else ""
        sys.stderr.write(f"{self.label}: {done}/{total}{rate}\n")
        sys.stderr.flush()

    def __enter__(self) -> Any:
        if self.mode is ProgressMode.log:
            return self.log
        if self.mode is ProgressMode.none or not sys.stderr.isatty():
            return lambda done, total: None
        return self.update

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
