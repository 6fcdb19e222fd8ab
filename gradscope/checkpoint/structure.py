"""What a checkpoint shows of its network's structure: downsamples, segments, blocks, positions.

The paper's σ grows from deep to shallow layers *between* downsamples and drops right after
each one, so a fit needs to know where the downsamples sit. A state dict holds tensors, not
modules: structure is read from the names where the layout is known, and otherwise guessed.
In order of precedence (:func:`recognise`):

1. ``--downsample-after``: the user says after which BatchNorm layers a downsample sits.
2. Known layouts, from the key names alone:

   - torchvision and timm ResNets (``layerK.J.bnN``, ``layerK.J.downsample.N``): every stage
     boundary is a downsample (the stem's max-pool before ``layer1``, a stride-2 first block
     in ``layer2`` onward); each block's BatchNorms are positions ``bn1``, ``bn2``, ``bn3`` and
     ``shortcut`` (timm's ``downsample.2`` of the avg-down variants too); a deep stem's
     ``conv1.N`` BatchNorms are the stem.
   - torchvision DenseNets: ``pool0`` after ``norm0`` and the pool of every transition (which
     follows ``transitionK.norm``); positions ``norm1``/``norm2`` per dense layer (old
     ``norm.1`` keys too), ``transition`` and ``final``.
   - torchvision MobileNetV2: blocks ``features.K``, positions ``expand``, ``depthwise``,
     ``project``; the stride-2 blocks are the first of the 2nd, 3rd, 4th and 6th groups of
     equal output channels (torchvision's table), whatever the width multiplier.

3. A module graph (TorchScript archives, pickled modules): the pooling modules between
   BatchNorms (strided convolutions are invisible there).
4. ``nn.Sequential`` index gaps (VGG): a slot without parameters beyond the usual
   activation between two BatchNorms is a pool.
5. Otherwise channel changes: a downsample is assumed where the channel count changes.

The BatchNorm layers that see the raw input are also found here: the first convolution's
input is data, not a gradient-shaped signal, so the BatchNorm after it (and any before it)
measures the data's scale, and the fits leave it out by default.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from gradscope.checkpoint.table import TensorTable
from gradscope.errors import SpecError, UsageError

DOWNSAMPLE_TYPE = re.compile(r"pool|downsampl|pixelunshuffle", re.IGNORECASE)

_RESNET = re.compile(
    r"^(?P<pre>(?:.*\.)?)layer(?P<stage>[0-9]{1,18})\.(?P<block>[0-9]{1,18})\.(?P<pos>bn\d|downsample\.\d+)$"
)
_DENSENET = re.compile(
    r"^(?P<pre>(?:.*\.)?)features\.(?:(?P<stem>norm0)|denseblock(?P<stage>[0-9]{1,18})\.denselayer"
    r"(?P<block>[0-9]{1,18})\.norm\.?(?P<n>[12])|transition(?P<tstage>[0-9]{1,18})\.norm|(?P<final>norm5))$"
)
_MOBILENET = re.compile(
    r"^(?P<pre>(?:.*\.)?)features\.(?P<block>[0-9]{1,18})\.(?P<rest>(?:conv\.)?[0-9]+(?:\.1)?)$"
)
# torchvision's MobileNetV2: strides of its seven groups of equal output channels.
MOBILENET_V2_STRIDES = (1, 2, 2, 2, 1, 2, 1)


@dataclass
class Structure:
    """Per BatchNorm layer (module order): where it sits in the network.

    ``after_downsample[i]``: a downsample lies between layer i−1 and layer i;
    ``input_layers``: 0-based positions of the layers that see the raw input;
    ``stage``, ``block``, ``position``: from a known layout (None elsewhere);
    ``blocks``: fit one series per position over blocks (residual and dense nets);
    ``source``: how the downsamples were found, for the user.
    """

    layout: str
    source: str
    after_downsample: list[bool]
    input_layers: set[int]
    stage: list[str | None] = field(default_factory=list)
    block: list[int | None] = field(default_factory=list)
    position: list[str | None] = field(default_factory=list)
    blocks: bool = False

    def __post_init__(self) -> None:
        n = len(self.after_downsample)
        self.stage = self.stage or [None] * n
        self.block = self.block or [None] * n
        self.position = self.position or [None] * n

    @property
    def segments(self) -> list[int]:
        """Segment (1-based) of each layer: a new one starts after each downsample."""
        out, k = [], 1
        for i, after in enumerate(self.after_downsample):
            k += int(after and i > 0)
            out.append(k)
        return out


def recognise(
    table: TensorTable,
    names: Sequence[str],
    channels: Sequence[int],
    downsample_after: Sequence[int] | None = None,
) -> Structure:
    """The structure of the BatchNorm layers ``names`` (module order) of ``table``.

    Args:
        channels: each layer's number of features.
        downsample_after: 1-based BatchNorm indices a downsample follows (``--downsample-after``;
            an empty sequence: none), overriding what the checkpoint shows.

    Raises:
        SpecError: ``downsample_after`` names an index outside the layers present.
    """
    names = list(names)
    found = (
        _resnet(names)
        or _densenet(names)
        or _mobilenet_v2(names, channels)
        or _module_graph(table, names)
        or _sequential(table, names)
        or _channel_changes(channels)
    )
    if found.layout in ("channel changes", "nn.Sequential"):
        found.input_layers = _input_layers(table, names)
    if downsample_after is not None:
        found.after_downsample = _stated(downsample_after, len(names))
        found.source = (
            f"as stated by --downsample-after ({_index_list(downsample_after)})"
            if downsample_after
            else "none, as stated by --downsample-after none"
        )
    return found


def parse_downsample_after(text: str) -> list[int]:
    """``--downsample-after 2,4,8`` (or ``none``) as a list of 1-based indices.

    Raises:
        SpecError: not a comma list of positive integers.
    """
    if text.strip().lower() in ("none", ""):
        return []
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise UsageError(
            f"{{--downsample_after}} takes BatchNorm indices like 2,4,8 (or none), got {text!r}"
        )
    return sorted(set(values))


def _stated(after: Sequence[int], n: int) -> list[bool]:
    bad = [i for i in after if not 1 <= i <= n]
    if bad:
        raise SpecError(
            f"{{--downsample_after}} {_index_list(after)} names no BatchNorm layer: "
            f"{bad[0]} is outside 1–{n}"
        )
    marks = [False] * n
    for i in after:
        if i < n:
            marks[i] = True  # the layer after BatchNorm i (1-based) is at 0-based index i
    return marks


def _index_list(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


def _strip(names: Sequence[str], pattern: re.Pattern[str]) -> list[re.Match[str] | None]:
    """Each name matched against ``pattern``, all with one common prefix (``model.``, ...)."""
    matches = [pattern.match(n) for n in names]
    prefixes = {m.group("pre") for m in matches if m is not None}
    return matches if len(prefixes) <= 1 else [None] * len(names)


def _resnet(names: list[str]) -> Structure | None:
    """torchvision/timm ResNets: stem BatchNorms, then ``layerK.J.{bnN,downsample.N}``."""
    matches = _strip(names, _RESNET)
    first = next((i for i, m in enumerate(matches) if m is not None), None)
    if first is None or any(m is None for m in matches[first:]):
        return None
    stages = [int(m.group("stage")) for m in matches[first:] if m is not None]
    if stages != sorted(stages) or stages[0] != 1:
        return None
    n = len(names)
    stage: list[str | None] = ["stem"] * first
    block: list[int | None] = [None] * first
    position: list[str | None] = ["stem"] * first
    marks = [False] * n
    seen: dict[tuple[int, int], int] = {}
    for i in range(first, n):
        m = matches[i]
        assert m is not None
        key = (int(m.group("stage")), int(m.group("block")))
        seen.setdefault(key, len(seen) + 1)
        pos = m.group("pos")
        stage.append(f"layer{key[0]}")
        block.append(seen[key])
        position.append("shortcut" if pos.startswith("downsample") else pos)
        marks[i] = i > 0 and stage[i] != stage[i - 1]
    source = (
        "from the ResNet stage names (stem max-pool before layer1, a stride-2 first block "
        "from layer2 on)"
    )
    return _block_net("resnet", source, marks, stage, block, position)


def _densenet(names: list[str]) -> Structure | None:
    """torchvision DenseNets: ``features.norm0``, dense layers, transitions, ``norm5``."""
    matches = _strip(names, _DENSENET)
    if not matches or None in matches or matches[0].group("stem") is None:  # type: ignore[union-attr]
        return None
    stage: list[str | None] = []
    block: list[int | None] = []
    position: list[str | None] = []
    marks = []
    seen: dict[tuple[str, str], int] = {}
    last = "stem"
    after_pool = False
    for m in matches:
        assert m is not None
        if m.group("stem"):
            s, b, p = "stem", None, "stem"
        elif m.group("stage"):
            s = f"denseblock{m.group('stage')}"
            b = seen.setdefault((m.group("stage"), m.group("block")), len(seen) + 1)
            p = f"norm{m.group('n')}"
        elif m.group("tstage"):
            s, b, p = f"denseblock{m.group('tstage')}", None, "transition"
        else:
            s, b, p = last, None, "final"
        marks.append(after_pool)
        after_pool = p in ("stem", "transition")  # pool0, and each transition's pool
        stage.append(s)
        block.append(b)
        position.append(p)
        last = s
    source = "from the DenseNet names (pool0 after norm0, a pool in every transition)"
    return _block_net("densenet", source, marks, stage, block, position)


def _mobilenet_v2(names: list[str], channels: Sequence[int]) -> Structure | None:
    """torchvision MobileNetV2: ``features.0.1`` (stem), inverted residual blocks
    ``features.K.conv.*``, ``features.N.1`` (last conv)."""
    matches = _strip(names, _MOBILENET)
    if len(names) < 4 or any(m is None for m in matches):
        return None
    blocks = [int(m.group("block")) for m in matches if m is not None]
    inner = [m.group("rest").startswith("conv.") for m in matches if m is not None]
    if blocks[0] != 0 or inner[0] or inner[-1] or not all(inner[1:-1]) or blocks != sorted(blocks):
        return None
    by_block: dict[int, list[int]] = {}
    for i, b in enumerate(blocks):
        by_block.setdefault(b, []).append(i)
    # Groups of blocks with equal output channels (the project BatchNorm, last of each block).
    group_of: dict[int, int] = {}
    group, previous = 0, None
    for b, members in by_block.items():
        if 0 < b < blocks[-1]:
            group += int(channels[members[-1]] != previous)
            previous = channels[members[-1]]
            group_of[b] = group
    known = group == len(MOBILENET_V2_STRIDES)
    firsts = {g: min(b for b, h in group_of.items() if h == g) for g in range(1, group + 1)}
    strided = {
        b for g, b in firsts.items() if (MOBILENET_V2_STRIDES[g - 1] == 2 if known else g > 1)
    }
    marks: list[bool] = []
    stage: list[str | None] = []
    block: list[int | None] = []
    position: list[str | None] = []
    for b, members in by_block.items():
        inside = b in group_of
        roles = ["expand", "depthwise", "project"][-len(members) :] if inside else []
        for k in range(len(members)):
            marks.append(b in strided and k == 0)
            stage.append(f"group{group_of[b]}" if inside else ("stem" if b == 0 else "last"))
            block.append(b if inside else None)
            position.append(roles[k] if inside and len(members) <= 3 else stage[-1])
    source = (
        "from torchvision's MobileNetV2 table (stride 2 in the first block of groups 2, 3, 4, 6)"
        if known
        else "from MobileNetV2 names, strides assumed at each change of output channels"
    )
    return _block_net("mobilenet_v2", source, marks, stage, block, position)


def _block_net(
    layout: str,
    source: str,
    marks: list[bool],
    stage: list[str | None],
    block: list[int | None],
    position: list[str | None],
) -> Structure:
    """A known block layout: its first BatchNorm follows the stem's convolution on the input,
    and fits run one series per block position."""
    return Structure(layout, source, marks, {0}, stage, block, position, blocks=True)


def _module_graph(table: TensorTable, names: list[str]) -> Structure | None:
    if not table.modules:
        return None
    wanted = set(names)
    seen_bn, pooled = False, False
    marks: dict[str, bool] = {}
    for module_name, cls in table.modules:
        if module_name in wanted:
            marks[module_name] = seen_bn and pooled
            seen_bn, pooled = True, False
        elif DOWNSAMPLE_TYPE.search(cls):
            pooled = True
    after = [marks.get(n, False) for n in names]
    return Structure(
        "module graph",
        "from the pooling modules of the module graph (strided convolutions are not seen)",
        after,
        _input_layers(table, names),
    )


def sequential_index(text: str) -> int | None:
    """A path component as a Sequential index (ASCII digits, at most 18 of them), else None."""
    return int(text) if len(text) <= 18 and text.isascii() and text.isdigit() else None


def _param_free_gap(a: str, b: str, slots: dict[str, list[int]]) -> tuple[str, int] | None:
    """Param-free Sequential slots between BatchNorms ``a`` and ``b`` (e.g. ReLU, MaxPool),
    from the index gap at the first path component where they differ: the gap's size less
    the slots that hold parameters (``slots``: each parent's sorted indices with parameters),
    counted by bisection, so that a gap of 10**11 costs no more than a gap of 2."""
    pa, pb = a.split("."), b.split(".")
    for i, (x, y) in enumerate(zip(pa, pb, strict=False)):
        if x != y:
            first, last = sequential_index(x), sequential_index(y)
            if first is None or last is None or last <= first:
                return None
            parent = ".".join(pa[:i])
            held = slots.get(parent, [])
            used = bisect.bisect_left(held, last) - bisect.bisect_right(held, first)
            return parent, last - first - 1 - used
    return None


def _sequential(table: TensorTable, names: list[str]) -> Structure | None:
    """BatchNorms in one ``nn.Sequential``: a gap of more parameter-free slots than the
    usual (the activation) holds a pool."""
    if len(names) < 2:
        return None
    found: dict[str, set[int]] = {}
    for name in table.entries:
        parts = name.split(".")
        for i in range(1, len(parts)):
            index = sequential_index(parts[i - 1])
            if index is not None:
                found.setdefault(".".join(parts[: i - 1]), set()).add(index)
    slots = {parent: sorted(held) for parent, held in found.items()}
    gaps = [_param_free_gap(a, b, slots) for a, b in zip(names, names[1:], strict=False)]
    if any(gap is None for gap in gaps):
        return None
    baseline: dict[str, int] = {}
    for gap in gaps:
        assert gap is not None
        baseline[gap[0]] = min(baseline.get(gap[0], gap[1]), gap[1])
    after = [False] + [gap is not None and gap[1] > baseline[gap[0]] for gap in gaps]
    return Structure(
        "nn.Sequential",
        "from nn.Sequential index gaps (a parameter-free slot beyond the activation is a pool)",
        after,
        set(),
    )


def _channel_changes(channels: Sequence[int]) -> Structure:
    after = [False] + [b != a for a, b in zip(channels, channels[1:], strict=False)]
    return Structure(
        "channel changes",
        "guessed from channel changes (the names show no downsample; state them with "
        "--downsample-after)",
        after,
        set(),
    )


def _input_layers(table: TensorTable, names: Sequence[str]) -> set[int]:
    """BatchNorms that see the raw input: any before the first weight of two or more
    dimensions, and the first one after it."""
    keys = list(table.entries)
    first_weight = next((i for i, k in enumerate(keys) if len(table.entries[k].shape) >= 2), None)
    if first_weight is None or not names:
        return {0} if names else set()
    where: dict[str, int] = {}
    for i, key in enumerate(keys):
        prefix = key.rsplit(".", 1)[0] if "." in key else ""
        where.setdefault(prefix, i)
    out = set()
    for i, name in enumerate(names):
        if where.get(name, 0) < first_weight:
            out.add(i)
        else:
            out.add(i)
            break
    return out
