"""Two CPU processes (gloo) run `pretrain` as `accelerate launch --multi_gpu` starts them:
identical parameters at the end, different samples, one writer, world size logged."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# Run in each process: pretrain on the tiny preset, then report what this rank saw and did.
WORKER = """
import json, sys
from accelerate import PartialState
from safetensors.torch import save_file
from tokworld.data.windows import WindowDataset
from tokworld.training import loop, pretrain as pipeline, world_model

dataset, out = sys.argv[1], sys.argv[2]
seen, writes, fitting = [], [], []
getitem, save_train_state = WindowDataset.__getitem__, loop.save_train_state
train_world_model, fit_event_shift = pipeline.train_world_model, world_model.fit_event_shift

def spy_getitem(self, i):
    if not fitting:  # training's samples only: from the calibration fit on, all ranks read alike
        seen.append(int(i))
    return getitem(self, i)

def spy_fit(*args, **kwargs):
    fitting.append(True)
    return fit_event_shift(*args, **kwargs)

def spy_save(*args, **kwargs):
    writes.append(kwargs.get("step", args[4]))
    return save_train_state(*args, **kwargs)

def keep_parameters(model, *args, **kwargs):
    result = train_world_model(model, *args, **kwargs)
    rank = PartialState().process_index
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.st")
    return result

WindowDataset.__getitem__ = spy_getitem
world_model.fit_event_shift = spy_fit
loop.save_train_state = spy_save
pipeline.train_world_model = keep_parameters
cfg = pipeline.PretrainConfig(
    dataset, preset="tiny", tokenizer_steps=2, tokenizer_batch_size=8, world_model_steps=6,
    batch_size=4, checkpoint_every=3, eval_every=0, eval_fraction=0,
)
metrics = pipeline.pretrain(cfg, f"{out}/run", progress=False)
rank = PartialState().process_index
report = {"seen": seen, "writes": writes, "world_size": metrics["world_size"]}
with open(f"{out}/report{rank}.json", "w") as f:
    json.dump(report, f)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes, ~20 s
def test_two_cpu_processes_train_one_synchronised_model(minigrid_dataset, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           str(script), minigrid_dataset, str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # The run logged its world size and distributed type (once, from rank 0).
    stages = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"stage"')]
    assert [s["stage"] for s in stages] == ["tokenizer", "world_model"]
    assert all(s["world_size"] == 2 and s["distributed_type"] == "MULTI_CPU" for s in stages)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["distributed_type"]) == (2, "MULTI_CPU")

    reports = [json.loads((tmp_path / f"report{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in reports)
    # Both ranks end with the same parameters, which rank 0 saved.
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.st")) for r in (0, 1))
    saved = load_file(str(tmp_path / "run" / "world_model" / "model.safetensors"))
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name
        assert torch.equal(tensor, saved[name]), name
    # Each rank saw its own shard: 6 steps x 4 windows, none in common.
    seen0, seen1 = reports[0]["seen"], reports[1]["seen"]
    assert len(seen0) == len(seen1) == 24 and not set(seen0) & set(seen1)
    # Only rank 0 wrote checkpoints (tokenizer: step 2; world model: steps 3 and 6).
    assert reports[0]["writes"] == [2, 3, 6] and reports[1]["writes"] == []
