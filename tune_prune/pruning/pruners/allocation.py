"""Allocation: how many units to cut in each layer, and which ones (given their metrics).

Importance (a pruner's metric per unit: a channel, an element, a BatchNorm channel)
is computed elsewhere; these functions only turn metrics into boolean *keep* masks of
the metric's shape. A higher metric means more important. Units that were pruned
before carry ``-inf`` so that they are pruned first and count toward the target
(sparsity targets are fractions of the original layer, as in NNI).

Counting rules (NNI 2.10):

- normal: each layer prunes ``int(s * n)`` of its ``n`` units (floor) and keeps the
  ``n - int(s * n)`` with the largest metric (``torch.topk``).
- global: one ranking over all layers of an entry; units are counted in the weight
  elements they mask, ``int(total_sparsity * total_elements)`` elements are to be
  removed and, as with NNI's threshold (the k-th smallest expanded metric value),
  the unit holding the k-th element is pruned whole, so the result overshoots by less
  than one unit. Each layer keeps its ``n - int(cap * n)`` best units; where that cap
  stops a layer, the next-lowest units of other layers are taken so the total is
  still met (NNI leaves the total short there). Ties are broken by a stable sort
  instead of NNI's "everything equal to the threshold".
- balance: every bank (block of ``balance_gran`` aligned to the last dims) prunes
  ``int(s * bank_size)`` elements.
- dependency-aware: coupled channels share one summed metric and one decision.
- ``round_to`` (channel pruners, off at 1): the units a layer (a group's candidate
  channels in dependency-aware mode; each block of a group-conv constraint, scaled so
  the group's total is a multiple) keeps are rounded *down* to a multiple of
  ``round_to``, as torch-pruning's ``round_to``; a layer never goes below
  ``min(round_to, n)`` kept units (so one narrower than ``round_to`` is not pruned, and
  rounding never removes a layer: where torch-pruning skips such a layer, this keeps
  ``round_to`` units). Global mode rounds each layer's kept count after the ranking.

Element-wise layer-adaptive allocations (LevelPruner only; like global, one
allocation per config entry, so a ``sparsity`` entry, which resolves to one entry
per layer, is a one-layer allocation: that layer prunes ``int(s * n)`` of its
smallest metrics, at most ``int(cap * n)``, exactly as global mode does):

- lamp (Lee et al. 2021): per layer, the surviving weights sorted by ``w**2``
  ascending score ``w_u**2 / sum_{v >= u in that order} w_v**2`` (the layer's largest
  scores exactly 1); previously pruned weights carry ``-inf``. The scores then go
  through the global rule above (element counting, caps, stable ties; ties inside a
  layer follow the magnitude order).
- erk (Evci et al. 2020): layer ``l`` keeps ``eps * sum(shape_l)`` elements (density
  ``eps * sum(shape)/prod(shape)``), ``eps`` solved so that the entry keeps
  ``total - int(total_sparsity * total)`` elements, each layer clipped to
  ``[n - int(cap * n), survivors]`` (the upper bound makes a layer dense when its
  density would exceed 1 and never un-prunes; the lower bound is the cap; a clipped
  layer's share goes to the others, as in the standard iterative re-solve). The real
  counts are rounded by largest remainder so the entry's total is exact; each layer
  then keeps its largest metrics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tune_prune.errors import ConfigError

if TYPE_CHECKING:
    from tune_prune.pruning.dependency import ChannelGroup

logger = logging.getLogger(__name__)


def num_pruned(sparsity: float, n: int) -> int:
    """NNI's count of pruned units: ``int(sparsity * n)`` (floor), at most ``n``."""
    return min(n, max(0, int(sparsity * n)))


def rounded_prune(n: int, prune: int, round_to: int) -> int:
    """``prune`` of ``n`` units, adjusted so the kept count is a multiple of ``round_to``
    (rounded down, at least ``min(round_to, n)``); unchanged when ``round_to <= 1``."""
    if round_to <= 1 or n <= 0:
        return prune
    kept = n - prune
    kept = max(kept - kept % round_to, min(round_to, n))
    return n - kept


def round_keeps(
    keeps: Mapping[str, Tensor], metrics: Mapping[str, Tensor], round_to: int
) -> dict[str, Tensor]:
    """Round every layer's kept count (see :func:`rounded_prune`), re-ranked by metric."""
    if round_to <= 1:
        return dict(keeps)
    out = {}
    for name, keep in keeps.items():
        n = keep.numel()
        prune = rounded_prune(n, n - int(keep.sum()), round_to)
        out[name] = keep if prune == n - int(keep.sum()) else keep_topk(metrics[name], prune)
    return out


