"""Helpers of the one-forward-per-step tests (`test_parallel_frames.py`,
`test_block_frames.py`): a tiny vocabulary and model, random steps, and the token stream of a
rollout."""

from __future__ import annotations

import gymnasium as gym
import torch
from einops import rearrange

from tokworld.config import TokWorldConfig
from tokworld.imagine import ImaginationEngine
from tokworld.model import TokWorldModel
from tokworld.sampling import SamplingConfig
from tokworld.tokenizer import Kind, Vocabulary

K = 4
DEFAULT = (Kind.FRAME, Kind.ACTION, Kind.REWARD, Kind.END)
SWAPPED = (Kind.FRAME, Kind.ACTION, Kind.END, Kind.REWARD)


def vocab_of(order=DEFAULT, space: gym.Space | None = None) -> Vocabulary:
    space = gym.spaces.Discrete(3) if space is None else space
    return Vocabulary.from_spaces(space, 16, K, reward_codec="sign", order=order)


def model_of(vocab: Vocabulary, decoding="parallel", context_steps=4, seed=0) -> TokWorldModel:
    torch.manual_seed(seed)
    # event_balance 0: each kind's loss is the plain mean the loss test recomputes by position
    config = TokWorldConfig.preset(
        "tiny", vocab, frame_decoding=decoding, context_steps=context_steps, event_balance=0.0
    )
    return TokWorldModel(config).eval()


def actions_of(vocab: Vocabulary, shape: tuple, g: torch.Generator) -> torch.Tensor:
    parts = [torch.randint(0, n, shape, generator=g) for n in vocab.action.sizes]
    return parts[0] if vocab.action.kind == "Discrete" else torch.stack(parts, -1)


def steps_of(vocab: Vocabulary, b: int, t: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "codes": torch.randint(0, vocab.codebook_size, (b, t, K), generator=g),
        "action": actions_of(vocab, (b, t), g),
        "reward": torch.randint(-1, 2, (b, t), generator=g).float(),
        "terminated": torch.rand(b, t, generator=g) < 0.3,
        "mask": torch.ones(b, t, dtype=torch.bool),
    }


def stream_of(vocab, context, actions, outs) -> torch.Tensor:
    """The token stream of a rollout: the context, then each imagined step (B, L)."""
    b = actions.shape[1]
    acted = rearrange(torch.cat([actions, torch.zeros_like(actions[:1])]), "t b ... -> b t ...")
    imagined = {
        "codes": torch.stack([o.codes for o in outs], 1),
        "reward": torch.stack([o.reward for o in outs] + [torch.zeros(b)], 1),
        "terminated": torch.stack([o.terminated for o in outs] + [torch.zeros(b).bool()], 1),
    }
    steps = {
        "codes": torch.cat([context["codes"], imagined["codes"]], 1),
        "action": torch.cat([context["action"][:, :-1], acted], 1),
        "reward": torch.cat([context["reward"][:, :-1], imagined["reward"]], 1),
        "terminated": torch.cat([context["terminated"][:, :-1], imagined["terminated"]], 1),
    }
    blocks = vocab.encode(steps["codes"], steps["action"], steps["reward"], steps["terminated"])
    return rearrange(blocks, "b t n -> b (t n)")


def recording(engine: ImaginationEngine) -> list[torch.Tensor]:
    """The logits the engine samples from, one (B, Q, V) per step."""
    seen = []
    sample = engine._sample
    engine._sample = lambda logits: seen.append(logits) or sample(logits)
    return seen


def greedy_rollout(model: TokWorldModel, steps: int) -> tuple[list, tuple]:
    """`steps` greedy imagined steps of 2 rows from a 2-step context: the logits sampled from
    (one tensor a step) and (context, actions, outcomes) for `_stream`."""
    vocab = model.vocab
    engine = ImaginationEngine(model, sampling=SamplingConfig(greedy=True))
    seen = recording(engine)
    context = steps_of(vocab, 2, 2, seed=1)
    engine.start(context)
    actions = actions_of(vocab, (steps, 2), torch.Generator().manual_seed(2))
    outs = [engine.step(a) for a in actions]
    return seen, (context, actions, outs)
