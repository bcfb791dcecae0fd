"""The one owner of the folders commands write: new-output checks and atomic writes.

Every writer builds its output beside the final path and renames it into place, so a kill
never leaves a half-written folder or file that looks complete:

- `atomic_dir(final)`: build a directory in a temporary sibling `.NAME.partial-XXXX`; it
  appears at `final` only when the block succeeds, and the sibling is gone either way.
- `replace_dir(tmp, final)`: swap a complete directory in for an existing one via `NAME.old`;
  `recover(final)` undoes what a kill between the two renames left (call it before reading).
- `claim(paths, overwrite)`: output files checked before a command starts working.
- `atomic_file(final)`: the same for one file; `write_json_atomic(path, obj)` for a JSON one
  (`report_json(obj, path)` also prints it);
  `files_into(folder)`: files written aside, then renamed into a folder that holds more.
- `read_json(path, what)`: a JSON file a user may have touched, checked, or one clear line.

Opening a run folder and holding its lock while writing it is `tokworld.run_lock`.

A failed write (disk full, no permission, read-only) is one TokWorldError line naming the
output, never a traceback. Imports nothing of tokworld's but `tokworld.errors`, so every layer
above may use it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokworld.errors import TokWorldError

LOCK = ".lock"
PARTIAL = ".partial-"  # temporary siblings are named `.NAME.partial-XXXX`


def existing_parent(path: Path) -> Path:
    """The nearest folder above `path` that exists (what a write would create `path` in);
    a TokWorldError when it is a file."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise TokWorldError(f"cannot write to {path}: {parent} is a file, not a directory")
    return parent


def claim(paths, overwrite: bool) -> None:
    """Raise TokWorldError unless every path (None skipped) can be written as a new file (or,
    with `overwrite`, replace one): a command calls it on all its output files before it
    starts working, so a run of minutes never ends in "file exists"."""
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise TokWorldError(f"cannot write {path}: it is a directory")
        if path.exists() and not overwrite:
            raise TokWorldError(f"{path} already exists: pass --overwrite to replace it")
        existing_parent(path)


def check_output_dir(out: str | Path, kind: str = "output directory", hint: str = "") -> Path:
    """Raise TokWorldError unless `out` can become a new directory; return it as a Path.

    `out` may be missing or empty (a lock file aside). `kind` names it in the message, and
    `hint` ends the "not empty" one (e.g. ": pass --resume to continue it").
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TokWorldError(f"cannot write to {out}: it exists and is not a directory")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        raise TokWorldError(f"{kind} {out} already exists and is not empty{hint}")
    parent = existing_parent(out)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TokWorldError(f"cannot write to {out}: {parent} is not writable")
    return out


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a failed write inside the block (disk full, no permission, read-only: see
    `io_failure`) into one TokWorldError line naming the output `path`."""
    try:
        yield
    except Exception as e:
        if io_failure(e) is None:
            raise
        raise write_error(path, e) from None


def io_failure(error: BaseException) -> str | None:
    """Why a write failed, when `error` is an OS error or a library's error wrapping one
    (Rust libraries such as safetensors end theirs with "(os error N)"); None otherwise."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    code = re.search(r"\(os error (\d+)\)", str(error))
    return os.strerror(int(code.group(1))) if code else None


def write_error(path: str | Path, error: BaseException) -> TokWorldError:
    """One line for a failed write of `path` (see `io_failure`), naming the file it concerned
    when that is neither `path` nor a temporary sibling of it."""
    other = getattr(error, "filename", None)
    shown = other and PARTIAL not in str(other) and Path(other) != Path(path)
    return TokWorldError(
        f"cannot write {path}: {io_failure(error)}" + (f" ({other})" if shown else "")
    )


@contextmanager
def atomic_dir(final: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty directory that becomes `final` when the block ends without error.

    The directory lives inside a temporary sibling `.NAME.partial-XXXX` of `final` (made with
    the umask's permissions, unlike the sibling); scratch files that must not end up in `final`
    go in its parent, the sibling, which is removed whether the block succeeds or fails.
    `final` must be missing or empty, unless `replace`: then an existing one is swapped out by
    `replace_dir`. A failed write is one TokWorldError line (`writing`).
    """
    final = Path(final)
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}{PARTIAL}", dir=final.parent))
    try:
        with writing(final):
            tmp = work / final.name
            tmp.mkdir()
            yield tmp
            if replace:
                replace_dir(tmp, final)
            else:
                check_output_dir(final)
                if final.exists():
                    final.rmdir()
                tmp.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def atomic_file(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path (same suffix) to write the file `final` at; it replaces
    `final` when the block ends without error and is removed either way. A missing parent
    folder is made; a failed write is one TokWorldError line (`writing`)."""
    final = Path(final)
    tmp = final.with_name(f".{final.stem}{PARTIAL}{os.getpid()}{final.suffix}")
    try:
        with writing(final):
            final.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def files_into(folder: str | Path, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder inside `folder` (which may hold other things, such as
    a train state); when the block ends without error each file written there replaces its
    namesake in `folder`, those named in `last` after the others, so that their presence says
    the rest is complete. The temporary folder goes either way; a failed write is one line."""
    folder = Path(folder)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".files{PARTIAL}", dir=folder))
    try:
        with writing(folder):
            yield work
            for path in sorted(work.iterdir(), key=lambda p: p.name in last):
                os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _old(final: Path) -> Path:
    return final.with_name(final.name + ".old")


