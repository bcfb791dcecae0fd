"""What `tokworld play` is given (`PlayConfig`) and what all its tabs share (`PlayWorld`)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tokworld.errors import TokWorldError
from tokworld.play.controls import controls_for
from tokworld.play.starts import Starts, find_run_data
from tokworld.run import load_run
from tokworld.tokenizer.pretrained import CONFIG_NAME
from tokworld.tokenizer.vector import VectorCodec


def refuse_vector_run(run: str | Path) -> None:
    """Raise TokWorldError if `run`'s tokenizer is a vector codec: play shows frames. A run
    without a readable tokenizer passes (loading it says what is wrong)."""
    try:
        config = json.loads((Path(run) / "tokenizer" / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return
    if isinstance(config, dict) and config.get("model_type") == VectorCodec.model_type:
        raise TokWorldError(
            f"tokworld play needs a run with a frame tokenizer; {run} reads vector observations"
        )


@dataclass(frozen=True)
class PlayConfig:
    """Settings of `tokworld play`."""

    run: str = field(metadata={"help": "run directory (tokenizer/ + world_model/)"})
    dataset: str | None = field(
        default=None,
        metadata={"help": "real trajectories to start from (default: the run's own data)"},
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port to listen on (0: any free one)"})
    fps: int = field(
        default=0,
        metadata={"help": "0: one step per key press; N: N steps/s, no-op when no key is pressed"},
    )
    real: bool = field(
        default=False,
        metadata={"help": "show the real env beside the dream, given the same actions"},
    )
    context: int = field(default=4, metadata={"help": "real steps each dream starts from"})
    record_dir: str | None = field(
        default=None, metadata={"help": "where sessions are saved (default: RUN/play)"}
    )
    seed: int = field(default=0, metadata={"help": "seeds the starts and the dreams"})
    device: str = field(default="cpu", metadata={"help": "torch device of the models"})

    def __post_init__(self):
        if self.fps < 0:
            raise TokWorldError(f"--fps must be 0 or a number of steps per second, got {self.fps}")
        if self.context < 1:
            raise TokWorldError(f"--context must be >= 1, got {self.context}")
        if not 0 <= self.port < 65536:
            raise TokWorldError(f"--port must be in 0..65535, got {self.port}")

    @property
    def sessions_dir(self) -> Path:
        return Path(self.record_dir) if self.record_dir else Path(self.run) / "play"


class PlayWorld:
    """The run's world model and tokenizer, the real starts and the controls, loaded once and
    shared by every session; `lock` serialises their use (one dream steps at a time)."""

    def __init__(self, cfg: PlayConfig):
        self.cfg = cfg
        refuse_vector_run(cfg.run)
        self.world_model, self.tokenizer = load_run(cfg.run, cfg.device)
        self.data = find_run_data(cfg.run, cfg.dataset)
        self.meta = self.data.meta
        self.world_model.vocab.check_action_space(self.meta.space, "the dataset")
        if self.meta.frame_size != self.tokenizer.config.frame_size:
            raise TokWorldError(
                f"the dataset's frames are {self.meta.frame_size}px but the run's tokenizer "
                f"takes {self.tokenizer.config.frame_size}px"
            )
        self.starts = Starts(self.data, cfg.context, self.tokenizer, cfg.seed)
        self.controls = controls_for(self.meta.env_id, self.meta.space)
        self.lock = threading.Lock()
