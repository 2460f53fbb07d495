"""Channel coupling between layers, read from torch-pruning's dependency graph.

Structured pruning must remove the same output channels from every layer whose outputs
meet in a residual add, a concatenation that is later added to something, or a
depthwise convolution (its channel k is its producer's channel k). Rather than writing a
tracer we ask `torch_pruning.DependencyGraph` which (layer, channel) pairs move together
and merge them into :class:`ChannelGroup` objects that pruners can score and cut.

Conventions
-----------
* Every traced Conv/Linear layer belongs to exactly one group (a singleton when nothing
  is coupled to it), so callers can treat "layer" and "group" uniformly.
* ``channel_groups(..., module_names=...)`` keeps the groups that contain at least one
  of the named layers, **with all their members**: dropping an unselected member would
  hide a coupling, and a channel is only physically removable when every member is
  zero on it. Callers filter members themselves when they only score selected layers.
* Group convolutions (``1 < groups < out_channels``) set ``ChannelGroup.num_groups``
  on their own group and on the groups of their producers (NNI's GroupDependency):
  the allocation prunes the same number of channels in every contiguous block.
  Depthwise convolutions are channel-coupled instead (same indices as their producer),
  which is stricter than NNI's count constraint and is what physical removal needs.
* Channel shuffles (``view(b, g, c/g, h, w) -> transpose(1, 2) -> view(b, c, h, w)`` or
  the permute/reshape spelling, ShuffleNetV2) are traced as the permutation they are and
  couple channel k of all g segments (the compact shuffle keeps its order only then);
  torch-pruning 1.6 maps them as flattens (wrong groups, or ZeroDivisionError), and
  infers ``chunk`` sizes wrongly when a chunk feeds a concat (:class:`_ShuffleAwareGraph`).
  Coupled channels of one layer share a group channel (``to_member`` returns all).
* One trace serves everything: :func:`analyse` traces a model once and keeps only
  name-based facts (groups, the BatchNorms and consumer layers of each group, output
  layers, following BatchNorms, the removal plan :mod:`speedup` executes). The result
  is cached per *structure* (module names, classes, non-tensor attributes, hooks,
  parameter/buffer shapes, and the dummy input's shapes/dtypes; never weight values),
  so a pruner's dependency-aware allocation and the speedup that follows, or every
  iteration of a schedule on an unchanged architecture, trace once.
  :func:`clear_analysis_cache` empties it; ``ANALYSIS_CACHE_SIZE = 0`` turns it off.
  A model whose forward takes a different path for equal structure and input shapes
  (data-dependent control flow, a flag kept outside its modules) must clear the cache.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from tune_prune.errors import ConfigError, SpeedupError

logger = logging.getLogger(__name__)

__all__ = [
    "ANALYSIS_CACHE_SIZE",
    "Analysis",
    "ChannelGroup",
    "analyse",
    "channel_groups",
    "clear_analysis_cache",
    "dependency_aware_masks",
    "following_batchnorms",
    "output_modules",
]

_PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels of several Conv/Linear layers that must be pruned together.

    ``members[name][k]`` is the group channel index of output channel ``k`` of layer
    ``name``; a group channel may be produced by only some members (concat segments).
    ``batchnorms[bn]`` and ``consumers[layer]`` are ``(own indices, group channels)``
    pairs: the BatchNorm channels that normalise the group's channels, and the input
    channels (Linear after a flatten: input features) of the Conv/Linear layers that
    read them (depthwise convs are members, not consumers). They serve group
    importance (``bn_scale``, ``input_weights`` of the channel pruners).
    """

    members: dict[str, tuple[int, ...]]
    num_channels: int
    num_groups: int = 1
    feeds_output: bool = False
    batchnorms: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=dict, repr=False, compare=False
    )
    consumers: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _inverse: dict[str, dict[int, list[int]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for name, idx in self.members.items():
            if len(set(idx)) == len(idx):  # the usual case: one channel per group channel
                self._inverse[name] = {g: [k] for k, g in enumerate(idx)}
                continue
            inverse: dict[int, list[int]] = {}
            for k, g in enumerate(idx):  # several channels of one layer may be coupled
                inverse.setdefault(g, []).append(k)
            self._inverse[name] = inverse

    @property
    def names(self) -> list[str]:
        """Member layer names in model order."""
        return list(self.members)

    def to_member(self, name: str, group_indices: Sequence[int]) -> list[int]:
        """Map group channel indices to `name`'s own channel indices (absent ones dropped)."""
        inv = self._inverse[name]
        return sorted(k for g in set(group_indices) if g in inv for k in inv[g])

    def gather(self, metrics: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sum per-member channel metrics into one metric per group channel.

        Only members present in `metrics` contribute (NNI's dependency-aware mode scores
        only the selected layers).
        """
        total = torch.zeros(self.num_channels, dtype=torch.float64)
        for name, metric in metrics.items():
            if name not in self.members:
                continue
            idx = torch.tensor(self.members[name], dtype=torch.long)
            total.index_add_(0, idx, metric.detach().to("cpu", torch.float64).flatten())
        return total

    def covered(self, names: Sequence[str]) -> list[int]:
        """Group channels produced by at least one of `names`."""
        out: set[int] = set()
        for n in names:
            out.update(self.members.get(n, ()))
        return sorted(out)


def forward(model: nn.Module, dummy_input: Any) -> Any:
    """Call `model` on a tensor, a tuple/list of positional inputs, or a dict of kwargs."""
    if isinstance(dummy_input, Mapping):
        return model(**dummy_input)
    if isinstance(dummy_input, (tuple, list)):
        return model(*dummy_input)
    return model(dummy_input)


def _fn_name(node: Any) -> str:
    return node.grad_fn.name() if hasattr(node.grad_fn, "name") else ""


class _ShuffleIndexMapping:
    """Index mapping through a channel shuffle of `groups` segments of `per_group` channels.

    ``view(b, g, c/g, h, w) -> transpose(1, 2) -> view(b, c, h, w)`` moves input channel
    ``gi * cpg + k`` to output channel ``k * g + gi`` (``reverse``: output to input).
    The same code on fewer channels keeps that order only when channel k is kept in all
    g segments; that coupling is added by name (:func:`_channel_groups`, the speedup),
    not here: a one-to-many mapping makes torch-pruning's group search blow up.
    """

    def __init__(self, groups: int, per_group: int, reverse: bool = False) -> None:
        self.groups, self.per_group, self.reverse = groups, per_group, reverse

    def __call__(self, idxs: Sequence[Any]) -> list[Any]:
        g, cpg = self.groups, self.per_group
        if self.reverse:
            g, cpg = cpg, g  # the inverse of a (g, cpg) shuffle is a (cpg, g) shuffle
        return [
            tp._helpers._HybridIndex((i.idx % cpg) * g + i.idx // cpg, i.root_idx) for i in idxs
        ]


def _find_shuffles(module2node: Mapping[Any, Any]) -> list[tuple[Any, Any, Any, int, int]]:
    """Channel shuffles as (first view, transpose/permute, last view, groups, per group).

    Matched: a view/reshape of a 4-D (b, c, h, w) tensor, a transpose(1, 2) or
    permute(0, 2, 1, 3, 4), any contiguous() copies, and a view/reshape of the 5-D
    (b, c/g, g, h, w) result, each the only consumer of the one before.
    """
    found = []
    for node in module2node.values():
        sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
        if node.type != tp.ops.OPTYPE.RESHAPE or sizes is None or len(sizes) != 4:
            continue
        if len(node.outputs) != 1:
            continue
        swap = node.outputs[0]
        fn = swap.grad_fn
        if _fn_name(swap) == "TransposeBackward0":
            ok = {fn._saved_dim0 % 5, fn._saved_dim1 % 5} == {1, 2}
        else:
            ok = _fn_name(swap) == "PermuteBackward0" and tuple(fn._saved_dims) == (0, 2, 1, 3, 4)
        end = swap
        while ok and len(end.outputs) == 1 and _fn_name(end.outputs[0]) == "CloneBackward0":
            end = end.outputs[0]
        if not ok or len(end.outputs) != 1 or end.outputs[0].type != tp.ops.OPTYPE.RESHAPE:
            continue
        last = end.outputs[0]
        size2 = getattr(last.grad_fn, "_saved_self_sym_sizes", None)
        b, c, h, w = (int(s) for s in sizes)
        if (
            size2 is not None
            and len(size2) == 5
            and [int(s) for s in size2[:1] + size2[3:]] == [b, h, w]
            and int(size2[1]) * int(size2[2]) == c
        ):
            found.append((node, swap, last, int(size2[2]), int(size2[1])))
    return found


class _SplitFn:
    """A chunk's grad_fn showing its sizes under the name torch-pruning 1.6 reads.

    torch 2 saves ``_saved_split_size`` for ``chunk``/``split(int)``; torch-pruning 1.6
    looks for ``_saved_split_sizes`` only and otherwise infers the sizes, wrongly when a
    chunk feeds a concat (ShuffleNetV2's ``cat((x1, branch(x2)))``).
    """

    def __init__(self, fn: Any, sizes: list[int]) -> None:
        self._fn, self._saved_split_sizes = fn, sizes

    def __getattr__(self, key: str) -> Any:
        return getattr(self._fn, key)


def _fix_split(node: Any) -> None:
    """Give a channel chunk its exact sizes and order its output nodes by segment
    (torch-pruning maps the i-th output node to the i-th segment)."""
    fn = node.grad_fn
    size, full = getattr(fn, "_saved_split_size", None), getattr(fn, "_saved_self_sym_sizes", None)
    if node.type != tp.ops.OPTYPE.SPLIT or size is None or full is None or fn._saved_dim != 1:
        return
    c = int(full[1])
    sizes = [min(int(size), c - o) for o in range(0, c, int(size))]
    segment = {}
    for out in node.outputs:
        nrs = {nr for f, nr in getattr(out.grad_fn, "next_functions", ()) if f is fn}
        if len(nrs) != 1:
            return
        segment[out] = nrs.pop()
    if sorted(segment.values()) == list(range(len(sizes))):
        node.outputs.sort(key=segment.__getitem__)
        node.grad_fn = _SplitFn(fn, sizes)


class _ShuffleAwareGraph(tp.DependencyGraph):
    """torch-pruning's graph with channel shuffles mapped as the permutation they are.

    torch-pruning 1.6 takes both views of a shuffle for flattens: the channel mapping
    it derives is wrong (or raises ZeroDivisionError). Matched shuffles
    (:func:`_find_shuffles`) are typed element-wise, so torch-pruning leaves their index
    mapping alone, and the transpose edge gets :class:`_ShuffleIndexMapping`. Channel
    chunks get their exact sizes (:func:`_fix_split`), and a split reports its input
    channels, which torch-pruning's shape inference miscounts when a chunk feeds a cat.
    """

    def get_in_channels(self, module_or_node: Any) -> int | None:
        node = self.module2node.get(module_or_node, module_or_node)
        sizes = getattr(getattr(node, "module", None), "split_sizes", None)
        if getattr(node, "type", None) == tp.ops.OPTYPE.SPLIT and sizes and None not in sizes:
            return sum(sizes)
        return super().get_in_channels(module_or_node)

    def _build_dependency(self, module2node: Any) -> None:
        for node in module2node.values():
            _fix_split(node)
        shuffles = _find_shuffles(module2node)
        for first, _, last, _, _ in shuffles:
            first.type = last.type = tp.ops.OPTYPE.ELEMENTWISE
        super()._build_dependency(module2node)
        #: first view of each shuffle -> (groups, channels per group)
        self.channel_shuffles = {first: (g, cpg) for first, _, _, g, cpg in shuffles}
        for first, swap, _, g, cpg in shuffles:
            for src, dst, reverse in ((first, swap, False), (swap, first, True)):
                for dep in src.dependencies:
                    if dep.target is dst:
                        dep.index_mapping[0] = _ShuffleIndexMapping(g, cpg, reverse)


def _failed_node(exc: BaseException) -> str:
    """The torch-pruning node a tracing error was raised at, or '': the first ``*node``
    local (arguments come first) of the innermost frame that has one."""
    tb, found = exc.__traceback__, ""
    while tb is not None:
        for key, value in tb.tb_frame.f_locals.items():
            if key.endswith("node") and isinstance(value, tp.dependency.Node):
                found = f" at node {value.name} ({_fn_name(value) or value.type.name})"
                break
        tb = tb.tb_next
    return found


@contextlib.contextmanager
def traced_graph(
    model: nn.Module,
    dummy_input: Any,
    forward_fn: Callable[[nn.Module, Any], Any] = forward,
) -> Iterator[tp.DependencyGraph]:
    """Build a torch-pruning DependencyGraph, restoring train mode and requires_grad after.

    The graph is only usable inside the block: it is dismantled on exit (:func:`_release`).

    Tracing relies on autograd, so every parameter must require grad while it runs;
    torch-pruning also switches the model to eval mode. (Only the frozen parameters are
    touched, and an eval-mode model is not walked again once traced: this runs on every
    first call for an architecture.)
    """
    was_training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    traced = False
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            try:
                graph = _ShuffleAwareGraph().build_dependency(
                    model, dummy_input, forward_fn=forward_fn, verbose=False
                )
            except Exception as exc:  # torch-pruning raises bare asserts / shape errors
                raise SpeedupError(
                    f"dependency tracing failed for model {type(model).__name__}"
                    f"{_failed_node(exc)}: {exc!r}"
                ) from exc
        traced = True
        yield graph
    finally:
        for p in frozen:
            p.requires_grad_(False)
        if was_training or not traced:  # a finished trace left every module in eval mode
            model.train(was_training)
        if traced:
            _release(graph)


def _release(graph: tp.DependencyGraph) -> None:
    """Break the graph's node <-> node and node <-> dependency reference cycles.

    Reference counting then frees the graph when the analysis drops it. Left to the
    cyclic garbage collector, its thousands of objects outlive a few collections, get
    promoted and are only freed by a (whole-heap) generation-2 collection that a later
    call pays for.
    """
    for node in graph.module2node.values():
        node.inputs.clear()
        node.outputs.clear()
        node.dependencies.clear()


def output_modules(model: nn.Module, dummy_input: Any) -> set[str]:
    """Names of modules whose output tensor is returned by the model as-is.

    torch-pruning only sees an explicit output node when the last op is not a module, so
    the classifier (`return self.fc(x)`) must be found by tensor identity.
    """
    return set(analyse(model, dummy_input).outputs)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


class _IndexUnionFind:
    """Union-find over the integers 0..n-1 (a list, not a dict of tuples: every channel of
    every layer is an element, so this runs once per channel on every first trace)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _is_grouped_conv(m: nn.Module) -> bool:
    """A group conv that is not depthwise (depthwise convs are channel-coupled instead)."""
    return (
        isinstance(m, nn.modules.conv._ConvNd)
        and m.groups > 1
        and not (m.groups == m.out_channels and m.out_channels > 1)
    )


def _out_len(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


# ------------------------------------------------------------------------------ analysis


@dataclass(frozen=True)
class PlanItem:
    """One (node, pruning function) of a torch-pruning group, by name (see :class:`Analysis`).

    ``optype``: torch-pruning's node type name (``"CONV"``, ``"BN"``, ``"ELEMENTWISE"``,
    ...); ``name``: the module's name (None for non-module nodes); ``is_out``: the item
    prunes output channels; ``idxs`` / ``root_idxs``: the node's channel indices and the
    root channel each comes from; ``outside_input``: a channel-preserving op fed by a
    tensor outside the graph (model input, buffer, constant); ``op_name``: the autograd
    function's lower-case name (element-wise ops); ``single_output``: the module name
    of the node's only consumer node, when it has exactly one; ``node``: torch-pruning's
    node name (a module's: its ``name``); ``chunk``: the segment sizes of a
    ``chunk``/``split(int)`` along channels; ``shuffle``: (groups, channels per group) of
    a channel shuffle's input node.
    """

    optype: str
    name: str | None
    is_out: bool
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]
    outside_input: bool
    op_name: str
    single_output: str | None
    node: str = ""
    chunk: tuple[int, ...] = ()
    shuffle: tuple[int, ...] = ()


@dataclass(frozen=True)
class Analysis:
    """Everything one trace tells about a model's channel structure, by module name.

    ``groups``: :func:`channel_groups` (every traced Conv/Linear layer, model order);
    ``outputs``: :func:`output_modules`; ``following``: :func:`following_batchnorms`;
    ``plan``: torch-pruning's groups in ``get_all_groups`` order (roots Conv/Linear,
    each layer's output channels in one group, full channel ranges, original indices),
    which :func:`tune_prune.pruning.speedup.speedup_model` evaluates and executes.
    """

    groups: tuple[ChannelGroup, ...]
    outputs: frozenset[str]
    following: Mapping[str, str]
    plan: tuple[tuple[PlanItem, ...], ...]


#: Analyses kept (least recently used dropped first); 0 turns the cache off.
ANALYSIS_CACHE_SIZE = 32
_CACHE: OrderedDict[Any, Analysis] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_SKIP_ATTRS = frozenset({"_parameters", "_buffers", "_modules", "training"})


def clear_analysis_cache() -> None:
    """Forget every cached :class:`Analysis` (the next call traces again)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _qualname(obj: Any) -> str:
    target = getattr(obj, "__func__", obj)
    qual = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{getattr(target, '__module__', '')}.{qual}"


_PLAIN = (type(None), bool, int, float, str, bytes)


def _token(value: Any, depth: int = 0) -> Any:
    """A hashable, value-based stand-in for a module attribute (structure, not weights)."""
    if type(value) in _PLAIN:
        return value
    if (
        isinstance(value, (tuple, list))
        and not isinstance(value, torch.Size)
        and depth < 3
        and len(value) <= 256
    ):  # first, plain items inline: kernel sizes, strides and paddings are most attributes
        items = [v if type(v) in _PLAIN else _token(v, depth + 1) for v in value]
        return (type(value).__name__, tuple(items))
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype), str(value.device))
    if isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return str(value)
    if depth < 3 and isinstance(value, (set, frozenset)) and len(value) <= 256:
        return ("set", tuple(sorted(repr(_token(v, depth + 1)) for v in value)))
    if depth < 3 and isinstance(value, Mapping) and len(value) <= 256:
        return ("map", tuple((repr(k), _token(v, depth + 1)) for k, v in value.items()))
    if isinstance(value, (bool, int, float, str)):  # subclasses (enums, ...)
        return (_qualname(type(value)), repr(value))
    if callable(value):
        return ("callable", _qualname(value))
    return ("object", _qualname(type(value)))


#: tune_prune's own mask hook multiplies weights in place (no autograd op): the graph
#: of a wrapped model is the unwrapped one's, so its state is left out of the key.
_MASK_HOOK = "tune_prune.pruning.masks._forward_pre_hook"
_MASK_ATTR_PREFIX = "_tune_prune_"


#: Tokens of empty containers (no per-attribute call for the common case).
_EMPTY = {t: ("empty", t.__name__) for t in (dict, OrderedDict, set, list, tuple)}


def _module_token(m: nn.Module) -> tuple[Any, ...]:
    """Computed for every module on every :func:`analyse` call (twice per prune + speedup,
    cached or not), so the common cases are inline: plain values, and the empty hook
    dicts that are most of an ``nn.Module``'s own attributes."""
    attrs = []
    for k, v in vars(m).items():
        if k in _SKIP_ATTRS:
            continue
        t = type(v)
        if t in _PLAIN:
            attrs.append((k, v))
        elif k.startswith(_MASK_ATTR_PREFIX):
            continue
        elif not v and t in _EMPTY:  # hooks: as a dict holding only mask hooks (below)
            attrs.append((k, () if "hooks" in k else _EMPTY[t]))
        elif "hooks" in k and isinstance(v, Mapping):
            # keyed by handle ids, which change with every registration: values only
            hooks = tuple(h for h in map(_token, v.values()) if h != ("callable", _MASK_HOOK))
            attrs.append((k, hooks))
        else:
            attrs.append((k, _token(v)))
    attrs.sort()  # by name: names are unique, values are never compared
    params = tuple(
        (n, None if p is None else (tuple(p.shape), p.dtype)) for n, p in m._parameters.items()
    )
    buffers = tuple(
        (n, None if b is None else (tuple(b.shape), b.dtype)) for n, b in m._buffers.items()
    )
    return (_qualname(type(m)), tuple(attrs), params, buffers)


def structure_key(model: nn.Module, dummy_input: Any) -> Any:
    """What an :class:`Analysis` depends on: module tree, classes, non-tensor attributes,
    registered hooks, parameter and buffer shapes, and the input's shapes and dtypes."""
    parts: list[Any] = [(name, _module_token(m)) for name, m in model.named_modules()]
    parts.append(_token(dummy_input))
    return tuple(parts)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a model is traced and analysed.

    A trace allocates many thousands of short-lived objects (the graph is freed by
    reference counting, see :func:`_release`): collections during it only promote them,
    and promoted objects bring the next whole-heap collection closer. The previous state
    is restored (collection that was off stays off).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def analyse(model: nn.Module, dummy_input: Any) -> Analysis:
    """The model's :class:`Analysis`, traced once per structure (see the module docstring)."""
    if ANALYSIS_CACHE_SIZE <= 0:
        with _gc_paused():
            return _analyse(model, dummy_input)
    key = structure_key(model, dummy_input)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    with _gc_paused():
        result = _analyse(model, dummy_input)
    with _CACHE_LOCK:
        _CACHE[key] = result
        while len(_CACHE) > max(0, ANALYSIS_CACHE_SIZE):
            _CACHE.popitem(last=False)
    return result


def _outside_input(node: Any) -> bool:
    """A channel-preserving node fed by a tensor outside the graph (model input, buffer)."""
    ot = tp.ops.OPTYPE
    if node.type in (ot.CONV, ot.LINEAR, ot.OUTPUT) or node.grad_fn is None:
        return False
    nxt = getattr(node.grad_fn, "next_functions", ())
    if node.type in (ot.BN, ot.DEPTHWISE_CONV, ot.PRELU):
        nxt = nxt[:1]
    return any(f is None for f, _ in nxt)


def _analyse(model: nn.Module, dummy_input: Any) -> Analysis:
    named = list(model.named_modules())
    order = {name: i for i, (name, _) in enumerate(named)}
    m2n = {m: n for n, m in named}
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    captured: dict[str, Any] = {}

    def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):  # the tensor is kept so that ids stay unique
            produced[id(out)] = (m2n[mod], out)

    def fwd(m: nn.Module, x: Any) -> Any:
        captured["out"] = forward(m, x)
        return captured["out"]

    hooks = [
        m.register_forward_hook(hook)
        for _, m in named
        if isinstance(m, (*_PRUNABLE, nn.modules.batchnorm._BatchNorm))
    ]
    try:
        with traced_graph(model, dummy_input, forward_fn=fwd) as graph:
            flat = tp.utils.flatten_as_list(captured.get("out"))
            outputs = frozenset(
                produced[id(t)][0] for t in flat if isinstance(t, torch.Tensor) and id(t) in produced
            )
            produced.clear()
            captured.clear()
            full = _full_groups(graph, m2n)
            groups = _channel_groups(graph, model, m2n, order, full, outputs)
            following = _following(graph, m2n)
            plan = _plan(graph, m2n, full)
    finally:
        for h in hooks:
            h.remove()
    return Analysis(tuple(groups), outputs, following, plan)


def _full_groups(graph: tp.DependencyGraph, m2n: dict) -> dict[nn.Module, Any]:
    """torch-pruning groups over all output channels, one per root layer.

    As ``get_all_groups``: layers in trace order, a layer whose output channels an earlier
    group already prunes is not a root. A group is closed under the coupling, so every
    coupling of a channel is in the group that contains it; a layer with a channel no
    group contains (a concat segment reached only partly) becomes a root as well.
    """
    full: dict[nn.Module, Any] = {}
    covered: dict[nn.Module, set[int]] = {}
    layers = [m for m in graph.module2node if isinstance(m, _PRUNABLE) and m in m2n]

    def add(m: nn.Module) -> None:
        pruner = graph.get_pruner_of_module(m)
        group = graph.get_pruning_group(m, pruner.prune_out_channels, list(range(_out_len(m))))
        full[m] = group
        for item in group:
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                covered.setdefault(item.dep.target.module, set()).update(item.idxs)

    for m in layers:
        if m not in covered:
            add(m)
    for m in layers:
        if m not in full and len(covered.get(m, ())) < _out_len(m):
            add(m)
    return full


def _plan(graph: tp.DependencyGraph, m2n: dict, full: dict) -> tuple[tuple[PlanItem, ...], ...]:
    """torch-pruning's ``get_all_groups(root_module_types=(Conv, Linear))``, by name."""
    visited: set[nn.Module] = set()
    plan = []
    ignored = list(getattr(graph, "IGNORED_LAYERS_IN_TRACING", []))
    shuffles = getattr(graph, "channel_shuffles", {})
    for m in list(graph.module2node):
        if any(m is i for i in ignored) or not isinstance(m, _PRUNABLE) or m in visited:
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        group = full.get(m)
        if group is None:
            group = graph.get_pruning_group(
                m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m)))
            )
        items = []
        for item in group:
            node = item.dep.target
            is_out = bool(graph.is_out_channel_pruning_fn(item.dep.handler))
            if is_out:
                visited.add(node.module)
            fn = node.grad_fn
            single = None
            if len(node.outputs) == 1:
                single = m2n.get(node.outputs[0].module)
            name = m2n.get(node.module) if isinstance(node.module, nn.Module) else None
            items.append(
                PlanItem(
                    optype=node.type.name,
                    name=name,
                    is_out=is_out,
                    idxs=tuple(map(int, item.idxs)),
                    root_idxs=tuple(map(int, item.root_idxs)),
                    outside_input=_outside_input(node),
                    op_name=fn.name().lower() if hasattr(fn, "name") else "",
                    single_output=single,
                    # torch-pruning's node name formats the module's repr: slow, and
                    # only needed for the ops that are not modules (errors, routing)
                    node=str(node.name) if name is None else name,
                    chunk=tuple(fn._saved_split_sizes) if isinstance(fn, _SplitFn) else (),
                    shuffle=shuffles.get(node, ()),
                )
            )
        plan.append(tuple(items))
    return tuple(plan)


