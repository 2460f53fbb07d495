"""Physical channel removal (NNI's ModelSpeedup) through torch-pruning.

A channel is removed only when it is exactly dead in the masked model, so the compact
model computes the same function as the masked one (checked on `dummy_input` before
returning). Rules:

* Masks are baked into a deep copy of the model (weights carry the zeros, as after NNI's
  ``compress()`` + unwrap); the argument model is never modified.
* BatchNorm extension (:func:`extend_masks_to_batchnorms`): a BN fed only by a Conv/Linear
  whose output channel k is dead gets ``weight[k] = bias[k] = 0`` masks. Without this the
  BN would emit its constant shift ``beta - gamma*mean/std`` on a zero channel and
  nothing could be removed. NNI's speedup drops that constant in the same way; the
  reference "masked model" for equality checks must therefore use the extended masks.
* A channel of a torch-pruning group is removed iff every producer in the group is zero on
  it: Conv/Linear rows (and bias) zero, BatchNorm weight and bias zero, depthwise conv
  bias zero (its input channel is another member). A Conv/Linear whose only consumer is a
  dead BN (SlimPruner masks) also counts as dead.
* Never removed: channels that reach a model output (the classifier), groups touching
  the model input or constant tensors, group convs that are not depthwise, transposed
  convs and layer types other than Conv/Linear/BatchNorm/PReLU. At least one channel of
  every group survives. Zeros that stay are returned as re-indexed masks.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from tune_prune.errors import SpeedupError
from tune_prune.pruning.dependency import (
    following_batchnorms,
    forward,
    output_modules,
    traced_graph,
)
from tune_prune.pruning.masks import Masks, check_masks

logger = logging.getLogger(__name__)

__all__ = [
    "HISTORY_FORMAT",
    "extend_masks_to_batchnorms",
    "rebuild_compact_model",
    "speedup_model",
]

HISTORY_FORMAT = "tune_prune.speedup/1"

_CONV = nn.modules.conv._ConvNd
_BN = nn.modules.batchnorm._BatchNorm
_SUPPORTED = (_CONV, nn.Linear, _BN, nn.PReLU)
_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "num_parameters",
)
_OT = tp.ops.OPTYPE
# Non-module nodes that only route channels (their output is zero where inputs are).
_ROUTING = {_OT.ELEMENTWISE, _OT.CONCAT, _OT.SPLIT, _OT.RESHAPE, _OT.SLICE}
# Element-wise autograd ops (lower-case substrings of grad_fn names) that map an all-zero
# channel to an all-zero channel. Anything else (sigmoid, x + 1, softplus, ...) turns a
# dead channel into a live one, so groups through it are left alone.
_ZERO_PRESERVING = (
    "relu", "elu", "hardtanh", "silu", "tanh", "hardswish", "mish",
    "addbackward0", "subbackward0", "mulbackward", "divbackward", "negbackward",
    "pool", "meanbackward", "sumbackward", "maxbackward", "view", "reshape", "permute",
    "transpose", "tbackward", "clone", "squeeze", "expand", "upsample", "flatten",
    "cat", "split", "slice", "unbind", "select", "index", "dropout",
)  # fmt: skip


def _zero_preserving(node: Any) -> bool:
    if node.type != _OT.ELEMENTWISE:
        return True
    name = node.grad_fn.name().lower() if hasattr(node.grad_fn, "name") else ""
    return any(key in name for key in _ZERO_PRESERVING)


def _effective(
    module: nn.Module, pname: str, masks: Mapping[str, Mapping[str, torch.Tensor]], name: str
) -> torch.Tensor | None:
    t = getattr(module, pname, None)
    if t is None:
        return None
    t = t.detach()
    mask = masks.get(name, {}).get(pname)
    return t * mask.to(t) if mask is not None else t


def _dead_out_channels(module: nn.Module, name: str, masks: Mapping) -> torch.Tensor:
    """Bool per output channel: filter row and bias (if any) are exactly zero."""
    w = _effective(module, "weight", masks, name)
    dead = (w.flatten(1) == 0).all(dim=1)
    b = _effective(module, "bias", masks, name)
    if b is not None:
        dead &= b == 0
    return dead


def extend_masks_to_batchnorms(
    model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor]], dummy_input: Any
) -> Masks:
    """Copy of `masks` where a BN fed only by a dead Conv/Linear channel k is masked on k.

    Dead = filter row and bias zero after masking (zeros already in the weights count).
    Existing BN masks are kept and multiplied.
    """
    check_masks(model, masks, SpeedupError)
    out: Masks = {n: {p: m.clone() for p, m in e.items()} for n, e in masks.items()}
    modules = dict(model.named_modules())
    for conv_name, bn_name in following_batchnorms(model, dummy_input).items():
        dead = _dead_out_channels(modules[conv_name], conv_name, masks)
        if not bool(dead.any()):
            continue
        bn = modules[bn_name]
        if not bn.affine:
            continue
        entry = out.setdefault(bn_name, {})
        for pname in ("weight", "bias"):
            base = entry.get(pname, torch.ones_like(getattr(bn, pname), dtype=torch.float32))
            entry[pname] = base * (~dead).to(base.dtype)
    return out


def _bake(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, entry in masks.items():
            for pname, mask in entry.items():
                getattr(modules[name], pname).mul_(mask.to(getattr(modules[name], pname)))


def _tainted(node: Any) -> bool:
    """A channel-preserving node fed by a tensor outside the graph (model input, buffer)."""
    if node.type in (_OT.CONV, _OT.LINEAR, _OT.OUTPUT) or node.grad_fn is None:
        return False
    nxt = getattr(node.grad_fn, "next_functions", ())
    if node.type in (_OT.BN, _OT.DEPTHWISE_CONV, _OT.PRELU):
        nxt = nxt[:1]
    return any(f is None for f, _ in nxt)


class _Pruner:
    """Walks torch-pruning groups, removes dead channels and tracks kept indices."""

    def __init__(self, model: nn.Module, masks: Masks, dummy_input: Any) -> None:
        self.model = model
        self.masks = masks
        self.names = {m: n for n, m in model.named_modules()}
        self.out_keep: dict[str, list[int]] = {}
        self.in_keep: dict[str, list[int]] = {}
        self.ignored = output_modules(model, dummy_input)
        self.bn_after = following_batchnorms(model, dummy_input)
        self.dummy_input = dummy_input

    def _keep(self, table: dict[str, list[int]], name: str, size: int) -> list[int]:
        return table.setdefault(name, list(range(size)))

    def _supported(self, graph: tp.DependencyGraph, group: Any) -> bool:
        for item in group:
            node = item.dep.target
            if node.type == _OT.OUTPUT or _tainted(node):
                return False
            if node.type in _ROUTING:
                if not _zero_preserving(node):
                    return False
                continue  # torch-pruning's dummy ops (add, relu, cat, view, ...)
            mod = node.module
            if not isinstance(mod, _SUPPORTED) or mod not in self.names:
                return False
            if isinstance(mod, _CONV) and (
                mod.transposed or node.type == _OT.CONV and mod.groups > 1
            ):
                return False
            if self.names[mod] in self.ignored and graph.is_out_channel_pruning_fn(
                item.dep.handler
            ):
                return False
        return True

    def _alive_roots(self, graph: tp.DependencyGraph, group: Any) -> set[int]:
        """Root indices where some producer in the group is not exactly zero."""
        alive: set[int] = set()
        bn_dead: dict[str, torch.Tensor] = {}
        for item in group:
            mod = item.dep.target.module
            if item.dep.target.type == _OT.BN and graph.is_out_channel_pruning_fn(item.dep.handler):
                bn_dead[self.names[mod]] = _bn_dead(mod)
        for item in group:
            node = item.dep.target
            mod = node.module
            if node.type in _ROUTING or not graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            if isinstance(mod, _BN):
                dead = bn_dead[self.names[mod]]
            elif node.type == _OT.DEPTHWISE_CONV:
                dead = torch.ones(mod.out_channels, dtype=torch.bool)
                if mod.bias is not None:
                    dead = mod.bias.detach() == 0
            elif isinstance(mod, (_CONV, nn.Linear)):
                dead = _dead_out_channels(mod, self.names[mod], {})
                bn = self.bn_after.get(self.names[mod])
                only_bn = (
                    bn in bn_dead
                    and len(node.outputs) == 1
                    and self.names.get(node.outputs[0].module) == bn
                )
                if only_bn:
                    dead = dead | bn_dead[bn]
            elif isinstance(mod, nn.PReLU):
                continue  # prelu(0) == 0
            else:
                return set(item.root_idxs)
            for idx, root in zip(item.idxs, item.root_idxs):
                if not bool(dead[idx]):
                    alive.add(root)
        return alive

    def _record(self, graph: tp.DependencyGraph, group: Any) -> None:
        for item in group:
            mod = item.dep.target.module
            if item.dep.target.type in _ROUTING or (
                isinstance(mod, nn.PReLU) and mod.num_parameters == 1
            ):
                continue
            name = self.names[mod]
            idxs = set(item.idxs)
            is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
            if is_out or isinstance(mod, _BN | nn.PReLU):
                size = _out_size(mod)
                keep = self._keep(self.out_keep, name, size)
                self.out_keep[name] = [k for i, k in enumerate(keep) if i not in idxs]
            if not is_out or item.dep.target.type == _OT.DEPTHWISE_CONV:
                size = mod.in_channels if isinstance(mod, _CONV) else mod.in_features
                keep = self._keep(self.in_keep, name, size)
                self.in_keep[name] = [k for i, k in enumerate(keep) if i not in idxs]

    def run(self) -> int:
        removed = 0
        with traced_graph(self.model, self.dummy_input) as graph:
            for group in graph.get_all_groups(root_module_types=(_CONV, nn.Linear)):
                if not self._supported(graph, group):
                    continue
                n = len(group[0].idxs)
                alive = self._alive_roots(graph, group)
                dead = [k for k in range(n) if k not in alive]
                if len(dead) == n:
                    dead = dead[1:]  # a layer needs at least one channel
                if not dead:
                    continue
                root = group[0].dep.target.module
                pgroup = graph.get_pruning_group(root, group[0].dep.handler, dead)
                self._record(graph, pgroup)
                pgroup.prune()
                removed += len(dead)
                logger.debug(
                    "removed %d channels of group rooted at %s", len(dead), self.names.get(root)
                )
        return removed


def _bn_dead(bn: nn.Module) -> torch.Tensor:
    if not bn.affine:
        return torch.zeros(bn.num_features, dtype=torch.bool)
    return (bn.weight.detach() == 0) & (bn.bias.detach() == 0)


def _out_size(mod: nn.Module) -> int:
    if isinstance(mod, _CONV):
        return mod.out_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features
    if isinstance(mod, _BN):
        return mod.num_features
    return mod.num_parameters


def _select(t: torch.Tensor, dim: int, keep: list[int] | None) -> torch.Tensor:
    if keep is None or t.dim() <= dim:
        return t
    return t.index_select(dim, torch.tensor(keep, dtype=torch.long, device=t.device))


def _reindex(
    mod: nn.Module,
    pname: str,
    t: torch.Tensor,
    out_keep: list[int] | None,
    in_keep: list[int] | None,
) -> torch.Tensor:
    """Select the kept out (dim 0) and in (dim 1, Conv/Linear weight only) indices."""
    t = _select(t, 0, out_keep)
    if pname == "weight" and isinstance(mod, (_CONV, nn.Linear)):
        depthwise = isinstance(mod, _CONV) and mod.groups > 1
        if not depthwise:
            t = _select(t, 1, in_keep)
    return t


def _history(
    model: nn.Module, out_keep: dict[str, list[int]], in_keep: dict[str, list[int]]
) -> dict[str, Any]:
    modules = dict(model.named_modules())
    entries = {}
    for name in sorted(set(out_keep) | set(in_keep)):
        mod = modules[name]
        entries[name] = {
            "type": type(mod).__name__,
            "out_keep": out_keep.get(name),
            "in_keep": in_keep.get(name),
            "attrs": {a: int(getattr(mod, a)) for a in _ATTRS if hasattr(mod, a)},
        }
    return {"format": HISTORY_FORMAT, "modules": entries}


def rebuild_compact_model(
    original_model: nn.Module, history: Mapping[str, Any] | Sequence[Mapping[str, Any]]
) -> nn.Module:
    """Shrink a freshly built original architecture in place to the compact shapes.

    ``history`` is one speedup's history, or a list of them (iterative pruning with
    speedup in the loop), replayed in order, each relative to the model the one before
    produced. Parameters and BN buffers keep the original values at the kept indices,
    so `load_state_dict(compact_state_dict)` then restores the trained compact weights.
    Returns the same (modified) model object.
    """
    if isinstance(history, Sequence) and not isinstance(history, (str, bytes)):
        for step in history:
            rebuild_compact_model(original_model, step)
        return original_model
    if not isinstance(history, Mapping) or history.get("format") != HISTORY_FORMAT:
        found = history.get("format") if isinstance(history, Mapping) else type(history).__name__
        raise SpeedupError(f"history: format {found!r} != {HISTORY_FORMAT!r}")
    modules = dict(original_model.named_modules())
    for name, entry in history["modules"].items():
        mod = modules.get(name)
        if mod is None:
            raise SpeedupError(f"history: module {name!r} is not in the model")
        if type(mod).__name__ != entry["type"]:
            raise SpeedupError(
                f"history: module {name!r} is {type(mod).__name__}, expected {entry['type']}"
            )
        out_keep, in_keep = entry["out_keep"], entry["in_keep"]
        with torch.no_grad():
            for pname, param in list(mod.named_parameters(recurse=False)):
                new = _reindex(mod, pname, param.detach(), out_keep, in_keep)
                setattr(mod, pname, nn.Parameter(new.clone(), requires_grad=param.requires_grad))
            if isinstance(mod, _BN):
                for bname in ("running_mean", "running_var"):
                    buf = getattr(mod, bname)
                    if buf is not None:
                        setattr(mod, bname, _select(buf, 0, out_keep).clone())
        for attr, value in entry["attrs"].items():
            setattr(mod, attr, value)
    return original_model


def _max_diff(a: Any, b: Any) -> float:
    fa, fb = tp.utils.flatten_as_list(a), tp.utils.flatten_as_list(b)
    if len(fa) != len(fb):
        return float("inf")
    diff = 0.0
    for x, y in zip(fa, fb):
        if isinstance(x, torch.Tensor):
            if x.shape != y.shape:
                return float("inf")
            diff = max(diff, float((x.float() - y.float()).abs().max()) if x.numel() else 0.0)
    return diff


def speedup_model(
    model: nn.Module,
    masks: Mapping[str, Mapping[str, torch.Tensor]],
    dummy_input: Any,
    *,
    extend_batchnorms: bool = True,
    atol: float = 1e-4,
) -> tuple[nn.Module, Masks, dict[str, Any]]:
    """Remove every exactly-dead output channel; return (compact model, masks, history).

    The input model is not modified. Remaining masks hold zeros that could not be
    removed, re-indexed to the compact model (`{}` when none). `history` is JSON data for
    :func:`rebuild_compact_model`. Raises SpeedupError when the compact model's output
    on `dummy_input` (eval mode) differs from the masked model's by more than `atol`.
    """
    check_masks(model, masks, SpeedupError)
    work = copy.deepcopy(model)
    was_training = model.training
    work.eval()
    masks_ext = (
        extend_masks_to_batchnorms(work, masks, dummy_input)
        if extend_batchnorms
        else {n: {p: m.clone() for p, m in e.items()} for n, e in masks.items()}
    )
    _bake(work, masks_ext)
    with torch.no_grad():
        reference = forward(work, dummy_input)
    flags = {n: p.requires_grad for n, p in work.named_parameters()}
    pruner = _Pruner(work, masks_ext, dummy_input)
    removed = pruner.run()
    for n, p in work.named_parameters():
        p.requires_grad_(flags.get(n, True))
        p.grad = None
    work.eval()
    try:
        with torch.no_grad():
            diff = _max_diff(reference, forward(work, dummy_input))
    except Exception as exc:  # a shape error means an unsupported coupling slipped through
        raise SpeedupError(f"compact model failed on dummy_input: {exc!r}") from exc
    if not diff <= atol:
        raise SpeedupError(f"compact model output differs from masked model by {diff:.3g} > {atol}")
    work.train(was_training)

    modules = dict(work.named_modules())
    remaining: Masks = {}
    for name, entry in masks_ext.items():
        out_keep, in_keep = pruner.out_keep.get(name), pruner.in_keep.get(name)
        mod = modules[name]
        new_entry = {p: _reindex(mod, p, m, out_keep, in_keep).clone() for p, m in entry.items()}
        for p, m in new_entry.items():
            if tuple(m.shape) != tuple(getattr(mod, p).shape):
                raise SpeedupError(f"remaining mask {name}.{p}: shape {tuple(m.shape)} mismatch")
        if any(bool((m == 0).any()) for m in new_entry.values()):
            remaining[name] = new_entry
    history = _history(work, pruner.out_keep, pruner.in_keep)
    logger.info("speedup removed %d channels (max output diff %.3g)", removed, diff)
    return work, remaining, history
