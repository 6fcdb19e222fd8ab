"""``gradscope simulate``: per-layer gradient norms of fresh random nets, against theory.

Imports no torch at start-up: the engine (which imports torch) is imported inside the command.
"""

from __future__ import annotations

import inspect
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from gradscope.cli.common import (
    PROVENANCE_PANEL,
    FormatOpt,
    MetaOpt,
    NoMetaOpt,
    OutputOpt,
    check_meta_options,
    check_outputs,
    command_line,
    given_options,
    note,
    parse_list,
    typed_options,
    warn,
)
from gradscope.cli.plot import plot_to_file
from gradscope.cli.progress import Progress
from gradscope.errors import SpecError, UsageError
from gradscope.options import (
    Arch,
    Backend,
    Device,
    Distributed,
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
from gradscope.output import emit, resolve_format, write_atomic
from gradscope.provenance import (
    file_digest,
    json_safe,
    model_provenance,
    new_meta,
    read_meta,
    replay_options,
)
from gradscope.schema import Role, roles
from gradscope.specs import (
    ModelRequest,
    ModelSpec,
    SimulateRequest,
    TrainRequest,
    build_specs,
    coerce,
    make_config,
    parse_input_shape,
    parse_model_args,
)

_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_IUNITS = {"ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}


def parse_memory(text: str) -> int:
    """``8GiB``, ``500MB``, ``2g`` or a number of bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", text.lower())
    if not m:
        raise UsageError(
            f"{{option}} must be a size like 4GiB, 500MB or 2000000000, got {text!r}",
            option="max_memory",
        )
    unit = m.group(2) or ""
    factor = _IUNITS[unit] if unit.endswith("i") else _UNITS[unit]
    value = float(m.group(1)) * factor
    if not value < 2**63:  # also inf, from a number with hundreds of digits
        raise SpecError(f"{{option}} {text!r} is beyond any machine's memory", option="max_memory")
    return int(value)


def _choices(kind: Any) -> str:
    return " | ".join(m.value for m in kind)  # spaces: the help can wrap the list


def _enum_list(kind: Any, text: str, what: str) -> list[Any]:
    return [coerce(kind, item, what) for item in parse_list(text, what)]


def _int_list(text: str, what: str) -> list[int]:
    out = []
    for item in parse_list(text, what):
        try:
            out.append(int(item))
        except ValueError:
            raise UsageError(f"{{option}} takes whole numbers, got {item!r}", option=what) from None
    return out


_RESOURCES = "Resources"
_GATE = "CI gate"
_PROVENANCE = PROVENANCE_PANEL


def simulate_command(
    ctx: typer.Context,
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
            help="An activation of `gradscope ratios --list` (not an operator), with its "
            "parameter (leaky_relu:0.2); a comma list sweeps.",
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
            metavar="SCALE",
            help=f"{_choices(ResidualScale)}: the resnet branch as is, scaled by "
            "1/sqrt(blocks), or with a zero γ in its last norm.",
            case_sensitive=False,
        ),
    ] = ResidualScale.none,
    norm_position: Annotated[
        str,
        typer.Option(
            "--norm-position",
            metavar="LIST",
            help=f"{_choices(NormPosition)}, or a comma list: where resnet blocks normalise, "
            "after each weight layer (post, the paper's) or at the start of each branch "
            "layer (pre).",
        ),
    ] = "post",
    image_size: Annotated[
        int | None,
        typer.Option(
            "--image-size",
            metavar="N",
            help="plain-conv/resnet-conv: input images are N×N (default 32).",
            show_default=False,
        ),
    ] = None,
    pool_every: Annotated[
        int | None,
        typer.Option(
            "--pool-every",
            metavar="K",
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
    dtype: Annotated[
        Dtype,
        typer.Option(
            "--dtype",
            help="Precision of the nets.",
            case_sensitive=False,
            rich_help_panel=_RESOURCES,
        ),
    ] = Dtype.float32,
    device: Annotated[
        Device,
        typer.Option("--device", help="auto picks CUDA when present.", rich_help_panel=_RESOURCES),
    ] = Device.auto,
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory",
            metavar="SIZE",
            help="Refuse to start above this estimate (4GiB, 500MB). Default: half the free RAM.",
            show_default=False,
            rich_help_panel=_RESOURCES,
        ),
    ] = None,
    backend: Annotated[
        Backend,
        typer.Option(
            "--backend",
            case_sensitive=False,
            help="CPU workers: auto (processes for long jobs), processes or threads.",
            rich_help_panel=_RESOURCES,
        ),
    ] = Backend.auto,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            metavar="N",
            help="CPU threads running repeats. Default: one per core.",
            show_default=False,
            rich_help_panel=_RESOURCES,
        ),
    ] = None,
    distributed: Annotated[
        Distributed,
        typer.Option(
            "--distributed",
            case_sensitive=False,
            help="auto: under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set), share the sweep "
            "among its ranks, the same output written by rank 0; off: every process runs it "
            "whole.",
            rich_help_panel=_RESOURCES,
        ),
    ] = Distributed.auto,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="FACTORY",
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
            metavar="KEY=VALUE",
            help="key=value passed to the model factory (a Python literal; repeatable).",
            show_default=False,
            rich_help_panel="Your own model",
        ),
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option(
            "--input-shape",
            metavar="SHAPE",
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
            metavar="TASK",
            case_sensitive=False,
            help=f"Synthetic task to train on: {_choices(Task)}.",
            rich_help_panel="Training",
        ),
    ] = Task.teacher,
    optimizer: Annotated[
        Optimizer,
        typer.Option(
            "--optimizer",
            case_sensitive=False,
            help="sgd, momentum (SGD with --momentum) or adam (PyTorch's defaults otherwise).",
            rich_help_panel="Training",
        ),
    ] = Optimizer.sgd,
    lr: Annotated[
        float, typer.Option("--lr", help="Learning rate.", rich_help_panel="Training")
    ] = 0.1,
    momentum: Annotated[
        float,
        typer.Option("--momentum", help="For --optimizer momentum.", rich_help_panel="Training"),
    ] = 0.9,
    weight_decay: Annotated[
        float,
        typer.Option(
            "--weight-decay",
            help="L2 weight decay, as PyTorch's optimizers apply it.",
            rich_help_panel="Training",
        ),
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
            metavar="FILE",
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
            metavar="FILE",
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
            metavar="FIG",
            help="Also draw the records to this figure (.png/.svg/.pdf).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    fail_if_rate_above: Annotated[
        float | None,
        typer.Option(
            "--fail-if-rate-above",
            metavar="RATE",
            help="Exit 3 when a configuration's fitted growth rate per layer (for --model: "
            "the whole model's) is above RATE, judged by the lower end of its 95% CI, so that "
            "noise alone never fails a build. The records are written first, then one Gate: "
            "line per failing configuration on stderr.",
            show_default=False,
            rich_help_panel=_GATE,
        ),
    ] = None,
    fail_if_amplification_above: Annotated[
        float | None,
        typer.Option(
            "--fail-if-amplification-above",
            metavar="X",
            help="Exit 3 when the first layer's gradient norm is more than X times the last "
            "layer's, judged by a conservative lower bound: the first layer's 95% CI low over "
            "the last layer's CI high (holds with 90% confidence or more).",
            show_default=False,
            rich_help_panel=_GATE,
        ),
    ] = None,
    meta: MetaOpt = None,
    no_meta: NoMetaOpt = False,
    from_meta: Annotated[
        Path | None,
        typer.Option(
            "--from-meta",
            metavar="FILE",
            help="Re-run the configuration a provenance file records (a .meta.json, JSON "
            "output, or a figure): the same records, byte for byte. Only options saying "
            "where results go and how the machine is used may be given with it.",
            dir_okay=False,
            show_default=False,
            rich_help_panel=_PROVENANCE,
        ),
    ] = None,
    fmt: FormatOpt = Format.auto,
    output: OutputOpt = None,
) -> None:
    """Measure the weight-gradient norm of every layer of fresh random nets, with its
    confidence interval, beside what theory predicts; sweep any option with a comma list.

    Example: gradscope simulate --activation selu,tanh,relu --norm batchnorm,none --repeats 64
    -o fig3.csv

    Your own model: gradscope simulate --model examples/resnet.py:make_model --input-shape 3,32,32
    --batch 32 --repeats 16

    Training: gradscope simulate --train-steps 200 --width 64 --repeats 4 --task gaussian-classes
    --weight-decay 0.02

    CI gate: gradscope simulate --model examples/resnet18.py:make_model --input-shape 3,32,32
    --repeats 16 --fail-if-rate-above 1.15 (exit 3 when it fails)
    """
    origin = _Origin(command_line(ctx), time.time())
    params, given = dict(ctx.params), given_options(ctx)
    if params["from_meta"] is not None:
        params, given = _replay(params, given)
    _run(params, given, origin)


@dataclass(frozen=True)
class _Origin:
    """How the run was started: the command line and the time (for its provenance)."""

    command_line: str
    started: float


# Which options each kind of run reads; any other option the user gives is refused, so that
# nothing is silently ignored.
_NET_OPTIONS = {
    "arch", "activation", "norm", "init", "depth", "width", "gain", "residual_scale",
    "norm_position", "image_size", "pool_every", "double_channels",
}  # fmt: skip
_TRAIN_OPTIONS = {
    "task", "optimizer", "lr", "momentum", "weight_decay", "clip_grad_norm", "record_every",
    "classes", "samples", "save_checkpoint", "growth",
}  # fmt: skip
_SIMULATE_ENGINE_OPTIONS = {"backend", "max_memory"}
_MODEL_OPTIONS = {"model_arg", "input_shape", "reinit"}
_GATE_OPTIONS = {"fail_if_rate_above", "fail_if_amplification_above"}
# Options that say where results go rather than what runs: a meta's options leave them out,
# and --from-meta takes them from the command line only.
_DESTINATIONS = {
    "output", "plot", "meta", "no_meta", "from_meta", "progress", "growth", "save_checkpoint",
    "distributed",
}  # fmt: skip
# What may be given beside --from-meta: destinations, the format, how the machine is used,
# and the gate's thresholds; everything else is the recorded configuration.
_REPLAY_OVERRIDES = _DESTINATIONS | _GATE_OPTIONS | {
    "fmt", "summary", "workers", "backend", "max_memory",
}  # fmt: skip


def _flags(names: set[str]) -> str:
    return ", ".join("--" + n.replace("_", "-") for n in sorted(names))


def _refuse_unused_options(p: dict[str, Any], given: set[str]) -> None:
    """An option that would be silently ignored is an error: the built-in nets' options with
    --model, training options without --train-steps, --model's options without it."""
    if p["model"] is not None:
        if p["train_steps"]:
            raise SpecError("--train-steps does not support --model yet")
        unused = given & (_NET_OPTIONS | _TRAIN_OPTIONS | _SIMULATE_ENGINE_OPTIONS | {"workers"})
        if unused:
            verb = "applies" if len(unused) == 1 else "apply"
            raise SpecError(f"{_flags(unused)} only {verb} to the built-in nets, not to --model")
        return
    for name in sorted(given & _MODEL_OPTIONS):
        raise SpecError(f"--{name.replace('_', '-')} applies only with --model")
    if not p["train_steps"]:
        unused = given & _TRAIN_OPTIONS
        if unused:
            verb = "applies" if len(unused) == 1 else "apply"
            raise SpecError(f"{_flags(unused)} {verb} only with --train-steps")
    else:
        unused = given & (_SIMULATE_ENGINE_OPTIONS | _GATE_OPTIONS)
        if unused:
            verb = "is" if len(unused) == 1 else "are"
            raise SpecError(f"{_flags(unused)} {verb} not used by --train-steps")


def _replay(p: dict[str, Any], given: set[str]) -> tuple[dict[str, Any], set[str]]:
    """The options of the run a meta file records (``--from-meta``), with the destinations
    and overrides given now; and the options given then and now."""
    source = p["from_meta"]
    refused = given - _REPLAY_OVERRIDES
    if refused:
        raise SpecError(
            f"{_flags(refused)} cannot be given with --from-meta, which re-runs the "
            f"configuration {source} records"
        )
    meta = read_meta(source)
    recorded = typed_options(
        replay_options(meta, "simulate", source), simulate_command, f"{source}: field options"
    )
    then = meta.get("given", [])
    if not isinstance(then, list) or not all(isinstance(n, str) for n in then):
        raise SpecError(f"{source}: field given must be a list of option names")
    unknown = sorted(set(then) - set(recorded) - _DESTINATIONS)
    if unknown:
        raise SpecError(f"{source}: field given names {unknown[0]!r}, which options does not hold")
    replayed = {k: v for k, v in recorded.items() if k not in _DESTINATIONS | given}
    return {**p, **replayed}, (set(then) - _DESTINATIONS) | given


def _check_gate_and_meta(p: dict[str, Any], given: set[str]) -> None:
    """Thresholds are positive and finite and need a CI; --meta and --no-meta exclude each
    other."""
    from gradscope.testing import check_thresholds

    check_thresholds(p["fail_if_rate_above"], p["fail_if_amplification_above"])
    gate = sorted(given & _GATE_OPTIONS)
    if gate and p["repeats"] < 2:
        raise SpecError(
            f"{_flags(set(gate))} needs --repeats 2 or more: the gate judges by a 95% CI"
        )
    check_meta_options(p["meta"], p["no_meta"], p["output"], p["plot"])


def _run(p: dict[str, Any], given: set[str], origin: _Origin) -> None:
    """Build the request of the run the options ask for, run it (on every torchrun rank),
    report and write on rank 0; then the gate's verdict."""
    if p["train_steps"] < 0:
        raise SpecError(f"--train-steps must be 0 or more, got {p['train_steps']}")
    Progress.mode = p["progress"]
    if p["growth"] is not None:
        resolve_format(Format.auto, False, p["growth"])  # a bad extension fails before training
    check_outputs(p["fmt"], p["output"], p["plot"], p["save_checkpoint"], p["growth"], p["meta"])
    _check_gate_and_meta(p, given)
    _refuse_unused_options(p, given)
    _cap_workers(p)
    request, total, unit, label = _request(p)
    interrupt = _Interrupt()
    cluster = _join(p, request)
    try:
        root = cluster is None or cluster.is_root
        if not root:
            Progress.mode = ProgressMode.none  # rank 0 shows every rank's progress
        result = _execute(request, p["seed"], total, unit, label, interrupt, cluster)
        if not root:
            if result.partial:
                raise typer.Exit(interrupt.exit_code)
            return
        _report(result, request, p)
        world = 1 if cluster is None else cluster.world_size
        meta = None if p["no_meta"] else _meta(p, given, result, origin, world)
        _write(result, p, _title(p, result), meta, interrupt.exit_code)
        _gate(result, p)
    finally:
        if cluster is not None:
            cluster.close()


def _request(p: dict[str, Any]) -> tuple[Any, int, str, str]:
    """The engine request; the work its progress counts to, the rate's unit and the label."""
    if p["model"] is not None:
        model = _model_request(p)
        return model, model.repeats, "rep/s", "simulate"
    if p["train_steps"] > 0:
        train = _train_request(p)
        return train, train.config.steps * train.repeats * len(train.specs), "steps/s", "train"
    request = _simulate_request(p)
    return request, request.repeats * len(request.specs), "rep/s", "simulate"


def _report(result: Any, request: Any, p: dict[str, Any]) -> None:
    if p["model"] is not None:
        _report_notes(result)
    elif p["train_steps"] > 0:
        _report_training(result, request, p["growth"])
    else:
        _report_simulation(result, request.dtype)


def _cap_workers(p: dict[str, Any]) -> None:
    """More workers than cores only slow a run down (and ask the OS for processes it cannot
    run): ``--workers`` is capped at the cores available, with a warning."""
    if p["workers"] is None:
        return
    from gradscope.engine.runner import available_cores

    cores = available_cores()
    if p["workers"] > cores:
        warn(f"--workers {p['workers']} is more than the {cores} cores available: using {cores}")
        p["workers"] = cores


def _join(p: dict[str, Any], request: Any) -> Any:
    """torchrun's ranks (a :class:`gradscope.engine.distributed.Cluster`) with
    ``--distributed auto`` under torchrun, else None."""
    if p["distributed"] is Distributed.off:
        return None
    from gradscope.engine.distributed import launched_by_torchrun, start

    if not launched_by_torchrun():
        return None
    from gradscope.engine.runner import resolve_device

    return start(resolve_device(request.device))


def _meta(
    p: dict[str, Any], given: set[str], result: Any, origin: _Origin, world_size: int
) -> dict[str, Any]:
    """The provenance of a run (see gradscope.provenance): ``options`` holds every option
    that says what runs, defaults included, as ``--from-meta`` replays them; the resolved
    values (``init`` auto → he, ``device`` auto → cpu) are in ``configurations`` and
    ``device``; ``world_size`` is the number of torchrun ranks that shared it (1: one
    process)."""
    from gradscope.engine.runner import resolve_device

    meta = new_meta("simulate", origin.command_line, origin.started, time.time() - origin.started)
    order = [name for name in inspect.signature(simulate_command).parameters if name in p]
    meta.update(
        seed=p["seed"],
        repeats=p["repeats"],
        device=resolve_device(p["device"]),
        world_size=world_size,
        prediction_basis=_unique(
            getattr(s, "prediction_basis", None)
            for s in [*result.summary, *getattr(result, "weight_growth", [])]
        )
        or None,
        options={name: json_safe(p[name]) for name in order if name not in _DESTINATIONS},
        given=sorted(given),
        configurations=_unique(
            {
                name: json_safe(getattr(s, name))
                for name, role in roles(type(s)).items()
                if role is Role.configuration
            }
            for s in result.summary
        ),  # fmt: skip
        outputs={
            name: str(p[name])
            for name in order
            if name in _DESTINATIONS and isinstance(p[name], Path)
        },  # fmt: skip
    )
    if p["model"] is not None:
        meta["model"] = model_provenance(p["model"])
    if p["from_meta"] is not None:
        meta["reproduces"] = file_digest(p["from_meta"])
    return meta


def _unique(values: Any) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value is not None and value not in out:
            out.append(value)
    return out


def _gate(result: Any, p: dict[str, Any]) -> None:
    """One ``Gate:`` line per configuration above a threshold and exit 3; a line saying the
    margin when every configuration passes."""
    limits = dict(max_rate=p["fail_if_rate_above"],
                  max_amplification=p["fail_if_amplification_above"])  # fmt: skip
    if limits["max_rate"] is None and limits["max_amplification"] is None:
        return
    from gradscope.testing import gate_failures, gate_passed

    failures = gate_failures(result, **limits)
    for failure in failures:
        note(failure.line())
    if failures:
        raise typer.Exit(3)
    note(gate_passed(result, **limits))


def _simulate_request(p: dict[str, Any]) -> SimulateRequest:
    specs = _build_specs(p, conv=True)
    limit = parse_memory(p["max_memory"]) if p["max_memory"] is not None else None
    return SimulateRequest(
        tuple(specs), repeats=p["repeats"], dtype=p["dtype"], device=p["device"],
        max_memory=limit, workers=p["workers"], backend=p["backend"],
    )  # fmt: skip


def _train_request(p: dict[str, Any]) -> TrainRequest:
    archs = _enum_list(Arch, p["arch"], "arch")
    conv = [a.value for a in archs if a is Arch.resnet_conv]
    positions = _enum_list(NormPosition, p["norm_position"], "norm_position")
    if conv or positions != [NormPosition.post]:
        what = f"--arch {conv[0]}" if conv else "--norm-position pre"
        raise SpecError(f"--train-steps does not support {what} yet (plain-conv trains)")
    config = make_config(
        task=p["task"], optimizer=p["optimizer"], lr=p["lr"], weight_decay=p["weight_decay"],
        clip_grad_norm=p["clip_grad_norm"], steps=p["train_steps"],
        record_every=p["record_every"], classes=p["classes"], samples=p["samples"],
        momentum=p["momentum"],
    )  # fmt: skip
    return TrainRequest(
        tuple(_build_specs(p, conv=True)), config, repeats=p["repeats"], dtype=p["dtype"],
        device=p["device"], workers=p["workers"], save_checkpoint=p["save_checkpoint"],
    )  # fmt: skip


def _model_request(p: dict[str, Any]) -> ModelRequest:
    if p["input_shape"] is None:
        raise SpecError("--model needs --input-shape, the shape of one sample (e.g. 3,32,32)")
    spec = ModelSpec(
        p["model"], parse_model_args(p["model_arg"] or []), parse_input_shape(p["input_shape"])
    )
    batches = _int_list(p["batch"], "batch")
    if len(batches) != 1:
        raise SpecError(f"--batch takes one value with --model, got {p['batch']!r}")
    return ModelRequest(
        spec, batches[0], repeats=p["repeats"], dtype=p["dtype"], device=p["device"],
        reinit=p["reinit"],
    )  # fmt: skip


def _build_specs(p: dict[str, Any], conv: bool) -> list[Any]:
    """The grid of synthetic configurations the options sweep."""
    norms = _enum_list(Norm, p["norm"], "norm")
    batches = _int_list(p["batch"], "batch")
    if Norm.batchnorm in norms and 2 in batches:
        warn(
            "with --batch 2, BatchNorm maps every unit to ±1: the theory (large batches) does "
            "not apply, and a Finding is expected"
        )
    conv_options: dict[str, Any] = (
        dict(image_size=p["image_size"], pool_every=p["pool_every"],
             double_channels=p["double_channels"],
             norm_position=_enum_list(NormPosition, p["norm_position"], "norm_position"))
        if conv else {}
    )  # fmt: skip
    return build_specs(
        arch=_enum_list(Arch, p["arch"], "arch"),
        activation=parse_list(p["activation"], "activation"),
        norm=norms,
        init=_enum_list(Init, p["init"], "init"),
        gain=p["gain"],
        depth=_int_list(p["depth"], "depth"),
        width=_int_list(p["width"], "width"),
        batch=batches,
        residual_scale=p["residual_scale"],
        **conv_options,
    )


class _Interrupt:
    """Ctrl-C and SIGTERM (what a batch scheduler sends): the first asks the run to stop and
    keep what has finished; a second one stops at once."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.signum: int | None = None

    def handler(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            if signum == signal.SIGTERM:
                raise SystemExit(self.exit_code)
            raise KeyboardInterrupt
        self.signum = signum
        self.stop.set()

    @property
    def exit_code(self) -> int:
        """128 + the signal: 143 after SIGTERM, 130 after Ctrl-C (or another rank's stop)."""
        return 128 + (self.signum or signal.SIGINT)


def _execute(
    request: Any, seed: int, total: int, unit: str, label: str, interrupt: _Interrupt,
    cluster: Any = None,
) -> Any:  # fmt: skip
    """Run the engine with a progress display, stopped early by ``interrupt``'s signals."""
    from gradscope.engine import run

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, interrupt.handler)
    try:
        with Progress(total, unit=unit, label=label) as advance:
            return run(request, seed=seed, progress=advance, stop=interrupt.stop, cluster=cluster)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _report_notes(result: Any) -> None:
    for text in result.notes:
        note(text)


def _report_simulation(result: Any, dtype: Dtype) -> None:
    """Overflow warnings and ``Finding:`` lines where the fit and theory disagree."""
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


def _report_training(result: Any, request: TrainRequest, growth: Path | None) -> None:
    """The weight-growth check, the checkpoint written, and diverged configurations."""
    if result.weight_growth:
        errors = [g.max_relative_error for g in result.weight_growth]
        worst = max((e for e in errors if e is not None), default=None)
        basis = result.weight_growth[0].prediction_basis
        if worst is not None:
            note(f"weight-norm growth check ({basis}): largest relative error {worst:.2e}")
    if growth is not None:
        emit(result.weight_growth, Format.auto, growth, title="weight-norm growth")
        note(f"wrote {growth}")
    if request.save_checkpoint is not None and result.state_dict is not None:
        write_atomic(request.save_checkpoint, result.state_dict_bytes())
        first, n = request.specs[0], len(request.specs)
        what = f"{first.arch.value} {first.activation.label} {first.norm.value} L={first.depth}"
        more = f" (the first of {n} configurations)" if n > 1 else ""
        note(f"wrote {request.save_checkpoint}: repeat 0 of {what}{more}")
    overflowed: dict[str, int] = {}
    for s in result.summary:
        if s.overflow_repeats:
            label = f"{s.arch} {s.activation} {s.norm} L={s.depth}"
            overflowed[label] = max(overflowed.get(label, 0), s.overflow_repeats)
    for label, count in overflowed.items():
        warn(
            f"{label}: training diverged to inf/NaN in {count} of {request.repeats} repeats "
            "(lower --lr, or try --clip-grad-norm)"
        )


def _title(p: dict[str, Any], result: Any) -> str:
    if p["model"] is not None:
        spec = ModelSpec(p["model"], parse_model_args(p["model_arg"] or []))
        return f"simulate --model {spec.label}" + (" (partial)" if result.partial else "")
    if p["train_steps"] > 0:
        return "train"
    return "simulate" + (" (partial)" if result.partial else "")


def _partial_message(result: Any, p: dict[str, Any]) -> str:
    if p["train_steps"] > 0 and p["model"] is None:
        return (
            f"interrupted: results of the {result.configurations_done} configurations that finished"
        )
    done = result.records[0].repeats if result.records else 0
    if p["model"] is None:
        done = sum(result.repeats_done.values())
    if done == 0:
        return "interrupted before any repeat finished: nothing to report"
    return f"interrupted: partial results from {done} completed repeats"


def _write(
    result: Any, p: dict[str, Any], title: str, meta: dict[str, Any] | None, exit_code: int
) -> None:
    """Records (or summaries) to stdout or -o, the figure to --plot, the provenance beside
    them; exit ``exit_code`` (130 after Ctrl-C, 143 after SIGTERM) when partial."""
    if result.partial:
        warn(_partial_message(result, p))
    records: list[Any] = list(result.summary) if p["summary"] else list(result.records)
    if records:
        summary = None if p["summary"] else result.summary
        emit(
            records, p["fmt"], p["output"], summary=summary, title=title, meta=meta,
            meta_file=p["meta"],
        )  # fmt: skip
        if p["plot"] is not None:
            rows = records if p["model"] is None else result.records
            plot_to_file(rows, p["plot"], meta=meta)
    if result.partial:
        raise typer.Exit(exit_code)
