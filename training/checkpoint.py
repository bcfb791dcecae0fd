"""Training state on disk without pickle: safetensors for tensors, JSON for everything else.

A train-state directory holds `model.safetensors`, `optimizer.safetensors` + `optimizer.json`,
`state.json` (step, scheduler, RNG of every rank, caller's extras, config) and `rng.safetensors`.
It is written to a temporary sibling and swapped into place (`tokworld.folders`), so a kill
mid-write leaves the previous checkpoint intact and never a half-written one that looks complete;
a kill between the two renames of the swap is repaired when the state is next read.

`open_run` opens a run folder under `accelerate`: the main process alone locks and writes it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from tokworld.errors import TokWorldError
from tokworld.folders import atomic_dir, read_json, recover
from tokworld.run_lock import start_run


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """This process's python, numpy and torch RNG state, as (JSON part, tensor part)."""
    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    info = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, pos, has_gauss, gauss],
    }
    tensors = {
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    return info, tensors


def set_rng_state(info: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of `rng_state`."""
    version, state, gauss = info["python"]
    random.setstate((version, tuple(state), gauss))
    name, pos, has_gauss, cached = info["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])


def _split_optimizer(state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}, tensors


def _join_optimizer(info: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(info["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": info["param_groups"]}


def save_train_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    step: int,
    rng_states: list[tuple[dict, dict[str, torch.Tensor]]],
    extra: dict | None = None,
) -> None:
    """Write a complete train state to `path` (replacing an older one atomically)."""
    with atomic_dir(path, replace=True) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        opt_info, opt_tensors = _split_optimizer(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng_tensors = {f"{r}.{k}": v for r, (_, ts) in enumerate(rng_states) for k, v in ts.items()}
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        state = {
            "step": step,
            "optimizer": opt_info,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": [info for info, _ in rng_states],
            "extra": extra or {},
        }
        (tmp / "state.json").write_text(json.dumps(state))


def load_train_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    rank: int = 0,
) -> tuple[int, dict]:
    """Restore model, optimizer, scheduler and this rank's RNG; return (step, extra)."""
    path = Path(path)
    recover(path)
    if not (path / "state.json").exists():
        raise TokWorldError(f"no train state to resume from in {path}")
    state = read_state(path)
    try:
        load_model(model, str(path / "model.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        rng_tensors = load_file(str(path / "rng.safetensors"))
        optimizer.load_state_dict(_join_optimizer(state["optimizer"], opt_tensors))
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        rank = rank if rank < len(state["rng"]) else 0
        prefix = f"{rank}."
        mine = {k[len(prefix) :]: v for k, v in rng_tensors.items() if k.startswith(prefix)}
        set_rng_state(state["rng"][rank], mine)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, IndexError,
            SafetensorError) as e:  # fmt: skip
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TokWorldError(
            f"cannot resume from {path}: the train state is damaged or does not fit this model "
            f"({type(e).__name__}: {first})"
        ) from None
    return state["step"], state["extra"]


def read_state(path: str | Path) -> dict:
    """The `state.json` of the train state `path`, checked to hold what resuming reads."""
    keys = {"step": int, "optimizer": dict, "scheduler": (dict, type(None)), "rng": list,
            "extra": dict}  # fmt: skip
    return read_json(Path(path) / "state.json", "train state", keys=keys)


@contextmanager
def open_run(
    out: str | Path,
    state: PartialState,
    resume: bool,
    record_name: str | None = None,
    settings: dict | None = None,
) -> Iterator[Path]:
    """`tokworld.run_lock.start_run` in every process of a run: the main process checks, locks
    and records the run folder `out`; the others wait for it and raise the same one-line error
    when it could not. The lock is held until the block ends."""
    with ExitStack() as stack:
        error = None
        if state.is_main_process:
            try:
                stack.enter_context(start_run(out, settings, resume, record_name))
            except TokWorldError as e:
                error = str(e)
        error = broadcast_object_list([error])[0]
        if error is not None:
            raise TokWorldError(error)
        yield Path(out)
