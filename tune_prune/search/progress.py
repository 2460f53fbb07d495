"""Progress of a running search: trials done / total, running, stopped, failed, the best
score at target so far and an estimate of the time left.

A search runs for minutes to hours; the person at the terminal wants one line that says
how far along it is. :class:`ProgressCounts` is the bookkeeping (no Ray, unit-tested);
:class:`StatusLine` draws it in place on a terminal (``\\r`` + clear-to-end, at most a
few times a second) and as plain lines elsewhere (a log file or CI: one line whenever a
trial ends, and at most once every ``plain_interval_s`` otherwise);
:class:`ProgressCallback` feeds Tune's trial events to both, and prints one event line
per reported iteration above the status line.

Time left: progress counts each finished trial as 1 and a running one as the share of
its planned iterations reported; the estimate is elapsed * (total - progress) /
progress, which already accounts for trials running side by side.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray.tune import Callback

from tune_prune.search import metrics as M

Printer = Callable[[str], None]


@dataclass
class ProgressCounts:
    """What the status line says, updated from trial events."""

    total: int
    higher_is_better: bool = True
    stage: str = "search"
    started_at: float = field(default_factory=time.monotonic)
    running: dict[str, float] = field(default_factory=dict)  # trial id -> share of its plan done
    ended: dict[str, str] = field(default_factory=dict)  # trial id -> finished / stopped / failed
    best: float | None = None
    best_trial: str | None = None

    def _count(self, how: str) -> int:
        return sum(1 for v in self.ended.values() if v == how)

    @property
    def finished(self) -> int:
        return self._count("finished")

    @property
    def stopped(self) -> int:
        return self._count("stopped")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def done(self) -> int:
        return len(self.ended)

    def start(self, trial_id: str) -> None:
        if trial_id not in self.ended:
            self.running.setdefault(trial_id, 0.0)

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        planned = result.get("planned_iterations")
        iteration = result.get("iteration")
        share = 0.0
        if isinstance(planned, int) and planned > 0 and isinstance(iteration, int | float):
            share = min(1.0, max(0.0, float(iteration) / planned))
        self.running[trial_id] = max(share, self.running.get(trial_id, 0.0))
        score = result.get("score")
        if result.get("reached_target") and isinstance(score, int | float) and math.isfinite(score):
            if self.best is None or (score > self.best if self.higher_is_better else score < self.best):
                self.best, self.best_trial = float(score), trial_id

    def complete(self, trial_id: str, last_result: dict[str, Any] | None) -> None:
        """A trial ended without error: finished its schedule, or was stopped early."""
        self.running.pop(trial_id, None)
        self.ended[trial_id] = "finished" if (last_result or {}).get(M.SCHEDULE_DONE) else "stopped"

    def error(self, trial_id: str) -> None:
        self.running.pop(trial_id, None)
        self.ended[trial_id] = "failed"

    def reconcile(self, trials: list[Any]) -> None:
        """Count trials that ended without an event here (restored by a resumed search)."""
        for trial in trials:
            if trial.trial_id in self.ended:
                continue
            if trial.status == "TERMINATED":
                last = trial.last_result or {}
                self.result(trial.trial_id, last)
                self.complete(trial.trial_id, last)
            elif trial.status == "ERROR":
                self.error(trial.trial_id)

    def seconds_left(self, now: float | None = None) -> float | None:
        """Estimated seconds until every trial is done; None before any progress."""
        progress = self.done + sum(self.running.values())
        if progress <= 0:
            return None
        elapsed = (time.monotonic() if now is None else now) - self.started_at
        return max(0.0, elapsed * (self.total - progress) / progress)

    def summary(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self.started_at
        best = "none at target yet" if self.best is None else f"{self.best:.4f} ({self.best_trial})"
        left = self.seconds_left(now)
        eta = "estimating" if left is None else f"~{_duration(left)} left"
        return (f"[{self.stage}] {self.done}/{self.total} trials done, {len(self.running)} running, "
                f"{self.stopped} stopped, {self.failed} failed | best at target {best} | "
                f"{_duration(elapsed)} elapsed, {eta}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class StatusLine:
    """One status line: redrawn in place on a terminal, plain throttled lines elsewhere."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None,
                 tty_interval_s: float = 0.25, plain_interval_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(self.stream.isatty()) if tty is None else tty
        self.tty_interval_s = tty_interval_s
        self.plain_interval_s = plain_interval_s
        self.clock = clock
        self._text = ""
        self._last = ""  # the text last drawn
        self._drawn_at = -math.inf

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment snapshot; a stream does not
        # pickle, and a restored search writes to this process's stdout anyway.
        return {k: v for k, v in self.__dict__.items() if k != "stream"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stdout

    def log(self, message: str) -> None:
        """An event line, printed above the status line."""
        if self.tty and self._text:
            self.stream.write("\r\x1b[K" + message + "\n" + self._text)
        else:
            self.stream.write(message + "\n")
        self.stream.flush()

    def update(self, text: str, force: bool = False) -> None:
        """Show ``text``: at once when ``force`` (a trial ended), else when the interval passed."""
        now = self.clock()
        interval = self.tty_interval_s if self.tty else self.plain_interval_s
        if text == self._last:  # nothing new to say (a forced redraw after the same event)
            return
        if not force and now - self._drawn_at < interval:
            self._text = text if self.tty else self._text
            return
        self._drawn_at = now
        self._last = text
        if self.tty:
            self._text = text
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the in-place line so what follows starts on a fresh one."""
        if self.tty and self._text:
            self.stream.write("\n")
            self.stream.flush()
            self._text = ""


def event_line(trial_id: str, result: dict[str, Any]) -> str:
    """One reported iteration, as the search prints it."""
    planned = result.get("planned_iterations", -1)
    plan = str(planned) if isinstance(planned, int) and planned > 0 else "?"
    return (
        f"  {trial_id} it {result.get('iteration', '?')}/{plan} "
        f"{result.get('generator', '?')}/{result.get('pruner', '?')}:{result.get('mode', '?')} "
        f"sparsity {result.get('sparsity', float('nan')):.3f} "
        f"score {result.get('score', float('nan')):.4f} "
        f"objective {result.get('objective', float('nan')):.4f}"
        + (f" latency {result[M.LATENCY]:.3g} ms" if isinstance(result.get(M.LATENCY), int | float) else "")
        + f"{'  [done]' if result.get(M.SCHEDULE_DONE) else ''}"
    )


class ProgressCallback(Callback):
    """Tune callback: an event line per reported iteration and the search's status line.

    ``printer`` gets the event lines when given (the library default: the logger);
    with ``status`` (the CLI's), events and the status line share the terminal.
    """

    def __init__(self, counts: ProgressCounts, printer: Printer | None = None,
                 status: StatusLine | None = None) -> None:
        self.counts = counts
        self.status = status
        self.printer = printer or (status.log if status is not None else (lambda _msg: None))

    def _refresh(self, force: bool = False) -> None:
        if self.status is not None:
            self.status.update(self.counts.summary(), force=force)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.counts.start(trial.trial_id)
        self._refresh()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.counts.result(trial.trial_id, result)
        self.printer(event_line(trial.trial_id, result))
        self._refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self.counts.complete(trial.trial_id, last)
        how = "finished" if last.get(M.SCHEDULE_DONE) else "stopped early"
        self.printer(f"  {trial.trial_id} {how} after {last.get('iteration', 0)} iteration(s)")
        self._refresh(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.counts.error(trial.trial_id)
        self.printer(f"  {trial.trial_id} FAILED (see {trial.path}/error.txt)")
        self._refresh(force=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.counts.reconcile(trials)
        self._refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._refresh(force=True)
        if self.status is not None:
            self.status.close()
