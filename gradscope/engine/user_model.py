"""Your own model at initialisation: load a factory, record execution order, measure gradients.

``--model path/to/file.py:make_model`` or ``--model package.module:make_model`` names a
function that returns an ``nn.Module``; ``--model torchvision:vgg19_bn`` names a torchvision
classification model (random initialisation, no weights; only when torchvision is installed).
Loading a model file runs its code, exactly as ``import`` would: only point gradscope at code
you trust.

Per repeat the model gets fresh parameters (seeded by (seed, model, repeat)), a fresh input
x ~ N(0, 1) of shape (batch, *input_shape) and a fresh output derivative ~ N(0, 1/numel)
(numel = elements per sample of the output); a scalar output is backpropagated as it is.
Each weight-carrying module (a ``weight`` parameter of two or more dimensions: linear,
convolution, embedding) is one layer, in forward execution order recorded with hooks.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import importlib
import importlib.util
import math
import operator
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradscope.engine.distributed import Cluster, ranks_per_machine, run_in_order
from gradscope.engine.runner import (
    _fork_available,
    available_cores,
    default_max_memory,
    default_workers,
    format_bytes,
    intra_op_threads,
    make_process_pool,
    resolve_device,
    run_window,
)
from gradscope.errors import GradscopeError, ResourceError, UsageError
from gradscope.options import Device, Dtype, Reinit
from gradscope.schema import ModelLayerRecord, ModelSummaryRecord, Result
from gradscope.specs import ModelRequest, ModelSpec, check_seed
from gradscope.thirdparty import UnavailablePackage, import_optional


class ModelError(GradscopeError):
    """The user's model cannot be loaded, built or run; the message carries the model's own."""


def _load_module_from_file(path: Path) -> Any:
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    name = (
        "gradscope_user_model_"
        + hashlib.blake2b(str(path.resolve()).encode(), digest_size=6).hexdigest()
    )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # the model file may import its neighbours
    try:
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def resolve_factory(target: str) -> Callable[..., Any]:
    """The callable that ``--model`` names.

    Raises:
        ModelError: the file or module cannot be imported, or has no such function.
        SpecError: the text is not FILE.py:FUNCTION, MODULE:FUNCTION or torchvision:NAME.
    """
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise UsageError(
            "{option} takes FILE.py:FUNCTION, MODULE:FUNCTION or torchvision:NAME, "
            f"got {target!r}",
            option="model",
        )
    if where == "torchvision":
        return _torchvision_factory(attr)
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _load_module_from_file(Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            raise ModelError(f"cannot import module {where!r}: {exc}") from None
        except Exception as exc:
            raise ModelError(f"importing {where} failed: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ModelError(
            f"{where} has no function {attr!r}; callables there: {', '.join(names) or 'none'}"
        )
    return factory


def _torchvision_factory(name: str) -> Callable[..., Any]:
    try:
        torchvision = import_optional("torchvision")
    except UnavailablePackage as exc:  # missing, or a build for another torch
        raise ModelError(
            f"{{--model}} torchvision:{name} needs torchvision, which {exc.reason}: {exc.hint}"
        ) from None
    models = torchvision.models
    available = set(models.list_models(module=models))
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        raise ModelError(
            f"torchvision has no classification model {name!r}; "
            + (
                f"did you mean {', '.join(close)}?"
                if close
                else f"e.g. {', '.join(sorted(available)[:8])}, ..."
            )
        )
    builder = models.get_model_builder(name)

    def factory(**kwargs: Any) -> Any:
        return builder(weights=None, **kwargs)  # random initialisation, never a download

    return factory


def build_model(factory: Callable[..., Any], kwargs: dict[str, Any], label: str) -> nn.Module:
    """Call the factory and check it returned a module."""

    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise ModelError(f"the model factory {label} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"the model factory {label} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def weight_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules with their own ``weight`` of two or more dimensions, by qualified name."""
    out: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None and weight.dim() >= 2 and weight.requires_grad:
            out[name or "(model)"] = module
    return out


@dataclass(frozen=True)
class LayerInfo:
    """One weight-carrying module, in execution order."""

    layer: int
    module: str
    module_type: str
    param_count: int
    path: str  # main, branch or skip (of a residual block), or "" when unknown
    block: str


# Residual paths ---------------------------------------------------------------------------


_ADD_FUNCTIONS = {operator.add, operator.iadd}


