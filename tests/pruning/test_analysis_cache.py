"""The traced-graph analysis: one trace per architecture, speedup bit-identical to before.

``speedup_model`` used to trace the model three times per call and prune through
torch-pruning's live groups; it now executes a plan read from one cached trace. The
digests below are of its results computed by the code before that change.
"""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
import torch_pruning as tp
from torch import nn

from tests.pruning.models import build, dummy_input
from tune_prune.pruning import L1NormPruner
from tune_prune.pruning import dependency as dep
from tune_prune.pruning.speedup import speedup_model

#: sha256 of (compact state dict bytes, remaining masks, history json) before the change,
#: for L1NormPruner(dependency_aware) masks at the given sparsity on tests.pruning.models.
BEFORE = {
    "concat/l1/dependency_aware/0.3": "d1879ed157662f1cb7933617acd262ce97b7b6ea80e1a116552597c5cb521be5",
    "concat/l1/dependency_aware/0.6": "3e5d7f480c2ac2b78793b4e1af47cc9210ff66cb1adb87dfcf8e84ad5c24fae2",
    "depthwise/l1/dependency_aware/0.3": "0ff17e7a5255d3605726cc528842b94087fe29725f2990de033314c65b8c4e07",
    "depthwise/l1/dependency_aware/0.6": "12f6032369c93cdb27c7dd7103a736c534e6c64a005eb00a836cf24c9998094a",
    "groupconv/l1/dependency_aware/0.3": "b213a916090b0c8f990e805fd71bdcee5d3dfb89dc6dca24038ca72794a7681d",
    "groupconv/l1/dependency_aware/0.6": "b3cf0b34dc5f34a42435c05f5ed47ac5c38f27fca6914d0a7614f482dbc43587",
    "mlp/l1/dependency_aware/0.3": "a155f36f92fcab007694847a561557af336aced0132dbca92bb9e493d2581d73",
    "mlp/l1/dependency_aware/0.6": "7820d4bbe0cb98d0e007c66281b59253a3ed3d871b4bfae22120311f9634bccb",
    "residual/l1/dependency_aware/0.3": "c281e42da91c1616cea75bda07db2aaae9c90965423b862fdece356bd5a8c72a",
    "residual/l1/dependency_aware/0.6": "205ab637116a965418479b1524098598f46b37ee1712cb45dbe52e755f3c5023",
}


def _digest(model: nn.Module, remaining: dict, history: dict) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    for n in sorted(remaining):
        for p in sorted(remaining[n]):
            h.update(f"{n}.{p}".encode())
            h.update(remaining[n][p].numpy().tobytes())
    h.update(json.dumps(history, sort_keys=True).encode())
    return h.hexdigest()


def _masks(name: str, sparsity: float) -> tuple[nn.Module, torch.Tensor, dict]:
    model, x = build(name), dummy_input(name)
    types = ["Linear"] if name == "mlp" else ["Conv2d"]
    p = L1NormPruner(model, [{"op_types": types, "sparsity_per_layer": sparsity}],
                     mode="dependency_aware", dummy_input=x)
    _, masks = p.compress()
    p._unwrap_model()
    return model, x, masks


@pytest.mark.parametrize("key", sorted(BEFORE))
def test_speedup_is_bit_identical_to_the_previous_implementation(key: str) -> None:
    name, _, _, sparsity = key.split("/")
    model, x, masks = _masks(name, float(sparsity))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert _digest(*speedup_model(model, masks, x)) == BEFORE[key]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # untouched
    dep.clear_analysis_cache()  # cold (tracing) and warm (cached) paths agree
    assert _digest(*speedup_model(model, masks, x)) == BEFORE[key]
    assert _digest(*speedup_model(copy.deepcopy(model), masks, x, inplace=True)) == BEFORE[key]


