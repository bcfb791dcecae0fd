"""Imagination: slices hold, greedy is deterministic, the cache matches recomputation, the dream
env passes gymnasium's checks, written episodes are a valid dataset, bad input is one error."""

from __future__ import annotations

import gc
import weakref

import gymnasium as gym
import numpy as np
import pytest
import torch
from einops import rearrange

from tokworld.cli import main
from tokworld.data.format import load_trajectories
from tokworld.data.validate import validate_trajectories
from tokworld.data.windows import RealContext
from tokworld.dream import DreamVectorEnv
from tokworld.imagine import ImaginationEngine
from tokworld.sampling import SamplingConfig
from tokworld.tokenizer import Kind


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> str:
    """The session's tiny MiniGrid run (tests/conftest.py), as the str the CLI takes."""
    return str(tiny_run)


def _engine(run_dir, greedy=True, seed=0):
    from tokworld.run import load_run

    model, tokenizer = load_run(run_dir)
    sampling = SamplingConfig(greedy=greedy)
    return ImaginationEngine(model, tokenizer.decode, sampling, seed), tokenizer


def _context(run_dir, dataset, n=3, steps=3, seed=0):
    _, tokenizer = _engine(run_dir)
    return RealContext(load_trajectories(dataset), steps, tokenizer, seed).sample(n)


def test_greedy_is_deterministic_and_tokens_stay_in_their_slices(run_dir, minigrid_dataset):
    context = _context(run_dir, minigrid_dataset)
    runs = []
    for _ in range(2):
        engine, _ = _engine(run_dir)
        engine.start(context)
        runs.append([engine.step(torch.tensor([0, 1, 2])) for _ in range(4)])
    vocab = engine.vocab
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a.codes, b.codes) and torch.equal(a.reward, b.reward)
        assert a.codes.min() >= 0 and a.codes.max() < vocab.codebook_size
        assert a.frames.shape == (3, 3, 64, 64)


def test_sampled_tokens_fall_in_the_right_slices(run_dir, minigrid_dataset):
    engine, _ = _engine(run_dir, greedy=False)
    engine.start(_context(run_dir, minigrid_dataset))
    seen = []
    original = engine._sample
    engine._sample = lambda logits: seen.append(original(logits)) or seen[-1]
    for _ in range(3):
        engine.step(torch.tensor([3, 4, 5]))
    kinds = [Kind.REWARD, Kind.END] + [Kind.FRAME] * engine.vocab.tokens_per_frame
    ranges = dict(zip(engine.vocab.block_kinds, engine.vocab.block_ranges, strict=True))
    for i, ids in enumerate(seen):
        lo, hi = ranges[kinds[i % len(kinds)]]
        assert ((ids >= lo) & (ids < hi)).all()


def test_cached_rollout_matches_full_recomputation(run_dir, minigrid_dataset):
    engine, _ = _engine(run_dir)
    model, vocab = engine.model, engine.vocab
    context = _context(run_dir, minigrid_dataset, steps=2)
    engine.start(context)
    actions = torch.tensor([[1, 2, 0], [0, 0, 1], [2, 1, 2]])  # 3 steps: within the window
    steps = [engine.step(a) for a in actions]
    b = actions.shape[1]
    codes = torch.cat([context["codes"]] + [s.codes[:, None] for s in steps], 1)
    action = torch.cat([context["action"][:, :-1], actions.T, torch.zeros(b, 1).long()], 1)
    reward = torch.cat([context["reward"][:, :-1]] + [s.reward[:, None] for s in steps], 1)
    reward = torch.cat([reward, torch.zeros(b, 1)], 1)
    ends = torch.cat([context["terminated"][:, :-1]] + [s.terminated[:, None] for s in steps], 1)
    ends = torch.cat([ends, torch.zeros(b, 1, dtype=torch.bool)], 1)
    tokens = rearrange(vocab.encode(codes, action, reward, ends), "b t n -> b (t n)")
    with torch.no_grad():
        greedy = model(tokens).logits.argmax(-1)
    first = vocab.block_size + vocab.tokens_per_frame  # first token the engine produced
    last = tokens.shape[1] - (vocab.block_size - vocab.tokens_per_frame)
    kinds = vocab.kinds(tokens.shape[1])
    produced = [p for p in range(first, last) if kinds[p] != Kind.ACTION]
    assert torch.equal(greedy[:, [p - 1 for p in produced]], tokens[:, produced])


