"""Helpers shared by the reliability tests (no fixtures here)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch


class Recorder:
    """A run_schedule report callable: keeps metrics and a copy of each checkpoint folder."""

    def __init__(self, root: Path) -> None:
        self.rows: list[dict] = []
        self.ckpts: list[Path] = []
        self.root = root

    def __call__(self, metrics: dict, checkpoint_dir: Path) -> None:
        self.rows.append(dict(metrics))
        dst = self.root / f"ckpt_{len(self.rows)}"
        shutil.copytree(checkpoint_dir, dst)
        self.ckpts.append(dst)


def load_masks(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_masks_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert sorted(a[name]) == sorted(b[name]), name
        for p in a[name]:
            assert torch.equal(a[name][p], b[name][p]), (name, p)


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (to prove nothing changed)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = "dir"
    return out


def result_lines(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows
