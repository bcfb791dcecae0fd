"""The dream: a gymnasium VectorEnv inside the world model, started from real context.

`gymnasium.make_vec("tokworld/Dream-v0", num_envs=8, vectorization_mode="vector_entry_point",
run="RUN", dataset="DATA")` gives a `VectorEnv` that any RL library can train in.
"""

from __future__ import annotations

import datasets
import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from tokworld.cuda_graph import check_cuda_graphs
from tokworld.data.format import TrajectoryMeta, load_trajectories
from tokworld.data.windows import RealContext
from tokworld.errors import TokWorldError
from tokworld.imagine import ImaginationEngine, ImaginedStep, imagination_decoder
from tokworld.rollout import observations
from tokworld.run import check_observations, load_run
from tokworld.sampling import SamplingConfig
from tokworld.tokenizer.codecs import space_from_dict


class DreamVectorEnv(gym.vector.VectorEnv):
    """`num_envs` imagined environments stepping in one batch through the world model.

    Observations are decoded uint8 frames (float32 vectors, each value its bin's centre, for a
    vector run); the action space is the real env's. Each episode
    starts from a real context window of `context_steps` steps and ends when the model predicts
    a terminal step or after `max_episode_steps` (truncated); ended envs restart at once from
    fresh real context (same-step autoreset: `info["final_obs"]` holds the last frame).
    `compile`, `cuda_graphs` and `bf16` are `ImaginationEngine`'s; `calibrated` samples rewards
    and ends at the data's odds (`SamplingConfig`).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": ["rgb_array"]}

    def __init__(
        self,
        run: str,
        dataset: str | datasets.Dataset,
        num_envs: int = 8,
        context_steps: int = 4,
        max_episode_steps: int = 1000,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
        device: str = "cpu",
        render_mode: str | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
        bf16: bool = False,
        calibrated: bool = False,
    ):
        if cuda_graphs:
            check_cuda_graphs(device, compile)
        world_model, self.tokenizer = load_run(run, device)
        ds = load_trajectories(dataset) if isinstance(dataset, str) else dataset
        meta = TrajectoryMeta.from_dataset(ds)
        check_observations(run, self.tokenizer, meta)
        world_model.vocab.check_action_space(meta.space, "the dataset")
        self.context = RealContext(ds, context_steps, self.tokenizer, seed)
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, calibrated=calibrated)
        decoder = imagination_decoder(self.tokenizer, cuda_graphs)
        self.engine = ImaginationEngine(
            world_model, decoder, sampling, seed, compile, cuda_graphs, bf16
        )
        self.num_envs, self.max_episode_steps = num_envs, max_episode_steps
        self.render_mode = render_mode
        if meta.observation == "vector":
            self.single_observation_space = space_from_dict(meta.observation_space)
        else:
            size = meta.frame_size
            self.single_observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.single_action_space = meta.space
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(meta.space, num_envs)
        self.elapsed = np.zeros(num_envs, dtype=np.int64)
        self.frames: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start every env from fresh real context."""
        super().reset(seed=seed)
        if seed is not None:
            self.context.rng = np.random.default_rng(seed)
            self.engine.generator.manual_seed(seed)
        start = self.engine.start(self.context.sample(self.num_envs))
        self.elapsed[:] = 0
        self.frames = self._observations(start)
        return self.frames.copy(), {}

    def step(self, actions):
        """One imagined step in every env; ended envs restart in the same step."""
        if self.frames is None:
            raise TokWorldError("reset() the dream env before step()")
        out = self.engine.step(torch.as_tensor(np.asarray(actions)))
        self.elapsed += 1
        frames = self._observations(out)
        reward = out.reward.cpu().numpy().astype(np.float32)
        terminated = out.terminated.cpu().numpy()
        truncated = (self.elapsed >= self.max_episode_steps) & ~terminated
        done = terminated | truncated
        info: dict = {}
        if done.any():
            rows = np.flatnonzero(done)
            info["final_obs"] = np.array([None] * self.num_envs, dtype=object)
            for r in rows:
                info["final_obs"][r] = frames[r].copy()
            info["_final_obs"] = done.copy()
            restart = self.engine.restart_rows(
                torch.as_tensor(rows), self.context.sample(len(rows))
            )
            frames[rows] = self._observations(restart)
            self.elapsed[rows] = 0
        self.frames = frames
        return frames.copy(), reward, terminated, truncated, info

    def render(self):
        """The current observation of every env, (num_envs, H, W, 3) uint8 or (num_envs, D)."""
        return None if self.frames is None else self.frames.copy()

    @staticmethod
    def _observations(step: ImaginedStep) -> np.ndarray:
        return observations(step.frames).numpy()


gym.register(id="tokworld/Dream-v0", vector_entry_point="tokworld.dream:DreamVectorEnv")
