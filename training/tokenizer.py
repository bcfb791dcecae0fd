"""Train the frame tokenizer with the shared loop (or fit the vector codec), and tokenize
trajectory datasets once.

`train_tokenizer(ds, "RUN/tokenizer")` leaves the model in `RUN/tokenizer/config.json` +
`model.safetensors` (what `FrameTokenizer.from_pretrained` reads), the resumable checkpoint in
`RUN/tokenizer/train_state`, tensorboard logs in `RUN/tokenizer/logs` and the logged metrics in
`RUN/tokenizer/history.json`. The folder must be new or empty unless `resume`, and is locked
while training writes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import Dataset

from tokworld.data.format import TrajectoryMeta, load_trajectories
from tokworld.errors import TokWorldError
from tokworld.folders import atomic_dir, check_output_dir, files_into
from tokworld.tokenizer.codecs import space_from_dict
from tokworld.tokenizer.frame import FrameTokenizer, FrameTokenizerConfig
from tokworld.tokenizer.observation import ObservationTokenizer
from tokworld.tokenizer.vector import VectorCodec, VectorCodecConfig
from tokworld.training.accel import seed_everything
from tokworld.training.checkpoint import open_run
from tokworld.training.loop import TrainConfig, resume_config, train


class FrameDataset(Dataset):
    """The `observation` column of a trajectory dataset as `{"observation": uint8 (H, W, 3)}`.

    Frames are read from the Arrow table on demand, so memory does not grow with the dataset.
    """

    def __init__(self, ds: datasets.Dataset):
        if "observation" not in ds.column_names:
            raise TokWorldError("dataset has no 'observation' column")
        self.frames = ds.select_columns(["observation"]).with_format("torch", dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"observation": self.frames[int(i)]["observation"]}


def _as_frames(data) -> Dataset:
    if isinstance(data, str | Path):
        data = load_trajectories(str(data))
    if isinstance(data, datasets.Dataset):
        return FrameDataset(data)
    return data  # already a map-style dataset of {"observation": uint8 (H, W, 3)}


def train_tokenizer(
    dataset,
    out_dir: str | Path,
    preset: str = "small",
    *,
    config: FrameTokenizerConfig | None = None,
    steps: int = 2000,
    batch_size: int = 64,
    resume: bool = False,
    eval_dataset=None,
    progress: bool = True,
    **train_kwargs,
) -> tuple[FrameTokenizer, dict]:
    """Train a `FrameTokenizer` on the frames of `dataset`; save it to `out_dir`.

    `dataset` (and `eval_dataset`) is a trajectory dataset, its path, or a map-style dataset
    of `{"observation": uint8 (H, W, 3)}`. `config` replaces the `preset`. Other keyword
    arguments are `TrainConfig` fields (lr, warmup_steps, checkpoint_every, seed, grad_accum,
    ...); `resume` continues a checkpoint made with the same model and training configs only.
    k-means codebook init is switched off when one batch holds fewer latent vectors than
    the codebook has codes (k-means would have to duplicate samples). Returns (the trained
    model in eval mode, the final metrics).
    """
    config = config or FrameTokenizerConfig.preset(preset)
    if config.kmeans_init and batch_size * config.tokens_per_frame < config.codebook_size:
        config = dataclasses.replace(config, kmeans_init=False)
    defaults = {"lr": 1e-3, "warmup_steps": min(100, steps // 10), "checkpoint_every": 500}
    try:
        cfg = TrainConfig(steps=steps, batch_size=batch_size, **{**defaults, **train_kwargs})
    except TypeError as e:
        raise TokWorldError(f"bad training option: {e}") from None
    frames = _as_frames(dataset)
    shape = tuple(frames[0]["observation"].shape)
    size = config.frame_size
    if shape != (size, size, 3):
        raise TokWorldError(f"frames are {shape}, the tokenizer expects ({size}, {size}, 3)")
    # The process group must exist before the quantizer is built: VectorQuantize decides at
    # construction whether to all-reduce its codebook across processes.
    state = PartialState(cpu=not torch.cuda.is_available())
    seed_everything(cfg.seed)
    model = FrameTokenizer(config)
    with open_run(out_dir, state, resume):
        metrics = train(
            model,
            frames,
            cfg,
            out_dir,
            name="tokenizer",
            resume=resume,
            eval_dataset=None if eval_dataset is None else _as_frames(eval_dataset),
            config_to_check=resume_config(config.to_dict(), cfg),
            progress=progress,
        )
        if state.is_main_process:  # beside the train state; the weights last: then it is whole
            with files_into(out_dir, last=("model.safetensors",)) as tmp:
                model.save_pretrained(tmp)
    return model.eval(), metrics


def fit_vector_codec(ds: datasets.Dataset, bins: int = 64, binning: str = "quantile"):
    """A `VectorCodec` fitted on the vector observations of trajectory dataset `ds` (uniform
    binning uses the finite bounds of the dataset's observation space)."""
    meta = TrajectoryMeta.from_dataset(ds)
    if meta.observation != "vector":
        raise TokWorldError("the vector codec fits vector observations; this dataset has frames")
    space = space_from_dict(meta.observation_space)
    obs = ds.select_columns(["observation"]).with_format("numpy")[:]["observation"]
    config = VectorCodecConfig(dims=space.shape[0], bins=bins, binning=binning)
    return VectorCodec.fit(np.asarray(obs), config, space.low, space.high)


def _fingerprint(tokenizer: ObservationTokenizer, ds: datasets.Dataset) -> str:
    h = hashlib.sha256(ds._fingerprint.encode())
    for name, tensor in tokenizer.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def tokenize_dataset(
    tokenizer: ObservationTokenizer,
    ds: datasets.Dataset,
    batch_size: int = 256,
    cache_file_name: str | None = None,
) -> datasets.Dataset:
    """`ds` plus a `codes` column: the K codes of each row's observation (frame or vector).

    Rows keep their order and every other column; codes are int16 (int32 for codebooks over
    32768). Runs `datasets.map(batched=True)`, so the result is cached like any map (in
    `cache_file_name` when given) and the fingerprint depends on the tokenizer's weights.
    """
    if "observation" not in ds.column_names:
        raise TokWorldError("dataset has no 'observation' column")
    if "codes" in ds.column_names:
        raise TokWorldError("dataset already has a 'codes' column")
    tokenizer.eval()
    dtype = "int16" if tokenizer.codebook_size <= 2**15 else "int32"
    features = ds.features.copy()
    features["codes"] = datasets.List(datasets.Value(dtype), length=tokenizer.tokens_per_frame)

    kind = np.float32 if tokenizer.observation == "vector" else np.uint8

    def encode(observation) -> dict:
        observations = torch.from_numpy(np.asarray(observation, dtype=kind))
        return {"codes": tokenizer.encode(observations).cpu().numpy().astype(dtype)}

    out = ds.with_format("numpy").map(
        encode,
        batched=True,
        batch_size=batch_size,
        input_columns=["observation"],
        features=features,
        new_fingerprint=_fingerprint(tokenizer, ds),
        cache_file_name=cache_file_name,
        desc="tokenize",
    )
    return out.with_format(ds.format["type"])


def tokenize_to_disk(
    tokenizer: ObservationTokenizer, ds: datasets.Dataset, out: str | Path, batch_size: int = 256
) -> datasets.Dataset:
    """`ds` plus its `codes` column, saved at `out` (which must be new or empty).

    The map's cache goes beside the output, not into the input dataset, and is removed after;
    the dataset appears at `out` only when complete.
    """
    out = check_output_dir(out)
    with atomic_dir(out) as tmp:  # the map's cache goes in its parent, removed after
        coded = tokenize_dataset(tokenizer, ds, batch_size, str(tmp.parent / "codes.arrow"))
        coded.save_to_disk(str(tmp))
    return datasets.load_from_disk(str(out))
