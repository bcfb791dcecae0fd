"""Files a command writes: refused when they exist (unless `--overwrite`), JSON always valid.

A command claims all its output files before it starts working, so a run of minutes never ends
in "file exists"; JSON goes through `tokworld.folders.write_json_atomic` (non-finite numbers as
null, since bare `NaN` is not JSON; a temporary sibling renamed into place).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokworld.errors import TokWorldError
from tokworld.folders import existing_parent, write_json_atomic


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
        existing_parent(path)


def write_json(value, path: str | Path | None):
    """Write `value` as valid JSON to `path` (if given) atomically; return `value`."""
    if path is not None:
        write_json_atomic(path, value)
    return value
