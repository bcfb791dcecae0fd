"""One browser tab's dream: steps on key presses, restarts, sampling settings, forks, the real
env beside it, and its recording.

`PlaySession.handle(message)` takes one message of the page's protocol (see
`tokworld.play.server`) and returns the reply; bad input raises TokWorldError with one line.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import asdict, dataclass

import imageio.v3 as iio
import numpy as np
import torch

from tokworld.errors import TokWorldError
from tokworld.imagine import ImaginationEngine
from tokworld.play.real import RealEnv, psnr
from tokworld.play.record import Episode, frame_of, recordable, save_episodes
from tokworld.play.world import PlayWorld
from tokworld.sampling import SamplingConfig

MAX_FORK_NAME = 40


@dataclass
class Fork:
    """A saved point of a dream: the engine's snapshot and the episode up to there."""

    state: dict
    episode: Episode


class PlaySession:
    """One dream of `world`'s model, saved as `world.cfg.sessions_dir / name`."""

    def __init__(self, world: PlayWorld, name: str, seed: int):
        self.world, self.name = world, name
        self.rng = np.random.default_rng(seed)
        decode = world.tokenizer.decode
        self.engine = ImaginationEngine(world.world_model, decode, SamplingConfig(), seed)
        self.episodes: list[Episode] = []
        self.forks: dict[str, Fork] = {}
        self.real: RealEnv | None = None
        self.real_note = ""
        self.queued: int | None = None  # --fps: the action of the next tick
        self.saved_steps = 0

    # ---- the protocol ---------------------------------------------------------------------
    def handle_text(self, text) -> dict | None:
        """`handle` a message sent as JSON text."""
        if not isinstance(text, str):
            raise TokWorldError("messages must be JSON text, not binary")
        try:
            message = json.loads(text)
        except ValueError:
            raise TokWorldError(f"not a JSON message: {text[:60]!r}") from None
        return self.handle(message)

    def handle(self, message) -> dict | None:
        """Do what `message` asks; return the reply (None: a step queued for the next tick)."""
        if not isinstance(message, dict):
            raise TokWorldError("a message must be a JSON object with a 'type'")
        kind = message.get("type")
        if kind == "step":
            action = self.world.controls.check(message.get("action"))
            if self.world.cfg.fps:
                self.queued = action
                return None
            return self.step(action)
        if kind == "restart":
            return self.restart()
        if kind == "sampling":
            return self.set_sampling(
                message.get("temperature"), message.get("top_k"), message.get("greedy", False)
            )
        if kind == "fork":
            return self.fork(message.get("name"))
        if kind == "restore":
            return self.restore(message.get("name"))
        if kind == "record":
            return self.record()
        raise TokWorldError(
            f"unknown message type {kind!r}: use step, restart, sampling, fork, restore or record"
        )

    def hello(self) -> dict:
        """What the page needs before the first frame: env, actions and keys, settings."""
        cfg = self.world.cfg
        return {
            "type": "hello",
            "session": self.name,
            "env_id": self.world.meta.env_id,
            "fps": cfg.fps,
            "real": cfg.real,
            "starts": len(self.world.starts),
            "sampling": asdict(self.engine.sampling),
            **self.world.controls.to_json(),
        }

    # ---- actions --------------------------------------------------------------------------
    def restart(self, note: str = "") -> dict:
        """Begin a new episode from a random real start."""
        starts = self.world.starts
        window, seed = starts.sample(), int(self.rng.integers(2**31))
        self.engine.generator.manual_seed(seed)
        out = self.engine.start(starts.window(window))
        self.episodes.append(Episode(window, seed, frames=[frame_of(out)]))
        self._start_real()
        return self.view(note or f"new dream from real start {window} of {len(starts)}")

    def step(self, action: int) -> dict:
        """One imagined step (and one real one); after an imagined end, a restart instead."""
        episode = self.episode
        if episode.ended:
            return self.restart("the model ended the episode: a new dream from a real start")
        out = self.engine.step(torch.tensor([action]))
        episode.add(action, out, self.engine.sampling)
        if self.real is not None:
            self.real.step(action)
        return self.view()

    def tick(self) -> dict | None:
        """--fps: step with the queued action, else the no-op (None where the env has none)."""
        action, self.queued = self.queued, None
        action = self.world.controls.noop if action is None else action
        return None if action is None else self.step(action)

    def set_sampling(self, temperature, top_k, greedy) -> dict:
        """Sample at `temperature` from the `top_k` best (None: all), or `greedy`."""
        number = isinstance(temperature, int | float) and not isinstance(temperature, bool)
        if not number or not math.isfinite(temperature) or temperature <= 0:
            raise TokWorldError(f"temperature must be a number > 0, got {temperature!r}")
        size = self.world.world_model.vocab.size
        if top_k is not None and (not isinstance(top_k, int) or not 1 <= top_k <= size):
            raise TokWorldError(
                f"top-k must be empty or a whole number in 1..{size}, got {top_k!r}"
            )
        if not isinstance(greedy, bool):
            raise TokWorldError(f"greedy must be true or false, got {greedy!r}")
        self.engine.sampling = SamplingConfig(float(temperature), top_k, greedy)
        return self.view(f"sampling: {self._sampling_text()}")

    def fork(self, name) -> dict:
        """Save the dream's full state under `name` (replacing a fork of that name)."""
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_FORK_NAME:
            raise TokWorldError(f"a fork needs a name of 1 to {MAX_FORK_NAME} characters")
        name = name.strip()
        self.forks[name] = Fork(self.engine.snapshot(), self.episode.branch(name))
        return self.view(f"fork {name!r} saved at step {self.episode.steps}")

    def restore(self, name) -> dict:
        """Return to the fork `name`: a new episode continuing from there."""
        if name not in self.forks:
            known = ", ".join(repr(n) for n in self.forks) or "none yet"
            raise TokWorldError(f"no fork named {name!r} (forks: {known})")
        fork = self.forks[name]
        self.engine.restore(fork.state)
        self.episodes.append(fork.episode.branch(name))
        self._start_real()
        return self.view(f"back at fork {name!r} (step {fork.episode.steps})")

    def record(self) -> dict:
        """Save the session (every episode, forks as their own) as a dataset and a GIF."""
        episodes = recordable(self.episodes)
        if not episodes:
            raise TokWorldError("nothing to record yet: take a step first")
        cfg = self.world.cfg
        source = {
            "kind": "play",
            "frames": "imagined",
            "run": str(cfg.run),
            "context_dataset": self.world.data.description,
            "context_steps": cfg.context,
            "session": self.name,
        }
        saved = save_episodes(episodes, cfg.sessions_dir / self.name, self.world.meta, source)
        self.saved_steps = self.total_steps
        return {"type": "saved", **saved}

    # ---- state ----------------------------------------------------------------------------
    @property
    def episode(self) -> Episode:
        return self.episodes[-1]

    @property
    def total_steps(self) -> int:
        return sum(e.steps - e.inherited for e in self.episodes)

    @property
    def unsaved(self) -> bool:
        return self.total_steps != self.saved_steps

    def view(self, note: str = "") -> dict:
        """The frame message: the imagined frame, what the model sampled, forks, the real env."""
        e = self.episode
        last = e.steps - 1
        frame = e.frames[-1]
        message = {
            "type": "frame",
            "episode": len(self.episodes) - 1,
            "step": e.steps,
            "action": e.actions[last] if e.steps else None,
            "action_name": self.world.controls.name(e.actions[last]) if e.steps else None,
            "reward": e.rewards[last] if e.steps else 0.0,
            "return": float(sum(e.rewards)),
            "terminated": e.ended,
            "forks": list(self.forks),
            "sampling": asdict(self.engine.sampling),
            "imagined": data_url(frame),
            "note": note,
        }
        if self.world.cfg.real:
            message["real"] = self._real_view(frame)
        return message

    def close(self) -> None:
        if self.real is not None:
            self.real.close()

    # ---- the real env ---------------------------------------------------------------------
    def _start_real(self) -> None:
        """Put the real env where the current episode is (--real only)."""
        if not self.world.cfg.real:
            return
        meta = self.world.meta
        try:
            if self.real is None:
                sticky = bool(meta.source.get("sticky_actions", False))
                self.real = RealEnv(meta.env_id, meta.frame_size, sticky)
            e = self.episode
            self.real.start(self.world.starts.origin(e.window), e.actions)
            self.real_note = self.real.note
        except TokWorldError as err:
            self.close()
            self.real, self.real_note = None, f"no real env: {err}"

    def _real_view(self, imagined: np.ndarray) -> dict:
        if self.real is None:
            return {"note": self.real_note}
        real = self.real.frame
        diff = np.abs(real.astype(np.int16) - imagined.astype(np.int16)).astype(np.uint8)
        return {
            "frame": data_url(real),
            "diff": data_url(diff),
            "psnr": psnr(real, imagined),
            "ended": self.real.ended,
            "note": self.real_note,
        }

    def _sampling_text(self) -> str:
        s = self.engine.sampling
        if s.greedy:
            return "greedy"
        return f"temperature {s.temperature:g}, top-k {s.top_k or 'all'}"


def data_url(frame: np.ndarray) -> str:
    """A uint8 (H, W, 3) frame as a PNG data URL."""
    png = iio.imwrite("<bytes>", frame, extension=".png")
    return "data:image/png;base64," + base64.b64encode(png).decode()
