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
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from tune_prune.errors import ConfigError, SpeedupError

logger = logging.getLogger(__name__)

__all__ = [
    "ChannelGroup",
    "channel_groups",
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
    """

    members: dict[str, tuple[int, ...]]
    num_channels: int
    num_groups: int = 1
    feeds_output: bool = False
    _inverse: dict[str, dict[int, int]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, idx in self.members.items():
            self._inverse[name] = {g: k for k, g in enumerate(idx)}

    @property
    def names(self) -> list[str]:
        """Member layer names in model order."""
        return list(self.members)

    def to_member(self, name: str, group_indices: Sequence[int]) -> list[int]:
        """Map group channel indices to `name`'s own channel indices (absent ones dropped)."""
        inv = self._inverse[name]
        return sorted(inv[g] for g in group_indices if g in inv)

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


@contextlib.contextmanager
def traced_graph(model: nn.Module, dummy_input: Any) -> Iterator[tp.DependencyGraph]:
    """Build a torch-pruning DependencyGraph, restoring train mode and requires_grad after.

    Tracing relies on autograd, so every parameter must require grad while it runs;
    torch-pruning also switches the model to eval mode.
    """
    was_training = model.training
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():
            try:
                graph = tp.DependencyGraph().build_dependency(
                    model, dummy_input, forward_fn=forward, verbose=False
                )
            except Exception as exc:  # torch-pruning raises bare asserts / shape errors
                raise SpeedupError(
                    f"dependency tracing failed for model {type(model).__name__}: {exc!r}"
                ) from exc
        yield graph
    finally:
        for n, p in model.named_parameters():
            if n in flags:
                p.requires_grad_(flags[n])
        model.train(was_training)


def output_modules(model: nn.Module, dummy_input: Any) -> set[str]:
    """Names of modules whose output tensor is returned by the model as-is.

    torch-pruning only sees an explicit output node when the last op is not a module, so
    the classifier (`return self.fc(x)`) must be found by tensor identity.
    """
    outs: dict[int, str] = {}
    hooks = []
    names = {m: n for n, m in model.named_modules()}

    def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            outs[id(out)] = names[mod]

    for m in model.modules():
        if isinstance(m, (*_PRUNABLE, nn.modules.batchnorm._BatchNorm)):
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            result = forward(model, dummy_input)
            model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    flat = tp.utils.flatten_as_list(result)
    return {outs[id(t)] for t in flat if isinstance(t, torch.Tensor) and id(t) in outs}


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


def _is_grouped_conv(m: nn.Module) -> bool:
    """A group conv that is not depthwise (depthwise convs are channel-coupled instead)."""
    return (
        isinstance(m, nn.modules.conv._ConvNd)
        and m.groups > 1
        and not (m.groups == m.out_channels and m.out_channels > 1)
    )


def _out_len(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


def channel_groups(
    model: nn.Module, dummy_input: Any, module_names: Sequence[str] | None = None
) -> list[ChannelGroup]:
    """Groups of Conv/Linear layers whose output channels must be pruned with equal indices.

    Returns every traced Conv/Linear layer in exactly one group (model order). With
    `module_names`, only groups containing at least one named layer are returned, still
    with all their members. Unknown names raise ConfigError.
    """
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    if module_names is not None:
        missing = [n for n in module_names if n not in order]
        if missing:
            raise ConfigError(f"module_names: unknown module(s) {missing}")
    outputs = output_modules(model, dummy_input)
    uf = _UnionFind()
    layer_uf = _UnionFind()
    to_output: set[str] = set()
    constraints: dict[str, list[int]] = {}
    with traced_graph(model, dummy_input) as graph:
        m2n = {m: n for n, m in model.named_modules()}
        layers = [(m2n[m], m) for m in graph.module2node if isinstance(m, _PRUNABLE) and m in m2n]
        layers.sort(key=lambda x: order[x[0]])
        for name, m in layers:
            layer_uf.find(name)
            pruner = graph.get_pruner_of_module(m)
            group = graph.get_pruning_group(m, pruner.prune_out_channels, list(range(_out_len(m))))
            for item in group:
                target = item.dep.target
                if target.type == tp.ops.OPTYPE.OUTPUT:
                    to_output.add(name)
                if not graph.is_out_channel_pruning_fn(item.dep.handler):
                    continue
                tname = m2n.get(target.module)
                if tname is None or not isinstance(target.module, _PRUNABLE):
                    continue
                for idx, root in zip(item.idxs, item.root_idxs):
                    uf.union((name, root), (tname, idx))
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

    by_layer_root: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, m in layers:
        by_layer_root.setdefault(layer_uf.find(name), []).append((name, m))
    groups: list[ChannelGroup] = []
    for members in by_layer_root.values():
        comp_index: dict[Any, int] = {}
        mapping: dict[str, tuple[int, ...]] = {}
        for name, m in members:
            idx = []
            for k in range(_out_len(m)):
                root = uf.find((name, k))
                idx.append(comp_index.setdefault(root, len(comp_index)))
            mapping[name] = tuple(idx)
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
        groups.append(ChannelGroup(mapping, n, num_groups, feeds))
    if module_names is not None:
        wanted = set(module_names)
        groups = [g for g in groups if wanted & set(g.members)]
    return groups


def following_batchnorms(model: nn.Module, dummy_input: Any) -> dict[str, str]:
    """Map each Conv/Linear to the BatchNorm fed only by it (conv -> bn, nothing else in).

    Used to extend channel masks: a zero filter still yields BN's constant shift
    `beta - gamma * mean / std`, so a dead channel is only removable once its BN is masked.
    """
    result: dict[str, str] = {}
    with traced_graph(model, dummy_input) as graph:
        m2n = {m: n for n, m in model.named_modules()}
        for m, node in graph.module2node.items():
            if not isinstance(m, nn.modules.batchnorm._BatchNorm) or len(node.inputs) != 1:
                continue
            src = node.inputs[0].module
            if isinstance(src, _PRUNABLE) and src in m2n and m in m2n:
                result[m2n[src]] = m2n[m]
    return result


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
