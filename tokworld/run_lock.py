"""A run folder open for writing: `start_run(out, settings, resume, record_name)` creates or
resumes it, records its settings, and holds its lock (`out/.lock`, with the holder's pid) while
the block runs, so two processes never write one run. Built on `tokworld.folders`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokworld.errors import TokWorldError
from tokworld.folders import (
    LOCK,
    PARTIAL,
    check_output_dir,
    first_change,
    read_json,
    write_json_atomic,
    writing,
)


def check_run(
    out: str | Path, settings: dict | None, resume: bool, record_name: str | None
) -> Path:
    """Raise TokWorldError unless `start_run` may open `out`; return it as a Path.

    A new run needs a missing or empty `out`. With `resume`, a folder holding the record
    `record_name` must have been started with the same `settings`; without a record name,
    `resume` accepts any folder (the caller checks what it resumes).
    """
    out = Path(out)
    recorded = out / record_name if record_name else None
    if resume and out.is_dir() and (recorded is None or recorded.exists()):
        if recorded is not None:
            change = first_change(read_json(recorded, "run settings"), _as_json(settings))
            if change is not None:
                key, old, new = change
                raise TokWorldError(
                    f"cannot resume {out}: it was started with other settings "
                    f"({key}={old!r}, not {new!r})"
                )
        return out
    return check_output_dir(out, "run directory", ": pass --resume to continue it")


@contextmanager
def start_run(
    out: str | Path, settings: dict | None, resume: bool, record_name: str | None
) -> Iterator[Path]:
    """Open the run folder `out` for writing (see `check_run`) and hold its lock meanwhile.

    Records `settings` as JSON in `out/record_name`; on `resume`, removes the `.partial`
    leftovers of a killed writer. A second process opening `out` while this one holds it gets
    a TokWorldError naming this one's pid. Under `accelerate`, only the main process calls it.
    """
    out = check_run(out, settings, resume, record_name)  # before anything is written
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    fd = _lock(out)
    try:
        check_run(out, settings, resume, record_name)  # again, now that no one else writes
        if record_name:
            write_json_atomic(out / record_name, _as_json(settings))
        if resume:
            for leftover in sorted(out.rglob(f".*{PARTIAL}*"), reverse=True):
                _remove(leftover)
        yield out
    finally:
        _unlock(out, fd)


def _as_json(settings: dict | None) -> Any:
    return json.loads(json.dumps(settings))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _lock(out: Path) -> int:
    """Hold an exclusive `flock` on `out/.lock` and write our pid in it; return its fd."""
    path = out / LOCK
    while True:
        with writing(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise TokWorldError(
                f"run directory {out} is in use by process {holder}: wait for it to end"
            ) from None
        try:  # the holder before us may have removed the file we opened: lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _unlock(out: Path, fd: int) -> None:
    """Remove the lock file while still holding it, then let go."""
    (out / LOCK).unlink(missing_ok=True)
    os.close(fd)