def _following(graph: tp.DependencyGraph, m2n: dict) -> dict[str, str]:
    result: dict[str, str] = {}
    for m, node in graph.module2node.items():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or len(node.inputs) != 1:
            continue
        src = node.inputs[0].module
        if isinstance(src, _PRUNABLE) and src in m2n and m in m2n:
            result[m2n[src]] = m2n[m]
    return result


def _channel_groups(
    graph: tp.DependencyGraph,
    model: nn.Module,
    m2n: dict,
    order: dict[str, int],
    full: dict,
    outputs: frozenset[str],
) -> list[ChannelGroup]:
    layer_uf = _UnionFind()
    to_output: set[str] = set()
    constraints: dict[str, list[int]] = {}
    # layer -> [(bn or consumer name, its own indices, the layer's (root) channels)]
    bn_items: dict[str, list[tuple[str, tuple[int, ...], tuple[int, ...]]]] = {}
    consumer_items: dict[str, list[tuple[str, tuple[int, ...], tuple[int, ...]]]] = {}
    # (shuffle, channel within a segment) -> [(layer, root)]: pruned together
    shuffled: dict[tuple[Any, int], list[tuple[str, int]]] = {}
    shuffles = getattr(graph, "channel_shuffles", {})
    layers = [(m2n[m], m) for m in graph.module2node if isinstance(m, _PRUNABLE) and m in m2n]
    layers.sort(key=lambda x: order[x[0]])
    # channel k of layer `name` is element base[name] + k of one union-find
    base: dict[str, int] = {}
    size: dict[str, int] = {}
    total = 0
    for name, m in layers:
        base[name], size[name] = total, _out_len(m)
        total += size[name]
    uf = _IndexUnionFind(total)
    beyond: dict[tuple[str, int], int] = {}  # an index past a layer's width (never expected)

    def channel(name: str, k: int) -> int:
        if 0 <= k < size[name]:
            return base[name] + k
        if (name, k) not in beyond:
            beyond[(name, k)] = uf.add()
        return beyond[(name, k)]

    for name, m in layers:
        layer_uf.find(name)
        pruner = graph.get_pruner_of_module(m)
        for item in full.get(m, ()):
            target = item.dep.target
            if target.type == tp.ops.OPTYPE.OUTPUT:
                to_output.add(name)
            if target in shuffles:
                cpg = shuffles[target][1]
                for idx, root in zip(item.idxs, item.root_idxs):
                    shuffled.setdefault((target, int(idx) % cpg), []).append((name, int(root)))
            tname = m2n.get(target.module) if isinstance(target.module, nn.Module) else None
            if tname is None:
                continue
            is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
            if isinstance(target.module, nn.modules.batchnorm._BatchNorm):
                bn_items.setdefault(name, []).append(
                    (tname, tuple(map(int, item.idxs)), tuple(map(int, item.root_idxs)))
                )
                continue
            if not isinstance(target.module, _PRUNABLE):
                continue
            if not is_out:
                consumer_items.setdefault(name, []).append(
                    (tname, tuple(map(int, item.idxs)), tuple(map(int, item.root_idxs)))
                )
                continue
            for idx, root in zip(item.idxs, item.root_idxs):
                uf.union(channel(name, root), channel(tname, idx))
            layer_uf.union(name, tname)
        if _is_grouped_conv(m):
            constraints.setdefault(name, []).append(m.groups)
            in_group = graph.get_pruning_group(
                m, pruner.prune_in_channels, list(range(m.in_channels))
            )
            for item in in_group:
                tname = m2n.get(item.dep.target.module)
                if (
                    tname is not None
                    and isinstance(item.dep.target.module, _PRUNABLE)
                    and graph.is_out_channel_pruning_fn(item.dep.handler)
                ):
                    constraints.setdefault(tname, []).append(m.groups)
    for first, *rest in shuffled.values():
        for other in rest:
            uf.union(channel(*first), channel(*other))
            layer_uf.union(first[0], other[0])

    by_layer_root: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, m in layers:
        by_layer_root.setdefault(layer_uf.find(name), []).append((name, m))
    groups: list[ChannelGroup] = []
    for members in by_layer_root.values():
        comp_index: dict[int, int] = {}
        mapping: dict[str, tuple[int, ...]] = {}
        for name, _ in members:
            start = base[name]
            mapping[name] = tuple(
                comp_index.setdefault(uf.find(c), len(comp_index))
                for c in range(start, start + size[name])
            )
        n = len(comp_index)
        cons = [g for name, _ in members for g in constraints.get(name, [])]
        num_groups = math.lcm(*cons) if cons else 1
        if n % num_groups:
            logger.warning(
                "group %s: %d channels not divisible by group-conv constraint %d; ignoring it",
                list(mapping),
                n,
                num_groups,
            )
            num_groups = 1
        feeds = any(name in outputs or name in to_output for name in mapping)

        groups.append(
            ChannelGroup(
                mapping,
                n,
                num_groups,
                feeds,
                _pairs(bn_items, mapping, order),
                _pairs(consumer_items, mapping, order),
            )
        )
    return groups


