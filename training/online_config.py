"""The online loop's settings (`tokworld finetune`'s flags): `OnlineConfig`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from tokworld.config import ModelChoices
from tokworld.cuda_graph import check_cuda_graphs
from tokworld.data.collect import OBSERVATION_CHOICES
from tokworld.errors import TokWorldError
from tokworld.planner import PlannerConfig
from tokworld.policy import CRITICS, check_value_bins
from tokworld.presets import NAMES, check_preset
from tokworld.run import default_device
from tokworld.training.imagination import ImaginationConfig
from tokworld.training.world_model import check_event_share, event_share_field

ACTORS = ("policy", "plan")


@dataclass(frozen=True)
class OnlineConfig:
    """Settings of an online run. Stage step counts are per epoch; `imagination.steps` too."""

    env_id: str = field(
        metadata={"flag": "--env", "help": "gymnasium env id, e.g. MiniGrid-Empty-5x5-v0"}
    )
    env_steps: int = field(
        default=10000, metadata={"required": True, "help": "real env steps in all"}
    )
    initial_steps: int = field(default=2000, metadata={"help": "random steps of epoch 0"})
    steps_per_epoch: int = 1000
    epsilon: float = field(
        default=0.01, metadata={"help": "random actions when the policy collects"}
    )
    temperature: float = field(default=1.0, metadata={"help": "policy temperature, collecting"})
    preset: str = field(
        default="small", metadata={"choices": NAMES, "help": "sizes of models built from scratch"}
    )
    policy_input: str = field(
        default="auto",
        metadata={
            "choices": ("auto", "frames", "tokens", "vector"),
            "help": "what the policy reads (auto: decoded frames, or a vector codec's bins)",
        },
    )
    critic: str = field(
        default="shared",
        metadata={
            "choices": CRITICS,
            "help": "the critic reads the actor's LSTM (IRIS), or has its own encoder and LSTM "
            "(DreamerV3; for dense rewards, whose large returns would shape the actor's features)",
        },
    )
    value_bins: int = field(
        default=0,
        metadata={
            "help": "critic of a policy built here: 0 regresses the returns by squared error "
            "(IRIS); N >= 2 predicts them as two-hot logits over N symlog bins (DreamerV3: 255), "
            "which learns returns of any scale (e.g. Pendulum's hundreds) at one pace"
        },
    )
    tokenizer_steps: int = field(default=100, metadata={"help": "per epoch (0: frozen)"})
    tokenizer_batch_size: int = 32
    model: ModelChoices = field(default_factory=ModelChoices)
    world_model_steps: int = field(default=200, metadata={"help": "per epoch"})
    world_model_batch_size: int = 32
    world_model_lr: float = 3e-4
    event_share: float = event_share_field()
    imagination: ImaginationConfig = field(default_factory=ImaginationConfig)
    act: str = field(
        default="policy",
        metadata={
            "choices": ACTORS,
            "help": "what collects after the random epoch 0 and is evaluated: the policy "
            "learned in imagination, or planning in the world model (the --plan-* flags; no "
            "policy is then trained)",
        },
    )
    plan: PlannerConfig = field(default_factory=PlannerConfig)
    eval_every: int = field(default=1, metadata={"help": "epochs between real evaluations"})
    eval_episodes: int = 10
    frame_size: int = 64
    observation: str = field(
        default="auto",
        metadata={
            "choices": OBSERVATION_CHOICES,
            "help": "what is collected: frames, the env's own flat Box vector, or (auto) a "
            "vector where the env has one (a pretrained run's tokenizer decides when given)",
        },
    )
    seed: int = 0

    def __post_init__(self):
        check_preset(self.preset)
        for name in (
            "env_steps",
            "initial_steps",
            "steps_per_epoch",
            "eval_every",
            "eval_episodes",
        ):
            if getattr(self, name) < 1:
                raise TokWorldError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.world_model_steps < 1 or self.tokenizer_steps < 0:
            raise TokWorldError("world_model_steps must be >= 1 and tokenizer_steps >= 0")
        if not 0 <= self.epsilon <= 1:
            raise TokWorldError(f"epsilon must lie in [0, 1], got {self.epsilon}")
        check_value_bins(self.value_bins)
        check_event_share(self.event_share)
        if self.act not in ACTORS:
            raise TokWorldError(f"act must be one of {', '.join(ACTORS)}, got {self.act!r}")
        if self.act == "policy" and self.plan != PlannerConfig():
            raise TokWorldError("the --plan-* flags set the planner: add --act plan")
        if self.act == "plan" and self.plan.cuda_graphs:  # the loop runs on the GPU if any
            check_cuda_graphs(default_device())

    @property
    def epochs(self) -> int:
        """Epoch 0 collects `initial_steps`, each later one up to `steps_per_epoch` more."""
        rest = max(0, self.env_steps - self.initial_steps)
        return 1 + -(-rest // self.steps_per_epoch)

    def steps_in(self, epoch: int) -> int:
        """Real steps epoch `epoch` collects: `env_steps` in all."""
        if epoch == 0:
            return min(self.initial_steps, self.env_steps)
        done = self.initial_steps + (epoch - 1) * self.steps_per_epoch
        return min(self.steps_per_epoch, self.env_steps - done)

    def to_dict(self) -> dict:
        """The settings as JSON; `act` and `plan` only when a planner acts, so that a run
        recorded before they existed resumes."""
        settings = json.loads(json.dumps(asdict(self)))
        if self.act == "policy":
            del settings["act"], settings["plan"]
        return settings
