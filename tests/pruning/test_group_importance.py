"""Channel pruners' group importance (normalizer, bn_scale, input_weights): NNI by default.

The defaults must leave NNI 2.10's masks bit-identical (NNI scripts depend on them): the
reference digests below were captured from the code before the options existed. Each
option changes the choice where it should, and the torch-pruning combination (raw sum
with BatchNorm scales and the readers' input weights) reproduces torch-pruning exactly.
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
from tune_prune.errors import ConfigError, PrunerError
from tune_prune.pruning import FPGMPruner, L1NormPruner, L2NormPruner
from tune_prune.pruning.pruners.registry import get_pruner_class
from tune_prune.pruning.speedup import speedup_model
from tune_prune.workloads.mnist1d import Mnist1dCNN

#: sha256[:16] of {layer: pruned channel indices} (json, sorted keys) computed by the code
#: before group importance existed, for model/pruner/mode/sparsity on tests.pruning.models.
REFERENCE = {
    "concat/fpgm/dependency_aware/0.3": "27b002b463283561",
    "concat/fpgm/dependency_aware/0.6": "394b41496c538831",
    "concat/fpgm/global/0.3": "4a46bc7c1c67a0cf",
    "concat/fpgm/global/0.6": "e979250fad05316f",
    "concat/fpgm/normal/0.3": "6f48b399ce588fc4",
    "concat/fpgm/normal/0.6": "13a31d159231cb5a",
    "concat/l1/dependency_aware/0.3": "5f4fc7da46f1a295",
    "concat/l1/dependency_aware/0.6": "5ceb30ebb558db9d",
    "concat/l1/global/0.3": "14c95cd398f8dd76",
    "concat/l1/global/0.6": "3c82e57e5a8aef2c",
    "concat/l1/normal/0.3": "0f9569d99de5aa66",
    "concat/l1/normal/0.6": "c96bc83c68bc8d6c",
    "concat/l2/dependency_aware/0.3": "5f4fc7da46f1a295",
    "concat/l2/dependency_aware/0.6": "c80c7ebf2bb9e6fe",
    "concat/l2/global/0.3": "3c43fbe007fb3cd0",
    "concat/l2/global/0.6": "b6c5174832e67488",
    "concat/l2/normal/0.3": "afb21f1c044aeffe",
    "concat/l2/normal/0.6": "c96bc83c68bc8d6c",
    "depthwise/fpgm/dependency_aware/0.3": "2b11313e0af14c33",
    "depthwise/fpgm/dependency_aware/0.6": "d80fd736a6216449",
    "depthwise/fpgm/global/0.3": "d0aa533e0abc7811",
    "depthwise/fpgm/global/0.6": "916d39721ce98138",
    "depthwise/fpgm/normal/0.3": "48ab4d31d76b8239",
    "depthwise/fpgm/normal/0.6": "8cf4875abbb7dfe6",
    "depthwise/l1/dependency_aware/0.3": "1f3bff729c21941e",
    "depthwise/l1/dependency_aware/0.6": "f7464fb93e70aa74",
    "depthwise/l1/global/0.3": "37959a8890cd96bd",
    "depthwise/l1/global/0.6": "6963f64116a35229",
    "depthwise/l1/normal/0.3": "a6d07ed730e71910",
    "depthwise/l1/normal/0.6": "82e570aee009c059",
    "depthwise/l2/dependency_aware/0.3": "da3a11bcbf1d13b5",
    "depthwise/l2/dependency_aware/0.6": "0851865e2c136bc0",
    "depthwise/l2/global/0.3": "c482f2283108b10b",
    "depthwise/l2/global/0.6": "4cf7e9aef786048f",
    "depthwise/l2/normal/0.3": "5d222b73399fc599",
    "depthwise/l2/normal/0.6": "6fb699585ed64a0e",
    "groupconv/fpgm/dependency_aware/0.3": "d34f7bebddac5628",
    "groupconv/fpgm/dependency_aware/0.6": "959c227bde7d2b12",
    "groupconv/fpgm/global/0.3": "bbef1c413b1dbd91",
    "groupconv/fpgm/global/0.6": "7a11e79e1c61a7c5",
    "groupconv/fpgm/normal/0.3": "2ee2afa66d90d205",
    "groupconv/fpgm/normal/0.6": "ab8fd9ef39a09b71",
    "groupconv/l1/dependency_aware/0.3": "e6621f561acad6c5",
    "groupconv/l1/dependency_aware/0.6": "c16d97b3f83ceaf1",
    "groupconv/l1/global/0.3": "4245937ddfd7ddfe",
    "groupconv/l1/global/0.6": "952f2b0c4f13baaa",
    "groupconv/l1/normal/0.3": "735e406949c53033",
    "groupconv/l1/normal/0.6": "e73a68841ff14dc5",
    "groupconv/l2/dependency_aware/0.3": "e6621f561acad6c5",
    "groupconv/l2/dependency_aware/0.6": "c16d97b3f83ceaf1",
    "groupconv/l2/global/0.3": "b8761008e168cc21",
    "groupconv/l2/global/0.6": "098323f9caffc281",
    "groupconv/l2/normal/0.3": "735e406949c53033",
    "groupconv/l2/normal/0.6": "e73a68841ff14dc5",
    "mlp/fpgm/dependency_aware/0.3": "a061840fce7670e8",
    "mlp/fpgm/dependency_aware/0.6": "235d7eae2631d5f5",
    "mlp/fpgm/global/0.3": "a6e8803aef8d2ff9",
    "mlp/fpgm/global/0.6": "856c22ec436a7ec1",
    "mlp/fpgm/normal/0.3": "a061840fce7670e8",
    "mlp/fpgm/normal/0.6": "235d7eae2631d5f5",
    "mlp/l1/dependency_aware/0.3": "58ecc7e4568356b0",
    "mlp/l1/dependency_aware/0.6": "c78d95847105bbc8",
    "mlp/l1/global/0.3": "3c64ab77b81847cb",
    "mlp/l1/global/0.6": "ae361f432993df7e",
    "mlp/l1/normal/0.3": "58ecc7e4568356b0",
    "mlp/l1/normal/0.6": "c78d95847105bbc8",
    "mlp/l2/dependency_aware/0.3": "991f36130fb1d499",
    "mlp/l2/dependency_aware/0.6": "724b7a8d224a6119",
    "mlp/l2/global/0.3": "86c61638a0cfe74a",
    "mlp/l2/global/0.6": "86b5857965e30910",
    "mlp/l2/normal/0.3": "991f36130fb1d499",
    "mlp/l2/normal/0.6": "724b7a8d224a6119",
    "residual/fpgm/dependency_aware/0.3": "41f843be282bcda3",
    "residual/fpgm/dependency_aware/0.6": "fc8281a8253c46be",
    "residual/fpgm/global/0.3": "dfa1ac60f3cfcd3c",
    "residual/fpgm/global/0.6": "41bc675f6adc9318",
    "residual/fpgm/normal/0.3": "32949fd8c2d50296",
    "residual/fpgm/normal/0.6": "f0b8259b5abd20f9",
    "residual/l1/dependency_aware/0.3": "0e5b45334a20d8f0",
    "residual/l1/dependency_aware/0.6": "27297e272df9857e",
    "residual/l1/global/0.3": "66f4eef3c51d3e00",
    "residual/l1/global/0.6": "926999d40cbcc7e6",
    "residual/l1/normal/0.3": "d5e35d020642f416",
    "residual/l1/normal/0.6": "f8b6373f3bc2a2d8",
    "residual/l2/dependency_aware/0.3": "d865dd743b09f943",
    "residual/l2/dependency_aware/0.6": "ac453be0ad3f39eb",
    "residual/l2/global/0.3": "1916b2fc40e16f41",
    "residual/l2/global/0.6": "5301c6994261fd42",
    "residual/l2/normal/0.3": "b7a9e8f50aca171b",
    "residual/l2/normal/0.6": "0beea1fb33b910c1",
}


def _pruned(masks: dict) -> dict[str, list[int]]:
    out = {}
    for name, per in sorted(masks.items()):
        w = per["weight"]
        dead = w.reshape(w.size(0), -1).abs().sum(1) == 0 if w.dim() > 1 else w == 0
        out[name] = dead.nonzero().flatten().tolist()
    return out


def _digest(pruned: dict) -> str:
    return hashlib.sha256(json.dumps(pruned, sort_keys=True).encode()).hexdigest()[:16]


def _compress(model_name: str, pruner: str, mode: str, sparsity: float, model=None, **options):
    model = build(model_name) if model is None else model
    x = dummy_input(model_name)
    types = ["Linear"] if model_name == "mlp" else ["Conv2d"]
    key = "total_sparsity" if mode == "global" else "sparsity_per_layer"
    p = get_pruner_class(pruner)(model, [{"op_types": types, key: sparsity}], mode=mode,
                                 dummy_input=x, **options)
    _, masks = p.compress()
    p._unwrap_model()
    return _pruned(masks)


@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_defaults_are_bit_identical_to_nni(key: str) -> None:
    model_name, pruner, mode, sparsity = key.split("/")
    assert _digest(_compress(model_name, pruner, mode, float(sparsity))) == REFERENCE[key]
    off = {"normalizer": "none", "bn_scale": False, "input_weights": False, "round_to": 1}
    assert _digest(_compress(model_name, pruner, mode, float(sparsity), **off)) == REFERENCE[key]


def _set_l1(layer: nn.Module, l1: list[float]) -> None:
    """Give filter k of ``layer`` the L1 norm ``l1[k]`` (all its weights equal)."""
    with torch.no_grad():
        for k, v in enumerate(l1):
            layer.weight[k].fill_(v / layer.weight[k].numel())


def test_normalizer_lets_the_small_coupled_layer_count() -> None:
    """conv1 and layer1.conv2 are coupled by the identity shortcut. conv1's filters are
    1000x smaller, so NNI's sum follows layer1.conv2; normalised, conv1's wider spread
    decides."""
    model = build("residual")
    a = [1e-3 * v for v in (8, 7, 6, 5, 4, 3, 2, 1)]  # conv1: decreasing, large spread
    b = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]  # layer1.conv2: increasing, small spread
    _set_l1(model.conv1, a)
    _set_l1(model.layer1.conv2, b)

    def expected(norm: str) -> list[int]:
        ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        if norm == "mean":
            ta, tb = ta / ta.mean(), tb / tb.mean()
        elif norm == "max":
            ta, tb = ta / ta.max(), tb / tb.max()
        return sorted(torch.argsort(ta + tb)[:4].tolist())

    def pruned(**options: object) -> list[int]:
        masks = _compress("residual", "l1", "dependency_aware", 0.5, copy.deepcopy(model),
                          **options)
        assert masks["conv1"] == masks["layer1.conv2"]
        return masks["conv1"]

    assert pruned() == expected("none") == [0, 1, 2, 3]
    assert pruned(normalizer="mean") == expected("mean") == [4, 5, 6, 7]
    assert pruned(normalizer="max") == expected("max") == [4, 5, 6, 7]


def test_bn_scale_counts_gamma() -> None:
    model = build("residual")
    _set_l1(model.layer1.conv1, [1e-3 * (1 + 0.01 * k) for k in range(8)])  # nearly equal
    with torch.no_grad():
        model.layer1.bn1.weight.copy_(torch.tensor([8.0, -7, 6, -5, 4, -3, 2, -1]))
    for mode in ("normal", "dependency_aware"):
        default = _compress("residual", "l1", mode, 0.5, copy.deepcopy(model))
        bn = _compress("residual", "l1", mode, 0.5, copy.deepcopy(model), bn_scale=True)
        assert default["layer1.conv1"] == [0, 1, 2, 3]  # the smallest filters
        assert bn["layer1.conv1"] == [4, 5, 6, 7]  # the smallest |gamma| (raw sum: gamma dominates)
    # normalised, the filter term and |gamma| weigh alike: filters then barely differ
    mean = _compress("residual", "l1", "normal", 0.5, copy.deepcopy(model), bn_scale=True,
                     normalizer="mean")
    assert mean["layer1.conv1"] == [4, 5, 6, 7]
    # a big filter spread outweighs gamma in the raw sum, not after normalising
    _set_l1(model.layer1.conv1, [10.0 + 10 * k for k in range(8)])
    raw = _compress("residual", "l1", "normal", 0.5, copy.deepcopy(model), bn_scale=True)
    assert raw["layer1.conv1"] == [0, 1, 2, 3]


def test_input_weights_count_the_readers() -> None:
    """layer1.conv1's channel k is read by layer1.conv2's input column k."""
    model = build("residual")
    _set_l1(model.layer1.conv1, [1.0 + 0.01 * k for k in range(8)])
    with torch.no_grad():
        cols = torch.tensor([8.0, 7, 6, 5, 4, 3, 2, 1])
        model.layer1.conv2.weight.copy_(cols.view(1, 8, 1, 1).expand_as(model.layer1.conv2.weight))
    assert _compress("residual", "l1", "normal", 0.5, copy.deepcopy(model))["layer1.conv1"] == [0, 1, 2, 3]
    assert _compress("residual", "l1", "normal", 0.5, copy.deepcopy(model),
                     input_weights=True)["layer1.conv1"] == [4, 5, 6, 7]


def _tp_compact(model: nn.Module, x: torch.Tensor, ratio: float, p: int = 1) -> nn.Module:
    work = copy.deepcopy(model)
    pruner = tp.pruner.MagnitudePruner(
        work, x, importance=tp.importance.MagnitudeImportance(p=p), global_pruning=False,
        pruning_ratio=ratio, ignored_layers=[work.fc])
    pruner.step()
    return work


def _ours_compact(model: nn.Module, x: torch.Tensor, sparsity: float, cls=L1NormPruner,
                  **options) -> nn.Module:
    work = copy.deepcopy(model)
    p = cls(work, [{"op_types": ["Conv1d", "Conv2d"], "sparsity_per_layer": sparsity}],
            mode="dependency_aware", dummy_input=x, **options)
    _, masks = p.compress()
    p._unwrap_model()
    return speedup_model(work, masks, x)[0]


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bn_scale_and_input_weights_reproduce_torch_pruning(seed: int) -> None:
    """Raw sum of filter norms, |gamma| and readers' input norms = torch-pruning's
    MagnitudeImportance ranking: identical compact models (residual adds, 1x1 shortcut,
    and a Conv1d whose channels a Linear reads as 5 flattened features each)."""
    model, x = build("residual", seed), dummy_input("residual", seed)
    for cls, p in ((L1NormPruner, 1), (L2NormPruner, 2)):
        ours = _ours_compact(model, x, 0.5, cls, bn_scale=True, input_weights=True)
        theirs = _tp_compact(model, x, 0.5, p)
        if p == 2:  # torch-pruning sums squares (p-th powers); the ranking differs
            continue
        assert _same(ours, theirs)
        assert not _same(_ours_compact(model, x, 0.5), theirs)  # NNI's rule differs
    torch.manual_seed(seed)
    cnn = Mnist1dCNN(width=10).eval()
    with torch.no_grad():
        for m in cnn.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight.uniform_(0.2, 2.0)
    x1 = torch.randn(2, 1, 40)
    # torch-pruning keeps int(n * (1 - ratio)) channels; NNI prunes int(n * s): 10 -> 5
    assert _same(_ours_compact(cnn, x1, 0.5, bn_scale=True, input_weights=True),
                 _tp_compact(cnn, x1, 0.5))


def test_options_run_in_every_mode_and_keep_earlier_pruning() -> None:
    for cls in (L1NormPruner, L2NormPruner, FPGMPruner):
        for mode in ("normal", "global", "dependency_aware"):
            for norm in ("none", "mean", "max"):
                model, x = build("residual"), dummy_input("residual")
                key = "total_sparsity" if mode == "global" else "sparsity_per_layer"
                p = cls(model, [{"op_types": ["Conv2d"], key: 0.25}], mode=mode, dummy_input=x,
                        normalizer=norm, bn_scale=True, input_weights=True)
                _, first = p.compress()
                p.reset(model, [{"op_types": ["Conv2d"], key: 0.5}])
                p.load_masks(first)
                _, second = p.compress()
                p._unwrap_model()
                before, after = _pruned(first), _pruned(second)
                for name, idx in before.items():
                    assert set(idx) <= set(after[name]), (cls.__name__, mode, norm, name)
                assert sum(map(len, after.values())) > sum(map(len, before.values()))


@pytest.mark.parametrize(
    ("option", "value", "shown"),
    [("normalizer", "avg", "'avg'"), ("normalizer", 1, "1"), ("bn_scale", "yes", "'yes'"),
     ("input_weights", 1, "1")],
)
def test_bad_option_values_raise_config_error(option: str, value: object, shown: str) -> None:
    for cls in (L1NormPruner, L2NormPruner, FPGMPruner):
        with pytest.raises(ConfigError, match=rf"{option}={shown}"):
            cls(None, None, **{option: value})


def test_bn_scale_and_input_weights_need_dummy_input() -> None:
    model = build("residual")
    for option in ("bn_scale", "input_weights"):
        with pytest.raises(PrunerError, match=f"{option}=True needs dummy_input"):
            L1NormPruner(model, [{"op_types": ["Conv2d"], "sparsity": 0.5}], **{option: True})
    L1NormPruner(model, [{"op_types": ["Conv2d"], "sparsity": 0.5}], normalizer="mean")