def _pairs(
    table: dict[str, list[tuple[str, tuple[int, ...], tuple[int, ...]]]],
    mapping: dict[str, tuple[int, ...]],
    order: dict[str, int],
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{layer: (own indices, group channels)}`` of the BN/consumer items of one group
    (``mapping``: its members; a root index is a channel of the member it is listed under;
    an own index keeps the group channel it is first listed with)."""
    seen: dict[str, dict[int, int]] = {}
    for name, channels in mapping.items():
        for tname, idxs, roots in table.get(name, ()):
            if tname in mapping:
                continue  # a member (depthwise conv), not a reader of the group
            own = seen.setdefault(tname, {})
            for idx, root in zip(idxs, roots):
                if idx not in own:
                    own[idx] = channels[root]
    out = {}
    for tname in sorted(seen, key=lambda t: order.get(t, 0)):
        own = sorted(seen[tname])
        out[tname] = (tuple(own), tuple(seen[tname][i] for i in own))
    return out


def channel_groups(
    model: nn.Module, dummy_input: Any, module_names: Sequence[str] | None = None
) -> list[ChannelGroup]:
    """Groups of Conv/Linear layers whose output channels must be pruned with equal indices.

    Returns every traced Conv/Linear layer in exactly one group (model order). With
    `module_names`, only groups containing at least one named layer are returned, still
    with all their members. Unknown names raise ConfigError.
    """
    groups = list(analyse(model, dummy_input).groups)
    if module_names is not None:
        wanted = set(module_names)
        traced = {name for g in groups for name in g.members}
        if not wanted <= traced:  # only then walk the model: is the rest unknown?
            known = {name for name, _ in model.named_modules()}
            missing = [n for n in module_names if n not in known]
            if missing:
                raise ConfigError(f"module_names: unknown module(s) {missing}")
        groups = [g for g in groups if wanted & set(g.members)]
    return groups


def following_batchnorms(model: nn.Module, dummy_input: Any) -> dict[str, str]:
    """Map each Conv/Linear to the BatchNorm fed only by it (conv -> bn, nothing else in).

    Used to extend channel masks: a zero filter still yields BN's constant shift
    `beta - gamma * mean / std`, so a dead channel is only removable once its BN is masked.
    """
    return dict(analyse(model, dummy_input).following)


def dependency_aware_masks(
    model: nn.Module,
    dummy_input: Any,
    metrics: Mapping[str, torch.Tensor],
    sparsities: Mapping[str, float],
    groups: Sequence[ChannelGroup] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """NNI dependency-aware allocation: one channel choice per coupled group.

    For each group touching the layers in `metrics`: group metric = sum of the selected
    members' metrics; the group prunes ``int(n * min(member sparsities))`` of its n
    candidate channels (those produced by a selected member), keeping the largest via
    topk; with a group-conv constraint every block prunes ``int(block * s)``. Only the
    selected layers get masks (weight rows and bias zeroed).
    """
    if set(metrics) != set(sparsities):
        raise ConfigError(
            f"sparsities: keys {sorted(sparsities)} differ from metrics keys {sorted(metrics)}"
        )
    for name, s in sparsities.items():
        if not 0.0 <= float(s) < 1.0:
            raise ConfigError(f"sparsity of {name!r}: {s} is outside [0, 1)")
    if groups is None:
        groups = channel_groups(model, dummy_input)
    modules = dict(model.named_modules())
    seen: set[str] = set()
    masks: dict[str, dict[str, torch.Tensor]] = {}
    for group in groups:
        selected = [n for n in group.members if n in metrics]
        if not selected:
            continue
        seen.update(selected)
        for n in selected:
            if metrics[n].numel() != len(group.members[n]):
                raise ConfigError(
                    f"metrics[{n!r}]: {metrics[n].numel()} values for "
                    f"{len(group.members[n])} output channels"
                )
        sparsity = min(float(sparsities[n]) for n in selected)
        metric = group.gather({n: metrics[n] for n in selected})
        candidates = group.covered(selected)
        block = group.num_channels // group.num_groups
        pruned: list[int] = []
        for b in range(group.num_groups):
            cand = [c for c in candidates if b * block <= c < (b + 1) * block]
            n_prune = int(len(cand) * sparsity)
            if n_prune == 0:
                continue
            keep = torch.topk(metric[cand], len(cand) - n_prune).indices.tolist()
            kept = {cand[i] for i in keep}
            pruned.extend(c for c in cand if c not in kept)
        for n in selected:
            module = modules[n]
            member_pruned = group.to_member(n, pruned)
            w = torch.ones_like(module.weight, dtype=torch.float32)
            w[member_pruned] = 0.0
            masks[n] = {"weight": w}
            if getattr(module, "bias", None) is not None:
                b = torch.ones_like(module.bias, dtype=torch.float32)
                b[member_pruned] = 0.0
                masks[n]["bias"] = b
    missing = sorted(set(metrics) - seen)
    if missing:
        raise ConfigError(f"metrics: layer(s) {missing} are not traced Conv/Linear layers")
    return masks
