"""User activations written as expressions in x, differentiated exactly with SymPy.

SymPy is an optional dependency (``pip install -e '.[expr]'`` from a checkout); it is
imported only when ``--expr`` is used. The expression may use x, numbers, + - * / ** and the usual
elementary functions; anything else (other names, attribute access, calls to unknown
functions) is rejected before evaluation.
"""

from __future__ import annotations

import ast
import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradscope.errors import ExpressionError

FUNCTIONS = (
    "exp",
    "log",
    "sqrt",
    "sin",
    "cos",
    "tan",
    "sinh",
    "cosh",
    "tanh",
    "asinh",
    "atan",
    "erf",
    "erfc",
    "abs",
    "Abs",
    "Max",
    "Min",
    "max",
    "min",
    "sign",
    "Heaviside",
    "sigmoid",
    "softplus",
    "log1p",
    "expm1",
)
CONSTANTS = ("pi", "e", "E")


@dataclass(frozen=True)
class ExprActivation:
    """A user expression g(x) and its exact derivative, as NumPy functions."""

    text: str
    derivative_text: str
    g: Callable[[np.ndarray], np.ndarray]
    dg: Callable[[np.ndarray], np.ndarray]
    kinks: tuple[float, ...]


# Bounds on a user expression, checked before SymPy sees it: an activation is a short
# formula, and SymPy's work grows without bound in its size, its nesting (recursion) and its
# numbers (``9**9**9`` is an integer of 370 million digits, computed exactly).
MAX_EXPR_CHARS = 1000
MAX_EXPR_NODES = 300
MAX_EXPR_DEPTH = 40  # levels of nested calls and operators
MAX_CONSTANT = 1e300  # any constant part, evaluated in floating point
SYMPY_SECONDS = 10.0  # parsing, differentiating and solving for kinks, together


def _parse_tree(text: str) -> ast.Expression:
    """The expression's syntax tree, within ``MAX_EXPR_CHARS``, ``MAX_EXPR_NODES`` and
    ``MAX_EXPR_DEPTH``."""
    if len(text) > MAX_EXPR_CHARS:
        raise ExpressionError(
            f"the expression is {len(text)} characters long, over the {MAX_EXPR_CHARS} "
            "gradscope reads"
        )
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(
            f"cannot parse the expression {text!r}: {exc.msg} at column {exc.offset}"
        ) from None
    except (RecursionError, MemoryError, ValueError):
        raise ExpressionError(f"the expression {text[:40]!r}... is too deeply nested") from None
    nodes, depth = 0, 0
    level: list[ast.AST] = [tree.body]
    while level:
        depth += 1
        nodes += len(level)
        level = [child for node in level for child in ast.iter_child_nodes(node)]
    if depth > MAX_EXPR_DEPTH or nodes > MAX_EXPR_NODES:
        raise ExpressionError(
            f"the expression {text[:40]!r}... has {nodes} parts nested {depth} deep, over the "
            f"{MAX_EXPR_NODES} parts and {MAX_EXPR_DEPTH} levels gradscope reads"
        )
    return tree


_ARITHMETIC: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


def _constant(node: ast.AST, text: str) -> Any:
    """The value of a constant part of the expression in floating point (None where it holds
    x or a function), refusing any over ``MAX_CONSTANT``: SymPy would compute it exactly."""
    value: Any = None
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        value = float(node.value)
    elif isinstance(node, ast.Name) and node.id in CONSTANTS:
        value = math.pi if node.id == "pi" else math.e
    elif isinstance(node, ast.UnaryOp):
        operand = _constant(node.operand, text)
        if operand is not None and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = -operand if isinstance(node.op, ast.USub) else operand
    elif isinstance(node, ast.BinOp):
        left, right = _constant(node.left, text), _constant(node.right, text)
        operation = _ARITHMETIC.get(type(node.op))
        if left is not None and right is not None and operation is not None:
            try:
                value = operation(left, right)
            except OverflowError:
                value = math.inf
            except (ZeroDivisionError, ValueError):
                value = None
    else:
        for child in ast.iter_child_nodes(node):
            _constant(child, text)
    if value is not None and not abs(value) <= MAX_CONSTANT:
        raise ExpressionError(
            f"a number in the expression {text!r} is over {MAX_CONSTANT:g} "
            f"({ast.unparse(node)}): gradscope will not compute it"
        )
    return value


