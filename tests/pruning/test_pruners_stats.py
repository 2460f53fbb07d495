"""Statistics pruners: trainer plumbing, batch counting and ranking on constructed cases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.pruning.models import build, dummy_input
from tune_prune.errors import ConfigError, PrunerError
from tune_prune.pruning.masks import is_wrapped
from tune_prune.pruning.pruners import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    SlimPruner,
    TaylorFOWeightPruner,
    trace,
)

CFG = [{"op_names": ["0"], "sparsity": 0.25}]


def _data(n: int = 6, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g))
        for _ in range(n)
    ]


class Recorder:
    """A trainer over fixed data that records the batches it ran and the losses."""

    def __init__(self, data: list, step: bool = True) -> None:
        self.data, self.step = data, step
        self.batches = 0
        self.losses: list[float] = []

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion) -> None:
        model.train()
        for x, y in self.data:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            if self.step:
                optimizer.step()
            self.batches += 1
            self.losses.append(float(loss.detach()))


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _pruned_channels(mask: torch.Tensor) -> list[int]:
    return (mask.reshape(mask.size(0), -1).sum(1) == 0).nonzero().flatten().tolist()


@pytest.mark.parametrize(
    "cls", [TaylorFOWeightPruner, ActivationAPoZRankPruner, ActivationMeanRankPruner]
)
def test_collects_exactly_training_batches_and_stops_trainer(cls: type) -> None:
    model = _net()
    trainer = Recorder(_data(6))
    forwards = [0]
    model[0].register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pruner = cls(model, CFG, trainer, opt, nn.CrossEntropyLoss(), 3)
    returned, masks = pruner.compress()
    assert returned is model and pruner.batches_seen == 3
    assert trainer.batches == 3 and forwards[0] == 3  # stopped before the 4th batch ran
    assert len(_pruned_channels(masks["0"]["weight"])) == 1
    with pytest.raises(ConfigError, match="training_batches"):
        cls(model, CFG, trainer, opt, nn.CrossEntropyLoss(), 0)


def test_apoz_prunes_always_zero_channel_first() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 36, 3))
    with torch.no_grad():
        model[0].weight[2].fill_(1e-4)
        model[0].bias[2] = -100.0  # relu output of channel 2 is always 0: APoZ 1
    with torch.no_grad():
        acts = [torch.relu(model[0](x)) for x, _ in _data()[:2]]
    pruner = ActivationAPoZRankPruner(
        model, CFG, Recorder(_data(), step=False), None, nn.CrossEntropyLoss(), 2
    )
    _, masks = pruner.compress()
    assert _pruned_channels(masks["0"]["weight"]) == [2]
    assert float(pruner._stats["0"][2]) == 0.0  # metric = 1 - APoZ
    apoz = torch.stack([(a == 0).double().mean((0, 2, 3)) for a in acts]).mean(0)
    assert torch.allclose(pruner._stats["0"].double(), 1 - apoz, atol=1e-6)


def test_mean_activation_prunes_weakest_channel() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 36, 3))
    with torch.no_grad():
        model[0].bias.fill_(1.0)
        model[0].weight[1].mul_(0.01)
        model[0].bias[1] = 0.01
    with torch.no_grad():
        acts = torch.cat([torch.relu(model[0](x)) for x, _ in _data()[:2]])
    pruner = ActivationMeanRankPruner(
        model, CFG, Recorder(_data(), step=False), None, nn.CrossEntropyLoss(), 2
    )
    _, masks = pruner.compress()
    assert _pruned_channels(masks["0"]["weight"]) == [1]
    assert torch.allclose(pruner._stats["0"].double(), acts.double().mean((0, 2, 3)), atol=1e-5)


def test_relu6_activation_option() -> None:
    model = nn.Sequential(nn.Linear(5, 4))
    data = [(torch.randn(3, 5), torch.randint(0, 4, (3,)))]
    pruner = ActivationMeanRankPruner(
        model,
        [{"op_types": ["Linear"], "sparsity": 0.5}],
        Recorder(data, False),
        None,
        nn.CrossEntropyLoss(),
        1,
        "relu6",
    )
    expected = nn.functional.relu6(model(data[0][0])).mean(0)
    pruner.compress()
    assert torch.allclose(pruner._stats["0"], expected.detach(), atol=1e-6)
    with pytest.raises(ConfigError, match="activation"):
        ActivationMeanRankPruner(model, CFG, Recorder(data), None, nn.CrossEntropyLoss(), 1, "gelu")


def test_taylor_metric_matches_nni_formula() -> None:
    model = _net()
    data = _data(5)
    pruner = TaylorFOWeightPruner(
        model, CFG, Recorder(data, step=False), None, nn.CrossEntropyLoss(), 3
    )
    reference = _net()
    reference.train()
    expected = torch.zeros(4)
    for x, y in data[:3]:
        reference.zero_grad()
        nn.CrossEntropyLoss()(reference(x), y).backward()
        w = reference[0].weight
        expected += (w * w.grad).pow(2).reshape(4, -1).sum(1).detach()
    pruner.compress()
    assert torch.allclose(pruner._stats["0"], expected, rtol=1e-4, atol=1e-12)
    assert _pruned_channels(pruner.get_masks()["0"]["weight"]) == [int(expected.argmin())]


def test_slim_adds_l1_penalty_and_prunes_smallest_gammas() -> None:
    model = _net()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -0.05, 2.0, 0.1]))

    def zero_loss(output: torch.Tensor, _target: torch.Tensor) -> torch.Tensor:
        return output.sum() * 0.0

    trainer = Recorder(_data(2), step=True)
    cfg = [{"op_types": ["BatchNorm2d"], "total_sparsity": 0.5}]
    pruner = SlimPruner(
        model, cfg, trainer, lambda p: torch.optim.SGD(p, lr=0.0), zero_loss, 2, scale=0.1
    )
    _, masks = pruner.compress()
    assert trainer.batches == 4 and pruner.batches_seen == 4  # training_epochs trainer calls
    assert trainer.losses[0] == pytest.approx(0.1 * (0.5 + 0.05 + 2.0 + 0.1), rel=1e-5)
    assert masks["1"]["weight"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert masks["1"]["bias"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert torch.all(model[1].bias[masks["1"]["bias"] == 0] == 0)
    assert pruner.mode == "global"
    with pytest.raises(ConfigError, match="Conv2d"):
        SlimPruner(_net(), [{"op_types": ["Conv2d"], "sparsity": 0.5}], trainer, None, zero_loss, 1)


def test_nni_positional_signatures() -> None:
    crit = nn.CrossEntropyLoss()
    model = build("residual")
    opt = trace(torch.optim.Adam)(model.parameters(), lr=1e-3)
    trainer = Recorder([(dummy_input("residual"), torch.tensor([0, 1]))])
    cfg = [{"op_types": ["Conv2d"], "sparsity": 0.5}]
    t = TaylorFOWeightPruner(
        model, cfg, trainer, opt, crit, 1, "dependency_aware", dummy_input("residual")
    )
    assert (t.mode, t.training_batches) == ("dependency_aware", 1)
    _, masks = t.compress()
    keep = [
        (masks[n]["weight"].reshape(masks[n]["weight"].size(0), -1)[:, 0]).tolist()
        for n in ("conv1", "layer1.conv2")
    ]
    assert keep[0] == keep[1]
    t.reset()
    a = ActivationAPoZRankPruner(model, cfg, trainer, opt, crit, 2, "relu6", "global")
    assert (a.activation, a.mode) == ("relu6", "global")
    s = SlimPruner(
        model,
        [{"op_types": ["BatchNorm2d"], "sparsity": 0.5}],
        trainer,
        opt,
        crit,
        1,
        0.001,
        "normal",
    )
    assert (s.training_epochs, s.scale, s.mode) == (1, 0.001, "normal")
    s.compress()
    assert is_wrapped(model)


def test_optimizer_forms_and_errors() -> None:
    model = _net()
    crit = nn.CrossEntropyLoss()
    for opt in (
        torch.optim.SGD(_net().parameters(), lr=0.1, momentum=0.9),  # other model: rebuilt
        lambda params: torch.optim.Adam(params, lr=1e-3),
        None,
    ):
        pruner = TaylorFOWeightPruner(model, CFG, Recorder(_data(2)), opt, crit, 2)
        pruner.compress()
        pruner.reset()
    with pytest.raises(ConfigError, match="traced_optimizer"):
        TaylorFOWeightPruner(model, CFG, Recorder(_data(2)), 42, crit, 2).compress()
    with pytest.raises(ConfigError, match="trainer"):
        TaylorFOWeightPruner(model, CFG, "not callable", None, crit, 2)


def test_trainer_without_forward_raises() -> None:
    pruner = ActivationAPoZRankPruner(
        _net(), CFG, lambda m, o, c: None, None, nn.CrossEntropyLoss(), 2
    )
    with pytest.raises(PrunerError, match="no forward pass"):
        pruner.compress()


def _units_kept(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.size(0), -1).sum(1) > 0


@pytest.mark.parametrize("mode", ["normal", "global", "dependency_aware"])
@pytest.mark.parametrize(
    "cls", [TaylorFOWeightPruner, ActivationAPoZRankPruner, ActivationMeanRankPruner]
)
def test_stats_pruners_meet_sparsity_in_every_mode(cls: type, mode: str) -> None:
    model = build("residual")
    trainer = Recorder([(dummy_input("residual"), torch.tensor([0, 1]))] * 3, step=False)
    key = "total_sparsity" if mode == "global" else "sparsity"
    cfg = [{"op_types": ["Conv2d"], key: 0.5}]
    pruner = cls(
        model,
        cfg,
        trainer,
        None,
        nn.CrossEntropyLoss(),
        2,
        mode=mode,
        dummy_input=dummy_input("residual"),
    )
    _, masks = pruner.compress()
    if mode == "global":
        total = sum(m["weight"].numel() for m in masks.values())
        pruned = sum(int((m["weight"] == 0).sum()) for m in masks.values())
        unit = max(m["weight"][0].numel() for m in masks.values())
        assert int(0.5 * total) <= pruned < int(0.5 * total) + unit
    else:
        for per in masks.values():
            keep = _units_kept(per["weight"])
            assert int((~keep).sum()) == int(0.5 * keep.numel())
    if mode == "dependency_aware":
        assert torch.equal(
            _units_kept(masks["conv1"]["weight"]), _units_kept(masks["layer1.conv2"]["weight"])
        )


@pytest.mark.parametrize("mode", ["normal", "global"])
def test_slim_meets_sparsity(mode: str) -> None:
    model = build("residual")
    trainer = Recorder([(dummy_input("residual"), torch.tensor([0, 1]))], step=True)
    key = "total_sparsity" if mode == "global" else "sparsity"
    pruner = SlimPruner(
        model,
        [{"op_types": ["BatchNorm2d"], key: 0.5}],
        trainer,
        None,
        nn.CrossEntropyLoss(),
        1,
        mode=mode,
    )
    _, masks = pruner.compress()
    pruned = [int((m["weight"] == 0).sum()) for m in masks.values()]
    sizes = [m["weight"].numel() for m in masks.values()]
    if mode == "global":
        assert sum(pruned) == int(0.5 * sum(sizes))
    else:
        assert pruned == [int(0.5 * n) for n in sizes]
