"""One forward per imagined step: a step's reward, end and K frame codes come out of one forward
pass. Parallel decoding's part: its queries read the past up to the action, and the cached
imagination equals one forward over the whole stream under the same masks and sliding window.
What every one-forward mode shares (parallel and block; block's own layout, mask and loss are in
test_block_frames.py): one forward a step, restarts, snapshots, compile, saving, and every mode
through the command line."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from one_forward import (
    DEFAULT,
    SWAPPED,
    K,
    greedy_rollout,
    model_of,
    recording,
    steps_of,
    stream_of,
    vocab_of,
)

from tokworld.cli import main
from tokworld.config import TokWorldConfig
from tokworld.data.format import load_trajectories
from tokworld.data.validate import validate_trajectories
from tokworld.dream import DreamVectorEnv
from tokworld.errors import TokWorldError
from tokworld.eval.bench_world_model import main as bench_world_model
from tokworld.imagine import ImaginationEngine
from tokworld.model import TokWorldModel
from tokworld.sampling import SamplingConfig
from tokworld.tokenizer import Kind


def test_predicted_tokens_follow_the_block_layout():
    vocab = vocab_of(SWAPPED)
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
    vocab = vocab_of()
    model = model_of(vocab)
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
    vocab = vocab_of(order, gym.spaces.MultiDiscrete([3, 2]))
    model = model_of(vocab)
    tokens = rearrange(vocab.encode(*list(steps_of(vocab, 2, 3).values())[:4]), "b t n -> b (t n)")
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
    vocab = vocab_of()
    model = model_of(vocab)
    batch = steps_of(vocab, 2, 3)
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
    vocab = vocab_of()
    model = model_of(vocab, decoding).train()
    batch = steps_of(vocab, 4, 4)
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
    vocab = vocab_of(order, gym.spaces.MultiDiscrete([3, 2]))
    model = model_of(vocab)
    seen, context_and_steps = greedy_rollout(model, steps)
    tokens = stream_of(vocab, *context_and_steps)
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


@pytest.mark.parametrize("decoding, forwards", [("parallel", 1), ("block", 1), ("token", K + 2)])
def test_a_step_is_one_forward_pass(decoding, forwards):
    vocab = vocab_of()
    model = model_of(vocab, decoding)
    engine = ImaginationEngine(model, sampling=SamplingConfig(temperature=1.5), seed=3)
    engine.start(steps_of(vocab, 3, 2))
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
    vocab = vocab_of()
    model = model_of(vocab, decoding)
    context, fresh = steps_of(vocab, 3, 3), steps_of(vocab, 1, fresh_steps, seed=5)
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
    vocab = vocab_of()
    model = model_of(vocab, decoding)
    engine = ImaginationEngine(model, sampling=SamplingConfig(greedy=True))
    alone = ImaginationEngine(model, sampling=SamplingConfig(greedy=True))
    seen, seen_alone = recording(engine), recording(alone)
    fresh = steps_of(vocab, 1, 3, seed=5)
    engine.start(steps_of(vocab, 3, 1))
    engine.step(torch.tensor([0, 1, 2]))
    engine.restart_rows(torch.tensor([1]), fresh)
    alone.start(fresh)
    del seen[:]
    for action in ([2, 2, 2], [1, 0, 1]):
        engine.step(torch.tensor(action))
        alone.step(torch.tensor(action[1:2]))
    for ours, theirs in zip(seen, seen_alone, strict=True):
        torch.testing.assert_close(ours[1:2], theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoding", ["token", "parallel", "block"])
def test_a_restarted_row_takes_the_task_of_its_new_context(decoding):
    # A model of two tasks: row 1 restarts from task 1's context in a batch started on task 0,
    # and must go on as an engine started from that context alone does.
    vocab = vocab_of()
    torch.manual_seed(0)
    config = TokWorldConfig.preset("tiny", vocab, frame_decoding=decoding, tasks=["a", "b"])
    model = TokWorldModel(config).eval()
    torch.nn.init.normal_(model.task_embedding.weight)  # made zero: tasks start alike
    fresh = steps_of(vocab, 1, 2, seed=5)
    logits = {}
    for task in (0, 1):
        engine = ImaginationEngine(model, sampling=SamplingConfig(greedy=True))
        alone = ImaginationEngine(model, sampling=SamplingConfig(greedy=True))
        seen, seen_alone = recording(engine), recording(alone)
        engine.start({**steps_of(vocab, 3, 2), "task": torch.zeros(3, 2, dtype=torch.long)})
        engine.step(torch.tensor([0, 1, 2]))
        engine.restart_rows(torch.tensor([1]), {**fresh, "task": torch.full((1, 2), task)})
        alone.start({**fresh, "task": torch.ones(1, 2, dtype=torch.long)})
        del seen[:]
        engine.step(torch.tensor([2, 2, 2]))
        alone.step(torch.tensor([2]))
        logits[task] = seen[0][1:2], seen_alone[0]
    torch.testing.assert_close(*logits[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(*logits[0], atol=1e-3)  # restarted on task 0: not task 1's


@pytest.mark.slow  # torch.compile
@pytest.mark.parametrize("decoding", ["parallel", "block"])
def test_compiled_one_forward_steps_give_the_eager_tokens(decoding):
    vocab = vocab_of()
    model = model_of(vocab, decoding)
    context, fresh = steps_of(vocab, 3, 2), steps_of(vocab, 1, 1, seed=1)
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
    vocab = vocab_of()
    engine = ImaginationEngine(
        model_of(vocab, decoding), sampling=SamplingConfig(temperature=1.0), seed=1
    )
    engine.start(steps_of(vocab, 2, 3))
    engine.step(torch.tensor([0, 1]))
    engine.restart_rows(torch.tensor([0]), steps_of(vocab, 1, 1, seed=4))
    state = engine.snapshot()
    runs = []
    for _ in range(2):
        engine.restore(state)
        runs.append(torch.stack([engine.step(torch.tensor([2, 0])).codes for _ in range(3)]))
    assert torch.equal(runs[0], runs[1])


def test_save_and_load_keep_the_mode_and_the_queries(tmp_path):
    model = model_of(vocab_of())
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["frame_decoding"] == "parallel"
    loaded = TokWorldModel.from_pretrained(tmp_path)
    assert loaded.config.frame_decoding == "parallel" and loaded.one_forward
    assert torch.equal(loaded.queries.weight, model.queries.weight)
    with pytest.raises(TokWorldError, match="frame_decoding must be one of token, parallel, block"):
        TokWorldConfig.preset("tiny", vocab_of(), frame_decoding="maskgit")
    token = model_of(vocab_of(), "token")
    with pytest.raises(TokWorldError, match="frame_decoding='parallel'"):
        token(torch.zeros(1, 3, dtype=torch.long), query_positions=torch.tensor([5]))


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
