"""``--optuna-storage URL``: the Optuna study in a database instead of the journal file.

* config: a URL SQLAlchemy cannot parse, an unknown database, a driver that is not
  installed and an in-memory SQLite database are ConfigErrors naming the field; a
  relative SQLite path is made absolute (a resumed search may run elsewhere);
* preflight: a database that cannot be opened, and a new search whose name is already a
  study there, fail before Ray starts and before the experiment folder exists; a resume
  cannot switch to another storage;
* the searcher over an RDBStorage survives pickling (Tune's snapshot, ``--resume``);
* a dry-run search through the CLI on SQLite, and on a real PostgreSQL server the test
  starts when PostgreSQL (``initdb``/``pg_ctl``) and psycopg2 are installed (skipped with
  the reason otherwise): no journal file is written, the summary names the URL without
  its password, and the study agrees with Tune's trials (slow).
"""

from __future__ import annotations

import functools
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tune_prune.errors import ConfigError
from tune_prune.search.cli import main, parse_config
from tune_prune.search.config import SearchConfig
from tune_prune.search.runner import check_optuna_storage, run_search
from tune_prune.search.searcher import (
    JOURNAL_FILE,
    PruneAwareOptunaSearch,
    hide_password,
    rdb_storage,
    search_storage,
    storage_label,
)
from tune_prune.search.space import define_space, make_sampler

TRIALS = 4
#: Tune's trial ids are 8 hex digits: read as text (all digits, or '1e5...', would parse as numbers)
IDS = {"trial_id": str}


# ----------------------------------------------------------------------------- config and preflight

@pytest.mark.parametrize(("url", "words"), [
    ("not a url", "not a database URL"),
    ("nosuchdb://host/db", "unknown database 'nosuchdb'"),
    ("mysql+nosuchdriver://u@h/db", "unknown database"),
    ("sqlite://", "in-memory"),
    ("sqlite:///:memory:", "in-memory"),
    ("   ", "must be a database URL"),
])
def test_bad_urls_are_config_errors(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match="optuna_storage") as info:
        SearchConfig.create(optuna_storage=url)
    assert words in str(info.value)


def test_missing_driver_is_named(monkeypatch) -> None:
    import sqlalchemy.dialects.sqlite.pysqlite as pysqlite

    def no_driver(cls):
        raise ModuleNotFoundError("No module named 'psycopg2'", name="psycopg2")

    monkeypatch.setattr(pysqlite.SQLiteDialect_pysqlite, "import_dbapi", classmethod(no_driver))
    with pytest.raises(ConfigError, match="optuna_storage.*not installed.*psycopg2-binary"):
        SearchConfig.create(optuna_storage="sqlite:////tmp/x.db")


