"""IRIS re-implemented for timing next to tokworld: its world model, its decoder, its imagination.

Written from the IRIS paper and its published configuration (Micheli et al., 2023), with random
weights: speed does not depend on them. What is kept because it decides the cost:

- world model: GPT blocks (LayerNorm, explicit attention matrices, GELU MLP 4x, dropout 0.1),
  absolute position embeddings over `max_tokens = steps * 17`, separate frame and action
  embedding tables, MLP heads for frame codes, rewards (3 classes) and ends;
- KV cache: keys and values preallocated for `max_tokens` and filled left to right; when the
  next step would not fit, the cache is emptied and re-filled with the current frame's 16
  tokens, so the history before that frame is thrown away (IRIS's `WorldModelEnv.step`);
- an imagined step: the action token, then the 16 frame tokens, one forward each (17), samples
  drawn with `torch.distributions.Categorical`, then the frame decoded;
- decoder: the VQGAN decoder of IRIS's tokenizer config (z 512, 64 channels at every one of 5
  resolutions, 3 residual blocks per resolution, self-attention at 8x8 and 16x16, nearest
  upsampling + conv), after the code embedding (512 wide) and the post-quantization 1x1 conv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.distributions import Categorical

from tokworld.tokenizer.frame import ResBlock

CODEBOOK, TOKENS_PER_FRAME, ACTIONS = 512, 16, 4
IRIS_TOKENS_PER_STEP = TOKENS_PER_FRAME + 1


class IrisCache:
    """Keys and values of every layer, (B, H, max_tokens, D), filled from the left."""

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        max_tokens: int,
        head_dim: int,
        device: torch.device | str = "cpu",
    ):
        shape = (layers, batch, heads, max_tokens, head_dim)
        self.keys = torch.zeros(shape, device=device)
        self.values = torch.zeros(shape, device=device)
        self.size = 0

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store (B, H, T, D) states after the `size` filled slots; return all filled slots."""
        end = self.size + k.shape[2]
        self.keys[layer, :, :, self.size : end] = k
        self.values[layer, :, :, self.size : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class IrisBlock(nn.Module):
    """One GPT block as IRIS writes it: explicit causal attention, GELU MLP, dropout 0.1."""

    def __init__(self, width: int, heads: int, max_tokens: int, dropout: float = 0.1):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.proj = nn.Linear(width, width)
        self.attn_drop, self.resid_drop = nn.Dropout(dropout), nn.Dropout(dropout)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )
        self.register_buffer("mask", torch.tril(torch.ones(max_tokens, max_tokens)))

    def attention(self, x: torch.Tensor, cache: IrisCache | None, layer: int) -> torch.Tensor:
        start, length = (0 if cache is None else cache.size), x.shape[1]
        q, k, v = (
            rearrange(f(x), "b t (h e) -> b h t e", h=self.heads)
            for f in (self.query, self.key, self.value)
        )
        if cache is not None:
            k, v = cache.write(layer, k, v)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])  # (B, H, T, start + T)
        att = att.masked_fill(self.mask[start : start + length, : start + length] == 0, -math.inf)
        y = self.attn_drop(F.softmax(att, dim=-1)) @ v
        return self.resid_drop(self.proj(rearrange(y, "b h t e -> b t (h e)")))

    def forward(self, x: torch.Tensor, cache: IrisCache | None = None, layer: int = 0):
        x = x + self.attention(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class IrisReference(nn.Module):
    """IRIS's world model: embeddings, GPT blocks, frame/reward/end heads, loss, cached forward."""

    def __init__(self, layers: int, width: int, heads: int, steps: int):
        super().__init__()
        k, n = TOKENS_PER_FRAME, IRIS_TOKENS_PER_STEP
        self.heads, self.max_tokens = heads, steps * n
        self.obs_emb, self.act_emb = nn.Embedding(CODEBOOK, width), nn.Embedding(ACTIONS, width)
        self.pos_emb = nn.Embedding(self.max_tokens, width)
        self.drop = nn.Dropout(0.1)
        self.blocks = nn.ModuleList(IrisBlock(width, heads, self.max_tokens) for _ in range(layers))
        self.ln = nn.LayerNorm(width)

        def head(out: int) -> nn.Module:
            return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out))

        self.head_obs, self.head_rewards, self.head_ends = head(CODEBOOK), head(3), head(2)
        position = torch.arange(n)
        self.register_buffer("is_action", position == k)
        self.register_buffer("predicts_obs", position != k - 1)

    def new_cache(self, batch: int) -> IrisCache:
        width, device = self.pos_emb.embedding_dim, self.pos_emb.weight.device
        return IrisCache(
            len(self.blocks), batch, self.heads, self.max_tokens, width // self.heads, device
        )

    def transformer(self, x: torch.Tensor, cache: IrisCache | None = None) -> torch.Tensor:
        """(B, T, E) embeddings -> (B, T, E) outputs; with `cache`, after its filled slots."""
        start = 0 if cache is None else cache.size
        x = self.drop(x + self.pos_emb.weight[start : start + x.shape[1]])
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        if cache is not None:
            cache.size += x.shape[1]
        return self.ln(x)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        codes, action = batch["codes"], batch["action"]  # (B, T, K), (B, T)
        b, t, k = codes.shape
        mask = rearrange(self.is_action, "n -> 1 1 n")
        emb = torch.where(
            rearrange(mask, "1 1 n -> 1 1 n 1"),
            rearrange(self.act_emb(action), "b t e -> b t 1 e"),
            F.pad(self.obs_emb(codes), (0, 0, 0, 1)),
        )  # (B, T, K + 1, E)
        x = self.transformer(rearrange(emb, "b t n e -> b (t n) e"))
        x = rearrange(x, "b (t n) e -> b t n e", t=t)
        obs = rearrange(x[:, :, self.predicts_obs], "b t n e -> b (t n) e")[:, :-1]
        labels = rearrange(codes, "b t k -> b (t k)")[:, 1:]
        act = x[:, :, k]  # (B, T, E)
        rewards, ends = (batch["reward"].sign() + 1).long(), batch["terminated"].long()
        return (
            F.cross_entropy(rearrange(self.head_obs(obs), "b l v -> (b l) v"), labels.reshape(-1))
            + F.cross_entropy(self.head_rewards(act).flatten(0, 1), rewards.flatten())
            + F.cross_entropy(self.head_ends(act).flatten(0, 1), ends.flatten())
        )