def test_restarting_a_row_leaves_the_others_untouched(run_dir, minigrid_dataset):
    context = _context(run_dir, minigrid_dataset)
    fresh = _context(run_dir, minigrid_dataset, n=1, seed=5)
    a, _ = _engine(run_dir)
    b, _ = _engine(run_dir)
    for engine in (a, b):
        engine.start(context)
        engine.step(torch.tensor([0, 1, 2]))
    b.restart_rows(torch.tensor([1]), fresh)
    out_a, out_b = a.step(torch.tensor([2, 2, 2])), b.step(torch.tensor([2, 2, 2]))
    assert torch.equal(out_a.codes[[0, 2]], out_b.codes[[0, 2]])
    # The restarted row continues as if it had started from the fresh context alone.
    alone, _ = _engine(run_dir)
    alone.start(fresh)
    assert torch.equal(alone.step(torch.tensor([2])).codes[0], out_b.codes[1])


def test_a_replaced_cache_is_freed_without_the_cyclic_collector(run_dir, minigrid_dataset):
    # A planner starts imagination at every real step: a cache kept alive by a reference cycle
    # until the next cyclic collection piled up gigabytes.
    context = _context(run_dir, minigrid_dataset)
    engine, _ = _engine(run_dir)
    engine.start(context)
    engine.step(torch.tensor([0, 1, 2]))
    old = weakref.ref(engine.cache)
    gc.disable()
    try:
        engine.start({k: v[:2] for k, v in context.items()})  # another batch size: a new ring
        assert old() is None
    finally:
        gc.enable()


def test_a_start_in_another_precision_gets_a_new_ring(run_dir, minigrid_dataset):
    # A reset ring keeps its buffers, so it is reused only for keys of its own dtype.
    context = _context(run_dir, minigrid_dataset)
    engine, _ = _engine(run_dir)
    engine.start(context)
    engine.step(torch.tensor([0, 1, 2]))
    single = engine.cache
    engine.model.double()
    engine.start({k: v.double() if v.is_floating_point() else v for k, v in context.items()})
    engine.step(torch.tensor([0, 1, 2]))  # a reused float32 ring would refuse float64 keys
    assert engine.cache is not single and engine.cache.layers[0].keys.dtype == torch.float64


def test_a_new_start_reuses_the_ring_and_continues_as_a_fresh_engine(run_dir, minigrid_dataset):
    # The ring stays in place across starts at one batch size (CUDA graphs replay on its
    # buffers); what the previous rollout wrote there must not reach the new one.
    first, second = (_context(run_dir, minigrid_dataset, seed=s) for s in (0, 7))
    logits = {"reused": [], "fresh": []}
    reused, _ = _engine(run_dir)
    reused.start(first)
    for _ in range(3):
        reused.step(torch.tensor([0, 1, 2]))
    reused.restart_rows(torch.tensor([1]), _context(run_dir, minigrid_dataset, n=1, seed=5))
    reused.step(torch.tensor([0, 1, 2]))  # row 1's context now starts later than the others'
    ring = reused.cache
    fresh, _ = _engine(run_dir)
    for name, engine in (("reused", reused), ("fresh", fresh)):
        engine.start(second)
        original = engine._sample
        engine._sample = lambda x, o=original, seen=logits[name]: seen.append(x) or o(x)
        for _ in range(3):
            engine.step(torch.tensor([2, 0, 1]))
    assert reused.cache is ring
    assert len(logits["reused"]) == len(logits["fresh"]) > 0
    for a, b in zip(logits["reused"], logits["fresh"], strict=True):
        assert torch.equal(a, b)


def test_dream_env_passes_vector_checks_and_autoresets(run_dir, minigrid_dataset):
    env = gym.make_vec(
        "tokworld/Dream-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        run=run_dir,
        dataset=minigrid_dataset,
        context_steps=2,
        max_episode_steps=3,
    )
    assert isinstance(env.unwrapped, DreamVectorEnv)
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    obs_again, _ = env.reset(seed=1)
    assert np.array_equal(obs, obs_again)
    elapsed = np.zeros(3, dtype=int)
    for _ in range(6):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert reward.shape == (3,) and reward.dtype == np.float32
        elapsed += 1
        assert np.array_equal(truncated, (elapsed >= 3) & ~terminated)
        done = terminated | truncated
        if done.any():  # same-step autoreset: the final frame is in info, obs is a fresh start
            assert np.array_equal(info["_final_obs"], done)
            assert all(info["final_obs"][i].shape == (64, 64, 3) for i in np.flatnonzero(done))
        elapsed[done] = 0
    env.close()