def _check_syntax(text: str) -> None:
    tree = _parse_tree(text)
    allowed_names = {"x", *FUNCTIONS, *CONSTANTS}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in allowed_names:
            raise ExpressionError(
                f"unknown name {node.id!r} in {text!r}: use x and the functions "
                f"{', '.join(sorted(set(FUNCTIONS) - {'Abs', 'Max', 'Min'}))}"
            )
        if isinstance(
            node,
            (
                ast.Attribute,
                ast.Subscript,
                ast.Lambda,
                ast.Starred,
                ast.comprehension,
                ast.Dict,
                ast.Set,
                ast.List,
            ),
        ):
            raise ExpressionError(f"the expression {text!r} may only use x, numbers and functions")
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Name):
            raise ExpressionError(f"the expression {text!r} calls something that is not a function")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise ExpressionError(f"the expression {text!r} may only contain numbers and x")
    if not any(isinstance(n, ast.Name) and n.id == "x" for n in ast.walk(tree)):
        raise ExpressionError(f"the expression {text!r} does not use x")
    _constant(tree.body, text)


def parse_expression(text: str) -> ExprActivation:
    """Parse ``text`` into g and its exact derivative g'.

    Raises:
        ExpressionError: a syntax error, an unknown name, an expression over the bounds
            (``MAX_EXPR_CHARS``, ``MAX_EXPR_NODES``, ``MAX_EXPR_DEPTH``, ``MAX_CONSTANT``,
            ``SYMPY_SECONDS``), SymPy missing, or a g that is not real and finite at
            ordinary inputs.
    """
    text = text.strip()
    if not text:
        raise ExpressionError("the expression is empty: write g in terms of x, e.g. 'x*tanh(x)'")
    _check_syntax(text)
    try:
        import sympy
    except ImportError:  # pragma: no cover - depends on the environment
        raise ExpressionError(
            "--expr needs SymPy: pip install -e '.[expr]' from a gradscope checkout "
            "(or pip install sympy)"
        ) from None
    try:
        with _time_limit(SYMPY_SECONDS):
            activation = _symbolic(sympy, text)
    except _TimeUp:
        raise ExpressionError(
            f"SymPy took over {SYMPY_SECONDS:g} s on the expression {text!r}; simplify it"
        ) from None
    except RecursionError:
        raise ExpressionError(f"the expression {text!r} is too deeply nested for SymPy") from None
    probe = np.linspace(-3.0, 3.0, 13)
    with np.errstate(all="ignore"):
        gv = np.asarray(activation.g(probe), dtype=complex)
        dv = np.asarray(activation.dg(probe), dtype=complex)
    if not (np.all(np.isfinite(gv)) and np.all(np.abs(gv.imag) < 1e-12)):
        raise ExpressionError(
            f"the expression {text!r} is not real and finite for x in [-3, 3] "
            "(e.g. log or sqrt of a negative number)"
        )
    if not np.all(np.isfinite(dv)):
        raise ExpressionError(f"the derivative of {text!r} is not finite for x in [-3, 3]")
    return activation


