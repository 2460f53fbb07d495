"""Lottery tickets on digits: IMP with rewinding to init vs random re-init vs one-shot pruning.

Question: on the digits ResNet, do winning tickets (iterative magnitude pruning whose
surviving weights are rewound to their INITIAL values, then trained) beat the same
masks with a random re-initialisation, and how do both compare with one-shot magnitude
pruning of the trained baseline plus fine-tuning, across sparsities?

    python -m experiments.lottery_ticket.run            # full: 5 seeds, ~3-6 min on 1 thread
    python -m experiments.lottery_ticket.run --quick    # smoke run, seconds

Methods (weights: Conv2d + Linear, one global magnitude ranking, ``LevelPruner(mode="global")``):

* ``lottery ticket (IMP, rewind to init)``: ``LotteryTicketTaskGenerator(rounds, init, ...)``
  + ``PruningScheduler(reset_weight=True)`` started from the seeded INIT of the cached
  baseline (``build_model()`` under the baseline's seed). Each round trains the current
  ticket for ``baseline_epochs`` at ``baseline_lr`` (the baseline recipe, masks held),
  prunes, and rewinds the survivors to the init (Frankle & Carbin 2019; no late
  rewinding). Round 1 trains the dense init, which IS the cached baseline (same init, same
  recipe, same seed), so the finetuner loads the cached weights instead of retraining.
  Round i's ticket is trained by round i+1's fine-tuning (same recipe, masks held); the
  last ticket is trained by the same finetuner afterwards. ``retrain_ticket=True`` would
  retrain only the best-scoring ticket, and a sweep needs every one.
* ``random re-init``: ticket i's masks on a freshly initialised model (another seed),
  trained with the same recipe and epochs as the ticket.
* ``one-shot magnitude + FT``: the cached trained baseline pruned once to the same
  sparsity, then fine-tuned ``--finetune-epochs`` at the workload's ``finetune_lr``.
* ``one-shot magnitude + FT at baseline lr``: the same, fine-tuned at ``baseline_lr``
  (the ticket's learning rate), so the one-shot side is not handicapped by a small lr.

Accuracy is on the held-out TEST split (360 images; one image = 0.28 points).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments._common import (
    DEFAULT_CACHE,
    command_line,
    cpu_digits,
    machine_lines,
    mean_std,
    pm,
    seeded_init,
    write_csv,
    write_results,
)
from tune_prune.pruning import LevelPruner, LotteryTicketTaskGenerator, PruningScheduler
from tune_prune.pruning.masks import apply_masks, unwrap_model, wrap_model
from tune_prune.pruning.measure import sparsity_report
from tune_prune.workloads import load_or_train_baseline

MODULE = "experiments.lottery_ticket.run"
HERE = Path(__file__).resolve().parent
OP_TYPES = ["Conv2d", "Linear"]
LTH, REINIT, ONESHOT, ONESHOT_HI = (
    "lottery ticket (IMP, rewind to init)",
    "random re-init, same masks",
    "one-shot magnitude + FT",
    "one-shot magnitude + FT at baseline lr",
)
METHODS = (LTH, REINIT, ONESHOT, ONESHOT_HI)


def _config(sparsity: float) -> list[dict[str, Any]]:
    return [{"op_types": OP_TYPES, "total_sparsity": sparsity}]


class TicketTrainer:
    """The scheduler's finetuner: the baseline recipe, then the TEST accuracy of what it trained.

    Call 1 receives the dense init; its training is the cached baseline, which is loaded.
    Call k > 1 receives ticket k-1 (rewound, masks held by the scheduler): checked equal to
    the ticket captured by ``on_iteration`` before it is trained.
    """

    def __init__(self, workload: Any, seed: int, init: nn.Module, baseline: nn.Module) -> None:
        self.workload, self.seed = workload, seed
        self.init_state = {k: v.clone() for k, v in init.state_dict().items()}
        self.baseline_state = {k: v.clone() for k, v in baseline.state_dict().items()}
        self.expected: list[dict[str, torch.Tensor]] = []  # untrained tickets, in order
        self.trained_acc: list[float] = []  # call k: accuracy of ticket k-1 after training
        self.calls = 0

    def __call__(self, model: nn.Module) -> None:
        state = model.state_dict()
        if self.calls == 0:
            assert all(torch.equal(state[k], v) for k, v in self.init_state.items()), \
                "round 1 must start from the seeded init"
            model.load_state_dict(self.baseline_state)
        else:
            want = self.expected[self.calls - 1]
            assert all(torch.equal(state[k], v) for k, v in want.items()), \
                "round k must start from ticket k-1"
            w = self.workload
            w.finetune(model, w.baseline_epochs, w.baseline_lr, self.seed)
        self.trained_acc.append(self.workload.evaluate(model, "test"))
        self.calls += 1


def _train_masked(workload: Any, model: nn.Module, masks: dict, epochs: float, lr: float,
                  seed: int) -> float:
    apply_masks(model, masks)
    wrap_model(model, masks)
    try:
        workload.finetune(model, epochs, lr, seed)
        return workload.evaluate(model, "test")
    finally:
        unwrap_model(model)


def run_seed(workload: Any, seed: int, target: float, rounds: int, ft_epochs: float,
             cache: Path) -> list[dict[str, Any]]:
    torch.manual_seed(seed)
    baseline = load_or_train_baseline(workload, seed, cache)
    init = seeded_init(workload, seed)
    dense_acc = workload.evaluate(baseline, "test")
    trainer = TicketTrainer(workload, seed, init, baseline)
    tickets: list[tuple[float, nn.Module, dict]] = []

    def on_iteration(result: Any, measurements: dict[str, Any]) -> None:
        model = copy.deepcopy(result.compact_model)
        masks = copy.deepcopy(result.compact_model_masks)
        # rewound to init: every surviving weight equals its initial value
        for name, entry in masks.items():
            w0 = trainer.init_state[f"{name}.weight"]
            assert torch.equal(model.get_submodule(name).weight.detach(), w0 * entry["weight"])
        tickets.append((measurements["sparsity"], model, masks))
        trainer.expected.append({k: v.clone() for k, v in model.state_dict().items()})

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as log_dir:
        generator = LotteryTicketTaskGenerator(rounds, init, _config(target), log_dir=log_dir)
        scheduler = PruningScheduler(LevelPruner(None, None, mode="global"), generator,
                                     finetuner=trainer, evaluator=None, reset_weight=True,
                                     on_iteration=on_iteration)
        scheduler.compress()
    # the last ticket was not trained by a following round: same finetuner, masks held
    _, last_model, last_masks = tickets[-1]
    wrap_model(last_model, last_masks)
    try:
        trainer(last_model)
    finally:
        unwrap_model(last_model)
    lth_seconds = time.perf_counter() - t0
    e = workload.baseline_epochs

    records = [{"seed": seed, "round": 0, "schedule_sparsity": 0.0, "sparsity": 0.0,
                "method": "dense baseline", "test_acc": dense_acc, "epochs_model": 0.0,
                "epochs_total": 0.0}]
    for i, (sparsity, ticket, masks) in enumerate(tickets, start=1):
        schedule = 1 - (1 - target) ** (i / rounds)
        report = sparsity_report(ticket, masks)["sparsity"]
        assert abs(report - sparsity) < 1e-6
        records.append({"seed": seed, "round": i, "schedule_sparsity": schedule,
                        "sparsity": sparsity, "method": LTH, "test_acc": trainer.trained_acc[i],
                        "epochs_model": i * e, "epochs_total": i * e})
        reinit = seeded_init(workload, 10_000 + seed)
        acc = _train_masked(workload, reinit, masks, e, workload.baseline_lr, seed)
        records.append({"seed": seed, "round": i, "schedule_sparsity": schedule,
                        "sparsity": sparsity, "method": REINIT, "test_acc": acc,
                        "epochs_model": e, "epochs_total": (i - 1) * e + e})
        for method, lr in ((ONESHOT, float(workload.config.finetune_lr)),
                           (ONESHOT_HI, workload.baseline_lr)):
            model = copy.deepcopy(baseline)
            pruner = LevelPruner(model, _config(schedule), mode="global")
            _, os_masks = pruner.compress()
            pruner._unwrap_model()
            os_sparsity = sparsity_report(model, os_masks)["sparsity"]
            acc = _train_masked(workload, model, os_masks, ft_epochs, lr, seed)
            records.append({"seed": seed, "round": i, "schedule_sparsity": schedule,
                            "sparsity": os_sparsity, "method": method, "test_acc": acc,
                            "epochs_model": ft_epochs, "epochs_total": ft_epochs})
    print(f"seed {seed}: dense {dense_acc:.4f}, IMP {lth_seconds:.1f} s, "
          + ", ".join(f"{r['method'][:8]}@{r['sparsity']:.3f}={r['test_acc']:.3f}"
                      for r in records[1:]), flush=True)
    return records


def summarise(records: list[dict[str, Any]], seeds: list[int]) -> tuple[list[str], list[list]]:
    headers = ["round", "sparsity (Conv+Linear weights)", "method", "test acc % (mean ± std)",
               "min–max %", "seeds", "train epochs for this model (after baseline)",
               "epochs incl. finding the mask"]
    rows: list[list] = []
    dense = [r["test_acc"] for r in records if r["method"] == "dense baseline"]
    rows.append([0, "0.000", "dense baseline", pm(dense),
                 f"{min(dense) * 100:.2f}–{max(dense) * 100:.2f}", len(dense), 0, 0])
    for rnd in sorted({r["round"] for r in records if r["round"] > 0}):
        for method in METHODS:
            sel = [r for r in records if r["round"] == rnd and r["method"] == method]
            accs = [r["test_acc"] for r in sel]
            sp = statistics.fmean(r["sparsity"] for r in sel)
            rows.append([rnd, f"{sp:.3f}", method, pm(accs),
                         f"{min(accs) * 100:.2f}–{max(accs) * 100:.2f}", len(sel),
                         f"{sel[0]['epochs_model']:g}", f"{sel[0]['epochs_total']:g}"])
    return headers, rows


def paired_lines(records: list[dict[str, Any]]) -> list[str]:
    """Lottery ticket minus each other method, paired by seed, per round."""
    others = METHODS[1:]
    out = ["Paired by seed (lottery ticket minus the method, test accuracy points, mean ± std; "
           "wins = seeds where the ticket is strictly better):", ""]
    out.append("| round | sparsity | " + " | ".join(f"ticket − {m}" for m in others) + " |")
    out.append("|---|---|" + "---|" * len(others))
    for rnd in sorted({r["round"] for r in records if r["round"] > 0}):
        by = {(r["method"], r["seed"]): r for r in records if r["round"] == rnd}
        seeds = sorted({s for (_, s) in by})
        cells = []
        for method in others:
            diffs = [by[(LTH, s)]["test_acc"] - by[(method, s)]["test_acc"] for s in seeds]
            m, sd = mean_std([d * 100 for d in diffs])
            cells.append(f"{m:+.2f} ± {sd:.2f} (wins {sum(d > 0 for d in diffs)}/{len(seeds)})")
        sp = by[(LTH, seeds[0])]["sparsity"]
        out.append(f"| {rnd} | {sp:.3f} | " + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--target", type=float, default=0.98,
                        help="final sparsity; round i of N reaches 1 - (1 - target)**(i/N)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--finetune-epochs", type=float, default=None,
                        help="one-shot fine-tune epochs (default: baseline_epochs)")
    parser.add_argument("--baseline-epochs", type=float, default=None,
                        help="digits baseline/round epochs (default: the workload's, 10)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 rounds, 1 epoch")
    args = parser.parse_args(argv)
    argv_used = list(argv) if argv is not None else __import__("sys").argv[1:]
    if args.quick:
        args.seeds, args.rounds, args.target = args.seeds[:1], 2, 0.9
        args.baseline_epochs = args.baseline_epochs or 1.0
    torch.set_num_threads(args.threads)
    workload = cpu_digits(args.baseline_epochs)
    ft_epochs = args.finetune_epochs if args.finetune_epochs is not None else workload.baseline_epochs

    header = [command_line(MODULE, argv_used), *machine_lines(),
              f"seeds {args.seeds}; target {args.target}, {args.rounds} rounds; each round / "
              f"ticket / re-init trains {workload.baseline_epochs:g} epochs at lr "
              f"{workload.baseline_lr}; one-shot fine-tunes {ft_epochs:g} epochs at lr "
              f"{workload.config.finetune_lr}; digits config {workload.config}"]
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    for seed in args.seeds:
        records += run_seed(workload, seed, args.target, args.rounds, ft_epochs, args.cache)
    elapsed = time.perf_counter() - start
    header.append(f"wall time {elapsed:.0f} s; " + machine_lines()[-1])
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "runs.csv", records)
    headers, rows = summarise(records, args.seeds)
    return write_results(args.out, header, headers, rows, footer=paired_lines(records))


if __name__ == "__main__":
    main()
