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
* The model's own code must route the compact channels as it routed the kept ones: a
  ``chunk(n)``/``split(int)`` along channels loses as many channels in every segment,
  and a channel shuffle (ShuffleNetV2) channel k of all its segments or of none. Dead
  channels that break this stay (logged). A failure names the model and the reshapes,
  slices and splits that channels were removed through (torch-pruning infers their index
  mappings from shapes and can get them wrong).
"""

from __future__ import annotations

import bisect
import copy
import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from tune_prune.errors import SpeedupError
from tune_prune.pruning.dependency import Analysis, PlanItem, analyse, forward
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
# node type names compared per plan item (an Enum member's ``.name`` is a slow property)
_ELEMENTWISE_NAME, _OUTPUT_NAME, _CONV_NAME, _BN_NAME, _DEPTHWISE_NAME = (
    _OT.ELEMENTWISE.name, _OT.OUTPUT.name, _OT.CONV.name, _OT.BN.name, _OT.DEPTHWISE_CONV.name
)
# Non-module nodes that only route channels (their output is zero where inputs are).
_ROUTING = {_OT.ELEMENTWISE, _OT.CONCAT, _OT.SPLIT, _OT.RESHAPE, _OT.SLICE}
_ROUTING_NAMES = frozenset(t.name for t in _ROUTING)
# Routing ops whose channel index mapping torch-pruning infers from shapes (named in errors).
_MAPPING_NAMES = frozenset(t.name for t in (_OT.RESHAPE, _OT.SPLIT, _OT.SLICE))
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


def _zero_preserving(item: PlanItem) -> bool:
    if item.optype != _ELEMENTWISE_NAME:
        return True
    return any(key in item.op_name for key in _ZERO_PRESERVING)


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
    modules = check_masks(model, masks, SpeedupError)
    return _extend(modules, masks, analyse(model, dummy_input))


def _extend(modules: Mapping[str, nn.Module], masks: Mapping[str, Mapping[str, torch.Tensor]],
            analysis: Analysis, clone: bool = True) -> Masks:
    """``extend_masks_to_batchnorms`` (``modules``: the model's, by name); ``clone=False``
    shares the unchanged mask tensors (speedup only reads them)."""
    out: Masks = {n: {p: (m.clone() if clone else m) for p, m in e.items()}
                  for n, e in masks.items()}
    for conv_name, bn_name in analysis.following.items():
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


def _bake(
    modules: Mapping[str, nn.Module], masks: Mapping[str, Mapping[str, torch.Tensor]]
) -> None:
    with torch.no_grad():
        for name, entry in masks.items():
            for pname, mask in entry.items():
                getattr(modules[name], pname).mul_(mask.to(getattr(modules[name], pname)))


class _Removal:
    """Evaluates the analysis' removal plan on a baked model: which channels are dead.

    torch-pruning's groups are walked in ``get_all_groups`` order, all in the original
    model's indices; a channel is dead when every producer in its group is exactly zero
    on it, given the input channels removed by the groups before (the rows of a layer are
    compared on its kept input channels only). The model itself is not modified here:
    :meth:`history` gives the kept indices, which ``rebuild_compact_model`` applies.
    """

    def __init__(self, modules: Mapping[str, nn.Module], analysis: Analysis) -> None:
        self.modules = modules
        self.analysis = analysis
        self.out_removed: dict[str, set[int]] = {}
        self.in_removed: dict[str, set[int]] = {}
        self.bn_after = analysis.following
        self.mapped: dict[str, None] = {}  # reshapes/slices/splits channels were removed through

    def _supported(self, items: tuple[PlanItem, ...]) -> bool:
        for item in items:
            if item.optype == _OUTPUT_NAME or item.outside_input:
                return False
            if item.optype in _ROUTING_NAMES:
                if not _zero_preserving(item):
                    return False
                continue  # torch-pruning's dummy ops (add, relu, cat, view, ...)
            mod = self.modules.get(item.name) if item.name is not None else None
            if mod is None or not isinstance(mod, _SUPPORTED):
                return False
            if isinstance(mod, _CONV) and (
                mod.transposed or item.optype == _CONV_NAME and mod.groups > 1
            ):
                return False
            if item.name in self.analysis.outputs and item.is_out:
                return False
        return True

    def _dead_rows(self, name: str, mod: nn.Module) -> torch.Tensor:
        """Bool per output channel: the row (on kept input channels) and bias are zero."""
        w = mod.weight.detach()
        removed = self.in_removed.get(name)
        if removed:
            keep = [i for i in range(w.size(1)) if i not in removed]
            w = w.index_select(1, torch.tensor(keep, dtype=torch.long, device=w.device))
        dead = (w.flatten(1) == 0).all(dim=1)
        b = getattr(mod, "bias", None)
        if b is not None:
            dead &= b.detach() == 0
        return dead

    def _alive_roots(self, items: tuple[PlanItem, ...]) -> set[int]:
        """Root indices where some producer in the group is not exactly zero."""
        alive: set[int] = set()
        bn_dead: dict[str, torch.Tensor] = {}
        for item in items:
            if item.optype == _BN_NAME and item.is_out:
                bn_dead[item.name] = _bn_dead(self.modules[item.name])
        for item in items:
            if item.optype in _ROUTING_NAMES or not item.is_out:
                continue
            mod = self.modules[item.name]
            if isinstance(mod, _BN):
                dead = bn_dead[item.name]
            elif item.optype == _DEPTHWISE_NAME:
                dead = torch.ones(mod.out_channels, dtype=torch.bool)
                if mod.bias is not None:
                    dead = mod.bias.detach() == 0
            elif isinstance(mod, (_CONV, nn.Linear)):
                dead = self._dead_rows(item.name, mod)
                bn = self.bn_after.get(item.name)
                if bn in bn_dead and item.single_output == bn:
                    dead = dead | bn_dead[bn]
            elif isinstance(mod, nn.PReLU):
                continue  # prelu(0) == 0
            else:
                return set(item.root_idxs)
            flags = dead.tolist()
            alive.update(root for idx, root in zip(item.idxs, item.root_idxs) if not flags[idx])
        return alive

    def _record(self, items: tuple[PlanItem, ...], dead: list[int]) -> None:
        dead_roots = set(dead)
        for item in items:
            if item.optype in _ROUTING_NAMES:
                continue
            mod = self.modules[item.name]
            if isinstance(mod, nn.PReLU) and mod.num_parameters == 1:
                continue
            idxs = {i for i, r in zip(item.idxs, item.root_idxs) if r in dead_roots}
            if not idxs:
                continue  # torch-pruning leaves such an item out of the pruned group
            if item.is_out or isinstance(mod, _BN | nn.PReLU):
                self.out_removed.setdefault(item.name, set()).update(idxs)
            if not item.is_out or item.optype == _DEPTHWISE_NAME:
                self.in_removed.setdefault(item.name, set()).update(idxs)

    def run(self) -> int:
        """Remove the dead channels; again, keeping more, until chunks and shuffles fit."""
        kept: set[tuple[int, int]] = set()
        while True:
            self.out_removed, self.in_removed, self.mapped = {}, {}, {}
            self.routed: dict[str, tuple[PlanItem, dict[int, tuple[int, int]]]] = {}
            removed = self._run(kept)
            more = self._misfits()
            if not more:
                break
            kept |= more
        if kept:
            logger.warning(
                "speedup keeps %d dead channels (their zeros stay as masks) so that chunk() "
                "and channel shuffle ops still route the compact channels",
                len(kept),
            )
        return removed

    def _misfits(self) -> set[tuple[int, int]]:
        """(plan group, root) pairs to keep so that the model's own code still routes the
        compact channels as it routed the kept ones: every segment of a ``chunk(n)`` loses
        as many channels (unequal segments lose none), and a channel shuffle loses channel
        k of all its segments or of none."""
        keep = set()
        for item, removed in self.routed.values():
            if item.chunk:
                bounds = list(itertools.accumulate(item.chunk))
                per: list[list[int]] = [[] for _ in item.chunk]
                for idx in sorted(removed):
                    per[bisect.bisect_right(bounds, idx)].append(idx)
                target = min(map(len, per)) if len(set(item.chunk)) == 1 else 0
                keep.update(removed[idx] for seg in per for idx in seg[target:])
            else:
                groups, per_group = item.shuffle
                for idx, owner in removed.items():
                    k = idx % per_group
                    if any(gi * per_group + k not in removed for gi in range(groups)):
                        keep.add(owner)
        return keep

    def _run(self, kept: set[tuple[int, int]]) -> int:
        removed = 0
        for g, items in enumerate(self.analysis.plan):
            if not self._supported(items):
                continue
            n = len(items[0].idxs)
            alive = self._alive_roots(items)
            dead = [k for k in range(n) if k not in alive and (g, k) not in kept]
            if len(dead) == n:
                dead = dead[1:]  # a layer needs at least one channel
            if not dead:
                continue
            self._record(items, dead)
            dead_set = set(dead)
            for item in items:
                if item.optype in _MAPPING_NAMES and not item.chunk:
                    after = f", before {item.single_output}" if item.single_output else ""
                    self.mapped[f"{item.node} ({item.op_name}{after})"] = None
                if item.chunk or item.shuffle:
                    seen = self.routed.setdefault(item.node, (item, {}))[1]
                    pairs = zip(item.idxs, item.root_idxs)
                    seen.update((i, (g, r)) for i, r in pairs if r in dead_set)
            removed += len(dead)
            logger.debug("removed %d channels of group rooted at %s", len(dead), items[0].name)
        return removed

    def keeps(self) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """(out_keep, in_keep): kept original indices of every module that lost some."""
        out_keep = {
            name: [k for k in range(_out_size(self.modules[name])) if k not in removed]
            for name, removed in self.out_removed.items()
        }
        in_keep = {}
        for name, removed in self.in_removed.items():
            mod = self.modules[name]
            size = mod.in_channels if isinstance(mod, _CONV) else mod.in_features
            in_keep[name] = [k for k in range(size) if k not in removed]
        return out_keep, in_keep

    def history(self) -> dict[str, Any]:
        """The removal as ``rebuild_compact_model`` history (attrs: the compact values)."""
        out_keep, in_keep = self.keeps()
        entries = {}
        for name in sorted(set(out_keep) | set(in_keep)):
            mod = self.modules[name]
            attrs = {a: int(getattr(mod, a)) for a in _ATTRS if hasattr(mod, a)}
            out, inp = out_keep.get(name), in_keep.get(name)
            if isinstance(mod, _CONV):
                depthwise = mod.groups > 1 and mod.groups == mod.out_channels
                if out is not None:
                    attrs["out_channels"] = len(out)
                if inp is not None:
                    attrs["in_channels"] = len(inp)
                if depthwise and out is not None:
                    attrs["groups"] = mod.groups - (mod.out_channels - len(out))
            elif isinstance(mod, nn.Linear):
                if out is not None:
                    attrs["out_features"] = len(out)
                if inp is not None:
                    attrs["in_features"] = len(inp)
            elif isinstance(mod, _BN) and out is not None:
                attrs["num_features"] = len(out)
            elif isinstance(mod, nn.PReLU) and out is not None:
                attrs["num_parameters"] = len(out)
            entries[name] = {
                "type": type(mod).__name__,
                "out_keep": out,
                "in_keep": inp,
                "attrs": attrs,
            }
        return {"format": HISTORY_FORMAT, "modules": entries}


def _blame(model: nn.Module, removal: _Removal) -> str:
    """Error prefix naming the model and the channel-mapping ops channels went through."""
    ops = f" (channels removed through {', '.join(removal.mapped)})" if removal.mapped else ""
    return f"speedup of model {type(model).__name__}{ops}: "


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


def _index(keep: list[int] | None) -> torch.Tensor | None:
    """Kept indices as an index tensor, built once per module (not once per tensor)."""
    return None if keep is None else torch.tensor(keep, dtype=torch.long)


def _select(t: torch.Tensor, dim: int, keep: torch.Tensor | None) -> torch.Tensor:
    if keep is None or t.dim() <= dim:
        return t
    return t.index_select(dim, keep.to(t.device))


def _reindex(
    mod: nn.Module,
    pname: str,
    t: torch.Tensor,
    out_keep: torch.Tensor | None,
    in_keep: torch.Tensor | None,
) -> torch.Tensor:
    """Select the kept out (dim 0) and in (dim 1, Conv/Linear weight only) indices."""
    t = _select(t, 0, out_keep)
    if pname == "weight" and isinstance(mod, (_CONV, nn.Linear)):
        depthwise = isinstance(mod, _CONV) and mod.groups > 1
        if not depthwise:
            t = _select(t, 1, in_keep)
    return t


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
    _rebuild(dict(original_model.named_modules()), history)
    return original_model


def _rebuild(
    modules: Mapping[str, nn.Module],
    history: Mapping[str, Any],
    indices: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] | None = None,
) -> None:
    """One history's shrink on the model whose modules (by name) are ``modules``;
    ``indices`` receives each module's (out, in) index tensors (speedup reuses them)."""
    for name, entry in history["modules"].items():
        mod = modules.get(name)
        if mod is None:
            raise SpeedupError(f"history: module {name!r} is not in the model")
        if type(mod).__name__ != entry["type"]:
            raise SpeedupError(
                f"history: module {name!r} is {type(mod).__name__}, expected {entry['type']}"
            )
        out_keep, in_keep = _index(entry["out_keep"]), _index(entry["in_keep"])
        if indices is not None:
            indices[name] = (out_keep, in_keep)
        with torch.no_grad():
            for pname, param in list(mod.named_parameters(recurse=False)):
                new = _reindex(mod, pname, param.detach(), out_keep, in_keep)
                if new.data_ptr() == param.data_ptr():  # nothing selected: do not alias
                    new = new.clone()
                setattr(mod, pname, nn.Parameter(new, requires_grad=param.requires_grad))
            if isinstance(mod, _BN):
                for bname in ("running_mean", "running_var"):
                    buf = getattr(mod, bname)
                    if buf is not None:
                        kept = _select(buf, 0, out_keep)
                        setattr(mod, bname, kept.clone() if kept is buf else kept)
        for attr, value in entry["attrs"].items():
            if getattr(mod, attr, None) != value:  # Module.__setattr__ is slow: changes only
                setattr(mod, attr, value)


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
    inplace: bool = False,
) -> tuple[nn.Module, Masks, dict[str, Any]]:
    """Remove every exactly-dead output channel; return (compact model, masks, history).

    The input model is not modified (``inplace=True``: it *becomes* the compact model,
    which saves a deep copy when the caller holds a copy anyway; after a SpeedupError it
    is left half-pruned). Remaining masks hold zeros that could not be removed,
    re-indexed to the compact model (`{}` when none). `history` is JSON data for
    :func:`rebuild_compact_model`. Raises SpeedupError when the compact model's output
    on `dummy_input` (eval mode) differs from the masked model's by more than `atol`.
    """
    modules = check_masks(model, masks, SpeedupError)
    work = model if inplace else copy.deepcopy(model)
    if not inplace:
        modules = dict(work.named_modules())  # the copy's (shrunk in place: kept to the end)
    was_training = model.training
    work.eval()
    analysis = analyse(work, dummy_input)  # cached per structure: usually no tracing here
    masks_ext = (
        _extend(modules, masks, analysis, clone=False)
        if extend_batchnorms
        else {n: dict(e) for n, e in masks.items()}
    )
    _bake(modules, masks_ext)
    with torch.no_grad():
        reference = forward(work, dummy_input)
    flags = {n: p.requires_grad for n, p in work.named_parameters()}
    removal = _Removal(modules, analysis)
    try:
        removed = removal.run()
    except Exception as exc:  # an index torch-pruning mapped out of range
        raise SpeedupError(f"{_blame(model, removal)}channel removal failed: {exc!r}") from exc
    history = removal.history()
    indices: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
    _rebuild(modules, history, indices)
    for n, p in work.named_parameters():
        p.requires_grad_(flags.get(n, True))
        p.grad = None
    try:  # work is still in eval mode: nothing since work.eval() changed it
        with torch.no_grad():
            diff = _max_diff(reference, forward(work, dummy_input))
    except Exception as exc:  # a shape error means an unsupported coupling slipped through
        raise SpeedupError(
            f"{_blame(model, removal)}compact model failed on dummy_input: {exc!r}"
        ) from exc
    if not diff <= atol:
        raise SpeedupError(
            f"{_blame(model, removal)}compact model output differs from masked model by "
            f"{diff:.3g} > {atol}"
        )
    if was_training:  # else work.eval() above already left every module in eval mode
        work.train()

    remaining: Masks = {}
    for name, entry in masks_ext.items():
        out_keep, in_keep = indices.get(name, (None, None))  # not in history: nothing removed
        mod = modules[name]
        new_entry = {p: _reindex(mod, p, m, out_keep, in_keep) for p, m in entry.items()}
        for p, m in new_entry.items():
            if tuple(m.shape) != tuple(getattr(mod, p).shape):
                raise SpeedupError(f"remaining mask {name}.{p}: shape {tuple(m.shape)} mismatch")
        if not all(bool(m.all()) for m in new_entry.values()):  # a zero left somewhere
            # index_select made new tensors; a mask that was not re-indexed is copied
            remaining[name] = {p: m.clone() if m.data_ptr() == entry[p].data_ptr() else m
                               for p, m in new_entry.items()}
    logger.info("speedup removed %d channels (max output diff %.3g)", removed, diff)
    return work, remaining, history