def _symbolic(sympy: Any, text: str) -> ExprActivation:
    """g, g' and the kinks of a checked expression, with SymPy."""
    from sympy.parsing.sympy_parser import parse_expr

    x = sympy.Symbol("x", real=True)
    local: dict[str, Any] = {
        "x": x,
        "abs": sympy.Abs,
        "max": sympy.Max,
        "min": sympy.Min,
        "sigmoid": lambda u: 1 / (1 + sympy.exp(-u)),
        "softplus": lambda u: sympy.log(1 + sympy.exp(u)),
        "log1p": lambda u: sympy.log(1 + u),
        "expm1": lambda u: sympy.exp(u) - 1,
        "e": sympy.E,
    }
    for name in FUNCTIONS + CONSTANTS:
        if name not in local and hasattr(sympy, name):
            local[name] = getattr(sympy, name)
    try:
        g_expr = parse_expr(
            text, local_dict=local, global_dict={"__builtins__": {}, **vars(sympy)}, evaluate=True
        )
    except (SyntaxError, TypeError, ValueError, AttributeError) as exc:
        raise ExpressionError(f"cannot interpret the expression {text!r}: {exc}") from None
    if not isinstance(g_expr, sympy.Expr) or g_expr.free_symbols - {x}:
        raise ExpressionError(f"the expression {text!r} must be a real function of x only")
    dg_expr = sympy.diff(g_expr, x)
    g = _lambdify(sympy, x, g_expr)
    dg = _lambdify(sympy, x, dg_expr)
    return ExprActivation(text, str(dg_expr), g, dg, _kinks(sympy, x, g_expr))


class _TimeUp(BaseException):
    """Raised in the main thread when SymPy's time is up: a BaseException, so that SymPy's
    own ``except Exception`` clauses do not swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_TimeUp` in the block after ``seconds`` (SIGALRM: only in the main
    thread of a Unix process; elsewhere the block runs unbounded, and the expression bounds
    above keep it short)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    fired: list[bool] = []

    def time_up(signum: int, frame: Any) -> None:
        fired.append(True)
        raise _TimeUp

    previous = signal.signal(signal.SIGALRM, time_up)
    # Again every 10 ms: an alarm that lands in a __del__ or a weakref callback is swallowed
    # by Python ("Exception ignored in ..."); the next one lands in SymPy's own code.
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.01)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if fired:  # the block finished although its time was up (every alarm was swallowed)
        raise _TimeUp


def _lambdify(sympy: Any, x: Any, expr: Any) -> Callable[[np.ndarray], np.ndarray]:
    f = sympy.lambdify(x, expr, modules=[{"Heaviside": _heaviside, "DiracDelta": _dirac}, "numpy"])

    def call(values: np.ndarray) -> np.ndarray:
        out = np.asarray(f(np.asarray(values, dtype=float)))
        if np.iscomplexobj(out):
            out = out.real
        return np.broadcast_to(out.astype(float), np.shape(values)).copy()

    return call


def _heaviside(x: np.ndarray, h0: float = 0.5) -> np.ndarray:
    return np.heaviside(x, h0)


def _dirac(x: np.ndarray, *_: Any) -> np.ndarray:
    return np.zeros_like(x)


def _kinks(sympy: Any, x: Any, expr: Any) -> tuple[float, ...]:
    """Real points where the expression is not smooth (zeros of Abs/Max/Min/sign arguments)."""
    points: set[float] = set()
    for node in sympy.preorder_traversal(expr):
        args: list[Any] = []
        if isinstance(node, (sympy.Abs, sympy.sign, sympy.Heaviside)):
            args = [node.args[0]]
        elif isinstance(node, (sympy.Max, sympy.Min)):
            args = [a - b for i, a in enumerate(node.args) for b in node.args[i + 1 :]]
        for arg in args:
            try:
                roots = sympy.solve(sympy.Eq(arg, 0), x)
            except (NotImplementedError, TypeError, ValueError):
                continue
            for r in roots:
                try:
                    value = complex(r)
                except (TypeError, ValueError):
                    continue
                if abs(value.imag) < 1e-12 and math.isfinite(value.real):
                    points.add(float(value.real))
    return tuple(sorted(points))
