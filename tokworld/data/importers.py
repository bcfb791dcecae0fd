"""Import trajectory datasets that others recorded: dataset specs and their importers.

A dataset spec names where trajectories come from: `minari:DATASET_ID_OR_PATH` (a Minari dataset,
see `tokworld.data.from_minari`) or `hf:REPO_OR_PATH` (Hub or parquet data in another schema,
see `tokworld.data.from_hf`). Importers stream episodes through `convert.episode_rows` and
convert every observation with one `convert.FrameConverter` (images) or, for Minari's flat Box
observations, one `convert.VectorConverter`, whose description is recorded in
`TrajectoryMeta.source`. Writing is `tokworld.data.format.write_trajectories`: streamed, and a
failed import leaves no dataset behind.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import datasets

from tokworld.data.from_hf import import_hf
from tokworld.data.from_minari import import_minari
from tokworld.errors import TokWorldError

SPEC_PREFIXES = ("minari", "hf")
_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_+.-]*):(.+)$")


def parse_spec(spec: str) -> tuple[str, str]:
    """Split `PREFIX:REF` into its known prefix and reference; anything else is an error."""
    match = _PREFIX.match(spec)
    if match is None:
        raise TokWorldError(
            f"dataset spec {spec!r} has no source prefix: use minari:ID_OR_PATH or hf:REPO_OR_PATH"
        )
    prefix, ref = match.groups()
    if prefix not in SPEC_PREFIXES:
        raise TokWorldError(
            f"unknown dataset spec prefix {prefix!r} in {spec!r}: use one of "
            + ", ".join(f"{p}:" for p in SPEC_PREFIXES)
        )
    return prefix, ref


def resolve_dataset_spec(spec: str, cache_dir: str | Path, frame_size: int = 64) -> str:
    """A local path or Hub id in tokworld's schema for `spec`, converting it first if needed.

    - `minari:ID_OR_PATH` is imported once into `cache_dir` (reused by later calls) and the
      converted dataset's path is returned (`frame_size` applies to image observations; vector
      ones are kept as they are);
    - `hf:REPO_OR_PATH` names a dataset already in tokworld's schema: the reference is returned;
    - an existing path or a spec without a prefix (a Hub id) is returned unchanged;
    - an unknown prefix is a TokWorldError.
    """
    if Path(spec).exists() or _PREFIX.match(spec) is None:
        return spec
    prefix, ref = parse_spec(spec)
    if prefix == "hf":
        return ref
    key = hashlib.sha1(f"{spec}|{frame_size}".encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", ref.strip("/")).strip("._")[-48:]
    out = Path(cache_dir) / f"minari-{name}-{frame_size}-{key}"
    if not (out / "dataset_info.json").exists():
        import_minari(ref, out, frame_size=frame_size)
    return str(out)


def import_dataset(
    spec: str,
    out: str | Path,
    frame_size: int = 64,
    mapping: str | dict | None = None,
    **hf_options,
) -> datasets.Dataset:
    """Convert the dataset `spec` names into a tokworld dataset at `out` (`tokworld import`).

    `mapping` and `hf_options` (config, split, revision, streaming, action_space, env_id) apply
    to `hf:` specs only, and are an error with `minari:`; see `tokworld.data.from_hf.import_hf`.
    """
    prefix, ref = parse_spec(spec)
    if prefix == "minari":
        if mapping is not None or hf_options:
            name = "map" if mapping is not None else next(iter(hf_options))
            raise TokWorldError(f"--{name.replace('_', '-')} applies to hf: imports only")
        return import_minari(ref, out, frame_size=frame_size)
    if mapping is None:
        raise TokWorldError(
            "hf: imports need --map observation=COL,action=COL,reward=COL[,terminated=COL]"
        )
    return import_hf(ref, out, mapping, frame_size=frame_size, **hf_options)