def test_imagine_cli_writes_gifs_grid_and_a_valid_dataset(run_dir, minigrid_dataset, tmp_path):
    out = tmp_path / "imagined"
    code = main(["imagine", "--run", run_dir, "--dataset", minigrid_dataset, "--episodes", "2",
                 "--steps", "3", "--context", "2", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert (out / "episode_000.gif").exists() and (out / "grid.png").exists()
    ds = load_trajectories(str(out / "dataset"))
    validate_trajectories(ds)
    assert ds[0]["observation"].__len__() == 64
    open_loop = str(tmp_path / "ol")
    code = main(["imagine", "--run", run_dir, "--dataset", minigrid_dataset, "--episodes", "2",
                 "--steps", "3", "--context", "2", "--open-loop", "--out", open_loop])  # fmt: skip
    assert code == 0
    assert (tmp_path / "ol" / "real_vs_imagined_000.gif").exists()


def _policy_run(run_dir, path, actions: int, favourite: int) -> str:
    """A run dir holding only a tokens policy for Discrete(`actions`) that always picks
    `favourite`."""
    from tokworld.policy import build_policy
    from tokworld.run import load_tokenizer
    from tokworld.tokenizer.codecs import ActionCodec

    codec = ActionCodec.from_space(gym.spaces.Discrete(actions))
    policy = build_policy("tiny", codec, load_tokenizer(run_dir), "tokens")
    with torch.no_grad():
        policy.actor.weight.zero_()
        policy.actor.bias.fill_(-50.0)[favourite] = 50.0
    policy.save_pretrained(path / "policy")
    return str(path)


def test_imagine_cli_acts_with_a_trained_policy(run_dir, minigrid_dataset, tmp_path):
    policy = _policy_run(run_dir, tmp_path / "policy_run", actions=7, favourite=4)
    out = tmp_path / "imagined"
    code = main(["imagine", "--run", run_dir, "--dataset", minigrid_dataset, "--episodes", "3",
                 "--steps", "4", "--context", "2", "--policy", policy,
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    actions = load_trajectories(str(out / "dataset")).with_format("numpy")[:]["action"]
    assert len(actions) >= 3 and (actions == 4).all()  # every imagined step: the policy's action


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_tokenizer", "has no tokenizer/"),
        ("other_actions", "does not match"),
        ("zero_steps", "must be positive"),
        ("policy_other_actions", "acts in Discrete [6]"),
    ],
)
def test_imagine_bad_input_is_one_line(case, message, run_dir, minigrid_dataset, pong_dataset,
                                       tmp_path, capsys):  # fmt: skip
    import shutil

    run, dataset, steps, policy = run_dir, minigrid_dataset, "3", "random"
    if case == "no_tokenizer":
        run = str(tmp_path / "run")
        shutil.copytree(run_dir, run)
        shutil.rmtree(f"{run}/tokenizer")
    elif case == "other_actions":
        dataset = pong_dataset  # Discrete(6) vs the run's Discrete(7)
    elif case == "policy_other_actions":
        policy = _policy_run(run_dir, tmp_path / "pong_policy", actions=6, favourite=0)
    else:
        steps = "0"
    code = main(["imagine", "--run", run, "--dataset", dataset, "--steps", steps,
                 "--policy", policy, "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_beyond_the_window_the_cache_equals_sliding_window_attention(run_dir, minigrid_dataset):
    """Past the window, imagination is exactly a sliding-window transformer over the stream."""
    engine, _ = _engine(run_dir)
    model, vocab, window = engine.model, engine.vocab, engine.window
    context = _context(run_dir, minigrid_dataset, n=2, steps=2)
    engine.start(context)
    seen = []
    original = engine._sample
    engine._sample = lambda logits: seen.append(logits) or original(logits)
    actions = torch.randint(0, 7, (14, 2), generator=torch.Generator().manual_seed(0))
    steps = [engine.step(a) for a in actions]  # 16 steps in all, the window holds 8
    codes = torch.cat([context["codes"]] + [s.codes[:, None] for s in steps], 1)
    action = torch.cat([context["action"][:, :-1], actions.T, torch.zeros(2, 1).long()], 1)
    reward = torch.cat([context["reward"][:, :-1]] + [s.reward[:, None] for s in steps], 1)
    reward = torch.cat([reward, torch.zeros(2, 1)], 1)
    ends = torch.cat([context["terminated"][:, :-1]] + [s.terminated[:, None] for s in steps], 1)
    ends = torch.cat([ends, torch.zeros(2, 1, dtype=torch.bool)], 1)
    tokens = rearrange(vocab.encode(codes, action, reward, ends), "b t n -> b (t n)")
    i = torch.arange(tokens.shape[1])
    sliding = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
    with torch.no_grad():
        logits = model(tokens, attention_mask=sliding.expand(2, 1, -1, -1)).logits
    kinds = vocab.kinds(tokens.shape[1])
    first = vocab.block_size + vocab.tokens_per_frame  # the first token the engine produced
    last = tokens.shape[1] - (vocab.block_size - vocab.tokens_per_frame)
    produced = [p for p in range(first, last) if kinds[p] != Kind.ACTION]
    assert max(produced) > 1.5 * window and len(produced) == len(seen)
    # The engine saw the same (masked) distributions as the sliding-window transformer.
    expected = logits[:, [p - 1 for p in produced]]
    torch.testing.assert_close(torch.stack(seen, 1), expected, atol=1e-3, rtol=1e-3)


def test_sampling_draws_from_the_tempered_top_k_softmax(run_dir):
    engine, _ = _engine(run_dir, greedy=False)
    logits = torch.tensor([[2.0, 1.0, 0.0, float("-inf"), -1.0]]).expand(20000, -1)
    for temperature, top_k in [(1.0, None), (0.5, None), (1.0, 2)]:
        engine.sampling = SamplingConfig(temperature=temperature, top_k=top_k)
        drawn = engine._sample(logits)[:, 0]
        kept = logits[0] if top_k is None else logits[0].masked_fill(logits[0] < 1.0, -torch.inf)
        expected = torch.softmax(kept / temperature, -1)
        frequency = torch.bincount(drawn, minlength=5).float() / len(drawn)
        torch.testing.assert_close(frequency, expected, atol=0.015, rtol=0)
        assert not (drawn == 3).any()  # a masked token is never drawn


@pytest.mark.slow  # torch.compile
def test_compiled_steps_give_the_eager_tokens(run_dir, minigrid_dataset):
    context = _context(run_dir, minigrid_dataset, n=3, steps=2)
    fresh = _context(run_dir, minigrid_dataset, n=1, steps=2, seed=1)
    actions = torch.tensor([1, 2, 0])
    rollouts = []
    for compile in (False, True):
        engine, tokenizer = _engine(run_dir)
        engine = ImaginationEngine(engine.model, tokenizer.decode, engine.sampling, compile=compile)
        engine.start(context)
        steps = [engine.step(actions) for _ in range(3)]
        engine.restart_rows(torch.tensor([1]), fresh)  # eager, between compiled steps
        steps += [engine.step(actions) for _ in range(3)]
        rollouts.append(torch.stack([s.codes for s in steps]))
    assert torch.equal(rollouts[0], rollouts[1])


@pytest.mark.slow  # torch.compile
def test_imagine_cli_and_dream_env_compile_on_request(run_dir, minigrid_dataset, tmp_path):
    episodes = []
    for flags in ([], ["--compile"]):
        out = tmp_path / f"imagined{len(flags)}"
        code = main(["imagine", "--run", run_dir, "--dataset", minigrid_dataset, "--greedy",
                     "--episodes", "3", "--steps", "3", "--context", "2", "--out", str(out),
                     *flags])  # fmt: skip
        assert code == 0
        episodes.append(load_trajectories(str(out / "dataset")).with_format("numpy")[:])
    assert np.array_equal(episodes[0]["observation"], episodes[1]["observation"])
    env = DreamVectorEnv(run_dir, minigrid_dataset, num_envs=2, compile=True)
    assert env.engine.step_model is not env.engine.model  # the torch.compile wrapper
