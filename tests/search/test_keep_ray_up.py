"""``--keep-ray-up``: the local Ray instance, and its dashboard, outlive the search until Ctrl-C.

Without the flag the local instance ends with the search (the summary says how to keep
it). With it, the CLI prints the summary and then waits in ``runner.wait_for_ctrl_c``
(patched here so the test does not block) with Ray and the dashboard still up; Ray is
shut down once the wait returns. ``wait_for_ctrl_c`` itself returns on SIGINT and puts
back the handler it replaced.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import urllib.error
import urllib.request

import pytest

from tune_prune.errors import ConfigError
from tune_prune.search import runner
from tune_prune.search.cli import main
from tune_prune.search.config import SearchConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status: token auth may refuse us)."""
    try:
        urllib.request.urlopen(url, timeout=10).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def test_keep_ray_up_needs_a_local_instance() -> None:
    with pytest.raises(ConfigError, match="keep_ray_up=True applies to a local Ray instance"):
        SearchConfig.create(address="auto", keep_ray_up=True)


def test_wait_for_ctrl_c_returns_on_sigint_and_restores_the_handler() -> None:
    before = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        runner.wait_for_ctrl_c()
    finally:
        timer.cancel()
    assert signal.getsignal(signal.SIGINT) is before


def test_hold_ray_returns_at_once_when_nothing_was_kept() -> None:
    class Outcome:
        ray_kept = False
        dashboard_url = None

    def never():
        raise AssertionError("waited although Ray was not kept")

    runner.hold_ray(Outcome(), print, wait=never)  # type: ignore[arg-type]


@pytest.mark.slow
def test_dashboard_stays_up_until_ctrl_c(tmp_path, monkeypatch, capsys) -> None:
    import ray

    assert not ray.is_initialized(), "a Ray instance is still initialised in this process"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    seen: dict[str, bool] = {}

    def ctrl_c() -> None:  # the user looks at the dashboard, then presses Ctrl-C
        seen["ray_up"] = ray.is_initialized()
        seen["dashboard_answers"] = _answers(url)
        printed = capsys.readouterr().out
        seen["summary_first"] = f"Ray dashboard     : {url} (up until you press Ctrl-C" in printed

    monkeypatch.setattr(runner, "wait_for_ctrl_c", ctrl_c)
    code = main(["--dry-run", "--num-samples", "1", "--screen-fraction", "1", "--num-cpus", "1",
                 "--keep-ray-up", "--dashboard-port", str(port), "--storage-path", str(tmp_path / "res"),
                 "--name", "kept"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert seen == {"ray_up": True, "dashboard_answers": True, "summary_first": True}, seen
    assert not ray.is_initialized()  # shut down after the wait
    assert not _answers(url)
    assert "Ray shut down" in out