def keep_topk(metric: Tensor, prune: int) -> Tensor:
    """Keep mask (bool, metric's shape) keeping the ``numel - prune`` largest values."""
    flat = metric.reshape(-1)
    n = flat.numel()
    keep = torch.ones(n, dtype=torch.bool, device=metric.device)
    if prune <= 0:
        return keep.view(metric.shape)
    keep.zero_()
    if prune < n:
        idx = torch.topk(flat, n - prune, largest=True, sorted=False).indices
        keep[idx] = True
    return keep.view(metric.shape)


def normal_allocation(
    metrics: Mapping[str, Tensor], sparsities: Mapping[str, float], round_to: int = 1
) -> dict[str, Tensor]:
    """Per-layer allocation: each layer prunes ``int(s * n)`` units of lowest metric
    (with ``round_to > 1``, adjusted by :func:`rounded_prune`)."""
    return {
        name: keep_topk(
            m, rounded_prune(m.numel(), num_pruned(sparsities[name], m.numel()), round_to)
        )
        for name, m in metrics.items()
    }


def global_allocation(
    metrics: Mapping[str, Tensor],
    unit_sizes: Mapping[str, int],
    total_sparsity: float,
    caps: Mapping[str, float],
) -> dict[str, Tensor]:
    """One ranking over all layers; see the module docstring for the counting rule.

    ``unit_sizes[name]`` is the number of weight elements one unit of that layer
    masks (a Conv2d filter: ``in/groups * kh * kw``; an element: 1).
    """
    names = list(metrics)
    total = sum(metrics[n].numel() * unit_sizes[n] for n in names)
    target = int(total_sparsity * total)
    keeps = {
        n: torch.ones(metrics[n].shape, dtype=torch.bool, device=metrics[n].device) for n in names
    }
    if target <= 0 or not names:
        return keeps
    values, sizes, owners, positions = [], [], [], []
    for i, name in enumerate(names):
        flat = metrics[name].reshape(-1).cpu()
        if flat.dtype != torch.float64:  # LAMP scores stay in double precision
            flat = flat.float()
        n = flat.numel()
        protected = keep_topk(flat, num_pruned(caps[name], n))
        cand = (~protected).nonzero().flatten()
        values.append(flat[cand])
        sizes.append(torch.full((cand.numel(),), unit_sizes[name], dtype=torch.long))
        owners.append(torch.full((cand.numel(),), i, dtype=torch.long))
        positions.append(cand)
    value = torch.cat(values)
    if value.numel() == 0:
        return keeps
    order = torch.sort(value, stable=True).indices
    size = torch.cat(sizes)[order]
    before = torch.cumsum(size, 0) - size
    chosen = order[before < target]
    if int(size[before < target].sum()) < target:
        logger.info(
            "global allocation: per-layer caps allow only %d of %d elements to be pruned",
            int(size[before < target].sum()),
            target,
        )
    owner = torch.cat(owners)[chosen]
    position = torch.cat(positions)[chosen]
    for i, name in enumerate(names):
        flat = keeps[name].view(-1)
        flat[position[owner == i].to(flat.device)] = False
    return keeps


def lamp_scores(metric: Tensor) -> Tensor:
    """LAMP score of every element (float64, the metric's shape); ``-inf`` stays ``-inf``.

    ``metric`` is the element magnitude ``|w|`` (``-inf`` for previously pruned
    elements, which take no part in the sums). The surviving elements sorted by
    ``w**2`` ascending (stable) score ``w_u**2 / sum of w_v**2 for u and every element
    after it``; the largest survivor scores exactly 1 (also when all survivors are 0).
    """
    order, scores = _lamp_sorted(metric)
    out = torch.empty_like(scores)
    out[order] = scores
    return out.view(metric.shape)


def _lamp_sorted(metric: Tensor) -> tuple[Tensor, Tensor]:
    """``(order, scores)``: flat indices in ascending magnitude and their LAMP scores."""
    flat = metric.detach().reshape(-1).to(torch.float64).cpu()
    order = torch.sort(flat, stable=True).indices
    ranked = flat[order]
    alive = ranked != float("-inf")
    square = torch.where(alive, ranked * ranked, torch.zeros_like(ranked))
    suffix = torch.flip(torch.cumsum(torch.flip(square, [0]), 0), [0])
    scores = torch.where(
        suffix > 0, square / suffix.clamp_min(torch.finfo(torch.float64).tiny), 0.0
    )
    if scores.numel():
        scores = torch.cummax(scores, 0).values  # monotone in magnitude despite rounding
        if bool(alive.any()):
            scores[-1] = 1.0  # the pruned carry -inf and sort first: the last is the top
    scores = torch.where(alive, scores, float("-inf"))
    return order, scores


