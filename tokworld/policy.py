"""Actor-critic policy: IRIS-style CNN + LSTM on decoded frames, or an encoder + LSTM on codes.

`policy_input="frames"` (default, as IRIS) reads frames decoded by the tokenizer, (B, T, 3, H, W)
float in [0, 1]; `policy_input="tokens"` (as REM) reads the K frame codes, (B, T, K) long,
through a learned code embedding, so imagination never has to run the decoder;
`policy_input="vector"` (vector observations) reads the K codes of the vector codec, (B, T, K)
long, as each bin's rank in (-1, 1) (for quantile bins the value's place in the data's
distribution: a normalised observation), through an MLP.

The action head is one categorical per action component over the world model's own action
codes: Discrete(n) is one categorical of n; MultiDiscrete one per component; Box(D) one per
dimension over the vocabulary's uniform bins (the action is the bin centre), so every action the
policy takes is one the world model can read exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokworld import twohot
from tokworld.errors import TokWorldError
from tokworld.presets import preset_fields
from tokworld.tokenizer.codecs import ActionCodec
from tokworld.tokenizer.pretrained import SafetensorsPretrained

INPUTS = ("frames", "tokens", "vector")
CRITICS = ("shared", "separate")
# The LSTM's (h, c), each (1, B, hidden), then the critic's own (h, c) with a separate critic.
State = tuple[torch.Tensor, ...]


def check_value_bins(value_bins: int) -> None:
    """Raise TokWorldError unless `value_bins` is 0 (a scalar critic) or at least 2."""
    if value_bins < 0 or value_bins == 1:
        raise TokWorldError(f"value_bins must be 0 or >= 2, got {value_bins}")


@dataclass(frozen=True)
class PolicyConfig:
    """Architecture of an `ActorCritic`; `action` is the `ActionCodec.to_dict()` it acts in.

    Frames: one conv3x3 -> maxpool2 -> ReLU stage per entry of `channels` (IRIS: 32, 32, 64, 64
    on 64x64 frames, so a 4x4 grid). Tokens: a `token_dim` embedding per code plus a position
    embedding, flattened. Vector: two ReLU layers of `hidden_size` on the bins' ranks. Each
    feeds an LSTM of `hidden_size`. `critic="shared"` (IRIS): the actor and critic heads read
    the same LSTM. `critic="separate"` (DreamerV3's separate networks): the critic has its own
    encoder and LSTM, so its regression on returns (tens to hundreds on dense-reward tasks) does
    not shape the actor's features; it costs a second encoder + LSTM pass per step.
    `value_bins=0` (IRIS): the critic's head is one number, fitted to the returns by squared
    error; N >= 2 (DreamerV3: 255): logits over N symlog points, fitted by two-hot
    cross-entropy (`tokworld.twohot`), so returns of any scale are learned at one pace.
    """

    action: dict
    policy_input: str = "frames"
    frame_size: int = 64
    channels: tuple[int, ...] = (32, 32, 64, 64)
    codebook_size: int = 512
    tokens_per_frame: int = 16
    token_dim: int = 32
    hidden_size: int = 512
    critic: str = "shared"
    value_bins: int = 0

    def __post_init__(self):
        check_value_bins(self.value_bins)
        if self.critic not in CRITICS:
            raise TokWorldError(f"critic must be one of {CRITICS}, got {self.critic!r}")
        if self.policy_input not in INPUTS:
            raise TokWorldError(f"policy_input must be one of {INPUTS}, got {self.policy_input!r}")
        if self.policy_input == "vector" and self.codebook_size % self.tokens_per_frame:
            raise TokWorldError("a vector policy needs codebook_size = tokens_per_frame x bins")
        if self.frame_size % 2 ** len(self.channels):
            raise TokWorldError(
                f"frame_size {self.frame_size} is not divisible by 2^{len(self.channels)}"
            )
        ActionCodec.from_dict(self.action)

    @property
    def codec(self) -> ActionCodec:
        return ActionCodec.from_dict(self.action)

    @classmethod
    def preset(
        cls, name: str, codec: ActionCodec, policy_input: str = "frames", **overrides
    ) -> PolicyConfig:
        """`tiny` (tests), `small` (CPU), `base` (IRIS: channels 32-32-64-64, LSTM 512)."""
        known = {f.name for f in fields(cls)}
        settings = preset_fields(name, "policy", known, {"policy_input": policy_input, **overrides})
        return cls(action=codec.to_dict(), **settings)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> PolicyConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise TokWorldError(f"unknown policy config field {sorted(unknown)[0]!r}")
        return cls(**{k: tuple(v) if k == "channels" else v for k, v in data.items()})


class ActionDistribution:
    """Independent categoricals, one per action component; codes (B, D) are local to each."""

    def __init__(self, logits: torch.Tensor, sizes: tuple[int, ...]):
        self.parts = torch.split(logits, list(sizes), dim=-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        probs = [p.float().softmax(-1).reshape(-1, p.shape[-1]) for p in self.parts]
        draws = [torch.multinomial(p, 1, generator=generator) for p in probs]
        return torch.cat(draws, -1).view(*self.parts[0].shape[:-1], len(self.parts))

    def mode(self) -> torch.Tensor:
        return torch.stack([p.argmax(-1) for p in self.parts], -1)

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """Summed over components: (...,)."""
        logps = [
            F.log_softmax(p, -1).gather(-1, codes[..., i : i + 1]).squeeze(-1)
            for i, p in enumerate(self.parts)
        ]
        return torch.stack(logps, -1).sum(-1)

    def entropy(self) -> torch.Tensor:
        """Summed over components: (...,)."""
        ents = [-(F.softmax(p, -1) * F.log_softmax(p, -1)).sum(-1) for p in self.parts]
        return torch.stack(ents, -1).sum(-1)


@dataclass
class PolicyOutput:
    """logits (B, T, sum of component sizes), value (B, T), state: the LSTM state after T;
    value_logits (B, T, value_bins) with a two-hot critic, else None."""

    logits: torch.Tensor
    value: torch.Tensor
    state: State
    value_logits: torch.Tensor | None = None


class FrameEncoder(nn.Module):
    """(N, 3, H, W) in [0, 1] -> (N, features): conv3x3 -> maxpool2 -> ReLU per stage."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in zip((3, *cfg.channels[:-1]), cfg.channels, strict=True):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.MaxPool2d(2), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Flatten())
        side = cfg.frame_size // 2 ** len(cfg.channels)
        self.out_dim = cfg.channels[-1] * side * side

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames * 2 - 1)