@pytest.fixture
def traces(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts torch-pruning graph builds."""
    calls: list[int] = []
    original = tp.DependencyGraph.build_dependency

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", counted)
    dep.clear_analysis_cache()
    return calls


def test_prune_and_speedup_trace_once_per_architecture(traces: list[int]) -> None:
    model, x, masks = _masks("residual", 0.5)
    compact, _, _ = speedup_model(model, masks, x)
    assert len(traces) == 1  # the pruner's allocation; speedup (a deep copy) reuses it
    _masks("residual", 0.25)  # same architecture, other weights: no new trace
    dep.following_batchnorms(build("residual", seed=3), x)
    assert len(traces) == 1
    dep.channel_groups(compact, x)  # the compact model is another architecture
    assert len(traces) == 2
    dep.channel_groups(model, dummy_input("residual")[:1])  # another input shape
    assert len(traces) == 3
    handle = model.conv1.register_forward_hook(lambda *a: None)  # hooks can change forward
    dep.channel_groups(model, x)
    handle.remove()
    assert len(traces) == 4
    dep.clear_analysis_cache()
    dep.channel_groups(model, x)
    assert len(traces) == 5


def test_tune_prune_mask_hooks_do_not_change_the_key(traces: list[int]) -> None:
    """Held masks multiply weights in place (no graph op): wrapped = unwrapped structure."""
    from tune_prune.pruning.masks import unwrap_model, wrap_model

    model, x, masks = _masks("residual", 0.5)  # one trace, on the unwrapped model
    wrap_model(model, masks)
    before = dep.structure_key(model, x)
    dep.channel_groups(model, x)
    unwrap_model(model)
    assert dep.structure_key(model, x) == before
    assert len(traces) == 1


def test_cache_can_be_turned_off(traces: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dep, "ANALYSIS_CACHE_SIZE", 0)
    model, x = build("residual"), dummy_input("residual")
    dep.channel_groups(model, x)
    dep.channel_groups(model, x)
    assert len(traces) == 2


class _Switch(nn.Module):
    """Forward depends on a plain attribute: equal modules, different graphs."""

    def __init__(self, add: bool) -> None:
        super().__init__()
        self.add = add
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x) + self.b(x) if self.add else self.a(x) * 0 + self.b(x).detach() * 0 + self.a(x)
        return self.fc(y.mean((2, 3)))


def test_non_tensor_attributes_are_part_of_the_key() -> None:
    x = torch.randn(1, 3, 4, 4)
    coupled = {frozenset(g.members) for g in dep.channel_groups(_Switch(True), x)}
    assert frozenset({"a", "b"}) in coupled
    plain = {frozenset(g.members) for g in dep.channel_groups(_Switch(False), x)}
    assert frozenset({"a", "b"}) not in plain


class _Skip(nn.Module):
    """p's output feeds c and, through the add, the classifier: {p, d} is one group."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Conv2d(3, 4, 1, bias=False)
        self.c = nn.Conv2d(4, 5, 1, bias=False)
        self.d = nn.Conv2d(5, 4, 1, bias=False)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.p(x))
        return self.fc((self.d(torch.relu(self.c(y))) + y).mean((2, 3)))


def test_a_row_reading_only_removed_inputs_is_removed_too() -> None:
    """c's filter 3 reads only channel 0 of p, which {p, d} loses. torch-pruning's order
    visits that group before c's, so c's filter 3 is then zero on every kept input: dead,
    removed as well (as the implementation that pruned group by group did)."""
    torch.manual_seed(0)
    model, x = _Skip().eval(), torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        model.c.weight[3].zero_()
        model.c.weight[3, 0] = 1.0
    masks = {n: {"weight": torch.ones_like(getattr(model, n).weight)} for n in ("p", "d")}
    masks["p"]["weight"][0] = 0
    masks["d"]["weight"][0] = 0
    compact, remaining, history = speedup_model(model, masks, x)
    assert (compact.p.out_channels, compact.c.in_channels, compact.d.out_channels) == (3, 3, 3)
    assert compact.c.out_channels == 4 and compact.d.in_channels == 4
    assert history["modules"]["c"]["out_keep"] == [0, 1, 2, 4]
    assert remaining == {}