def test_relative_sqlite_is_made_absolute_and_flag_parses(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = SearchConfig.create(optuna_storage="sqlite:///studies.db")
    assert cfg.optuna_storage == f"sqlite:///{tmp_path / 'studies.db'}"
    cfg, _ = parse_config(["--optuna-storage", "sqlite:///sub/s.db"])
    assert cfg.optuna_storage == f"sqlite:///{tmp_path / 'sub' / 's.db'}"
    cfg, _ = parse_config(["--optuna-storage", "none"])
    assert cfg.optuna_storage is None


def test_labels_hide_the_password(tmp_path) -> None:
    assert hide_password("postgresql+psycopg2://ann:s3cret@db:5432/studies") == \
        "postgresql+psycopg2://ann:***@db:5432/studies"
    assert hide_password("sqlite:////a/b.db") == "sqlite:////a/b.db"
    assert storage_label(tmp_path, None) == str(tmp_path / JOURNAL_FILE)
    assert "s3cret" not in storage_label(tmp_path, "postgresql+psycopg2://ann:s3cret@db/x")


def test_unopenable_storage_fails_before_anything_is_written(tmp_path) -> None:
    import ray

    url = f"sqlite:///{tmp_path / 'no_such_dir' / 'studies.db'}"
    cfg = SearchConfig.create(dry_run=True, optuna_storage=url, storage_path=str(tmp_path / "res"),
                              name="x", num_samples=1)
    with pytest.raises(ConfigError, match="optuna_storage=.*cannot open the Optuna storage"):
        run_search(cfg)
    assert not (tmp_path / "res").exists()
    assert not ray.is_initialized()


def test_name_taken_in_the_database_fails_before_ray(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(study_name="taken", storage=url)
    cfg = SearchConfig.create(dry_run=True, optuna_storage=url, storage_path=str(tmp_path / "res"),
                              name="taken", num_samples=1)
    with pytest.raises(ConfigError, match="already holds a study"):
        check_optuna_storage(cfg, "taken", tmp_path / "res" / "taken")
    assert main(["--dry-run", "--optuna-storage", url, "--storage-path", str(tmp_path / "res"),
                 "--name", "taken", "--num-samples", "1"]) == 2
    assert not (tmp_path / "res" / "taken").exists()
    check_optuna_storage(cfg.updated(name="free"), "free", tmp_path / "res" / "free")  # no error


def test_searcher_on_a_database_survives_pickling(tmp_path) -> None:
    """Tune snapshots the searcher (tuner.pkl) and --resume unpickles it: the storage comes
    back as its URL and reconnects."""
    from ray import cloudpickle

    url = f"sqlite:///{tmp_path / 's.db'}"
    cfg = SearchConfig.create()
    searcher = PruneAwareOptunaSearch(
        space=functools.partial(define_space, cfg=cfg), metric="best_objective", mode="max",
        sampler=make_sampler(cfg), study_name="s", storage=rdb_storage(url),
    )
    assert "generator" in searcher.suggest("a")
    clone = cloudpickle.loads(cloudpickle.dumps(searcher))
    clone.on_trial_result("a", {"training_iteration": 1, "best_objective": 0.5})
    clone.on_trial_complete("a", {"training_iteration": 2, "best_objective": 0.75, "schedule_done": True})
    (trial,) = optuna.load_study(study_name="s", storage=url).trials
    assert trial.state == TrialState.COMPLETE and trial.value == 0.75
    assert trial.intermediate_values == {1: 0.5} and trial.user_attrs["tune_trial_id"] == "a"
    assert isinstance(search_storage(tmp_path, url), optuna.storages.RDBStorage)
    assert not (tmp_path / JOURNAL_FILE).exists()


# ----------------------------------------------------------------------------- searches (slow)

@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _search_on(url: str, storage: Path, name: str, capsys) -> tuple[Path, str]:
    code = main([
        "--dry-run", "--num-samples", str(TRIALS), "--max-concurrent", "2", "--reuse-actors",
        "--screen-fraction", "1", "--storage-path", str(storage), "--name", name, "--optuna-storage", url,
    ])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    return storage / name, out


def _assert_study_agrees(url: str, name: str, exp: Path) -> None:
    """One Optuna trial per Tune trial, its state the trial's status, COMPLETE values the last row's."""
    study = optuna.load_study(study_name=name, storage=url)
    best = pd.read_csv(exp / "best_per_trial.csv", dtype=IDS).set_index("trial_id")
    table = pd.read_csv(exp / "trials.csv", dtype=IDS)
    last = table.sort_values("iteration").groupby("trial_id").last()
    by_tune = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert len(by_tune) == len(study.trials) == TRIALS
    assert set(by_tune) == set(best.index)
    expected = {"complete": TrialState.COMPLETE, "stopped": TrialState.PRUNED, "error": TrialState.FAIL}
    for tid, t in by_tune.items():
        assert t.state == expected[best.loc[tid, "status"]], (tid, t.state, best.loc[tid, "status"])
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(last.loc[tid, "best_objective"]), tid


@pytest.mark.slow
def test_search_on_sqlite(ray_local, tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'db' / 'studies.db'}"
    (tmp_path / "db").mkdir()
    storage = tmp_path / "res"
    exp, out = _search_on(url, storage, "onsqlite", capsys)
    assert not (exp / JOURNAL_FILE).exists()
    assert f"Optuna study      : {url} (study 'onsqlite')" in out
    assert f"optuna-dashboard {url}" in out
    assert json.loads((exp / "search_config.json").read_text())["optuna_storage"] == url
    _assert_study_agrees(url, "onsqlite", exp)

    # a resume stays on the storage the search ran on
    code = main(["--resume", "--name", "onsqlite", "--storage-path", str(storage),
                 "--optuna-storage", f"sqlite:///{tmp_path / 'other.db'}"])
    assert code == 2 and "continues its study there" in capsys.readouterr().err


# ----------------------------------------------------------------------------- PostgreSQL

def _postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (PATH, then Debian's /usr/lib/postgresql)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "pg_ctl").exists() and (Path(folder) / "initdb").exists():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (trust auth, fsync off); stopped afterwards."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary; "
                        "it is in the dev extra)")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed: no initdb/pg_ctl on PATH or in "
                    "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)")
    user = None
    if os.geteuid() == 0:  # the server refuses to run as root: run it as an unprivileged user
        for name in ("postgres", "nobody"):
            try:
                user = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        if user is None:
            pytest.skip("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")
    # not under pytest's tmp folder: its 0700 parents keep the server's user out
    root = Path(tempfile.mkdtemp(prefix="tune_prune_pg_"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", _free_port()
    run = functools.partial(subprocess.run, user=user.pw_uid if user else None, cwd=root,
                            capture_output=True, text=True, timeout=120)
    started = False
    try:
        made = run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--no-sync"])
        if made.returncode != 0:
            pytest.skip(f"initdb failed ({made.returncode}): {made.stderr[-500:]}")
        opts = f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
        up = run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
                  "-t", "60", "-o", opts, "start"])
        if up.returncode != 0:
            log = (root / "server.log").read_text()[-500:] if (root / "server.log").exists() else ""
            pytest.skip(f"PostgreSQL did not start ({up.returncode}): {up.stderr[-300:]} {log}")
        started = True
        # trust auth ignores the password: it is there to prove that it is never printed
        yield f"postgresql+psycopg2://postgres:not-printed@127.0.0.1:{port}/postgres"
    finally:
        if started:
            run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def test_unreachable_postgres_is_a_config_error(tmp_path) -> None:
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")
    url = f"postgresql+psycopg2://ann:hush@127.0.0.1:{_free_port()}/studies?connect_timeout=5"
    cfg = SearchConfig.create(dry_run=True, optuna_storage=url, storage_path=str(tmp_path / "res"), name="x")
    with pytest.raises(ConfigError, match="cannot open the Optuna storage.*OperationalError") as info:
        check_optuna_storage(cfg, "x", tmp_path / "res" / "x")
    assert "hush" not in str(info.value)


@pytest.mark.slow
def test_search_on_postgresql(postgres_url, ray_local, tmp_path, capsys) -> None:
    exp, out = _search_on(postgres_url, tmp_path / "res", "onpostgres", capsys)
    assert not (exp / JOURNAL_FILE).exists()
    label = postgres_url.replace("not-printed", "***")
    assert f"Optuna study      : {label} (study 'onpostgres')" in out
    assert "not-printed" not in out
    _assert_study_agrees(postgres_url, "onpostgres", exp)
