"""One forward per imagined step: a step's reward, end and K frame codes come out of one forward
pass, with parallel decoding from queries that read the past up to the action, with block
decoding each from its slot a block before, which sees its group (the previous reward and end,
the frame, the action) and the groups before. In both the cached imagination equals one forward
over the whole stream under the same masks and sliding window; masks, losses, restarts,
snapshots and saving follow; every mode runs through the command line."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from tokworld.cli import main
from tokworld.config import TokWorldConfig
from tokworld.data.format import load_trajectories
from tokworld.data.validate import validate_trajectories
from tokworld.dream import DreamVectorEnv
from tokworld.errors import TokWorldError
from tokworld.eval.bench_world_model import main as bench_world_model
from tokworld.imagine import ImaginationEngine, SamplingConfig
from tokworld.model import TokWorldModel
from tokworld.tokenizer import Kind, Vocabulary

K = 4
DEFAULT = (Kind.FRAME, Kind.ACTION, Kind.REWARD, Kind.END)
SWAPPED = (Kind.FRAME, Kind.ACTION, Kind.END, Kind.REWARD)


def _vocab(order=DEFAULT, space: gym.Space | None = None) -> Vocabulary:
    space = gym.spaces.Discrete(3) if space is None else space
    return Vocabulary.from_spaces(space, 16, K, reward_codec="sign", order=order)


def _model(vocab: Vocabulary, decoding="parallel", context_steps=4, seed=0) -> TokWorldModel:
    torch.manual_seed(seed)
    # event_balance 0: each kind's loss is the plain mean the loss test recomputes by position
    config = TokWorldConfig.preset(
        "tiny", vocab, frame_decoding=decoding, context_steps=context_steps, event_balance=0.0
    )
    return TokWorldModel(config).eval()


def _actions(vocab: Vocabulary, shape: tuple, g: torch.Generator) -> torch.Tensor:
    parts = [torch.randint(0, n, shape, generator=g) for n in vocab.action.sizes]
    return parts[0] if vocab.action.kind == "Discrete" else torch.stack(parts, -1)


def _steps(vocab: Vocabulary, b: int, t: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "codes": torch.randint(0, vocab.codebook_size, (b, t, K), generator=g),
        "action": _actions(vocab, (b, t), g),
        "reward": torch.randint(-1, 2, (b, t), generator=g).float(),
        "terminated": torch.rand(b, t, generator=g) < 0.3,
        "mask": torch.ones(b, t, dtype=torch.bool),
    }


def _stream(vocab, context, actions, outs) -> torch.Tensor:
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


def _recording(engine: ImaginationEngine) -> list[torch.Tensor]:
    """The logits the engine samples from, one (B, Q, V) per step."""
    seen = []
    sample = engine._sample
    engine._sample = lambda logits: seen.append(logits) or sample(logits)
    return seen


def _greedy_rollout(model: TokWorldModel, steps: int) -> tuple[list, tuple]:
    """`steps` greedy imagined steps of 2 rows from a 2-step context: the logits sampled from
    (one tensor a step) and (context, actions, outcomes) for `_stream`."""
    vocab = model.vocab
    engine = ImaginationEngine(model, sampling=SamplingConfig(greedy=True))
    seen = _recording(engine)
    context = _steps(vocab, 2, 2, seed=1)
    engine.start(context)
    actions = _actions(vocab, (steps, 2), torch.Generator().manual_seed(2))
    outs = [engine.step(a) for a in actions]
    return seen, (context, actions, outs)


def test_predicted_tokens_follow_the_block_layout():
    vocab = _vocab(SWAPPED)
    assert vocab.predicted_kinds == (Kind.END, Kind.REWARD) + (Kind.FRAME,) * K
    block = vocab.block_size  # K + 1 + 2
    positions = vocab.predicted_positions(3)
    assert positions.tolist() == [5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 19, 20]
    assert vocab.query_index(positions).tolist() == [0, 1, 2, 3, 4, 5] * 2 + [0, 1]
    context = [4] * 6 + [4 + block] * 6 + [4 + 2 * block] * 2
    assert vocab.query_context(positions).tolist() == context
    kinds = vocab.kinds(3 * block)[positions]
    assert kinds.tolist() == [int(vocab.predicted_kinds[i]) for i in vocab.query_index(positions)]


def test_queries_read_the_past_up_to_their_action_and_real_tokens_never_read_queries():
    vocab = _vocab()
    model = _model(vocab)
    length = 3 * vocab.block_size
    queries = vocab.predicted_positions(3)
    mask = model.parallel_mask(torch.arange(length), queries)
    real, query = mask[:length], mask[length:]
    assert torch.equal(real[:, :length], torch.ones(length, length).tril().bool())
    assert not real[:, length:].any()
    context = vocab.query_context(queries)
    for i, (p, c) in enumerate(zip(queries.tolist(), context.tolist(), strict=True)):
        assert query[i, :length].nonzero()[:, 0].tolist() == list(range(c + 1))
        same_step = [length + j for j, q in enumerate(queries.tolist()) if c < q <= p]
        assert query[i].nonzero()[:, 0].tolist() == list(range(c + 1)) + same_step


@pytest.mark.parametrize("order", [DEFAULT, SWAPPED])
def test_logits_stay_in_each_kind_slice(order):
    vocab = _vocab(order, gym.spaces.MultiDiscrete([3, 2]))
    model = _model(vocab)
    tokens = rearrange(vocab.encode(*list(_steps(vocab, 2, 3).values())[:4]), "b t n -> b (t n)")
    queries = vocab.predicted_positions(3)
    with torch.no_grad():
        logits = model(tokens, query_positions=queries).logits
    length = tokens.shape[1]
    targets = torch.cat([torch.arange(1, length + 1), queries])  # real: the next; query: its own
    for row, position in zip(logits[0], targets.tolist(), strict=True):
        lo, hi = vocab.block_ranges[position % vocab.block_size]
        assert torch.isfinite(row[lo:hi]).all()
        assert torch.isinf(row[:lo]).all() and torch.isinf(row[hi:]).all()


def test_the_loss_reads_each_kind_at_its_queries_and_skips_padding():
    vocab = _vocab()
    model = _model(vocab)
    batch = _steps(vocab, 2, 3)
    batch["mask"][1, 2] = False  # the second row's last step is padding
    tokens = model.tokens_of(batch)
    queries = vocab.predicted_positions(3)
    with torch.no_grad():
        logits = model(tokens, query_positions=queries).logits[:, tokens.shape[1] :]
        _, metrics = model.compute_loss(batch)
    block = vocab.block_size
    for kind in (Kind.REWARD, Kind.END, Kind.FRAME):
        at = [i for i, p in enumerate(queries.tolist()) if vocab.kinds(block)[p % block] == kind]
        rows = [(b, i) for b in range(2) for i in at if batch["mask"][b, queries[i] // block]]
        picked = torch.stack([logits[b, i] for b, i in rows])
        target = torch.stack([tokens[b, queries[i]] for b, i in rows])
        expected = F.cross_entropy(picked, target)
        torch.testing.assert_close(metrics[f"{kind.name.lower()}_loss"], expected)
    assert "action_loss" in metrics  # from the token before each action, as in token decoding


@pytest.mark.parametrize("decoding", ["parallel", "block"])
def test_one_forward_training_lowers_the_loss(decoding):
    vocab = _vocab()
    model = _model(vocab, decoding).train()
    batch = _steps(vocab, 4, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _ = model.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert decoding == "block" or model.queries.weight.grad is not None


@pytest.mark.parametrize("order", [DEFAULT, SWAPPED])
@pytest.mark.parametrize("steps", [3, 9])  # within the 4-step window, and well beyond it
def test_cached_imagination_equals_one_forward_over_the_window(order, steps):
    vocab = _vocab(order, gym.spaces.MultiDiscrete([3, 2]))
    model = _model(vocab)
    seen, context_and_steps = _greedy_rollout(model, steps)
    tokens = _stream(vocab, *context_and_steps)
    length = tokens.shape[1]
    queries = vocab.predicted_positions(length // vocab.block_size)
    positions = torch.cat([torch.arange(length), queries])
    window = model.config.window_tokens  # beyond it, a sliding window over stream positions
    mask = model.parallel_mask(torch.arange(length), queries)
    mask &= positions[None, :] > positions[:, None] - window
    with torch.no_grad():
        logits = model(tokens, query_positions=queries, attention_mask=mask[None, None]).logits
    # The engine's queries: those of the steps it imagined (after the context's last frame).
    context = vocab.query_context(queries)
    first = vocab.block_size + vocab.segment(Kind.ACTION).stop - 1
    imagined = (context >= first) & (context < length - vocab.block_size)
    expected = logits[:, length:][:, imagined]
    torch.testing.assert_close(torch.cat(seen, 1), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(expected.argmax(-1), tokens[:, queries[imagined]])  # greedy: its tokens


# ---- block decoding ------------------------------------------------------------------------
def _stream_logits(model: TokWorldModel, stream: torch.Tensor, window: int | None = None):
    """One forward over a block stream (B, L) from its origin, under the group mask (and
    a sliding `window` that ends at each token's group end): logits (B, L, V)."""
    positions = torch.arange(stream.shape[1]) + model.origin
    mask = model.group_mask(positions)
    if window is not None:
        mask &= positions[None, :] > model.vocab.group_last(positions)[:, None] - window
    with torch.no_grad():
        return model(stream, position_ids=positions[None], attention_mask=mask[None, None]).logits


def _lead(vocab: Vocabulary, tokens: torch.Tensor) -> torch.Tensor:
    """`tokens` (B, L) with a block stream's lead in front."""
    return torch.cat([vocab.lead_ids().expand(len(tokens), -1), tokens], 1)


@pytest.mark.parametrize("order", [DEFAULT, SWAPPED])
def test_block_groups_end_at_each_action_and_the_lead_is_no_reward_and_no_end(order):
    vocab = _vocab(order)
    block = vocab.block_size  # K + 1 + 2
    assert vocab.predicted_kinds == tuple(k for k in order[2:]) + (Kind.FRAME,) * K
    assert vocab.block_origin == K + 1  # the lead fills block 0's slots after the action
    no_event = vocab.encode(torch.zeros(K), 0, 0.0, False)  # a step with no reward, no end
    assert torch.equal(vocab.lead_ids(), no_event[K + 1 :])
    positions = torch.arange(3 * block) + vocab.block_origin
    last = vocab.group_last(positions)
    # [r d](block 0) [o o o o a](block 1) | [r d](block 1) [o o o o a](block 2) | ...
    assert last.tolist() == [block + K] * block + [2 * block + K] * block + [3 * block + K] * block
    assert (vocab.kinds(len(last), 0)[last % block] == Kind.ACTION).all()


def test_block_tokens_see_their_group_and_the_groups_before():
    vocab = _vocab()
    model = _model(vocab, "block")
    block = vocab.block_size
    mask = model.group_mask(torch.arange(3 * block) + model.origin)
    group = torch.arange(3 * block) // block  # a block stream from its origin
    assert torch.equal(mask, group[None, :] <= group[:, None])


@pytest.mark.parametrize("order", [DEFAULT, SWAPPED])
def test_block_logits_stay_in_the_kind_of_the_slot_a_block_later(order):
    vocab = _vocab(order, gym.spaces.MultiDiscrete([3, 2]))
    model = _model(vocab, "block")
    tokens = rearrange(vocab.encode(*list(_steps(vocab, 2, 3).values())[:4]), "b t n -> b (t n)")
    stream = _lead(vocab, tokens)
    logits = _stream_logits(model, stream)
    for i, row in enumerate(logits[0]):
        lo, hi = vocab.block_ranges[(i + model.origin) % vocab.block_size]
        assert torch.isfinite(row[lo:hi]).all()
        assert torch.isinf(row[:lo]).all() and torch.isinf(row[hi:]).all()


def test_the_block_loss_reads_each_kind_a_block_before_and_skips_padding():
    vocab = _vocab()
    model = _model(vocab, "block")
    batch = _steps(vocab, 2, 3)
    batch["mask"][1, 2] = False  # the second row's last step is padding
    tokens = model.tokens_of(batch)
    stream = _lead(vocab, tokens)
    logits = _stream_logits(model, stream[:, : tokens.shape[1]])
    with torch.no_grad():
        _, metrics = model.compute_loss(batch)
    block, length = vocab.block_size, tokens.shape[1]
    kinds = vocab.kinds(stream.shape[1], model.origin)
    for kind in (Kind.REWARD, Kind.END, Kind.FRAME):
        # every token of the kind in the window but the first frame, from the slot before it
        at = [i for i in range(block, stream.shape[1]) if kinds[i] == kind]
        rows = [(b, i) for b in range(2) for i in at if batch["mask"][b, (i - 2) // block]]
        picked = torch.stack([logits[b, i - block] for b, i in rows])
        target = torch.stack([stream[b, i] for b, i in rows])
        expected = F.cross_entropy(picked, target)
        torch.testing.assert_close(metrics[f"{kind.name.lower()}_loss"], expected)
    assert stream.shape[1] - length == 2  # the window's last reward and end: read, never fed
    assert "action_loss" not in metrics  # actions are given, not predicted


@pytest.mark.parametrize("order", [DEFAULT, SWAPPED])
@pytest.mark.parametrize("steps", [3, 9])  # within the 4-step window, and well beyond it
def test_cached_block_imagination_equals_one_forward_over_the_window(order, steps):
    vocab = _vocab(order, gym.spaces.MultiDiscrete([3, 2]))
    model = _model(vocab, "block")
    seen, context_and_steps = _greedy_rollout(model, steps)
    stream = _lead(vocab, _stream(vocab, *context_and_steps))
    window = model.config.window_tokens  # beyond it, a sliding window over stream positions
    logits = _stream_logits(model, stream, window)
    # Step s reads the outputs of the group it writes: the last context frame's, then each
    # imagined frame's, with the reward and end before it.
    block, waiting = vocab.block_size, len(vocab.predicted_kinds)
    at = torch.cat([torch.arange(waiting) + (1 + s) * block for s in range(steps)])
    torch.testing.assert_close(torch.cat(seen, 1), logits[:, at], atol=1e-5, rtol=1e-5)
    assert torch.equal(logits[:, at].argmax(-1), stream[:, at + block])  # greedy: its tokens


@pytest.mark.parametrize("decoding, forwards", [("parallel", 1), ("block", 1), ("token", K + 2)])
def test_a_step_is_one_forward_pass(decoding, forwards):
    vocab = _vocab()
    model = _model(vocab, decoding)
    engine = ImaginationEngine(model, sampling=SamplingConfig(temperature=1.5), seed=3)
    engine.start(_steps(vocab, 3, 2))
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    for _ in range(5):
        out = engine.step(torch.tensor([0, 1, 2]))
        assert out.codes.shape == (3, K) and out.codes.max() < vocab.codebook_size
        assert out.reward.shape == (3,) and out.terminated.dtype == torch.bool
    assert len(calls) == 5 * forwards


@pytest.mark.parametrize("decoding", ["parallel", "block"])
@pytest.mark.parametrize("fresh_steps", [1, 3])  # a 1-step context is shorter than what waits
def test_restarting_a_row_leaves_the_others_untouched(fresh_steps, decoding):
    vocab = _vocab()
    model = _model(vocab, decoding)
    context, fresh = _steps(vocab, 3, 3), _steps(vocab, 1, fresh_steps, seed=5)
    a = ImaginationEngine(model, sampling=SamplingConfig(greedy=True))
    b = ImaginationEngine(model, sampling=SamplingConfig(greedy=True))
    for engine in (a, b):
        engine.start(context)
        engine.step(torch.tensor([0, 1, 2]))
    b.restart_rows(torch.tensor([1]), fresh)
    alone = ImaginationEngine(model, sampling=SamplingConfig(greedy=True))
    alone.start(fresh)
    for action in ([2, 2, 2], [1, 0, 1], [0, 0, 0]):
        out_a, out_b = a.step(torch.tensor(action)), b.step(torch.tensor(action))
        assert torch.equal(out_a.codes[[0, 2]], out_b.codes[[0, 2]])
        # The restarted row goes on as if it had started from the fresh context alone.
        assert torch.equal(alone.step(torch.tensor(action[1:2])).codes[0], out_b.codes[1])


@pytest.mark.parametrize("decoding", ["token", "parallel", "block"])
def test_a_row_restarted_early_in_a_rollout_keeps_its_whole_context(decoding):
    # One step after a 1-step start, a row restarts from 3 real steps: it must see all three,
    # as an engine started from them alone does (its logits, not only its greedy tokens).
    vocab = _vocab()
    model = _model(vocab, decoding)
    engine = ImaginationEngine(model, sampling=SamplingConfig(greedy=True))
    alone = ImaginationEngine(model, sampling=SamplingConfig(greedy=True))
    seen, seen_alone = _recording(engine), _recording(alone)
    fresh = _steps(vocab, 1, 3, seed=5)
    engine.start(_steps(vocab, 3, 1))
    engine.step(torch.tensor([0, 1, 2]))
    engine.restart_rows(torch.tensor([1]), fresh)
    alone.start(fresh)
    del seen[:]
    for action in ([2, 2, 2], [1, 0, 1]):
        engine.step(torch.tensor(action))
        alone.step(torch.tensor(action[1:2]))
    for ours, theirs in zip(seen, seen_alone, strict=True):
        torch.testing.assert_close(ours[1:2], theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # torch.compile
@pytest.mark.parametrize("decoding", ["parallel", "block"])
def test_compiled_one_forward_steps_give_the_eager_tokens(decoding):
    vocab = _vocab()
    model = _model(vocab, decoding)
    context, fresh = _steps(vocab, 3, 2), _steps(vocab, 1, 1, seed=1)
    rollouts = []
    for compile in (False, True):
        engine = ImaginationEngine(model, sampling=SamplingConfig(greedy=True), compile=compile)
        engine.start(context)
        steps = [engine.step(torch.tensor([1, 2, 0])) for _ in range(3)]
        engine.restart_rows(torch.tensor([1]), fresh)  # eager, between compiled steps
        steps += [engine.step(torch.tensor([1, 2, 0])) for _ in range(3)]
        rollouts.append(torch.stack([s.codes for s in steps]))
    assert torch.equal(rollouts[0], rollouts[1])


@pytest.mark.parametrize("decoding", ["parallel", "block"])
def test_a_snapshot_restores_a_one_forward_dream(decoding):
    vocab = _vocab()
    engine = ImaginationEngine(
        _model(vocab, decoding), sampling=SamplingConfig(temperature=1.0), seed=1
    )
    engine.start(_steps(vocab, 2, 3))
    engine.step(torch.tensor([0, 1]))
    engine.restart_rows(torch.tensor([0]), _steps(vocab, 1, 1, seed=4))
    state = engine.snapshot()
    runs = []
    for _ in range(2):
        engine.restore(state)
        runs.append(torch.stack([engine.step(torch.tensor([2, 0])).codes for _ in range(3)]))
    assert torch.equal(runs[0], runs[1])


def test_save_and_load_keep_the_mode_and_the_queries(tmp_path):
    model = _model(_vocab())
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["frame_decoding"] == "parallel"
    loaded = TokWorldModel.from_pretrained(tmp_path)
    assert loaded.config.frame_decoding == "parallel" and loaded.one_forward
    assert torch.equal(loaded.queries.weight, model.queries.weight)
    with pytest.raises(TokWorldError, match="frame_decoding must be one of token, parallel, block"):
        TokWorldConfig.preset("tiny", _vocab(), frame_decoding="maskgit")
    token = _model(_vocab(), "token")
    with pytest.raises(TokWorldError, match="frame_decoding='parallel'"):
        token(torch.zeros(1, 3, dtype=torch.long), query_positions=torch.tensor([5]))


def test_block_decoding_saves_and_refuses_an_action_loss(tmp_path):
    vocab = _vocab()
    model = _model(vocab, "block")
    model.save_pretrained(tmp_path)
    loaded = TokWorldModel.from_pretrained(tmp_path)
    assert loaded.decoding == "block" and not hasattr(loaded, "queries")
    tokens = _lead(vocab, model.tokens_of(_steps(vocab, 1, 2)))
    assert torch.equal(_stream_logits(loaded, tokens), _stream_logits(model, tokens))
    with pytest.raises(TokWorldError, match="action_loss_weight needs frame_decoding"):
        TokWorldConfig.preset("tiny", vocab, frame_decoding="block", action_loss_weight=1.0)


@pytest.mark.slow  # pretrain, imagine, eval-model, the dream env, planning, finetune: ~10 s a mode
@pytest.mark.parametrize("decoding", ["token", "parallel", "block"])
def test_every_mode_runs_through_the_command_line(decoding, minigrid_dataset, pretrain_argv,
                                                 tmp_path):  # fmt: skip
    run = tmp_path / "run"
    assert main(pretrain_argv(minigrid_dataset, run, frame_decoding=decoding)) == 0
    config = json.loads((run / "world_model" / "config.json").read_text())
    assert config["frame_decoding"] == decoding
    out = tmp_path / "imagined"
    assert main(["imagine", "--run", str(run), "--dataset", minigrid_dataset, "--episodes", "2",
                 "--steps", "3", "--context", "2", "--out", str(out)]) == 0  # fmt: skip
    validate_trajectories(load_trajectories(str(out / "dataset")))
    fidelity = tmp_path / "fidelity.json"
    assert main(["eval-model", "--run", str(run), "--context", "2", "--horizon", "3",
                 "--windows", "2", "--json", str(fidelity)]) == 0  # fmt: skip
    assert len(json.loads(fidelity.read_text())["per_step"]["psnr_vs_real"]) == 3
    env = DreamVectorEnv(str(run), minigrid_dataset, num_envs=2, context_steps=1,
                         max_episode_steps=2)  # fmt: skip
    env.reset(seed=0)
    for _ in range(4):  # restarts from 1-step contexts every other step
        obs, *_ = env.step(np.array([0, 1]))
        assert obs.shape == (2, 64, 64, 3)
    plan = tmp_path / "plan.json"  # planning in the real env, imagining with the world model
    assert main(["eval", "--run", str(run), "--env", "MiniGrid-Empty-5x5-v0", "--episodes", "1",
                 "--json", str(plan), "--plan", "--plan-candidates", "2",
                 "--plan-horizon", "2"]) == 0  # fmt: skip
    assert json.loads(plan.read_text())["planner"]["rollouts"] == 2
    finetuned = tmp_path / "finetuned"
    assert main(["finetune", "--run", str(run), "--env", "MiniGrid-Empty-5x5-v0",
                 "--env-steps", "30", "--initial-steps", "30", "--tokenizer-steps", "1",
                 "--tokenizer-batch-size", "4", "--world-model-steps", "2",
                 "--world-model-batch-size", "2", "--policy-steps", "1", "--batch-size", "2",
                 "--horizon", "2", "--context", "2", "--eval-episodes", "1",
                 "--out", str(finetuned)]) == 0  # fmt: skip
    config = json.loads((finetuned / "world_model" / "config.json").read_text())
    assert config["frame_decoding"] == decoding


def test_training_throughput_benchmark_times_every_mode_interleaved(capsys):
    report = bench_world_model(["--preset", "tiny", "--batch", "2", "--warmup", "1",
                                "--repeats", "2", "--no-iris", "--no-loop",
                                "--frame-decoding", "token", "parallel", "block"])  # fmt: skip
    assert report["frame_decoding"] == "token"
    by_mode = report["bare_by_mode"]
    assert set(by_mode) == {"token", "parallel", "block"} and report["bare"] == by_mode["token"]
    assert all(len(by_mode[m]["seconds"]) == 2 for m in by_mode)
    for mode in ("parallel", "block"):
        ratio = by_mode[mode]["seconds_median"] / by_mode["token"]["seconds_median"]
        assert report[f"{mode}_step_time_over_token"] == pytest.approx(ratio, rel=0.05)
