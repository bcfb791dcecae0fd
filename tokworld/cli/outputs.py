"""Files a command writes: refused when they exist (unless `--overwrite`), JSON always valid.

A command claims all its output files before it starts working (`tokworld.folders.claim`), so a
run of minutes never ends in "file exists"; JSON goes through `tokworld.folders.write_json_atomic`
(non-finite numbers as null, since bare `NaN` is not JSON; a temporary sibling renamed into
place).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokworld.folders import write_json_atomic


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    """`--overwrite`: replace output files that already exist."""
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def write_json(value, path: str | Path | None):
    """Write `value` as valid JSON to `path` (if given) atomically; return `value`."""
    if path is not None:
        write_json_atomic(path, value)
    return value