def residual_paths(
    model: nn.Module, names: Sequence[str]
) -> tuple[dict[str, tuple[str, str]], str]:
    """Label each module ``main``, ``branch`` or ``skip`` of the innermost residual add.

    The model is traced with torch.fx; at every addition of two tensors, the modules that only
    one operand depends on form that operand's path: the path with more weight layers is the
    branch, the other the skip (identity, or a downsampling projection). Returns the labels
    and a note (empty, or why the paths are unknown).
    """
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # tracing fails on data-dependent control flow: say so, go on
        return {}, f"residual paths unknown: torch.fx could not trace the model ({exc})".split(
            "\n"
        )[0]
    wanted = set(names)
    ancestors: dict[Any, set[Any]] = {}
    for node in graph.nodes:
        acc: set[Any] = set()
        for parent in node.all_input_nodes:
            acc.add(parent)
            acc |= ancestors[parent]
        ancestors[node] = acc
    best: dict[str, tuple[int, str, str]] = {}
    for node in graph.nodes:
        is_add = (node.op == "call_function" and node.target in (*_ADD_FUNCTIONS, torch.add)) or (
            node.op == "call_method" and node.target in ("add", "add_")
        )
        tensors = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
        if not is_add or len(tensors) != 2:
            continue
        a, b = tensors
        side_a = ({a} | ancestors[a]) - ({b} | ancestors[b])
        side_b = ({b} | ancestors[b]) - ({a} | ancestors[a])
        mods_a = [n.target for n in side_a if n.op == "call_module" and n.target in wanted]
        mods_b = [n.target for n in side_b if n.op == "call_module" and n.target in wanted]
        if not mods_a and not mods_b:
            continue
        branch, skip = (mods_a, mods_b) if len(mods_a) >= len(mods_b) else (mods_b, mods_a)
        block = _common_prefix([*branch, *skip])
        size = len(side_a) + len(side_b)
        for label, mods in (("branch", branch), ("skip", skip)):
            for m in mods:
                if m not in best or size < best[m][0]:
                    best[m] = (size, label, block)
    labels = {m: (label, block) for m, (_, label, block) in best.items()}
    for m in names:
        labels.setdefault(m, ("main", ""))
    return labels, ""


def _common_prefix(names: Sequence[str]) -> str:
    parts = [n.split(".") for n in names]
    prefix: list[str] = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    if len(names) == 1 and prefix:
        prefix = prefix[:-1]
    return ".".join(prefix) or "(model)"


# The run ----------------------------------------------------------------------------------


def model_seed(seed: int, spec: ModelSpec, batch: int, repeat: int) -> int:
    """The seed of one repeat's draws. A model file is named by its file name, not its path,
    so the same command gives the same numbers from any directory."""
    where, sep, factory = spec.target.rpartition(":")
    name = f"{Path(where).name}{sep}{factory}" if where.endswith(".py") else spec.target
    args = ",".join(f"{k}={v!r}" for k, v in sorted(spec.kwargs.items()))
    text = f"gradscope-model|{seed}|{name}({args})|{spec.input_shape}|{batch}|{repeat}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG (which factories and reset_parameters use) without leaking it."""

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _reset_all(model: nn.Module) -> None:
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@dataclass
class ModelRun:
    """What one model run measured, per layer in execution order."""

    spec: ModelSpec
    batch: int
    layers: list[LayerInfo]
    grad_norms: np.ndarray  # (repeats, layers)
    forward_var: np.ndarray  # (repeats, layers)
    backward_var: np.ndarray  # (repeats, layers)
    reinit: Reinit
    notes: list[str]
    partial: bool = False


