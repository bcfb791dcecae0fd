"""Actor-critic training inside the world model: the policy never sees the real environment.

One update: sample `batch_size` real context windows of `context_steps` steps (a share
`event_starts` of them just before a real rare event, see `RealContext`); burn the LSTM in
on all but the last frame (no gradient); from the last frame imagine `horizon` steps with the
frozen world model while the policy acts, keeping log-probs, entropies and values with gradient
(the policy runs on the frames, or codes, that the engine returns). Then:

- lambda-returns bootstrapped from an EMA copy of the whole actor-critic (the target critic);
- advantages scaled by max(1, S), S an EMA of the 95th - 5th percentile of the returns
  (DreamerV3), so one entropy weight suits any reward scale;
- actor: REINFORCE with the scaled advantage, plus an entropy bonus; critic: squared error to
  the returns, or two-hot cross-entropy with `PolicyConfig.value_bins` (on the actor's own
  LSTM, or on a network of its own with `PolicyConfig.critic="separate"`). Steps after an
  imagined episode end carry no loss.

The world model and the tokenizer run under `no_grad` in the engine and are never handed to
the optimizer; only the actor-critic learns.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from tokworld import twohot
from tokworld.cuda_graph import check_cuda_graphs
from tokworld.data.windows import RealContext
from tokworld.errors import TokWorldError
from tokworld.imagine import ImaginationEngine, imagination_decoder
from tokworld.model import TokWorldModel
from tokworld.policy import ActorCritic
from tokworld.run import default_device
from tokworld.sampling import SamplingConfig, bf16_field, calibrated_field
from tokworld.training.accel import describe, make_accelerator
from tokworld.training.checkpoint import load_train_state, rng_state, save_train_state
from tokworld.training.loop import check_resume_config, require_finite, resume_config


@dataclass(frozen=True)
class ImaginationConfig:
    """How the policy learns in imagination (IRIS and DreamerV3 defaults where they agree)."""

    steps: int = field(
        default=100,
        metadata={"flag": "--policy-steps", "help": "imagination updates (per epoch online)"},
    )
    batch_size: int = field(default=32, metadata={"help": "imagined rollouts per update"})
    horizon: int = field(default=20, metadata={"help": "imagined steps per rollout"})
    context_steps: int = field(
        default=4, metadata={"flag": "--context", "help": "real steps before imagining"}
    )
    event_starts: float = field(
        default=0.0,
        metadata={
            "help": "share of rollouts that start at most `horizon` steps before a real rare "
            "event (an end, or a reward other than the usual one), for sparse rewards (0: "
            "every start uniform)"
        },
    )
    gamma: float = 0.995
    lam: float = field(default=0.95, metadata={"help": "lambda of the lambda-returns"})
    entropy_weight: float = 1e-3
    value_weight: float = 1.0
    lr: float = field(default=1e-4, metadata={"flag": "--policy-lr"})
    grad_clip: float = 10.0
    target_decay: float = field(default=0.98, metadata={"help": "EMA decay of the target critic"})
    return_scale_decay: float = 0.99
    temperature: float = field(
        default=1.0, metadata={"flag": "--imagine-temperature", "help": "world-model sampling"}
    )
    top_k: int | None = field(
        default=None, metadata={"flag": "--imagine-top-k", "help": "world-model sampling"}
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile imagination's per-token forward (on CPU, 1.35-1.5x more "
            "imagined steps/s after a one-time warm-up of about a minute)"
        },
    )
    cuda_graphs: bool = field(
        default=False,
        metadata={
            "help": "replay imagination's per-step forwards and the frame decoder from CUDA "
            "graphs (GPU; at batch 32 on an H200 4-6x more imagined steps/s than eager)"
        },
    )
    bf16: bool = bf16_field()
    calibrated: bool = calibrated_field("--imagine-calibrated")
    log_every: int = 10
    seed: int = field(default=0, metadata={"cli": False})  # the online loop seeds each epoch

    def __post_init__(self):
        for name in ("steps", "batch_size", "horizon", "context_steps"):
            if getattr(self, name) < 1:
                raise TokWorldError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (0 < self.gamma <= 1 and 0 <= self.lam <= 1):
            raise TokWorldError("gamma must lie in (0, 1] and lam in [0, 1]")
        if not 0 <= self.event_starts <= 1:
            raise TokWorldError(f"event_starts must lie in [0, 1], got {self.event_starts}")
        if self.cuda_graphs:  # the online loop trains on the GPU if there is one
            check_cuda_graphs(default_device(), self.compile)


def lambda_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    continues: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """TD(lambda) returns of an imagined rollout, all (B, H).

    rewards[t] and continues[t] (0 where step t ended the episode) follow action t; values[t] is
    the value of the state after it. R[t] = r[t] + gamma * c[t] * ((1 - lam) * v[t] + lam *
    R[t + 1]), and the last one bootstraps: R[H - 1] = r[H - 1] + gamma * c[H - 1] * v[H - 1].
    """
    returns = torch.empty_like(rewards)
    last = values[:, -1]
    for t in reversed(range(rewards.shape[1])):
        last = rewards[:, t] + gamma * continues[:, t] * ((1 - lam) * values[:, t] + lam * last)
        returns[:, t] = last
    return returns


class ImaginationLoss(torch.nn.Module):
    """The actor-critic, its EMA target and the return scale; `forward(context)` is one loss.

    A module so that `accelerate` (DDP) sees one forward per backward. The engine (frozen world
    model and decoder) is held outside the module tree: its parameters are never trained.
    """

    def __init__(self, policy: ActorCritic, cfg: ImaginationConfig):
        super().__init__()
        self.policy, self.cfg = policy, cfg
        self.target = copy.deepcopy(policy).requires_grad_(False)
        self.register_buffer("return_scale", torch.zeros(()))
        self.engine: ImaginationEngine | None = None
        self.generator: torch.Generator | None = None

    def observe(self, codes: torch.Tensor) -> torch.Tensor:
        """Frame codes (..., K) -> what the policy reads: decoded frames, or the codes."""
        if not self.policy.frames_input:
            return codes
        frames = self.engine.decoder(codes.reshape(-1, codes.shape[-1]))
        return frames.view(*codes.shape[:-1], *frames.shape[1:])

    def forward(self, context: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        cfg, policy, engine = self.cfg, self.policy, self.engine
        start = engine.start(context)  # first: it checks the context's codes
        context_obs = self.observe(context["codes"].to(engine.device))  # (B, C, ...)
        with torch.no_grad():
            state = policy(context_obs[:, :-1]).state if context_obs.shape[1] > 1 else None
        obs = [start.frames if policy.frames_input else start.codes]
        logps, entropies, values, heads, rewards, ends = [], [], [], [], [], []
        for _ in range(cfg.horizon):
            out = policy.step(obs[-1], state)
            dist = policy.distribution(out.logits)
            codes = dist.sample(self.generator)
            logps.append(dist.log_prob(codes))
            entropies.append(dist.entropy())
            values.append(out.value.float())
            heads.append(out.value_logits)
            state = out.state
            step = engine.step(policy.to_action(codes))
            obs.append(step.frames if policy.frames_input else step.codes)
            rewards.append(step.reward.float())
            ends.append(step.terminated.float())
        logp, entropy, value = (torch.stack(x, 1) for x in (logps, entropies, values))
        reward, ended = torch.stack(rewards, 1), torch.stack(ends, 1)  # (B, H)
        with torch.no_grad():
            imagined = torch.stack(obs[1:], 1)  # (B, H, ...) the states after each action
            target_value = self.target(torch.cat([context_obs, imagined], 1)).value.float()
            returns = lambda_returns(
                reward, target_value[:, -cfg.horizon :], 1 - ended, cfg.gamma, cfg.lam
            )
            # Step t counts while no earlier imagined step ended the episode.
            alive = torch.cumprod(torch.cat([torch.ones_like(ended[:, :1]), 1 - ended], 1), 1)
            weight = alive[:, :-1]
            scale = self._update_scale(returns, weight)
            advantage = (returns - value.detach()) / scale
        total = weight.sum().clamp(min=1)
        actor_loss = -(logp * advantage * weight).sum() / total
        entropy_mean = (entropy * weight).sum() / total
        if policy.config.value_bins:
            value_error = twohot.loss(torch.stack(heads, 1), returns)
        else:
            value_error = 0.5 * (value - returns).square()
        value_loss = (value_error * weight).sum() / total
        loss = actor_loss - cfg.entropy_weight * entropy_mean + cfg.value_weight * value_loss
        metrics = {
            "actor_loss": actor_loss.detach(),
            "value_loss": value_loss.detach(),
            "entropy": entropy_mean.detach(),
            "imagined_return": ((reward * weight).sum(1)).mean(),
            "imagined_ends": ended.amax(1).mean(),
            "lambda_return": (returns * weight).sum() / total,
            "return_scale": self.return_scale.clone(),
        }
        return loss, metrics

    def _update_scale(self, returns: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """EMA of the 5th-95th percentile range of the live returns; returns max(1, EMA)."""
        live = returns[weight > 0]
        spread = torch.quantile(live, 0.95) - torch.quantile(live, 0.05)
        decay = self.cfg.return_scale_decay
        self.return_scale.mul_(decay).add_((1 - decay) * spread)
        return self.return_scale.clamp(min=1.0)

    @torch.no_grad()
    def update_target(self) -> None:
        """target <- decay * target + (1 - decay) * policy."""
        d = self.cfg.target_decay
        for t, p in zip(self.target.parameters(), self.policy.parameters(), strict=True):
            t.lerp_(p, 1 - d)


def _resume_config(policy: ActorCritic, cfg: ImaginationConfig) -> dict:
    """What a policy checkpoint must have been trained with to be continued: the policy's and
    the imagination config, but for `steps` (a continuation trains up to more) and `seed` (the
    online loop reseeds every epoch)."""
    config = resume_config(policy.config.to_dict(), cfg)
    del config["train"]["steps"], config["train"]["seed"]
    return config


def train_policy(
    policy: ActorCritic,
    world_model: TokWorldModel,
    tokenizer,
    ds: datasets.Dataset,
    cfg: ImaginationConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train `policy` in the imagination of the frozen `world_model` for `cfg.steps` updates.

    `ds` is a trajectory dataset to take real context from (its `codes` column if it has one,
    else frames encoded by `tokenizer`). `out_dir/train_state` holds the policy, its target,
    the return scale, the optimizer and the RNG after the last update; with `resume` training
    continues from there up to `cfg.steps` updates in all, with the same policy and settings
    (`steps` and `seed` aside). Returns the last logged metrics.
    """
    out_dir = Path(out_dir)
    state_dir = out_dir / "train_state"
    if policy.codec != world_model.vocab.action:
        raise TokWorldError(
            f"the policy acts in {policy.codec.kind} {list(policy.codec.sizes)} but the world "
            f"model's actions are {world_model.vocab.action.kind} "
            f"{list(world_model.vocab.action.sizes)}"
        )
    accelerator = make_accelerator("auto", 1, str(out_dir / "logs"))
    world_model.to(accelerator.device)  # frozen: run only under no_grad, never optimized
    tokenizer.to(accelerator.device)
    module = ImaginationLoss(policy.train(), cfg)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    start, history = 0, []
    config = _resume_config(policy, cfg)
    if resume:
        check_resume_config(state_dir, config)
        start, extra = load_train_state(
            state_dir, module, optimizer, None, rank=accelerator.process_index
        )
        history = extra.get("history", [])
        if start > cfg.steps:
            raise TokWorldError(
                f"cannot resume {state_dir}: it has {start} updates, more than steps={cfg.steps}"
            )
    wrapped, optimizer = accelerator.prepare(module, optimizer)
    rank_seed = cfg.seed + 1000 * accelerator.process_index
    context = RealContext(
        ds, cfg.context_steps, tokenizer, rank_seed + start, cfg.event_starts, cfg.horizon
    )
    decoder = imagination_decoder(tokenizer, cfg.cuda_graphs) if policy.frames_input else None
    sampling = SamplingConfig(cfg.temperature, cfg.top_k, calibrated=cfg.calibrated)
    module.engine = ImaginationEngine(world_model, decoder, sampling, seed=rank_seed + start,
                                      compile=cfg.compile, cuda_graphs=cfg.cuda_graphs,
                                      bf16=cfg.bf16)  # fmt: skip
    module.generator = torch.Generator(accelerator.device).manual_seed(rank_seed + start)
    if accelerator.is_main_process:
        accelerator.init_trackers("policy", config=asdict(cfg))
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="policy",
               disable=not (progress and accelerator.is_main_process))  # fmt: skip
    metrics: dict[str, float] = {}
    for step in bar:
        loss, raw = wrapped(context.sample(cfg.batch_size))
        require_finite(accelerator, loss, "loss", "policy", step + 1)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        optimizer.step()
        module.update_target()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            metrics = {"loss": float(loss.detach()), **{k: float(v) for k, v in raw.items()}}
            bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("imagined_return", "entropy")})
            accelerator.log(metrics, step=step + 1)
            history.append({"step": step + 1, **metrics})
    accelerator.end_training()
    states = gather_object([rng_state()])
    if accelerator.is_main_process:
        extra = {"history": history, "config": config}
        save_train_state(state_dir, module, optimizer, None, cfg.steps, states, extra)
    accelerator.wait_for_everyone()
    policy.eval()
    return {**metrics, **describe(accelerator), "steps": cfg.steps}
