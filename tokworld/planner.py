"""Planning in the world model: model-predictive control by random shooting, no policy needed.

At every real step, for every row of the batch, the planner imagines `candidates` action
sequences of `horizon` steps from the last `context` real steps (each sampled action held for
`hold` imagined steps; one candidate is the previous best plan, shifted by a step), scores
each by its discounted imagined return (rewards after an imagined end do not count) and plays
the first action of the best. Box actions choose among `levels` evenly spaced bins of the
action codec per dimension (e.g. 3 of 32 bins over [-2, 2]: the centres of bins 0, 16 and 31,
-1.94, 0.06 and 1.94), discrete actions among all. When every held sequence fits in the
budget with the previous plan (CartPole's 2 actions held 10 of 30 steps: 2^3 = 8 sequences,
plus the plan, <= 128), each is imagined once instead of `candidates` random draws: an
exhaustive search, cheaper and never missing a sequence.

A `Planner` acts like `policy.Agent`: real observations in, env actions out, `reset(rows)` at
episode starts, a single observation gives a single action. It only sees observations, so
the reward of a real step in its context is the one it imagined for the action it played.
Planning trades compute for learning: every real step costs `horizon` imagined steps (one
forward pass each with parallel or block frame decoding, K + 2 with token decoding) over
`rollouts` (`candidates`, or fewer for an exhaustive search) per row of the batch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from einops import rearrange, repeat

from tokworld.errors import TokWorldError
from tokworld.imagine import ImaginationEngine
from tokworld.model import TokWorldModel
from tokworld.sampling import SamplingConfig, bf16_field, calibrated_field


@dataclass(frozen=True)
class PlannerConfig:
    """Random-shooting model-predictive control (see the module docstring)."""

    candidates: int = field(
        default=128,
        metadata={
            "flag": "--plan-candidates",
            "help": "action sequences imagined per step (or every held sequence once, if fewer)",
        },
    )
    horizon: int = field(
        default=30, metadata={"flag": "--plan-horizon", "help": "imagined steps per sequence"}
    )
    hold: int = field(
        default=5,
        metadata={"flag": "--plan-hold", "help": "imagined steps each sampled action is held"},
    )
    levels: int = field(
        default=3,
        metadata={
            "flag": "--plan-levels",
            "help": "Box actions: evenly spaced bins per dimension to choose from (0: all)",
        },
    )
    discount: float = field(
        default=0.99, metadata={"flag": "--plan-discount", "help": "discount of imagined rewards"}
    )
    context: int = field(
        default=4,
        metadata={"flag": "--plan-context", "help": "real steps the imagination starts from"},
    )
    temperature: float = field(
        default=0.0,
        metadata={
            "flag": "--plan-temperature",
            "help": "sampling temperature of imagination (0: the most likely token)",
        },
    )

    cuda_graphs: bool = field(
        default=False,
        metadata={
            "flag": "--plan-cuda-graphs",
            "help": "replay imagination's step forwards from CUDA graphs (GPU)",
        },
    )
    bf16: bool = bf16_field("--plan-bf16", "imagine the plans under bfloat16 autocast")
    calibrated: bool = calibrated_field("--plan-calibrated")

    def __post_init__(self):
        for name in ("candidates", "horizon", "hold", "context"):
            if getattr(self, name) < 1:
                raise TokWorldError(f"planner {name} must be >= 1, got {getattr(self, name)}")
        if self.levels == 1 or self.levels < 0:
            raise TokWorldError(f"planner levels must be 0 (all bins) or >= 2, got {self.levels}")
        if not 0 < self.discount <= 1:
            raise TokWorldError(f"planner discount must be in (0, 1], got {self.discount}")
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise TokWorldError(
                f"planner temperature must be finite and >= 0, got {self.temperature}"
            )

    @property
    def sampling(self) -> SamplingConfig:
        """How imagination draws tokens: greedy at temperature 0; at the data's odds of an event
        with `calibrated`."""
        if self.temperature == 0:
            return SamplingConfig(greedy=True, calibrated=self.calibrated)
        return SamplingConfig(temperature=self.temperature, calibrated=self.calibrated)


class Planner:
    """Act in a real env by planning in `world_model` (see the module docstring).

    `tokenizer` encodes the real observations; `task` is the model's task index for this env
    (None: its last task).
    """

    def __init__(
        self,
        world_model: TokWorldModel,
        tokenizer,
        config: PlannerConfig = PlannerConfig(),
        seed: int = 0,
        task: int | None = None,
    ):
        self.config, self.tokenizer, self.task = config, tokenizer.eval(), task
        self.tasks = world_model.config.tasks
        self.codec = world_model.vocab.action
        graphs, bf16 = config.cuda_graphs, config.bf16
        self.engine = ImaginationEngine(
            world_model, None, config.sampling, seed, cuda_graphs=graphs, bf16=bf16
        )
        self.device = world_model.device
        self.generator = torch.Generator().manual_seed(seed)
        self.choices = [self._choices(size) for size in self.codec.sizes]
        self.segments = -(-config.horizon // config.hold)  # held actions per sequence
        self.grid = self._grid()
        self.history: list[dict[str, list]] = []
        self.plans: list[torch.Tensor | None] = []
        self.retired: set[int] = set()  # rows whose episodes are over: not planned for

    @property
    def task_name(self) -> str | None:
        """The model's task the planner imagines in (None for a model without tasks)."""
        if not self.tasks:
            return None
        return self.tasks[-1 if self.task is None else self.task]

    def _choices(self, size: int) -> torch.Tensor:
        """The local codes one action component is planned over."""
        if self.codec.kind != "Box" or self.config.levels in (0, size):
            return torch.arange(size)
        return torch.linspace(0, size - 1, min(self.config.levels, size)).round().long()

    @property
    def rollouts(self) -> int:
        """Action sequences imagined per row and real step: `candidates`, or every held
        sequence and the previous plan when they are fewer."""
        return self.config.candidates if self.grid is None else len(self.grid) + 1

    def _grid(self) -> torch.Tensor | None:
        """(G, S, D) every sequence of held actions over the horizon's S segments, when they
        and the previous plan fit in `candidates`; else None (random shooting)."""
        joint = math.prod(len(c) for c in self.choices)
        if joint**self.segments + 1 > self.config.candidates:
            return None
        actions = torch.tensor(list(itertools.product(*(c.tolist() for c in self.choices))))
        picks = torch.tensor(list(itertools.product(range(joint), repeat=self.segments)))
        return actions[picks]

    def reset(self, rows=None) -> None:
        """Forget the history and plan of `rows` (indices), or of every row; they are planned
        for again if they were retired."""
        if rows is None:
            self.history, self.plans, self.retired = [], [], set()
            return
        self.retired.difference_update(rows)
        for r in rows:
            if r < len(self.history):
                self.history[r], self.plans[r] = _empty(), None

    def retire(self, rows) -> None:
        """Stop planning for `rows` (indices; e.g. batch slots with no episode left to play):
        they get the first action of the codec's range until `reset` brings them back."""
        self.retired.update(rows)

    @torch.no_grad()
    def __call__(self, observations):
        """Observations (B, H, W, 3) or (B, D) -> env actions (B, ...); one observation gives
        one numpy action."""
        kind = self.tokenizer.observation
        single = np.ndim(observations) == (1 if kind == "vector" else 3)
        obs = torch.as_tensor(np.asarray(observations))
        obs = obs.unsqueeze(0) if single else obs
        codes = self.tokenizer.encode(obs).cpu()
        b = codes.shape[0]
        if self.history and len(self.history) != b:
            raise TokWorldError(
                f"the planner holds {len(self.history)} rows, got {b}: call reset() first"
            )
        if not self.history:
            self.history, self.plans = [_empty() for _ in range(b)], [None] * b
        for row, c in zip(self.history, codes, strict=True):
            row["codes"] = (row["codes"] + [c])[-self.config.context :]
        local = torch.zeros(b, self.codec.tokens_per_step, dtype=torch.long)
        reward = torch.zeros(b)
        # Rows whose context is as long go together (after a reset a row's context is shorter).
        try:
            active = [i for i in range(b) if i not in self.retired]
            for length in sorted({len(self.history[i]["codes"]) for i in active}):
                rows = [i for i in active if len(self.history[i]["codes"]) == length]
                local[rows], reward[rows] = self._plan(rows)
        except BaseException:  # an interrupted step leaves no row half-updated
            self.reset()
            raise
        for i, row in enumerate(self.history):
            row["action"] = (row["action"] + [local[i]])[-self.config.context :]
            row["reward"] = (row["reward"] + [float(reward[i])])[-self.config.context :]
        actions = self.codec.decode_components(local)
        return actions[0].numpy() if single else actions

    def _plan(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Plan for `rows` (same context length): their first actions (local codes) and the
        rewards imagined for them."""
        cfg = self.config
        sequences = self._candidates(rows)  # (R, N, H, D) local codes
        n = sequences.shape[1]
        context = {k: repeat(v, "r ... -> (r n) ...", n=n) for k, v in self._context(rows).items()}
        self.engine.start(context)
        flat = rearrange(sequences, "r n h d -> h (r n) d").to(self.device)
        returns = torch.zeros(len(rows) * n, device=self.device)
        alive = torch.ones(len(rows) * n, device=self.device)
        for h in range(cfg.horizon):
            step = self.engine.step(self.codec.decode_components(flat[h]))
            reward = step.reward.float()
            if h == 0:
                first_reward = reward.cpu()
            returns += alive * cfg.discount**h * reward
            alive = alive * (~step.terminated).float()
        best = rearrange(returns.cpu(), "(r n) -> r n", n=n).argmax(1)
        chosen = sequences[torch.arange(len(rows)), best]  # (R, H, D)
        for i, r in enumerate(rows):
            self.plans[r] = chosen[i]
        first = rearrange(first_reward, "(r n) -> r n", n=n)[torch.arange(len(rows)), best]
        return chosen[:, 0], first

    def _candidates(self, rows: list[int]) -> torch.Tensor:
        """(R, N, H, D) local action codes: held actions, random or (with a grid) every
        sequence after candidate 0; candidate 0 the last plan (without one, a held sequence)."""
        cfg = self.config
        r = len(rows)
        if self.grid is None:
            shape = (r, cfg.candidates, self.segments)
            parts = [
                c[torch.randint(len(c), shape, generator=self.generator)] for c in self.choices
            ]
            segmented = torch.stack(parts, -1)
        else:
            segmented = repeat(torch.cat([self.grid[:1], self.grid]), "n s d -> r n s d", r=r)
        held = repeat(segmented, "r n s d -> r n (s k) d", k=cfg.hold)
        sequences = held[:, :, : cfg.horizon].clone()
        for i, row in enumerate(rows):
            plan = self.plans[row]
            if plan is not None:  # shifted by the step just played; its last action repeated
                sequences[i, 0] = torch.cat([plan[1:], plan[-1:]])
        return sequences

    def _context(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """The rows' real context; the last step's action and reward are placeholders."""
        hist = [self.history[r] for r in rows]
        d = self.codec.tokens_per_step
        codes = torch.stack([torch.stack(h["codes"]) for h in hist])
        c = codes.shape[1]
        local = torch.zeros(len(rows), c, d, dtype=torch.long)
        reward = torch.zeros(len(rows), c)
        if c > 1:
            local[:, :-1] = torch.stack([torch.stack(h["action"][-(c - 1) :]) for h in hist])
            reward[:, :-1] = torch.tensor([h["reward"][-(c - 1) :] for h in hist])
        action = self.codec.decode_components(local)
        context = {"codes": codes, "action": action, "reward": reward,
                   "terminated": torch.zeros(len(rows), c, dtype=torch.bool)}  # fmt: skip
        if self.task is not None:
            context["task"] = torch.full((len(rows), c), self.task)
        return context


def _empty() -> dict[str, list]:
    return {"codes": [], "action": [], "reward": []}