class TokenEncoder(nn.Module):
    """(N, K) frame codes -> (N, features): code + position embeddings, flattened, one layer."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.codebook_size, cfg.token_dim)
        self.position = nn.Parameter(torch.zeros(cfg.tokens_per_frame, cfg.token_dim))
        self.proj = nn.Linear(cfg.tokens_per_frame * cfg.token_dim, cfg.hidden_size)
        self.out_dim = cfg.hidden_size

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.embed(codes) + self.position, "n k d -> n (k d)")
        return F.relu(self.proj(x))


class VectorEncoder(nn.Module):
    """(N, K) vector-codec codes -> (N, features): each code's bin rank in (-1, 1), an MLP."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.bins = cfg.codebook_size // cfg.tokens_per_frame
        self.register_buffer("offsets", torch.arange(cfg.tokens_per_frame) * self.bins)
        k, h = cfg.tokens_per_frame, cfg.hidden_size
        self.net = nn.Sequential(nn.Linear(k, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.out_dim = h

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        ranks = ((codes - self.offsets).float() + 0.5) / self.bins * 2 - 1
        return self.net(ranks)


ENCODERS = {"frames": FrameEncoder, "tokens": TokenEncoder, "vector": VectorEncoder}


def _recur(encoder: nn.Module, lstm: nn.LSTM, flat: torch.Tensor, b: int, state) -> tuple:
    """Observations flattened to (B * T, ...) -> LSTM outputs (B, T, hidden) and its state."""
    return lstm(rearrange(encoder(flat), "(b t) d -> b t d", b=b), state)


class ActorCritic(SafetensorsPretrained, nn.Module):
    """Encoder -> LSTM -> (actor logits, critic value), stepped a frame or a sequence at a time."""

    config_class, model_type, name = PolicyConfig, "tokworld_policy", "policy"

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.codec = config.codec
        self.encoder = ENCODERS[config.policy_input](config)
        self.lstm = nn.LSTM(self.encoder.out_dim, config.hidden_size, batch_first=True)
        self.actor = nn.Linear(config.hidden_size, self.codec.num_tokens)
        self.critic = nn.Linear(config.hidden_size, config.value_bins or 1)
        if config.value_bins:  # DreamerV3: a zero head starts at value 0, the bins' middle
            nn.init.zeros_(self.critic.weight)
            nn.init.zeros_(self.critic.bias)
        if config.critic == "separate":
            self.critic_encoder = ENCODERS[config.policy_input](config)
            self.critic_lstm = nn.LSTM(self.encoder.out_dim, config.hidden_size, batch_first=True)

    @property
    def frames_input(self) -> bool:
        return self.config.policy_input == "frames"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, obs: torch.Tensor, state: State | None = None) -> PolicyOutput:
        """obs (B, T, 3, H, W) float frames or (B, T, K) codes; state None starts from zeros."""
        self._check(obs, extra_dims=1)
        flat = rearrange(obs, "b t ... -> (b t) ...")
        out, hidden = _recur(
            self.encoder, self.lstm, flat, obs.shape[0], None if state is None else state[:2]
        )
        logits = self.actor(out)
        if self.config.critic == "shared":
            return self._output(logits, out, hidden)
        critic_state = None if state is None else state[2:]
        seen, critic_hidden = _recur(
            self.critic_encoder, self.critic_lstm, flat, obs.shape[0], critic_state
        )
        return self._output(logits, seen, (*hidden, *critic_hidden))

    def _output(self, logits: torch.Tensor, seen: torch.Tensor, state: State) -> PolicyOutput:
        """The critic's head on its LSTM outputs `seen`: one number, or two-hot logits."""
        head = self.critic(seen)
        if not self.config.value_bins:
            return PolicyOutput(logits, head.squeeze(-1), state)
        return PolicyOutput(logits, twohot.decode(head), state, head)

    def step(self, obs: torch.Tensor, state: State | None = None) -> PolicyOutput:
        """One step: obs (B, 3, H, W) or (B, K) -> logits (B, A), value (B,), next state."""
        out = self(obs.unsqueeze(1), state)
        head = None if out.value_logits is None else out.value_logits[:, 0]
        return PolicyOutput(out.logits[:, 0], out.value[:, 0], out.state, head)

    def distribution(self, logits: torch.Tensor) -> ActionDistribution:
        return ActionDistribution(logits, self.codec.sizes)

    def to_action(self, codes: torch.Tensor) -> torch.Tensor:
        """Component codes (B, D) -> env actions: (B,) Discrete, (B, D) MultiDiscrete or Box."""
        return self.codec.decode_components(codes)

    @torch.no_grad()
    def act(
        self,
        obs: torch.Tensor,
        state: State | None = None,
        greedy: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, State]:
        """obs (B, ...) -> (env actions, next state): the mode, or a sample at `temperature`."""
        out = self.step(obs, state)
        dist = self.distribution(out.logits / max(temperature, 1e-6))
        codes = dist.mode() if greedy else dist.sample(generator)
        return self.to_action(codes), out.state

    def _check(self, obs: torch.Tensor, extra_dims: int) -> None:
        cfg = self.config
        if self.frames_input:
            size = cfg.frame_size
            shape = f"(..., 3, {size}, {size}) float frames"
            ok = obs.is_floating_point() and tuple(obs.shape[-3:]) == (3, size, size)
        else:
            shape = f"(..., {cfg.tokens_per_frame}) integer codes"
            ok = not obs.is_floating_point() and obs.shape[-1] == cfg.tokens_per_frame
        ndim = (3 if self.frames_input else 1) + 1 + extra_dims
        if not ok or obs.ndim != ndim:
            raise TokWorldError(
                f"the {cfg.policy_input} policy reads {shape} of {ndim} dims, got "
                f"{str(obs.dtype).removeprefix('torch.')} of shape {tuple(obs.shape)}"
            )


class Agent:
    """A policy acting on real observations: uint8 frames (B, H, W, 3) or float vectors (B, D)
    -> env actions, one LSTM state per row.

    The observations go through the tokenizer first (codes for a tokens or vector policy,
    encode -> decode for a frames policy), so the policy sees what it saw in imagination. A
    single observation ((H, W, 3) or (D,)) gives a single numpy action, which makes an `Agent`
    a `collect` policy; `reset()` (called by `collect` at each episode start) clears the state.
    `epsilon` takes a uniformly random action with that probability.
    """

    def __init__(
        self,
        policy: ActorCritic,
        tokenizer,
        greedy: bool = False,
        temperature: float = 1.0,
        epsilon: float = 0.0,
        seed: int = 0,
    ):
        self.policy, self.tokenizer = policy.eval(), tokenizer.eval()
        self.greedy, self.temperature, self.epsilon = greedy, temperature, epsilon
        self.generator = torch.Generator(device=policy.device).manual_seed(seed)
        self.state: State | None = None

    def reset(self, rows=None) -> None:
        """Forget the state of `rows` (indices), or of every row."""
        if rows is None or self.state is None:
            self.state = None
            return
        for s in self.state:
            s[:, torch.as_tensor(rows, device=s.device)] = 0

    @torch.no_grad()
    def observe(self, frames) -> torch.Tensor:
        """Observations (B, H, W, 3) or (B, D) -> what the policy reads."""
        codes = self.tokenizer.encode(frames).to(self.policy.device)
        if not self.policy.frames_input:
            return codes
        return self.tokenizer.decode(codes).to(self.policy.device)

    @torch.no_grad()
    def __call__(self, frames):
        single = np.ndim(frames) == (1 if self.tokenizer.observation == "vector" else 3)
        frames = torch.as_tensor(np.asarray(frames))
        frames = frames.unsqueeze(0) if single else frames
        actions, self.state = self.policy.act(
            self.observe(frames), self.state, self.greedy, self.temperature, self.generator
        )
        if self.epsilon > 0:
            sizes = torch.tensor(self.policy.codec.sizes, device=actions.device)
            n = frames.shape[0]
            u = torch.rand(n, generator=self.generator, device=actions.device)
            noise = torch.rand(n, len(sizes), generator=self.generator, device=actions.device)
            random = self.policy.to_action((noise * sizes).long())
            explore = (u < self.epsilon).view(-1, *([1] * (actions.ndim - 1)))
            actions = torch.where(explore, random, actions)
        return actions[0].cpu().numpy() if single else actions.cpu()


def build_policy(
    name: str,
    codec: ActionCodec,
    tokenizer,
    policy_input: str = "auto",
    critic: str = "shared",
    value_bins: int = 0,
):
    """A fresh `ActorCritic` of preset `name` for this action codec and observation tokenizer.

    `policy_input` "auto" reads decoded frames from a frame tokenizer, ranks from a vector
    codec; "frames" needs a frame tokenizer, "vector" a vector codec. `critic` and
    `value_bins`: see `PolicyConfig`."""
    kind = tokenizer.observation
    if policy_input == "auto":
        policy_input = "vector" if kind == "vector" else "frames"
    if {"frames": "vector", "vector": "frames"}.get(policy_input) == kind:
        raise TokWorldError(f"a {policy_input} policy cannot read {kind} observations")
    frame_size = tokenizer.config.frame_size if kind == "frames" else PolicyConfig.frame_size
    cfg = PolicyConfig.preset(
        name,
        codec,
        policy_input,
        frame_size=frame_size,
        codebook_size=tokenizer.codebook_size,
        tokens_per_frame=tokenizer.tokens_per_frame,
        critic=critic,
        value_bins=value_bins,
    )
    return ActorCritic(cfg)