def iris_norm(channels: int) -> nn.GroupNorm:
    """IRIS's normalisation layer: GroupNorm of 32 groups, eps 1e-6."""
    return nn.GroupNorm(32, channels, eps=1e-6)


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map (1x1 convs q, k, v, out)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = iris_norm(channels)
        self.qkv, self.out = nn.Conv2d(channels, 3 * channels, 1), nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (n c) h w -> n b (h w) c", n=3)
        y = F.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1) @ v
        return x + self.out(rearrange(y, "b (h w) c -> b c h w", h=x.shape[2]))


def iris_middle(ch: int) -> list[nn.Module]:
    """The VQGAN's middle at the token grid: residual block, attention, residual block."""
    return [ResBlock(ch, iris_norm), AttnBlock(ch), ResBlock(ch, iris_norm)]


def iris_levels(
    ch: int, levels: int, blocks: int, attention_at: tuple[int, ...], down: bool
) -> list[nn.Module]:
    """The VQGAN's resolution levels: `blocks` residual blocks each, with attention after each
    at the resolutions in `attention_at`, and a 2x resample between levels: down from 64x64 in
    the encoder (`down`, IRIS's asymmetric pad + stride-2 conv), up from 4x4 in the decoder
    (nearest + conv)."""
    resolution = 64 if down else 4
    layers: list[nn.Module] = []
    for level in range(levels):
        for _ in range(blocks):
            layers.append(ResBlock(ch, iris_norm))
            if resolution in attention_at:
                layers.append(AttnBlock(ch))
        if level == levels - 1:
            break
        if down:
            layers += [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(ch, ch, 3, stride=2)]
            resolution //= 2
        else:
            layers += [nn.Upsample(scale_factor=2.0, mode="nearest"),
                       nn.Conv2d(ch, ch, 3, padding=1)]  # fmt: skip
            resolution *= 2
    return layers


class IrisDecoder(nn.Module):
    """Codes (B, 16) -> frames (B, 3, 64, 64): IRIS's tokenizer decoder with its embedding."""

    def __init__(self, ch: int = 64, z: int = 512, levels: int = 5, blocks: int = 3,
                 attention_at: tuple[int, ...] = (8, 16)):  # fmt: skip
        super().__init__()
        self.embedding = nn.Embedding(CODEBOOK, z)
        layers: list[nn.Module] = [nn.Conv2d(z, z, 1), nn.Conv2d(z, ch, 3, padding=1)]
        layers += iris_middle(ch)
        layers += iris_levels(ch, levels, blocks, attention_at, down=False)
        layers += [iris_norm(ch), nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        z = rearrange(self.embedding(codes), "b (h w) e -> b e h w", h=4)
        return (self.net(z).add(1) / 2).clamp(0, 1)


class IrisImagination:
    """IRIS's batched imagination (`WorldModelEnv`) over an `IrisReference` and `IrisDecoder`."""

    def __init__(self, world_model: IrisReference, decoder: IrisDecoder):
        self.world_model, self.decoder = world_model.eval(), decoder.eval()

    @torch.no_grad()
    def start(self, codes: torch.Tensor) -> torch.Tensor:
        """Begin from frame codes (B, 16); return the decoded frames."""
        self.codes = codes
        self._refresh()
        return self.decoder(codes)

    def _refresh(self) -> None:
        self.cache = self.world_model.new_cache(self.codes.shape[0])
        self.world_model.transformer(self.world_model.obs_emb(self.codes), self.cache)

    @torch.no_grad()
    def step(self, action: torch.Tensor):
        """Action (B,) -> frames (B, 3, 64, 64), reward (B,) in {-1, 0, 1}, done (B,)."""
        wm = self.world_model
        if self.cache.size + IRIS_TOKENS_PER_STEP > wm.max_tokens:
            self._refresh()
        x = wm.transformer(wm.act_emb(action[:, None]), self.cache)
        reward = Categorical(logits=wm.head_rewards(x[:, 0])).sample().float() - 1
        done = Categorical(logits=wm.head_ends(x[:, 0])).sample().bool()
        tokens = []
        for _ in range(TOKENS_PER_FRAME):
            tokens.append(Categorical(logits=wm.head_obs(x[:, 0])).sample())
            x = wm.transformer(wm.obs_emb(tokens[-1][:, None]), self.cache)
        self.codes = torch.stack(tokens, 1)
        return self.decoder(self.codes), reward, done
