"""Files a command writes: refused when they exist (unless `--overwrite`), JSON always valid.

A command claims all its output files before it starts working, so a run of minutes never ends
in "file exists"; JSON is written with non-finite numbers as null (bare `NaN` is not JSON) and
atomically (a temporary sibling renamed into place).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from tokworld.errors import TokWorldError


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    """`--overwrite`: replace output files that already exist."""
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def claim(paths, overwrite: bool) -> None:
    """Raise TokWorldError unless every path (None skipped) can be written as a new file."""
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise TokWorldError(f"cannot write {path}: it is a directory")
        if path.exists() and not overwrite:
            raise TokWorldError(f"{path} already exists: pass --overwrite to replace it")
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise TokWorldError(f"cannot write {path}: {parent} is a file, not a directory")


def finite(value):
    """`value` with every non-finite float (NaN, inf) in it replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def json_text(value) -> str:
    """Valid JSON of `value` (non-finite numbers as null), indented."""
    return json.dumps(finite(value), indent=2, allow_nan=False)


def write_json(value, path: str | Path | None):
    """Write `value` as JSON to `path` (if given) atomically; return `value`."""
    if path is not None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.partial")
            tmp.write_text(json_text(value))
            os.replace(tmp, path)
        except OSError as e:
            raise TokWorldError(f"cannot write {path}: {e.strerror or e}") from None
    return value