def recover(final: str | Path) -> None:
    """Repair what a kill during `replace_dir` left: `NAME.old` alone is put back as `final`;
    beside a complete `final` it is removed. Safe to call from several processes at once."""
    final = Path(final)
    old = _old(final)
    if not old.exists():
        return
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        old.rename(final)
    except FileNotFoundError:  # another process put it back first
        pass


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Replace the directory `final` (if any) by the complete directory `tmp`.

    Two renames with `final` moved to `NAME.old` in between: at every instant either `final`
    or `NAME.old` holds a complete directory, and `recover` puts the right one in place.
    """
    tmp, final = Path(tmp), Path(final)
    recover(final)
    old = _old(final)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def finite(value: Any) -> Any:
    """`value` with every non-finite float (NaN, inf) in it replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Valid JSON of `obj`: non-finite numbers (which bare JSON cannot hold) become null."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as valid JSON (`json_text`) to `path` through a temporary sibling and a
    rename; a missing parent folder is made. OS errors (disk full, permissions) become one
    TokWorldError line."""
    with atomic_file(path) as tmp:
        tmp.write_text(json_text(obj, indent))


def report_json(obj: Any, path: str | Path | None = None) -> Any:
    """A benchmark script's report: print `obj` as JSON and, with `path`, also write it there
    (`write_json_atomic`); return `obj`."""
    print(json_text(obj))
    if path is not None:
        write_json_atomic(path, obj)
    return obj


JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "an integer",
              float: "a number", bool: "true or false", type(None): "null"}  # fmt: skip


def _json_type(value: Any) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def read_json(
    path: str | Path,
    what: str,
    kind: type = dict,
    keys: dict[str, type | tuple[type, ...]] | None = None,
) -> Any:
    """The JSON value in the file `path`, which a user may have edited, damaged or replaced.

    It must be a `kind` (dict: a JSON object) and, as an object, hold every key of `keys` with
    a value of that type or tuple of types (a bool is not an int). Anything else (a missing
    or unreadable file, text that is not JSON, a missing key, a wrong type) raises one
    TokWorldError line naming `what` and `path`.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except OSError as e:
        raise TokWorldError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except ValueError as e:  # UnicodeDecodeError included
        raise TokWorldError(f"cannot read {what} {path}: it is not valid JSON ({e})") from None
    problem = _type_problem(value, kind, "it")
    for key, types in (keys or {}).items():
        if problem is not None:
            break
        if key not in value:
            problem = f"it has no {key!r} entry"
        else:
            problem = _type_problem(value[key], types, f"its {key!r} entry")
    if problem is not None:
        raise TokWorldError(f"cannot read {what} {path}: {problem}")
    return value


def _type_problem(value: Any, types: type | tuple[type, ...], name: str) -> str | None:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return None
    wanted = " or ".join(JSON_TYPES.get(t, t.__name__) for t in types)
    return f"{name} is {_json_type(value)}, expected {wanted}"


# Settings that change how fast a run goes, not what it computes: a resume may change them, and
# a run recorded before one of them existed resumes.
SPEED_ONLY = frozenset({"compile", "cuda_graphs"})


def first_change(old: Any, new: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """(dotted key, old value, new value) of the first entry where two JSON settings differ,
    in the order of `new`'s keys, then `old`'s, the `SPEED_ONLY` keys aside; None when they
    agree. A switch added since `old` was recorded (a key it lacks) that is off (False or None)
    in `new` is no change: off, it does what the run did before it existed."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in [*new, *(k for k in old if k not in new)]:
            if k in SPEED_ONLY or (k not in old and new[k] in (False, None)):
                continue
            change = first_change(old.get(k), new.get(k), f"{key}.{k}" if key else k)
            if change is not None:
                return change
        return None
    return None if old == new else (key, old, new)
