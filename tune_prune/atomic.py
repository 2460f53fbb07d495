"""Atomic writes: a reader sees the previous file or folder or the new one, never half of one.

One implementation of the idea for all of tune_prune:

- a **file** is written to a temp file in the same folder, flushed and fsync'd, then
  ``os.replace``'d onto its name (:func:`atomic_write` and the shortcuts below);
- a **folder** is written whole into a temp sibling (``.NAME.<random>.tmp``) and renamed
  into place (:func:`atomic_dir`). An existing folder is replaced with two renames (old
  one aside to ``.NAME.old``, new one in); if the second rename fails the old folder is
  renamed back, and if the process dies between the two renames, :func:`recover_dir`
  (run by the next :func:`atomic_dir` of that folder, and by readers) puts it back.

Whatever raises inside a write (a full disk, a kill turned into an exception, a bug in
the writing callback) leaves the previous version untouched and no temp file behind.

Argument order: the raw writers take the path first, like ``Path.write_text``
(:func:`atomic_write`, :func:`atomic_write_bytes`, :func:`atomic_write_text`); the
serialisers take the object first, like ``torch.save`` and ``json.dump``
(:func:`atomic_torch_save`, :func:`atomic_write_json`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

try:  # POSIX only; elsewhere the lock is a no-op (with a warning)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

__all__ = [
    "file_lock",
    "atomic_dir",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "old_dir",
    "recover_dir",
    "write_file",
]


def _open_mode(mode: str) -> dict[str, Any]:
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    return {} if "b" in mode else {"encoding": "utf-8"}


def write_file(path: PathLike, write: Callable[[IO[Any]], Any], mode: str = "wb") -> None:
    """``write(fh)`` into ``path``, flushed and fsync'd, NOT atomic on its own.

    For the files of a folder written inside :func:`atomic_dir` (the folder's rename is
    the atomic step there; a rename per file would be wasted).
    """
    path = Path(path)
    with open(path, mode, **_open_mode(mode)) as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write(path: PathLike, write: Callable[[IO[Any]], Any], mode: str = "wb") -> None:
    """Call ``write(fh)`` on a temp file next to ``path``, then rename it onto ``path``.

    ``mode`` is ``"wb"`` (a binary handle) or ``"w"`` (a UTF-8 text handle). The parent
    folder is created if missing. On any exception the temp file is removed and
    ``path`` keeps its previous content.
    """
    path = Path(path)
    kwargs = _open_mode(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(data), "wb")


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(text), "w")


def atomic_write_json(obj: Any, path: PathLike, *, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = None) -> None:
    """``json.dump(obj)`` to ``path`` atomically (serialised first: a bad object writes nothing)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=default))


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically (tensors and containers of them only:
    tune_prune never saves a module object; read back with ``weights_only=True``)."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh), "wb")


# --------------------------------------------------------------------------- folders


def old_dir(path: PathLike) -> Path:
    """Where :func:`atomic_dir` puts the previous folder while it swaps in the new one."""
    path = Path(path)
    return path.with_name(f".{path.name}.old")


def recover_dir(path: PathLike, complete: Callable[[Path], bool] | None = None) -> bool:
    """Put back a folder left aside by a replacement that died between its two renames.

    Only when ``path`` is missing and ``.NAME.old`` exists (and, when given,
    ``complete(old)`` says it is whole). Returns True when the folder was restored.
    """
    path = Path(path)
    old = old_dir(path)
    if path.exists() or not old.is_dir() or (complete is not None and not complete(old)):
        return False
    os.replace(old, path)
    logger.warning("restored the previous %s (a replacement of it was interrupted)", path)
    return True


def _fsync_dir(path: Path) -> None:
    """Best effort: make a rename or new entries in ``path`` durable (no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(tmp: Path, path: Path) -> None:
    if path.exists():
        old = old_dir(path)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)  # roll back: the previous folder stays in place
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(path: PathLike, complete: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Write a whole folder atomically: ``with atomic_dir(out) as tmp: <write files into tmp>``.

    On a normal exit the temp folder replaces ``path`` whole (see the module
    docstring); on an exception it is removed and ``path`` is untouched. ``complete``
    tells :func:`recover_dir` what a whole folder looks like. Write the files with
    :func:`write_file` (or anything that writes plain files: they are fsync'd only if
    the writer does it). ``path`` must not be an existing file.
    """
    path = Path(path)
    recover_dir(path, complete)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is a file, not a folder: refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        _fsync_dir(tmp)
        _publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: PathLike) -> Iterator[None]:
    """Exclusive advisory lock (flock) on ``path``, so concurrent processes (Ray trials)
    do a one-off job (train a baseline, pretrain weights) once; a no-op without fcntl."""
    if fcntl is None:  # pragma: no cover - Windows
        logger.warning("no fcntl: %s is not protected against concurrent writers", path)
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