def lamp_allocation(
    metrics: Mapping[str, Tensor], total_sparsity: float, caps: Mapping[str, float]
) -> dict[str, Tensor]:
    """Global ranking of LAMP scores over the layers of one entry (element units).

    Each layer's scores are handed to :func:`global_allocation` in ascending magnitude
    order, so that its stable tie-break never keeps a smaller weight of a layer over a
    larger one; the keep masks are then put back in the weights' layout.
    """
    orders, ranked = {}, {}
    for name, metric in metrics.items():
        orders[name], ranked[name] = _lamp_sorted(metric)
    sorted_keeps = global_allocation(ranked, {n: 1 for n in metrics}, total_sparsity, caps)
    keeps = {}
    for name, metric in metrics.items():
        keep = torch.empty(metric.numel(), dtype=torch.bool)
        keep[orders[name]] = sorted_keeps[name].cpu()
        keeps[name] = keep.view(metric.shape).to(metric.device)
    return keeps


def erk_kept(
    shapes: Mapping[str, Sequence[int]],
    total_sparsity: float,
    caps: Mapping[str, float],
    pruned_before: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """ERK's number of elements each layer keeps (see the module docstring).

    Layer ``l`` keeps ``clip(eps * sum(shape_l), lo_l, hi_l)`` with
    ``lo_l = n_l - int(cap_l * n_l)`` and ``hi_l = n_l - pruned_before_l``; ``eps`` is
    solved exactly (the kept total is piecewise linear in ``eps``) for
    ``total - int(total_sparsity * total)`` kept elements, then rounded by largest
    remainder. Where the bounds make the target impossible the layers stay at the
    nearest bound (already pruned: nothing more; caps: the total is left short).
    """
    names = list(shapes)
    pruned_before = pruned_before or {}
    n = [math.prod(shapes[x]) for x in names]
    total = sum(n)
    goal = total - int(total_sparsity * total)
    hi = [k - min(k, max(0, int(pruned_before.get(x, 0)))) for x, k in zip(names, n)]
    lo = [min(k - num_pruned(caps[x], k), h) for x, k, h in zip(names, n, hi)]
    if goal >= sum(hi) or not names:
        return dict(zip(names, hi))
    if goal <= sum(lo):
        if goal < sum(lo):
            logger.info(
                "erk allocation: per-layer caps allow only %d of %d elements to be pruned",
                total - sum(lo),
                total - goal,
            )
        return dict(zip(names, lo))
    weight = torch.tensor([float(max(1, sum(shapes[x]))) for x in names], dtype=torch.float64)
    low = torch.tensor(lo, dtype=torch.float64)
    high = torch.tensor(hi, dtype=torch.float64)

    def kept(eps: Tensor) -> Tensor:  # eps: (k,) -> kept total at each eps
        per = eps[:, None] * weight[None, :]
        return torch.minimum(torch.maximum(per, low), high).sum(1)

    points = torch.unique(
        torch.cat([low / weight, high / weight, torch.zeros(1, dtype=torch.float64)])
    )
    values = kept(points)
    j = int(torch.searchsorted(values, torch.tensor([float(goal)], dtype=torch.float64)).item())
    j = min(max(j, 1), points.numel() - 1)
    a, b = float(points[j - 1]), float(points[j])
    fa, fb = float(values[j - 1]), float(values[j])
    eps = a if fb <= fa else a + (goal - fa) * (b - a) / (fb - fa)
    real = torch.minimum(torch.maximum(eps * weight, low), high).tolist()
    counts = [min(max(int(math.floor(r)), lo_), hi_) for r, lo_, hi_ in zip(real, lo, hi)]
    frac = [r - c for r, c in zip(real, counts)]
    while sum(counts) != goal:  # largest remainder; ties: the earlier layer
        up = sum(counts) < goal
        cand = [i for i in range(len(names)) if (counts[i] < hi[i] if up else counts[i] > lo[i])]
        i = max(cand, key=lambda i: (frac[i] if up else -frac[i], -i))
        counts[i] += 1 if up else -1
        frac[i] -= 1.0 if up else -1.0
    return dict(zip(names, counts))


def erk_allocation(
    metrics: Mapping[str, Tensor], total_sparsity: float, caps: Mapping[str, float]
) -> dict[str, Tensor]:
    """Erdos-Renyi-Kernel allocation over the layers of one entry (element units).

    ``metrics`` are weight-shaped (``-inf`` marks previously pruned elements, which
    count toward the target); each layer keeps its ``erk_kept`` largest metrics.
    """
    shapes = {name: tuple(m.shape) for name, m in metrics.items()}
    before = {name: int((m == float("-inf")).sum()) for name, m in metrics.items()}
    counts = erk_kept(shapes, total_sparsity, caps, before)
    return {name: keep_topk(m, m.numel() - counts[name]) for name, m in metrics.items()}


def _check_gran(name: str, shape: Sequence[int], gran: Sequence[int]) -> None:
    if len(gran) > len(shape):
        raise ConfigError(
            f"balance_gran={list(gran)!r} has more dims than {name!r}'s weight {tuple(shape)}"
        )
    for g, d in zip(gran, shape[len(shape) - len(gran) :]):
        if not isinstance(g, int) or g <= 0 or d % g:
            raise ConfigError(
                f"balance_gran={list(gran)!r} does not divide the last dims of {name!r}'s "
                f"weight {tuple(shape)} (each entry must be a positive int dividing its dim)"
            )


def balance_allocation(name: str, metric: Tensor, sparsity: float, gran: Sequence[int]) -> Tensor:
    """Keep mask where every bank of shape ``gran`` (aligned to the last dims) prunes
    ``int(sparsity * bank_size)`` elements of lowest metric."""
    shape = tuple(metric.shape)
    _check_gran(name, shape, gran)
    lead = shape[: len(shape) - len(gran)]
    tail = shape[len(shape) - len(gran) :]
    k = len(gran)
    split: list[int] = list(lead)
    for d, g in zip(tail, gran):
        split += [d // g, g]
    x = metric.reshape(split)
    nl = len(lead)
    block_axes = [nl + 2 * j for j in range(k)]
    inner_axes = [nl + 2 * j + 1 for j in range(k)]
    perm = list(range(nl)) + block_axes + inner_axes
    xp = x.permute(perm)
    bank = math.prod(gran)
    banks = xp.reshape(-1, bank)
    prune = num_pruned(sparsity, bank)
    keep = torch.ones_like(banks, dtype=torch.bool)
    if prune > 0:
        keep.zero_()
        if prune < bank:
            idx = torch.topk(banks, bank - prune, dim=1, largest=True).indices
            keep.scatter_(1, idx, True)
    inverse = [perm.index(i) for i in range(len(perm))]
    return keep.reshape(xp.shape).permute(inverse).reshape(shape)


def dependency_allocation(
    metrics: Mapping[str, Tensor],
    sparsities: Mapping[str, float],
    groups: Sequence[ChannelGroup],
    round_to: int = 1,
    group_score: Callable[[ChannelGroup, list[str]], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Dependency-aware allocation over the channel ``groups`` of the selected layers.

    A group's metric is the sum of its selected members' metrics per group channel
    (or ``group_score(group, selected)``, one value per group channel, when given);
    it prunes ``int(n * min member sparsity)`` of its ``n`` candidate channels (those
    a selected member produces), the same channels in every member. With a group-conv
    constraint (``num_groups > 1``) every contiguous block prunes
    ``int(block_candidates * s)``. ``round_to``: see the module docstring. Layers in no
    group are allocated as in normal mode.
    """
    keeps = {n: torch.ones(m.shape, dtype=torch.bool, device=m.device) for n, m in metrics.items()}
    seen: set[str] = set()
    for group in groups:
        selected = [n for n in group.members if n in metrics]
        if not selected:
            continue
        seen.update(selected)
        sparsity = min(float(sparsities[n]) for n in selected)
        if group_score is None:
            fused = group.gather({n: metrics[n] for n in selected})
        else:
            fused = group_score(group, selected)
        candidates = group.covered(selected)
        blocks = max(1, group.num_groups)
        block = group.num_channels // blocks
        step = round_to // math.gcd(round_to, blocks) if round_to > 1 else 1
        pruned: list[int] = []
        for b in range(blocks):
            cand = [c for c in candidates if b * block <= c < (b + 1) * block]
            prune = rounded_prune(len(cand), num_pruned(sparsity, len(cand)), step)
            keep = keep_topk(fused[cand], prune)
            pruned.extend(c for c, k in zip(cand, keep.tolist()) if not k)
        for name in selected:
            idx = group.to_member(name, pruned)
            if idx:
                keeps[name].view(-1)[torch.as_tensor(idx, dtype=torch.long)] = False
    rest = {n: m for n, m in metrics.items() if n not in seen}
    keeps.update(normal_allocation(rest, sparsities, round_to))
    return keeps