class _Recorder:
    """Forward hooks that record execution order, output variance and the input derivative."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.order: list[str] = []
        self.forward_var: dict[str, float] = {}
        self.backward_var: dict[str, float] = {}
        self.handles: list[Any] = []

    def attach(self) -> None:
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def reset(self) -> None:
        self.order.clear()
        self.forward_var.clear()
        self.backward_var.clear()

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: Any, inputs: tuple[Any, ...], output: Any) -> None:
            if name in self.forward_var:  # a shared module: its first call counts
                return
            self.order.append(name)
            self.forward_var[name] = _per_sample_variance(output)
            x = inputs[0] if inputs else None
            if x is not None and getattr(x, "requires_grad", False):

                def grad_hook(grad: Any) -> None:
                    self.backward_var.setdefault(name, _per_sample_variance(grad))

                x.register_hook(grad_hook)

        return hook


def _per_sample_variance(t: Any) -> float:
    """Variance over the batch of each element, averaged over elements (Remark B.2).

    Computed as mean(x²) − mean over elements of (batch mean)², with float64 accumulation:
    two reductions in the tensor's own dtype instead of a float64 copy of the activation.
    """

    if not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[0] < 2:
        return math.nan
    d = t.detach().reshape(t.shape[0], -1)
    batch, elements = d.shape
    second = torch.sum(d * d, dtype=torch.float64) / (batch * elements)
    means = d.mean(dim=0, dtype=torch.float64)
    # The difference can round below zero when every sample is the same; a variance is not.
    return max(0.0, float(second - (means * means).mean()))


def run_model(
    spec: ModelSpec,
    *,
    batch: int,
    repeats: int,
    seed: int = 0,
    dtype: Dtype | str = Dtype.float32,
    device: Device | str = "cpu",
    reinit: Reinit | str = Reinit.auto,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    workers: int | None = None,
) -> ModelRun:
    """Measure per-layer weight-gradient norms of the user's model over ``repeats`` draws.

    ``progress(done, total)`` is called after every repeat; ``stop``, when set, ends the run
    after the repeat under way, marked ``partial`` (at least one repeat always runs).
    ``workers``: CPU worker processes (default: one per core; see :func:`measure_model`).

    Raises:
        ModelError: the factory fails, returns no module, or the model rejects the input.
        SpecError: bad sizes.
    """
    request = ModelRequest(spec, batch, repeats, dtype, device, reinit)  # type: ignore[arg-type]
    measured = measure_model(request, seed, progress=progress, stop=stop, workers=workers)
    assert measured is not None  # one process always runs repeat 0
    return measured


def run(
    request: ModelRequest,
    *,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    factory: Callable[..., Any] | None = None,
    cluster: Cluster | None = None,
) -> Result:
    """Run a validated :class:`~gradscope.specs.ModelRequest`: per-layer records, one
    summary per path, and notes on how parameters were re-initialised. ``factory``, when
    given, is called instead of the one ``request.spec.target`` names (which then only labels
    the records and seeds the draws). With a ``cluster``, each rank measures its share of the
    repeats and rank 0 returns the records."""
    stop = stop or threading.Event()
    measured = measure_model(
        request, seed, progress=progress, stop=stop, factory=factory, cluster=cluster
    )
    if measured is None:  # a rank other than 0 (rank 0 reports), or stopped before repeat 0
        return Result([], [], partial=stop.is_set() or bool(cluster and cluster.is_root))
    rows, summary = model_records(measured, seed=seed)
    return Result(rows, summary, notes=list(measured.notes), partial=measured.partial)


# Below this much work left after repeat 0 (its time × the repeats left), forking worker
# processes costs more than it saves: the repeats run in this process.
PARALLEL_MIN_SECONDS = 1.0


def measure_model(
    request: ModelRequest,
    seed: int,
    *,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    workers: int | None = None,
    factory: Callable[..., Any] | None = None,
    cluster: Cluster | None = None,
) -> ModelRun | None:
    """The repeats of a model run (None on a ``cluster`` rank other than 0).

    On a CPU each repeat runs on one intra-op thread, as the synthetic engine's do: PyTorch's
    default of one thread per core, in a process that also runs other work (a progress bar,
    CI jobs beside it), loses more to oversubscription than it gains. Long runs spread their
    repeats over ``workers`` forked processes (default: one per core); every repeat is drawn
    from its own seed and added in repeat order, so the numbers are bit-identical whatever the
    number of workers."""
    check_seed(seed)
    runner = _ModelRunner(request, seed, factory)
    if runner.device != "cpu":
        return runner.run(progress, stop, cluster=cluster)
    with intra_op_threads(1):
        share = ranks_per_machine(cluster)
        workers = min(workers or default_workers("cpu", share), available_cores())
        return runner.run(progress, stop, workers, cluster)


# Per repeat: the weight-gradient norm, output variance and input-derivative variance per layer.
Measured = tuple[np.ndarray, np.ndarray, np.ndarray]


# The runner of the run under way, inherited by the worker processes it forks.
_CHILD_RUNNER: _ModelRunner | None = None


def _child_repeats(first: int, count: int) -> list[Measured]:
    """Repeats ``first .. first+count-1`` in a worker process."""
    assert _CHILD_RUNNER is not None
    return [_CHILD_RUNNER.repeat(k) for k in range(first, first + count)]


# The input and its gradient, and at least two activations of the same size in any model
# that does something with it: a lower bound, enough to refuse ``--input-shape 100000,100000``
# before the allocator fails on it.
INPUT_COPIES = 4


def _check_input_memory(request: ModelRequest) -> None:
    """Refuse, before the model is built, inputs whose batch alone does not fit in half the
    memory available (see gradscope.engine.runner.default_max_memory).

    Raises:
        ResourceError: one sentence with the estimate and the limit.
    """
    item = 4 if request.dtype is Dtype.float32 else 8
    need = INPUT_COPIES * item * request.batch * math.prod(request.spec.input_shape)
    limit = default_max_memory()
    if need > limit:
        shape = ",".join(str(n) for n in request.spec.input_shape)
        raise ResourceError(
            f"inputs of shape {shape} in batches of {request.batch} need at least "
            f"{format_bytes(need)}, above half the memory available ({format_bytes(limit)}); "
            "lower {--input_shape} or {--batch}"
        )


class _ModelRunner:
    """One ``--model`` run: fresh parameters per repeat, one forward and backward each."""

    def __init__(
        self, request: ModelRequest, seed: int, factory: Callable[..., Any] | None = None
    ) -> None:
        _check_input_memory(request)
        self.spec, self.batch, self.seed = request.spec, request.batch, seed
        self.repeats = request.repeats
        self.device = resolve_device(request.device)
        self.dtype = torch.float32 if request.dtype is Dtype.float32 else torch.float64
        self.factory = factory or resolve_factory(self.spec.target)
        self.order: list[str] = []
        self.notes: list[str] = []
        # Parameters are always drawn in the factory's own dtype and device, then cast, so
        # that --dtype float64 measures the same networks as float32 and both re-init paths
        # agree.
        self.template = self.fresh(0)
        self.model = self.working(self.template)
        self.reinit = self.choose_reinit(request.reinit)
        self.modules = weight_modules(self.model)
        if not self.modules:
            raise ModelError(
                f"{self.spec.label} has no weight-carrying module (linear, conv, embedding)"
            )
        self.recorder = _Recorder(self.modules)

    def fresh(self, repeat: int) -> nn.Module:
        """The factory's model for this repeat, in the dtype the factory builds."""
        with _seeded(model_seed(self.seed, self.spec, self.batch, repeat)):
            return build_model(self.factory, self.spec.kwargs, self.spec.label)

    def working(self, template: nn.Module) -> nn.Module:
        return copy.deepcopy(template).to(device=self.device, dtype=self.dtype).train()

    def choose_reinit(self, reinit: Reinit) -> Reinit:
        """``auto``: reset_parameters() when it reproduces the factory exactly."""
        if reinit is not Reinit.auto:
            return reinit
        twin = build_model(self.factory, self.spec.kwargs, self.spec.label)
        with _seeded(model_seed(self.seed, self.spec, self.batch, 0)):
            _reset_all(twin)
        if _same_state(self.template, twin):
            return Reinit.reset
        self.notes.append(
            "re-initialising by calling the factory each repeat (reset_parameters() does "
            "not reproduce its initialisation)"
        )
        return Reinit.factory

    def renew(self, repeat: int) -> None:
        """Fresh parameters for ``repeat``."""
        if self.reinit is Reinit.reset:
            with _seeded(model_seed(self.seed, self.spec, self.batch, repeat)):
                _reset_all(self.template)
            self.model.load_state_dict(self.template.state_dict())
        else:
            self.recorder.detach()
            self.model = self.working(self.fresh(repeat))
            self.modules = weight_modules(self.model)
            self.recorder = _Recorder(self.modules)

    def run(
        self,
        progress: Callable[[int, int], None] | None,
        stop: threading.Event | None,
        workers: int = 1,
        cluster: Cluster | None = None,
    ) -> ModelRun | None:
        """Every repeat, in this process or (a long run, ``workers`` > 1) in worker processes;
        with a ``cluster``, this rank's share (None on ranks other than 0)."""

        def compute(c: int, first: int, end: int, tick: Callable[[int], None]) -> list[Any]:
            return self.measure_range(range(first, end), tick, stop, workers)

        try:
            values: dict[int, list[Any]] | None
            if cluster is None:
                values = run_in_order(compute, 1, self.repeats, progress, None)
            else:
                values = cluster.run(compute, [1.0], self.repeats, progress, stop)
        finally:
            self.recorder.detach()
        rows = [] if values is None else values.get(0, [])
        return self.result(self.order, rows) if rows else None

    def measure_range(
        self,
        repeats: range,
        tick: Callable[[int], None],
        stop: threading.Event | None,
        workers: int,
    ) -> list[Measured]:
        """Repeats ``repeats`` in order (a prefix when stopped). Repeat 0 always runs first,
        as it finds the layers' order (kept only when in ``repeats``); worker processes are
        forked once it has timed a repeat, when the rest is long enough to need them."""
        rows: list[Measured] = []
        pool = None
        try:
            start = time.perf_counter()
            zero = self.repeat(0)
            left = range(max(repeats.start, 1), repeats.stop)
            work = (time.perf_counter() - start) * len(left)
            if workers > 1 and len(left) > 1 and work > PARALLEL_MIN_SECONDS and _fork_available():
                pool = self.fork(workers)
            if repeats.start == 0:
                rows.append(zero)
                tick(1)  # after the fork: the progress bar's thread starts at its first update

            def add(results: list[Measured], n: int) -> None:
                rows.extend(results)
                tick(n)

            def stopped() -> bool:
                return stop is not None and stop.is_set()

            if pool is not None:
                step = max(1, min(4, len(left) // (4 * workers)))
                submit = functools.partial(pool.submit, _child_repeats)
                run_window(submit, add, left, workers, step, stopped)
            else:
                for k in left:
                    if stopped():
                        break
                    add([self.repeat(k)], 1)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return rows

    def fork(self, workers: int) -> Any:
        """Worker processes that inherit this runner (repeat 0 done, the order known)."""
        global _CHILD_RUNNER
        _CHILD_RUNNER = self
        try:
            return make_process_pool(workers)
        finally:
            _CHILD_RUNNER = None

    def repeat(self, k: int) -> Measured:
        """Repeat ``k``: fresh parameters (repeat 0 has the factory's own), one forward and
        backward, the measurements; repeat 0 also records the layers' execution order."""
        if k > 0:
            self.renew(k)
        self.backpropagate(k)
        if k == 0:
            self.order = list(self.recorder.order)
            if not self.order:
                raise ModelError(f"{self.spec.label} never called its weight-carrying modules")
        return self.measure(self.order)

    def backpropagate(self, repeat: int) -> None:
        """One forward pass on a random input, one backward from a random output derivative."""

        spec, device = self.spec, self.device
        self.recorder.attach()
        self.recorder.reset()
        gen = torch.Generator(device=device)
        gen.manual_seed(model_seed(self.seed, spec, self.batch, repeat) ^ 0x5DEECE66D)
        x = torch.randn(
            (self.batch, *spec.input_shape),
            generator=gen,
            dtype=self.dtype,
            device=device,
            requires_grad=True,
        )
        self.model.zero_grad(set_to_none=True)
        try:
            out = self.model(x)
        except Exception as exc:
            raise ModelError(
                f"{spec.label} rejected an input of shape {tuple(x.shape)}: {_first_line(exc)}"
            ) from None
        finally:
            self.recorder.detach()
        out = _differentiable_output(out, spec.label)
        try:
            if out.dim() == 0 or out.numel() == 1:
                out.reshape(()).backward()
            else:
                per_sample = out.numel() // out.shape[0] if out.dim() > 1 else out.numel()
                dy = torch.randn(out.shape, generator=gen, dtype=out.dtype, device=device)
                out.backward(dy / math.sqrt(per_sample))
        except Exception as exc:
            raise ModelError(f"{spec.label} failed in backward: {_first_line(exc)}") from None

    def measure(self, order: list[str]) -> Measured:
        """Weight-gradient norm, output variance and input-derivative variance per layer."""
        grads, fwd, bwd = [], [], []
        for name in order:
            weight = self.modules[name]._parameters["weight"]
            g = weight.grad if weight is not None else None
            grads.append(math.nan if g is None else float(g.detach().double().norm()))
            fwd.append(self.recorder.forward_var.get(name, math.nan))
            bwd.append(self.recorder.backward_var.get(name, math.nan))
        return np.array(grads), np.array(fwd), np.array(bwd)

    def result(self, order: list[str], rows: list[Measured]) -> ModelRun:
        labels, note = residual_paths(self.model, order)
        notes = self.notes + ([note] if note else [])
        modules = self.modules
        layers = [
            LayerInfo(
                layer=i + 1,
                module=name,
                module_type=type(modules[name]).__name__,
                param_count=sum(p.numel() for p in modules[name].parameters(recurse=False)),
                path=labels.get(name, ("", ""))[0],
                block=labels.get(name, ("", ""))[1],
            )
            for i, name in enumerate(order)
        ]
        grads, fwd, bwd = (np.stack([r[k] for r in rows]) for k in range(3))
        partial = len(rows) < self.repeats
        return ModelRun(self.spec, self.batch, layers, grads, fwd, bwd, self.reinit, notes, partial)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _differentiable_output(out: Any, label: str) -> torch.Tensor:
    """The model's output tensor, refused with one sentence when it cannot be backpropagated."""
    out = _first_tensor(out, label)
    if not (out.is_floating_point() or out.is_complex()):
        raise ModelError(
            f"{label} returned a {str(out.dtype).removeprefix('torch.')} output; "
            "gradscope backpropagates from a floating-point output (return the logits, "
            "not argmax)"
        )
    if not out.requires_grad:
        raise ModelError(
            f"{label} returned an output that autograd cannot backpropagate "
            "(detached, or computed under torch.no_grad)"
        )
    return out


def _first_tensor(out: Any, label: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for item in out:
            if isinstance(item, torch.Tensor) and item.requires_grad:
                return item
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits
    raise ModelError(f"{label} returned a {type(out).__name__}; gradscope needs a tensor output")


# Records ----------------------------------------------------------------------------------


def model_records(
    run: ModelRun, seed: int = 0
) -> tuple[list[ModelLayerRecord], list[ModelSummaryRecord]]:
    """Per-layer statistics (mean, std, SEM, t-interval) and per-path growth summaries."""
    from gradscope.theory.stats import LayerStats, bootstrap_rate_ci, half_rates, log_linear_rate

    depth = len(run.layers)
    stats = LayerStats(depth)
    for g, f, b in zip(run.grad_norms, run.forward_var, run.backward_var, strict=True):
        nonfinite = np.flatnonzero(~np.isfinite(g))
        stats.add(g, f, b, overflow_layer=int(nonfinite[0]) + 1 if nonfinite.size else None)
    s = stats.summary()
    repeats = stats.count
    rows = [
        ModelLayerRecord(
            model=run.spec.label,
            batch=run.batch,
            repeats=repeats,
            layer=info.layer,
            module=info.module,
            module_type=info.module_type,
            param_count=info.param_count,
            path=info.path,
            block=info.block,
            grad_norm_mean=float(s.mean[i]),
            grad_norm_std=float(s.std[i]),
            grad_norm_sem=float(s.sem[i]),
            grad_norm_ci_low=float(s.ci_low[i]),
            grad_norm_ci_high=float(s.ci_high[i]),
            forward_var=float(s.forward_var[i]),
            backward_var=float(s.backward_var[i]),
        )
        for i, info in enumerate(run.layers)
    ]
    groups: list[tuple[str, list[int]]] = [("all", list(range(depth)))]
    paths = {info.path for info in run.layers}
    if "branch" in paths:
        groups.append(("branch", [i for i, x in enumerate(run.layers) if x.path == "branch"]))
        groups.append(("main+skip", [i for i, x in enumerate(run.layers) if x.path != "branch"]))
    summary = []
    norms = stats.norm_matrix()
    for name, idx in groups:
        if len(idx) < 2:
            continue
        means = s.mean[idx]
        rate, r2 = log_linear_rate(means)
        low, high = bootstrap_rate_ci(norms[:, idx], seed=seed)
        first, last = half_rates(means)
        bad = [i + 1 for i in idx if not np.isfinite(s.mean[i])]
        summary.append(
            ModelSummaryRecord(
                model=run.spec.label,
                batch=run.batch,
                repeats=repeats,
                path=name,
                layers=len(idx),
                fitted_rate=rate,
                fitted_rate_ci_low=low,
                fitted_rate_ci_high=high,
                r_squared=r2,
                amplification=float(means[0] / means[-1]) if means[-1] else math.nan,
                rate_first_half=first,
                rate_last_half=last,
                overflow_layer=bad[0] if bad else None,
                partial=run.partial,
            )
        )
    return rows, summary
